//! Qwen3-VL and Qwen3-VL-MoE on libtorch.
//!
//! This file is the glue: it owns the [`Qwen3Vl`] model (VarStore paths = checkpoint keys, so
//! `var_store().trainable_variables()` is what training optimises), merges image/video
//! embeddings into the text sequence at the image/video token ids, injects deepstack features
//! after the first decoder layers, and attaches the LM head and/or the value head. The blocks
//! live in their own files: [`config`] (+ [`config_json`]), [`weights`] (safetensors I/O),
//! [`layers`], [`vision`], [`text`], [`moe`], [`rope`], [`value_head`], [`cache`],
//! [`generation`], [`upcycle`]. Tokenizer, chat template and image preprocessing are separate
//! modules of this directory.
//!
//! Axis convention: `[B, S]` token tensors, `[B, S, D]` hidden, `[B, S, V]` logits, `[B, S]`
//! values, `[3, B, S]` M-RoPE positions. Weights are immutable in `forward`; per-sequence state
//! is the [`KvCache`] passed in.

pub mod cache;
pub mod chat_template;
pub mod config;
pub mod config_json;
pub mod error;
pub mod generate_cli;
pub mod generation;
pub mod image_processor;
pub mod layers;
pub mod moe;
pub mod processor;
pub mod rope;
pub mod text;
pub mod tokenizer;
pub mod tokenizer_train;
pub mod upcycle;
pub mod value_head;
pub mod vision;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use cache::KvCache;
pub use config::{MoeConfig, Qwen3VlConfig, TextConfig, VisionConfig};
pub use error::{ModelError, Result};
pub use generation::{GenerationConfig, GenerationOutput, Sampling, StopReason};
pub use layers::AttnImpl;
pub use value_head::{ValueHeadConfig, values_at_last_token};

use rope::{RopeTokens, get_rope_index};
use text::TextModel;
use value_head::ValueHead;
use vision::{Grids, VisionModel};

/// Inputs of one forward pass. With a non-empty [`KvCache`], `input_ids`/`attention_mask` hold
/// only the new tokens.
#[derive(Debug)]
pub struct ModelInputs {
    /// Token ids `[B, S]` (Int64).
    pub input_ids: Tensor,
    /// 1 = real token, 0 = padding, `[B, S]`.
    pub attention_mask: Tensor,
    /// Image patches `[N, C·T·P·P]` of all images, in `image_grid_thw` order.
    pub pixel_values: Option<Tensor>,
    /// `[n_images, 3]` rows `(t, h, w)`.
    pub image_grid_thw: Option<Tensor>,
    /// Video patches `[N, C·T·P·P]`.
    pub pixel_values_videos: Option<Tensor>,
    /// `[n_videos, 3]`.
    pub video_grid_thw: Option<Tensor>,
    /// Explicit positions `[3, B, S]`, or `[B, S]` used on all three axes (verl's critic passes
    /// 1-D text positions, PRISM_ALGORITHM.md §2.4). `None`: `get_rope_index` / the cache.
    pub position_ids: Option<Tensor>,
}

impl ModelInputs {
    /// Text-only inputs.
    pub fn text(input_ids: Tensor, attention_mask: Tensor) -> Self {
        ModelInputs {
            input_ids,
            attention_mask,
            pixel_values: None,
            image_grid_thw: None,
            pixel_values_videos: None,
            video_grid_thw: None,
            position_ids: None,
        }
    }

    /// Inputs with images.
    pub fn with_images(mut self, pixel_values: Tensor, image_grid_thw: Tensor) -> Self {
        self.pixel_values = Some(pixel_values);
        self.image_grid_thw = Some(image_grid_thw);
        self
    }
}

/// Which heads a model has on top of the backbone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heads {
    /// Whether the model has an LM head (tied: `embed_tokens`, else `lm_head.weight`).
    pub lm_head: bool,
    /// Scalar value head, if any.
    pub value_head: Option<ValueHeadConfig>,
}

impl Heads {
    /// A plain causal LM.
    pub fn lm() -> Self {
        Heads {
            lm_head: true,
            value_head: None,
        }
    }
}

/// Options of [`Qwen3Vl::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Value head to load. `None`: auto-detect `score.weight` (+ `score.bias`).
    pub value_head: Option<ValueHeadConfig>,
}

/// What one forward produced besides logits.
#[derive(Debug)]
pub struct ModelOutput {
    /// Final-normed hidden states `[B, S, D]`.
    pub hidden: Tensor,
    /// Router logits `[B*S, E]` per MoE layer (empty for dense models).
    pub router_logits: Vec<Tensor>,
    /// Positions used `[3, B, S]`.
    pub position_ids: Tensor,
}

