//! The small shared layers: `Linear`, `RmsNorm`, `LayerNorm`, each a pair of VarStore variables
//! under an HF-named path, with the dtype rules of transformers (QWEN3_VL.md §6, §10).
//!
//! Construction creates weight matrices as zeros (cheap, and loading overwrites them); random
//! init ([`randomize`], used by `Qwen3Vl::new_random` and the upcycler) then draws N(0, 0.02²)
//! for weights from a private seeded RNG (reproducible under threads, unlike the global torch
//! generator), keeping zeros for biases and ones for norm gains, as HF `_init_weights` does.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Std of the normal init of weight matrices (HF `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// A weight matrix, created as zeros; [`randomize`] gives it N(0, 0.02²).
pub(crate) fn normal(p: &Path, name: &str, dims: &[i64]) -> Tensor {
    p.var(name, dims, Init::Const(0.0))
}

/// Whether a parameter (by checkpoint key) gets the normal init: not a bias, not a norm gain.
pub fn is_normal_init(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let last = parts.next().unwrap_or("");
    let parent = parts.next().unwrap_or("");
    last != "bias" && !parent.contains("norm")
}

/// Overwrites `t` with N(0, std²) samples. `rng` seeds a SplitMix64 stream for this tensor
/// (cheap per draw even in unoptimised builds, where the generic ChaCha code of `StdRng` runs at
/// ~10 MB/s); the Box-Muller transform runs vectorised in libtorch, chunk by chunk.
pub fn fill_normal(t: &Tensor, rng: &mut StdRng, std: f64) -> Result<(), tch::TchError> {
    const CHUNK: usize = 1 << 22;
    let _g = tch::no_grad_guard();
    let n = t.numel();
    let flat = t.f_view([-1])?;
    let mut state = rng.next_u64();
    let mut u = vec![0f64; 2 * CHUNK.min(n)];
    let mut off = 0;
    while off < n {
        let m = CHUNK.min(n - off);
        for x in u[..2 * m].iter_mut() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // 53 random bits → uniform in (0, 1).
            *x = ((z >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        }
        let u = Tensor::from_slice(&u[..2 * m]).f_view([2, m as i64])?;
        let r = u.f_get(0)?.f_log()?.f_mul_scalar(-2.0)?.f_sqrt()?;
        let z = r
            * u.f_get(1)?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?
                .f_cos()?
            * std;
        flat.f_narrow(0, off as i64, m as i64)?
            .f_copy_(&z.f_to_kind(t.kind())?.f_to_device(t.device())?)?;
        off += m;
    }
    Ok(())
}

/// Random init of every parameter selected by `select` and [`is_normal_init`], in name order,
/// from one RNG seeded with `seed`.
pub fn randomize(
    params: &BTreeMap<String, Tensor>,
    seed: u64,
    select: impl Fn(&str) -> bool,
) -> Result<(), tch::TchError> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, t) in params {
        if is_normal_init(name) && select(name) {
            fill_normal(t, &mut rng, INIT_STD)?;
        }
    }
    Ok(())
}

/// How attention scores are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttnImpl {
    /// `softmax(q kᵀ·scale + mask)` materialised, softmax in fp32 (transformers "eager"; the
    /// reference numerics).
    Eager,
    /// `scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA; no `[S, T]`
    /// probabilities kept for backward). Matches eager to ~1e-6 in fp32.
    #[default]
    Sdpa,
}

/// Attention over `q [.., H, S, hd]`, `k`, `v [.., H, T, hd]` (same head count) with an optional
/// additive fp32 mask broadcastable to `[.., H, S, T]` → `[.., H, S, hd]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    imp: AttnImpl,
) -> Tensor {
    let hd = *q.size().last().expect("head dim");
    let scale = (hd as f64).powf(-0.5);
    match imp {
        AttnImpl::Eager => {
            let scores = (q.matmul(&k.transpose(-2, -1)) * scale).to_kind(Kind::Float);
            let scores = match mask {
                Some(m) => scores + m,
                None => scores,
            };
            scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(v)
        }
        AttnImpl::Sdpa => {
            let mask = mask.map(|m| m.to_kind(q.kind()));
            Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale, false)
        }
    }
}

/// `y = x Wᵀ + b`, weight `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Weight `[out, in]` (zeros until loaded or randomised), optional zero bias.
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
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_classes_and_normal_stats() {
        assert!(is_normal_init(
            "model.language_model.layers.0.self_attn.q_proj.weight"
        ));
        assert!(is_normal_init(
            "model.language_model.layers.0.mlp.experts.gate_up_proj"
        ));
        assert!(!is_normal_init(
            "model.language_model.layers.0.self_attn.q_norm.weight"
        ));
        assert!(!is_normal_init("model.visual.blocks.0.norm1.weight"));
        assert!(!is_normal_init("model.visual.merger.linear_fc1.bias"));
        // The vectorised fill has the right law and is reproducible from the seed.
        let t = Tensor::zeros([300, 100], (Kind::Float, tch::Device::Cpu));
        fill_normal(&t, &mut StdRng::seed_from_u64(2), 0.5).unwrap();
        let m = f64::try_from(t.mean(Kind::Float)).unwrap();
        let s = f64::try_from(t.std(true)).unwrap();
        assert!(m.abs() < 0.02 && (s - 0.5).abs() < 0.02, "{m} {s}");
        let t2 = Tensor::zeros([300, 100], (Kind::Float, tch::Device::Cpu));
        fill_normal(&t2, &mut StdRng::seed_from_u64(2), 0.5).unwrap();
        assert!(t.equal(&t2));
    }
}
