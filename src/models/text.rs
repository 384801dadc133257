//! The Qwen3 text decoder with interleaved M-RoPE (QWEN3_VL.md §6): attention (q/k RMSNorm
//! before rope, GQA, eager fp32 softmax), SwiGLU MLP or MoE block, decoder layers, final norm.
//!
//! Axis convention: hidden `[B, S, D]`, heads `[B, H, S, hd]`, positions `[3, B, S]`, key mask
//! `[B, T]` (T = cached + new tokens). Deepstack injection is done by the caller (`mod.rs`)
//! through the per-layer hook of [`TextModel::forward`]. Weights are never mutated here; the
//! per-sequence state lives in the [`KvCache`] passed in.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::cache::{KvCache, LayerCache};
use super::config::TextConfig;
use super::error::Result;
use super::layers::{AttnImpl, Linear, RmsNorm, attention};
use super::moe::SparseMoe;
use super::rope::{TextRotary, apply_rotary};

/// `down(silu(gate(y)) * up(y))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn new(p: Path, dim: i64, inter: i64) -> Self {
        Mlp {
            gate_proj: Linear::new(&p / "gate_proj", dim, inter, false),
            up_proj: Linear::new(&p / "up_proj", dim, inter, false),
            down_proj: Linear::new(&p / "down_proj", inter, dim, false),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

/// The feed-forward part of a decoder layer.
#[derive(Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

/// Self-attention with q/k norms and GQA.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    nq: i64,
    nkv: i64,
    hd: i64,
    pub(crate) attn_impl: AttnImpl,
}

impl Attention {
    pub fn new(p: Path, cfg: &TextConfig) -> Self {
        let (d, nq, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        Attention {
            q_proj: Linear::new(&p / "q_proj", d, nq * hd, bias),
            k_proj: Linear::new(&p / "k_proj", d, nkv * hd, bias),
            v_proj: Linear::new(&p / "v_proj", d, nkv * hd, bias),
            o_proj: Linear::new(&p / "o_proj", nq * hd, d, bias),
            q_norm: RmsNorm::new(&p / "q_norm", hd, cfg.rms_norm_eps),
            k_norm: RmsNorm::new(&p / "k_norm", hd, cfg.rms_norm_eps),
            nq,
            nkv,
            hd,
            attn_impl: AttnImpl::default(),
        }
    }

    /// `x [B, S, D]`, cos/sin `[B, S, hd]`, additive mask `[B, 1, S, T]` (fp32) → `[B, S, D]`.
    /// With a cache entry, the new k/v are appended to it and attention runs over all T keys.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> Tensor {
        let (b, s, _) = x.size3().expect("[B, S, D] hidden");
        // 1. Projections, per-head views: (B, S, H, hd).
        let q = self.q_proj.forward(x).view([b, s, self.nq, self.hd]);
        let k = self.k_proj.forward(x).view([b, s, self.nkv, self.hd]);
        let v = self.v_proj.forward(x).view([b, s, self.nkv, self.hd]);
        // 2. q/k RMSNorm over hd, BEFORE rope; then (B, S, H, hd) -> (B, H, S, hd).
        let q = self.q_norm.forward(&q).transpose(1, 2);
        let k = self.k_norm.forward(&k).transpose(1, 2);
        let v = v.transpose(1, 2);
        // 3. M-RoPE; cos/sin (B, S, hd) -> (B, 1, S, hd).
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = apply_rotary(&q, &cos, &sin);
        let k = apply_rotary(&k, &cos, &sin);
        // 4. Append to the cache: keys/values (B, nkv, T, hd).
        let (k, v) = match cache {
            Some((entry, hint)) => entry.append(&k, &v, hint),
            None => (k, v),
        };
        // 5. GQA: repeat each kv head nq/nkv times -> (B, nq, T, hd).
        let rep = self.nq / self.nkv;
        let (k, v) = if rep > 1 {
            (
                k.repeat_interleave_self_int(rep, Some(1), None),
                v.repeat_interleave_self_int(rep, Some(1), None),
            )
        } else {
            (k, v)
        };
        // 6. Attention (B, nq, S, hd) -> (B, S, nq*hd).
        let o = attention(&q, &k, &v, Some(mask), self.attn_impl)
            .transpose(1, 2)
            .contiguous()
            .view([b, s, self.nq * self.hd]);
        self.o_proj.forward(&o)
    }
}

/// One pre-norm decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: FeedForward,
}