/// Named intermediate tensors recorded by [`Qwen3Vl::forward_traced`]
/// (`vision.patch_embed`, `vision.block0`, `text.inputs_embeds`, `text.layer0`, ...).
pub type Trace = Vec<(String, Tensor)>;

/// Qwen3-VL / Qwen3-VL-MoE with an optional LM head and an optional value head.
pub struct Qwen3Vl {
    pub config: Qwen3VlConfig,
    vs: VarStore,
    pub visual: VisionModel,
    pub language_model: TextModel,
    /// `lm_head.weight [V, D]` when untied.
    lm_head: Option<Tensor>,
    has_lm_head: bool,
    value_head: Option<ValueHead>,
}

impl std::fmt::Debug for Qwen3Vl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3Vl")
            .field("model_type", &self.config.model_type)
            .field("heads", &self.heads())
            .field("num_params", &self.num_parameters())
            .finish()
    }
}

impl Qwen3Vl {
    /// Builds a model from a config with random init (N(0, 0.02²) weights, unit norms, zero
    /// biases) drawn from a private RNG seeded by `seed` (reproducible under threads).
    pub fn new_random(
        config: &Qwen3VlConfig,
        heads: &Heads,
        device: Device,
        kind: Kind,
        seed: u64,
    ) -> Result<Self> {
        let m = Self::build(config, heads, device, kind);
        layers::randomize(&m.named_parameters(), seed, |_| true)?;
        Ok(m)
    }

    /// Builds the modules with zero weight matrices, unit norm gains and zero biases.
    pub(crate) fn build(config: &Qwen3VlConfig, heads: &Heads, device: Device, kind: Kind) -> Self {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let model = &root / "model";
        let visual = VisionModel::new(&model / "visual", &config.vision_config);
        let language_model = TextModel::new(&model / "language_model", &config.text_config);
        let t = &config.text_config;
        let lm_head = (heads.lm_head && !config.tie_word_embeddings).then(|| {
            layers::normal(
                &(&root / "lm_head"),
                "weight",
                &[t.vocab_size, t.hidden_size],
            )
        });
        let value_head = heads
            .value_head
            .as_ref()
            .map(|c| ValueHead::new(root.clone(), t.hidden_size, c));
        drop(root);
        let mut config = config.clone();
        config.value_head = heads.value_head.clone();
        Qwen3Vl {
            config,
            vs,
            visual,
            language_model,
            lm_head,
            has_lm_head: heads.lm_head,
            value_head,
        }
    }

