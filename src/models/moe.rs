//! The Qwen3-VL-MoE sparse block (QWEN3_VL.md §7, PRISM_ALGORITHM.md §2.2): fp32 router softmax,
//! top-k, always-renormalised weights, fused SwiGLU experts, no shared expert.
//!
//! Expert weights are held in the hub layout, `gate_up_proj [E, D, 2I]` (columns `[:I]` gate,
//! `[I:]` up, used as `y @ W[e]`) and `down_proj [E, I, D]`; the loader transposes the
//! transformers-5 layout on the way in. The forward also returns the router logits `[T, E]` for
//! the load-balancing loss ([`load_balancing_loss`]).

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::config::MoeConfig;
use super::layers::{Linear, normal};

/// `mlp.gate` + `mlp.experts` of one MoE decoder layer.
#[derive(Debug)]
pub struct SparseMoe {
    /// Router `mlp.gate.weight [E, D]`, no bias.
    pub gate: Linear,
    /// `mlp.experts.gate_up_proj [E, D, 2I]`.
    pub gate_up_proj: Tensor,
    /// `mlp.experts.down_proj [E, I, D]`.
    pub down_proj: Tensor,
    pub num_experts: i64,
    pub top_k: i64,
    pub inter: i64,
}

impl SparseMoe {
    pub fn new(p: Path, dim: i64, cfg: &MoeConfig) -> Self {
        let (e, i) = (cfg.num_experts, cfg.moe_intermediate_size);
        let experts = &p / "experts";
        SparseMoe {
            gate: Linear::new(&p / "gate", dim, e, false),
            gate_up_proj: normal(&experts, "gate_up_proj", &[e, dim, 2 * i]),
            down_proj: normal(&experts, "down_proj", &[e, i, dim]),
            num_experts: e,
            top_k: cfg.num_experts_per_tok,
            inter: i,
        }
    }

    /// Routing of `y [T, D]`: `(router logits [T, E], top-k weights [T, k] in y's kind,
    /// expert ids [T, k])`.
    pub fn route(&self, y: &Tensor) -> (Tensor, Tensor, Tensor) {
        let logits = self.gate.forward(y);
        let probs = logits.softmax(-1, Kind::Float);
        let (w, idx) = probs.topk(self.top_k, -1, true, true);
        let w = (&w / w.sum_dim_intlist(-1, true, Kind::Float)).to_kind(y.kind());
        (logits, w, idx)
    }

    /// `x [B, S, D]` → (`out [B, S, D]`, router logits `[B*S, E]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let shape = x.size();
        let d = *shape.last().expect("hidden has a last dim");
        let y = x.reshape([-1, d]); // (T, D)
        let (logits, w, idx) = self.route(&y);
        let t = y.size()[0];
        // Dense (T, E) routing weights and hit mask, built by scatter from the top-k slots.
        let dense_w =
            Tensor::zeros([t, self.num_experts], (w.kind(), y.device())).scatter(1, &idx, &w);
        let hit = Tensor::zeros([t, self.num_experts], (Kind::Bool, y.device()))
            .scatter_value(1, &idx, 1);
        let mut out = y.zeros_like();
        for e in 0..self.num_experts {
            let rows = hit.select(1, e).nonzero().squeeze_dim(-1); // (n,)
            if rows.size()[0] == 0 {
                continue;
            }
            let ys = y.index_select(0, &rows); // (n, D)
            let gu = ys.matmul(&self.gate_up_proj.get(e)); // (n, 2I)
            let g = gu.narrow(-1, 0, self.inter);
            let u = gu.narrow(-1, self.inter, self.inter);
            let h = (g.silu() * u).matmul(&self.down_proj.get(e)); // (n, D)
            let we = dense_w.index_select(0, &rows).select(1, e).unsqueeze(-1); // (n, 1)
            out = out.index_add(0, &rows, &(h * we));
        }
        (out.view(shape.as_slice()), logits)
    }
}

/// Switch-style load-balancing loss over the router logits of all MoE layers
/// (`aux = E · Σ_{k,e} tokens_per_expert[k,e] · router_prob[e]`, PRISM_ALGORITHM.md §2.2), with
/// tokens weighted by `token_mask [N]` (1 = real token, same row order as the logits: each
/// layer's `[B*S, E]`). Returns a 0-d fp32 tensor.
pub fn load_balancing_loss(
    router_logits: &[Tensor],
    top_k: i64,
    token_mask: Option<&Tensor>,
) -> Tensor {
    let all = Tensor::cat(router_logits, 0).to_kind(Kind::Float); // (L*T, E)
    let e = all.size()[1];
    let probs = all.softmax(-1, Kind::Float);
    let (_, sel) = probs.topk(top_k, -1, true, true);
    let onehot = sel.one_hot(e).to_kind(Kind::Float); // (N, k, E)
    match token_mask {
        None => {
            let tokens_per_expert = onehot.mean_dim(0, false, Kind::Float); // (k, E)
            let router_prob = probs.mean_dim(0, false, Kind::Float); // (E,)
            (tokens_per_expert * router_prob.unsqueeze(0)).sum(Kind::Float) * e as f64
        }
        Some(m) => {
            let layers = router_logits.len() as i64;
            let m = m.to_kind(Kind::Float).reshape([-1]).repeat([layers]); // (N,)
            let denom = m.sum(Kind::Float);
            let tokens_per_expert =
                (onehot * m.view([-1, 1, 1])).sum_dim_intlist(0, false, Kind::Float) / &denom;
            let router_prob =
                (&probs * m.view([-1, 1])).sum_dim_intlist(0, false, Kind::Float) / denom;
            (tokens_per_expert * router_prob.unsqueeze(0)).sum(Kind::Float) * e as f64
        }
    }
}
