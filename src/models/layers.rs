//! The small shared layers: `Linear`, `RmsNorm`, `LayerNorm`, each a pair of VarStore variables
//! under an HF-named path, with the dtype rules of transformers (QWEN3_VL.md §6, §10).
//!
//! Random init (used by `Qwen3Vl::new_random` and the upcycler) is N(0, 0.02²) for weights,
//! zeros for biases, ones for norm gains, as HF `_init_weights` does.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Std of the normal init of weight matrices (HF `initializer_range`).
pub const INIT_STD: f64 = 0.02;

pub(crate) fn normal(p: &Path, name: &str, dims: &[i64]) -> Tensor {
    p.var(name, dims, Init::Randn { mean: 0.0, stdev: INIT_STD })
}

/// `y = x Wᵀ + b`, weight `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Linear {
            weight: normal(&p, "weight", &[out_dim, in_dim]),
            bias: bias.then(|| p.var("bias", &[out_dim], Init::Const(0.0))),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Qwen RMSNorm: `weight * (xf * rsqrt(mean(xf²) + eps)).to(input dtype)` with `xf` = fp32 x.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        // Cast back BEFORE the gain multiply (HF Qwen3RMSNorm), which matters in bf16.
        let y = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * y
    }
}

/// LayerNorm with affine weight and bias over the last dim.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    dim: i64,
}

impl LayerNorm {
    pub fn new(p: Path, dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: p.var("weight", &[dim], Init::Const(1.0)),
            bias: p.var("bias", &[dim], Init::Const(0.0)),
            eps,
            dim,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}