    /// Loads `dir` (config.json + safetensors, single or sharded) onto `device` as `kind`;
    /// heads are detected from the checkpoint (`lm_head.weight`, `score.*`).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_with(dir, device, kind, &LoadOptions::default())
    }

    /// [`Qwen3Vl::load`] with an explicit value-head layout.
    pub fn load_with(dir: &Path, device: Device, kind: Kind, opts: &LoadOptions) -> Result<Self> {
        let config = Qwen3VlConfig::from_dir(dir)?;
        let ckpt = weights::Checkpoint::open(dir)?;
        let value_head = match (&opts.value_head, &config.value_head) {
            (Some(c), _) | (None, Some(c)) => Some(c.clone()),
            (None, None) => ckpt.contains("score.weight").then(|| ValueHeadConfig {
                name: "score".into(),
                bias: ckpt.contains("score.bias"),
            }),
        };
        let heads = Heads {
            lm_head: config.tie_word_embeddings || ckpt.contains("lm_head.weight"),
            value_head,
        };
        let model = Self::build(&config, &heads, device, kind);
        // Tied checkpoints sometimes still carry lm_head.weight; it is a copy of embed_tokens.
        let ignore: &[&str] = if config.tie_word_embeddings {
            &["lm_head.weight"]
        } else {
            &[]
        };
        weights::load_strict(&ckpt, &model.named_parameters(), ignore)?;
        Ok(model)
    }

    /// Writes `config.json` and the weights (HF layout, sharded above 5 GB) to `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with(dir, weights::DEFAULT_MAX_SHARD_BYTES)
    }

    /// [`Qwen3Vl::save`] with an explicit shard size.
    pub fn save_with(&self, dir: &Path, max_shard_bytes: u64) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors: Vec<(String, Tensor)> = self.named_parameters().into_iter().collect();
        let _g = tch::no_grad_guard();
        let tensors: Vec<(String, Tensor)> =
            tensors.into_iter().map(|(n, t)| (n, t.detach())).collect();
        weights::save_tensors(dir, &tensors, max_shard_bytes)?;
        // The config's dtype names what was actually written.
        let mut config = self.config.clone();
        config.dtype = match self.language_model.embed_tokens.kind() {
            Kind::BFloat16 => Some("bfloat16".into()),
            Kind::Half => Some("float16".into()),
            Kind::Float => Some("float32".into()),
            _ => config.dtype,
        };
        config.save(dir)
    }

    /// The parameters by checkpoint key.
    pub fn named_parameters(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .variables()
            .values()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// The VarStore holding every parameter (for optimisers and weight sync).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Mutable VarStore (e.g. `copy` weights from another replica, freeze, change kind).
    pub fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    /// The heads this model has.
    pub fn heads(&self) -> Heads {
        Heads {
            lm_head: self.has_lm_head,
            value_head: self.value_head.as_ref().map(|h| h.config.clone()),
        }
    }

    /// Device of the parameters.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Chooses the attention implementation of every text and vision layer (default SDPA).
    pub fn set_attn_impl(&mut self, imp: layers::AttnImpl) {
        for l in &mut self.language_model.layers {
            l.self_attn.attn_impl = imp;
        }
        for b in &mut self.visual.blocks {
            b.attn_impl = imp;
        }
    }

    /// A new empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.language_model.layers.len())
    }

    /// Logits `[B, S, V]` (fp32 if the model is fp32, else the model kind).
    pub fn forward(&self, inputs: &ModelInputs, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let out = self.forward_hidden(inputs, cache, None)?;
        self.logits(&out.hidden)
    }

    /// LM head over final-normed hidden states `[.., D]` → `[.., V]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if !self.has_lm_head {
            return Err(ModelError::input(
                "model",
                "this checkpoint has no LM head (lm_head.weight)",
            ));
        }
        let w = self
            .lm_head
            .as_ref()
            .unwrap_or(&self.language_model.embed_tokens);
        Ok(hidden.f_linear::<Tensor>(w, None)?)
    }

    /// Values `[B, S]` of the value head at every position.
    pub fn values(&self, inputs: &ModelInputs) -> Result<Tensor> {
        let head = self
            .value_head
            .as_ref()
            .ok_or_else(|| ModelError::input("model", "this model has no value head"))?;
        let out = self.forward_hidden(inputs, None, None)?;
        Ok(head.forward(&out.hidden))
    }

    /// Value head over final-normed hidden states `[B, S, D]` → `[B, S]`.
    pub fn value_head_forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self
            .value_head
            .as_ref()
            .ok_or_else(|| ModelError::input("model", "this model has no value head"))?;
        Ok(head.forward(hidden))
    }

    /// Forward recording named intermediates into `trace`.
    pub fn forward_traced(&self, inputs: &ModelInputs, trace: &mut Trace) -> Result<ModelOutput> {
        self.forward_hidden(inputs, None, Some(trace))
    }

    /// Backbone forward: final-normed hidden states, router logits and positions.
    pub fn forward_hidden(
        &self,
        inputs: &ModelInputs,
        mut cache: Option<&mut KvCache>,
        mut trace: Option<&mut Trace>,
    ) -> Result<ModelOutput> {
        let cfg = &self.config;
        let dev = self.device();
        let ids = &inputs.input_ids;
        let (b, s) = ids.size2().map_err(|_| {
            ModelError::input(
                "input_ids",
                format!("expected [B, S], got {:?}", ids.size()),
            )
        })?;
        if ids.kind() != Kind::Int64 {
            return Err(ModelError::input(
                "input_ids",
                format!("expected Int64, got {:?}", ids.kind()),
            ));
        }
        if inputs.attention_mask.size() != [b, s] {
            return Err(ModelError::input(
                "attention_mask",
                format!(
                    "shape {:?} differs from input_ids [{b}, {s}]",
                    inputs.attention_mask.size()
                ),
            ));
        }
        let vocab = cfg.text_config.vocab_size;
        if s > 0 {
            let (lo, hi) = (i64::try_from(ids.f_min()?)?, i64::try_from(ids.f_max()?)?);
            if lo < 0 || hi >= vocab {
                return Err(ModelError::input(
                    "input_ids",
                    format!("token ids must be in [0, {vocab}), got range [{lo}, {hi}]"),
                ));
            }
        }
        let prior = cache.as_deref().map_or(0, KvCache::len);
        if let Some(c) = cache.as_deref() {
            if c.num_layers() != self.language_model.layers.len() {
                return Err(ModelError::input(
                    "cache",
                    "built for a model with another layer count",
                ));
            }
            if prior > 0 && c.batch_size() != Some(b) {
                return Err(ModelError::input(
                    "cache",
                    format!("holds batch size {:?}, inputs have {b}", c.batch_size()),
                ));
            }
        }
        let ids = ids.f_to_device(dev)?;
        let mask = inputs
            .attention_mask
            .f_to_device(dev)?
            .f_to_kind(Kind::Int64)?;
        let record = |trace: &mut Option<&mut Trace>, name: String, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name, t.shallow_clone()));
            }
        };

        // 1. Token embeddings, with image and video features scattered in.
        let mut h = self.language_model.embed(&ids); // (B, S, D)
        let kind = h.kind();
        let mut visual: Vec<(Tensor, Vec<Tensor>)> = Vec::new(); // (token mask, deepstack)
        let merge = cfg.vision_config.spatial_merge_size;
        for (px, grid, token, name) in [
            (
                &inputs.pixel_values,
                &inputs.image_grid_thw,
                cfg.image_token_id,
                "pixel_values",
            ),
            (
                &inputs.pixel_values_videos,
                &inputs.video_grid_thw,
                cfg.video_token_id,
                "pixel_values_videos",
            ),
        ] {
            let (Some(px), Some(grid)) = (px, grid) else {
                if px.is_some() != grid.is_some() {
                    return Err(ModelError::input(
                        name,
                        "pixel values and grid_thw must be given together",
                    ));
                }
                continue;
            };
            let grids = Grids::from_tensor(grid, name, merge)?;
            let mut vtrace = Vec::new();
            let out = self
                .visual
                .forward(px, &grids, trace.is_some().then_some(&mut vtrace))?;
            for (n, t) in vtrace {
                record(&mut trace, format!("vision.{n}"), &t);
            }
            let tok_mask = ids.f_eq(token)?; // (B, S)
            let n_tok = i64::try_from(tok_mask.f_sum(Kind::Int64)?)?;
            let n_feat = out.embeds.size()[0];
            if n_tok != n_feat {
                return Err(ModelError::input(
                    "input_ids",
                    format!(
                        "{n_tok} tokens of id {token} but {name} yields {n_feat} merged features"
                    ),
                ));
            }
            let m3 = tok_mask.f_unsqueeze(-1)?.f_expand_as(&h)?;
            h = h.f_masked_scatter(&m3, &out.embeds.f_to_kind(kind)?)?;
            visual.push((tok_mask, out.deepstack));
        }
        record(&mut trace, "text.inputs_embeds".into(), &h);

        // 2. Deepstack features in joint (row-major) order of all visual positions.
        let (visual_rows, deepstack) = joint_deepstack(&visual, kind)?;

        // 3. Positions (3, B, S) and the key mask of everything attended to.
        let position_ids = match &inputs.position_ids {
            Some(p) => explicit_positions(p, b, s)?.f_to_device(dev)?,
            None if prior > 0 => {
                let c = cache.as_deref().expect("prior > 0 implies a cache");
                decode_positions(&mask, c.next_positions())?.f_to_device(dev)?
            }
            None => {
                let tokens = RopeTokens {
                    image_token_id: cfg.image_token_id,
                    video_token_id: cfg.video_token_id,
                    spatial_merge_size: merge,
                };
                get_rope_index(
                    &ids,
                    &mask,
                    inputs.image_grid_thw.as_ref(),
                    inputs.video_grid_thw.as_ref(),
                    tokens,
                )?
                .0
            }
        };
        let key_mask = match cache.as_deref_mut() {
            Some(c) => {
                let km = match &c.key_mask {
                    Some(prev) => Tensor::f_cat(&[prev, &mask], 1)?,
                    None => mask.shallow_clone(),
                };
                c.key_mask = Some(km.shallow_clone());
                c.next_position = next_positions(&position_ids, &mask, prior, c.next_positions())?;
                km
            }
            None => mask.shallow_clone(),
        };

        // 4. Decoder, deepstack added after layer i < #deepstack at the visual positions.
        let inject = |i: usize, x: Tensor| -> Result<Tensor> {
            match (&visual_rows, deepstack.get(i)) {
                (Some(rows), Some(ds)) => {
                    let d = x.size()[2];
                    Ok(x.f_reshape([-1, d])?
                        .f_index_add(0, rows, ds)?
                        .f_view([b, s, d])?)
                }
                _ => Ok(x),
            }
        };
        let mut ttrace = Vec::new();
        let out = self.language_model.forward(
            h,
            &position_ids,
            &key_mask,
            cache,
            &inject,
            trace.is_some().then_some(&mut ttrace),
        )?;
        for (n, t) in ttrace {
            record(&mut trace, format!("text.{n}"), &t);
        }
        Ok(ModelOutput {
            hidden: out.hidden,
            router_logits: out.router_logits,
            position_ids,
        })
    }
}