impl DecoderLayer {
    pub fn new(p: Path, cfg: &TextConfig, i: i64) -> Self {
        let mlp = match (&cfg.moe, cfg.is_sparse_layer(i)) {
            (Some(m), true) => FeedForward::Sparse(SparseMoe::new(&p / "mlp", cfg.hidden_size, m)),
            _ => FeedForward::Dense(Mlp::new(&p / "mlp", cfg.hidden_size, cfg.intermediate_size)),
        };
        DecoderLayer {
            input_layernorm: RmsNorm::new(
                &p / "input_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            self_attn: Attention::new(&p / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp,
        }
    }

    /// Returns the new hidden state and, for MoE layers, the router logits `[B*S, E]`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> (Tensor, Option<Tensor>) {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        let y = self.post_attention_layernorm.forward(&h);
        match &self.mlp {
            FeedForward::Dense(m) => (h + m.forward(&y), None),
            FeedForward::Sparse(m) => {
                let (out, logits) = m.forward(&y);
                (h + out, Some(logits))
            }
        }
    }
}

/// `model.language_model`: embeddings, layers, final norm.
#[derive(Debug)]
pub struct TextModel {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rotary: TextRotary,
}

/// What one text forward produced.
#[derive(Debug)]
pub struct TextOutput {
    /// Final-normed hidden states `[B, S, D]`.
    pub hidden: Tensor,
    /// Router logits `[B*S, E]` of each MoE layer, in layer order.
    pub router_logits: Vec<Tensor>,
}

/// Additive attention mask `[B, 1, S, T]` (fp32): 0 where query i (absolute index `past + i`)
/// may see key j (`j <= past + i` and `key_mask[j] == 1`), else `f32::MIN` (as HF eager, which
/// keeps fully masked pad rows finite).
pub fn causal_mask(key_mask: &Tensor, s: i64) -> Tensor {
    let (_, t) = key_mask.size2().expect("[B, T] key mask");
    let past = t - s;
    let dev = key_mask.device();
    let qi = Tensor::arange_start(past, t, (Kind::Int64, dev)).view([s, 1]);
    let kj = Tensor::arange(t, (Kind::Int64, dev)).view([1, t]);
    let causal = kj.le_tensor(&qi); // (S, T)
    let keys = key_mask.ne(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, T)
    let allowed = causal.unsqueeze(0).unsqueeze(0).logical_and(&keys); // (B, 1, S, T)
    Tensor::zeros(allowed.size(), (Kind::Float, dev))
        .masked_fill(&allowed.logical_not(), f32::MIN as f64)
}

impl TextModel {
    pub fn new(p: Path, cfg: &TextConfig) -> Self {
        let embed_tokens = super::layers::normal(
            &(&p / "embed_tokens"),
            "weight",
            &[cfg.vocab_size, cfg.hidden_size],
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&p / "layers" / i, cfg, i))
            .collect();
        TextModel {
            embed_tokens,
            layers,
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            rotary: TextRotary::new(cfg, p.device()),
        }
    }

    /// `ids [B, S]` → embeddings `[B, S, D]`.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, ids, -1, false, false)
    }

    /// Runs the layers over `x [B, S, D]` at `positions [3, B, S]`, keys masked by
    /// `key_mask [B, T]` (T = cached + S). `after_layer(i, h)` may return a replacement for the
    /// hidden state after layer i (deepstack injection); `trace` receives each layer's output
    /// before that hook.
    pub fn forward(
        &self,
        x: Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        after_layer: &dyn Fn(usize, Tensor) -> Result<Tensor>,
        mut trace: Option<&mut Vec<(String, Tensor)>>,
    ) -> Result<TextOutput> {
        let (_, s, _) = x.size3()?;
        let (cos, sin) = self.rotary.cos_sin(positions, x.kind())?;
        let mask = causal_mask(key_mask, s);
        let mut h = x;
        let mut router_logits = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let entry = cache.as_deref_mut().map(|c| {
                let hint = c.capacity_hint();
                (c.layer_mut(i), hint)
            });
            let (out, logits) = layer.forward(&h, &cos, &sin, &mask, entry);
            if let Some(t) = trace.as_deref_mut() {
                t.push((format!("layer{i}"), out.shallow_clone()));
                if let Some(l) = &logits {
                    t.push((format!("router_logits{i}"), l.shallow_clone()));
                }
            }
            router_logits.extend(logits);
            h = after_layer(i, out)?;
        }
        let hidden = self.norm.forward(&h);
        if let Some(t) = trace {
            t.push(("final_norm".into(), hidden.shallow_clone()));
        }
        Ok(TextOutput {
            hidden,
            router_logits,
        })
    }
}