/// Flat row indices of all visual tokens (`[n_vis]`, row-major over `[B, S]`) and, per deepstack
/// level, the features of images and videos interleaved in that order (`[n_vis, D]`).
fn joint_deepstack(
    visual: &[(Tensor, Vec<Tensor>)],
    kind: Kind,
) -> Result<(Option<Tensor>, Vec<Tensor>)> {
    match visual {
        [] => Ok((None, Vec::new())),
        [(mask, ds)] => Ok((
            Some(mask.f_flatten(0, -1)?.f_nonzero()?.f_squeeze_dim(-1)?),
            ds.iter()
                .map(|t| t.f_to_kind(kind))
                .collect::<std::result::Result<_, _>>()?,
        )),
        [(img, ids), (vid, vds)] => {
            let joint = img.f_logical_or(vid)?.f_flatten(0, -1)?;
            let rows = joint.f_nonzero()?.f_squeeze_dim(-1)?;
            let img_rows = img
                .f_flatten(0, -1)?
                .f_index_select(0, &rows)?
                .f_nonzero()?
                .f_squeeze_dim(-1)?;
            let vid_rows = vid
                .f_flatten(0, -1)?
                .f_index_select(0, &rows)?
                .f_nonzero()?
                .f_squeeze_dim(-1)?;
            let n = rows.size()[0];
            let levels = ids.len().min(vds.len());
            let mut out = Vec::with_capacity(levels);
            for l in 0..levels {
                let d = ids[l].size()[1];
                let z = Tensor::f_zeros([n, d], (kind, ids[l].device()))?;
                let z = z.f_index_copy(0, &img_rows, &ids[l].f_to_kind(kind)?)?;
                out.push(z.f_index_copy(0, &vid_rows, &vds[l].f_to_kind(kind)?)?);
            }
            Ok((Some(rows), out))
        }
        _ => unreachable!("at most images and videos"),
    }
}

/// `[3, B, S]` or `[B, S]` explicit positions → `[3, B, S]` Int64.
fn explicit_positions(p: &Tensor, b: i64, s: i64) -> Result<Tensor> {
    let p = p.f_to_kind(Kind::Int64)?;
    match p.size().as_slice() {
        [3, pb, ps] if (*pb, *ps) == (b, s) => Ok(p),
        [pb, ps] if (*pb, *ps) == (b, s) => Ok(p
            .f_unsqueeze(0)?
            .f_expand([3, b, s], false)?
            .f_contiguous()?),
        other => Err(ModelError::input(
            "position_ids",
            format!("expected [3, {b}, {s}] or [{b}, {s}], got {other:?}"),
        )),
    }
}

/// Positions of new tokens after a prefill: each valid new token of row r gets the row's next
/// position, then the next one; padded new tokens get the last used position (masked anyway).
fn decode_positions(mask: &Tensor, next: &[i64]) -> Result<Tensor> {
    let (m, b, s) = rope::host_i64_2d(mask, "attention_mask")?;
    if next.len() != b {
        return Err(ModelError::input(
            "cache",
            format!("holds {} rows, inputs have {b}", next.len()),
        ));
    }
    let mut pos = vec![0i64; b * s];
    for r in 0..b {
        let mut p = next[r];
        for j in 0..s {
            pos[r * s + j] = if m[r * s + j] != 0 { p } else { p - 1 };
            p += i64::from(m[r * s + j] != 0);
        }
    }
    let t = Tensor::from_slice(&pos).view([1, b as i64, s as i64]);
    Ok(t.f_expand([3, b as i64, s as i64], false)?.f_contiguous()?)
}

/// Next position per row after the new tokens: max over valid new positions + 1 (or the previous
/// next position if the row had no valid new token).
fn next_positions(positions: &Tensor, mask: &Tensor, prior: i64, prev: &[i64]) -> Result<Vec<i64>> {
    let (m, b, s) = rope::host_i64_2d(mask, "attention_mask")?;
    let p = Vec::<i64>::try_from(
        &positions
            .f_to_device(Device::Cpu)?
            .f_amax([0].as_slice(), false)?
            .f_flatten(0, -1)?,
    )?;
    Ok((0..b)
        .map(|r| {
            let base = if prior > 0 {
                prev.get(r).copied().unwrap_or(0)
            } else {
                0
            };
            (0..s)
                .filter(|&j| m[r * s + j] != 0)
                .map(|j| p[r * s + j] + 1)
                .fold(base, i64::max)
        })
        .collect())
}
