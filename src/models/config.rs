//! HF `config.json` of Qwen3-VL (dense) and Qwen3-VL-MoE, in both dialects.
//!
//! Owns parsing (transformers 4.57 hub dialect: `rope_theta` + `rope_scaling`, `num_experts`,
//! `torch_dtype`; transformers 5 dialect: `rope_parameters`, `num_local_experts`, `dtype`),
//! validation (once, here: the model code never re-checks), and writing back a `config.json` in
//! the hub dialect, which both transformers 4.57 and 5.x load. Field names mirror HF.
//!
//! Unknown keys are an error naming the key and the file, so a typo or an unsupported feature
//! (e.g. a sliding window) is never silently ignored; keys that HF writes but that do not change
//! the computation (`initializer_range`, `use_cache`, ...) are accepted and dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::error::{ModelError, Result};
use super::value_head::ValueHeadConfig;

/// Keys every HF `PretrainedConfig` may serialise that never affect the forward pass.
const GENERIC_KEYS: &[&str] = &[
    "_name_or_path",
    "_attn_implementation_autoset",
    "add_cross_attention",
    "architectures",
    "attention_dropout",
    "bad_words_ids",
    "begin_suppress_tokens",
    "chunk_size_feed_forward",
    "cross_attention_hidden_size",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "id2label",
    "initializer_range",
    "is_decoder",
    "is_encoder_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_router_logits",
    "output_scores",
    "prefix",
    "problem_type",
    "pruned_heads",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tf_legacy_loss",
    "tie_encoder_decoder",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torchscript",
    "transformers_version",
    "typical_p",
    "use_bfloat16",
    "use_cache",
    "classifier_dropout",
    "token_classification_bias",
];

/// Vision tower configuration (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: i64,
    pub hidden_size: i64,
    pub hidden_act: String,
    pub intermediate_size: i64,
    pub num_heads: i64,
    pub in_channels: i64,
    pub patch_size: i64,
    pub spatial_merge_size: i64,
    pub temporal_patch_size: i64,
    pub out_hidden_size: i64,
    pub num_position_embeddings: i64,
    pub deepstack_visual_indexes: Vec<i64>,
}

impl VisionConfig {
    /// Length of one flattened patch row of `pixel_values`: `C * T * P * P` (1536 released).
    pub fn patch_dim(&self) -> i64 {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Side of the learned position-embedding grid (`sqrt(num_position_embeddings)`).
    pub fn pos_grid(&self) -> i64 {
        (self.num_position_embeddings as f64).sqrt().round() as i64
    }
    /// Per-head width `hv / nhv`.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }
}

/// Mixture-of-experts fields of the text config (present iff the model is Qwen3-VL-MoE).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: i64,
    pub num_experts_per_tok: i64,
    pub moe_intermediate_size: i64,
    pub decoder_sparse_step: i64,
    pub mlp_only_layers: Vec<i64>,
    /// Written for HF compatibility; the Qwen3-VL-MoE block always renormalises the top-k weights.
    pub norm_topk_prob: bool,
    pub router_aux_loss_coef: f64,
}

/// Text decoder configuration (`text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies per axis (T, H, W); sums to `head_dim / 2`.
    pub mrope_section: Vec<i64>,
    pub mrope_interleaved: bool,
    pub attention_bias: bool,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
    pub pad_token_id: Option<Value>,
    pub moe: Option<MoeConfig>,
}

impl TextConfig {
    /// Whether decoder layer `i` uses the sparse MoE block (HF rule, QWEN3_VL.md §7).
    pub fn is_sparse_layer(&self, i: i64) -> bool {
        match &self.moe {
            Some(m) => {
                !m.mlp_only_layers.contains(&i)
                    && m.num_experts > 0
                    && (i + 1) % m.decoder_sparse_step.max(1) == 0
            }
            None => false,
        }
    }
}

/// Full Qwen3-VL / Qwen3-VL-MoE configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3VlConfig {
    /// `"qwen3_vl"` or `"qwen3_vl_moe"`.
    pub model_type: String,
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    pub tie_word_embeddings: bool,
    /// `torch_dtype` / `dtype` as written (e.g. `"bfloat16"`), if any.
    pub dtype: Option<String>,
    /// prism extension: `"value_head": {"name", "bias"}` of a checkpoint with a value head.
    pub value_head: Option<ValueHeadConfig>,
}

/// Reads the fields of one JSON object, remembering which keys were consumed.
struct Fields<'a> {
    file: &'a Path,
    prefix: &'static str,
    map: &'a Map<String, Value>,
    seen: BTreeSet<String>,
}

impl<'a> Fields<'a> {
    fn new(file: &'a Path, prefix: &'static str, v: &'a Value) -> Result<Self> {
        let map = v.as_object().ok_or_else(|| ModelError::Config {
            file: file.to_path_buf(),
            field: prefix.trim_end_matches('.').to_string(),
            reason: "expected a JSON object".into(),
        })?;
        Ok(Fields {
            file,
            prefix,
            map,
            seen: BTreeSet::new(),
        })
    }

    fn err(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Config {
            file: self.file.to_path_buf(),
            field: format!("{}{key}", self.prefix),
            reason: reason.into(),
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.seen.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_i64(&mut self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected an integer, got {v}"))),
        }
    }

    fn i64(&mut self, key: &str) -> Result<i64> {
        self.opt_i64(key)?
            .ok_or_else(|| self.err(key, "required field is missing"))
    }

    fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true/false, got {v}"))),
        }
    }

    fn opt_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }

    fn opt_i64_list(&mut self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let arr = v.as_array().ok_or_else(|| {
                    self.err(key, format!("expected a list of integers, got {v}"))
                })?;
                arr.iter()
                    .map(|x| {
                        x.as_i64().ok_or_else(|| {
                            self.err(key, format!("expected a list of integers, got {v}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    }

    fn raw(&mut self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }

    /// Errors on the first key that was neither read nor listed as known-but-irrelevant.
    fn finish(self, extra_known: &[&str]) -> Result<()> {
        for key in self.map.keys() {
            if !self.seen.contains(key)
                && !GENERIC_KEYS.contains(&key.as_str())
                && !extra_known.contains(&key.as_str())
            {
                return Err(self.err(key, "unknown field (not supported by prism's Qwen3-VL)"));
            }
        }
        Ok(())
    }
}

fn positive(f: &Fields<'_>, key: &str, v: i64) -> Result<i64> {
    if v <= 0 {
        return Err(f.err(key, format!("must be > 0, got {v}")));
    }
    Ok(v)
}

impl Qwen3VlConfig {
    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: file.to_path_buf(),
            field: "<json>".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(&v, file)
    }

    /// Parses a config JSON value; `file` is only used in error messages.
    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let mut top = Fields::new(file, "", v)?;
        let model_type = top
            .opt_str("model_type")?
            .ok_or_else(|| top.err("model_type", "required field is missing"))?;
        if model_type != "qwen3_vl" && model_type != "qwen3_vl_moe" {
            return Err(top.err(
                "model_type",
                format!("expected \"qwen3_vl\" or \"qwen3_vl_moe\", got \"{model_type}\""),
            ));
        }
        let is_moe = model_type == "qwen3_vl_moe";
        let text_v = top
            .get("text_config")
            .ok_or_else(|| top.err("text_config", "required field is missing"))?;
        let vision_v = top
            .get("vision_config")
            .ok_or_else(|| top.err("vision_config", "required field is missing"))?;
        let (text_config, text_tie, text_dtype) = parse_text(text_v, file, is_moe)?;
        let vision_config = parse_vision(vision_v, file, text_config.hidden_size)?;
        let image_token_id = top.i64("image_token_id")?;
        let video_token_id = top.i64("video_token_id")?;
        let vision_start_token_id = top.i64("vision_start_token_id")?;
        let vision_end_token_id = top.i64("vision_end_token_id")?;
        // v5 reads the top-level flag, 4.57 read text_config's; the class defaults disagree, so a
        // checkpoint that sets neither is ambiguous (QWEN3_VL.md §8, P6).
        let tie_word_embeddings = match (top.opt_bool("tie_word_embeddings")?, text_tie) {
            (Some(t), _) => t,
            (None, Some(t)) => t,
            (None, None) => {
                return Err(top.err(
                    "tie_word_embeddings",
                    "missing both at top level and in text_config (HF defaults disagree; set it)",
                ));
            }
        };
        let dtype = match top.opt_str("dtype")? {
            Some(d) => Some(d),
            None => top.opt_str("torch_dtype")?.or(text_dtype),
        };
        for (key, id) in [
            ("image_token_id", image_token_id),
            ("video_token_id", video_token_id),
            ("vision_start_token_id", vision_start_token_id),
            ("vision_end_token_id", vision_end_token_id),
        ] {
            if id < 0 || id >= text_config.vocab_size {
                return Err(top.err(
                    key,
                    format!(
                        "{id} is outside the vocabulary [0, {})",
                        text_config.vocab_size
                    ),
                ));
            }
        }
        let value_head = match top.get("value_head") {
            None => None,
            Some(vh) => {
                let name = vh.get("name").and_then(Value::as_str);
                let bias = vh.get("bias").and_then(Value::as_bool);
                let input = vh
                    .get("input")
                    .and_then(Value::as_str)
                    .unwrap_or("final_norm");
                match (name, bias, input) {
                    (Some(name), Some(bias), "final_norm") => Some(ValueHeadConfig {
                        name: name.to_string(),
                        bias,
                    }),
                    _ => {
                        return Err(top.err(
                            "value_head",
                            format!("expected {{\"name\": str, \"bias\": bool, \"input\": \"final_norm\"}}, got {vh}"),
                        ));
                    }
                }
            }
        };
        top.finish(&["pad_token_id", "bos_token_id", "eos_token_id", "num_labels"])?;
        Ok(Qwen3VlConfig {
            model_type,
            vision_config,
            text_config,
            image_token_id,
            video_token_id,
            vision_start_token_id,
            vision_end_token_id,
            tie_word_embeddings,
            dtype,
            value_head,
        })
    }

    /// Whether the text decoder has MoE layers.
    pub fn is_moe(&self) -> bool {
        self.text_config.moe.is_some()
    }

    /// The config as JSON in the 4.57 hub dialect (also read by transformers 5).
    pub fn to_json(&self) -> Value {
        let t = &self.text_config;
        let v = &self.vision_config;
        let moe = t.moe.is_some();
        let mut text = json!({
            "model_type": if moe { "qwen3_vl_moe_text" } else { "qwen3_vl_text" },
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {
                "rope_type": "default",
                "mrope_section": t.mrope_section,
                "mrope_interleaved": t.mrope_interleaved,
            },
            "attention_bias": t.attention_bias,
            "attention_dropout": 0.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
        });
        let obj = text.as_object_mut().expect("json! object");
        for (k, val) in [
            ("bos_token_id", &t.bos_token_id),
            ("eos_token_id", &t.eos_token_id),
            ("pad_token_id", &t.pad_token_id),
        ] {
            if let Some(x) = val {
                obj.insert(k.into(), x.clone());
            }
        }
        if let Some(d) = &self.dtype {
            obj.insert("dtype".into(), json!(d));
        }
        if let Some(m) = &t.moe {
            obj.insert("num_experts".into(), json!(m.num_experts));
            obj.insert("num_experts_per_tok".into(), json!(m.num_experts_per_tok));
            obj.insert(
                "moe_intermediate_size".into(),
                json!(m.moe_intermediate_size),
            );
            obj.insert("decoder_sparse_step".into(), json!(m.decoder_sparse_step));
            obj.insert("mlp_only_layers".into(), json!(m.mlp_only_layers));
            obj.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
            obj.insert("router_aux_loss_coef".into(), json!(m.router_aux_loss_coef));
        }
        let vision = json!({
            "model_type": self.model_type,
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "hidden_act": v.hidden_act,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "out_hidden_size": v.out_hidden_size,
            "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": v.deepstack_visual_indexes,
        });
        let arch = if moe {
            "Qwen3VLMoeForConditionalGeneration"
        } else {
            "Qwen3VLForConditionalGeneration"
        };
        let mut top = json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "text_config": text,
            "vision_config": vision,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        });
        let obj = top.as_object_mut().expect("json! object");
        if let Some(d) = &self.dtype {
            obj.insert("torch_dtype".into(), json!(d));
        }
        if let Some(vh) = &self.value_head {
            obj.insert(
                "value_head".into(),
                json!({"name": vh.name, "bias": vh.bias, "input": "final_norm"}),
            );
        }
        top
    }

    /// Writes `dir/config.json` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("config serialises");
        super::weights::write_atomic(&dir.join("config.json"), text.as_bytes())
    }
}

fn parse_text(
    v: &Value,
    file: &Path,
    is_moe: bool,
) -> Result<(TextConfig, Option<bool>, Option<String>)> {
    let mut f = Fields::new(file, "text_config.", v)?;
    let hidden_size = f.i64("hidden_size")?;
    positive(&f, "hidden_size", hidden_size)?;
    let num_attention_heads = f.i64("num_attention_heads")?;
    positive(&f, "num_attention_heads", num_attention_heads)?;
    let num_key_value_heads = f
        .opt_i64("num_key_value_heads")?
        .unwrap_or(num_attention_heads);
    positive(&f, "num_key_value_heads", num_key_value_heads)?;
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(f.err(
            "num_key_value_heads",
            format!(
                "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
            ),
        ));
    }
    let head_dim = f
        .opt_i64("head_dim")?
        .unwrap_or(hidden_size / num_attention_heads);
    positive(&f, "head_dim", head_dim)?;
    if head_dim % 2 != 0 {
        return Err(f.err(
            "head_dim",
            format!("must be even for rotary, got {head_dim}"),
        ));
    }
    let hidden_act = f.opt_str("hidden_act")?.unwrap_or_else(|| "silu".into());
    if hidden_act != "silu" {
        return Err(f.err(
            "hidden_act",
            format!("only \"silu\" is supported, got \"{hidden_act}\""),
        ));
    }
    // Rope: 4.57 `rope_theta` + `rope_scaling`, v5 `rope_parameters`.
    let (rope_obj, rope_key) = match f.get("rope_parameters") {
        Some(p) => (Some(p), "rope_parameters"),
        None => (f.get("rope_scaling"), "rope_scaling"),
    };
    let mut rope_theta = f.opt_f64("rope_theta")?;
    let mut mrope_section = None;
    let mut mrope_interleaved = None;
    if let Some(r) = rope_obj {
        let obj = r
            .as_object()
            .ok_or_else(|| f.err(rope_key, "expected a JSON object"))?;
        for (k, val) in obj {
            let key = format!("{rope_key}.{k}");
            match k.as_str() {
                "rope_type" | "type" => {
                    let t = val.as_str().unwrap_or("");
                    if t != "default" && t != "mrope" {
                        return Err(f.err(&key, format!("unsupported rope type {val}")));
                    }
                }
                "rope_theta" => {
                    rope_theta = Some(
                        val.as_f64()
                            .ok_or_else(|| f.err(&key, "expected a number"))?,
                    )
                }
                "mrope_section" => {
                    let arr = val
                        .as_array()
                        .and_then(|a| a.iter().map(|x| x.as_i64()).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| f.err(&key, "expected a list of integers"))?;
                    mrope_section = Some(arr);
                }
                "mrope_interleaved" => {
                    mrope_interleaved = Some(
                        val.as_bool()
                            .ok_or_else(|| f.err(&key, "expected true/false"))?,
                    )
                }
                "partial_rotary_factor" => {
                    if val.as_f64() != Some(1.0) {
                        return Err(f.err(&key, "only 1.0 is supported"));
                    }
                }
                _ => return Err(f.err(&key, "unknown field")),
            }
        }
    }
    let rope_theta = rope_theta.ok_or_else(|| {
        f.err(
            "rope_theta",
            "required field is missing (neither rope_theta nor rope_parameters.rope_theta)",
        )
    })?;
    let mrope_section = mrope_section.ok_or_else(|| {
        f.err(
            &format!("{rope_key}.mrope_section"),
            "required field is missing",
        )
    })?;
    if mrope_section.len() != 3 || mrope_section.iter().sum::<i64>() != head_dim / 2 {
        return Err(f.err(
            &format!("{rope_key}.mrope_section"),
            format!(
                "{mrope_section:?} must have 3 entries summing to head_dim/2 = {}",
                head_dim / 2
            ),
        ));
    }
    let mrope_interleaved = mrope_interleaved.unwrap_or(true);
    if !mrope_interleaved {
        return Err(f.err(
            &format!("{rope_key}.mrope_interleaved"),
            "only interleaved M-RoPE (Qwen3-VL) is supported",
        ));
    }
    let moe = if is_moe {
        let num_experts = match f.opt_i64("num_local_experts")? {
            Some(e) => e,
            None => f.i64("num_experts")?,
        };
        positive(&f, "num_experts", num_experts)?;
        let k = f.i64("num_experts_per_tok")?;
        if k <= 0 || k > num_experts {
            return Err(f.err(
                "num_experts_per_tok",
                format!("{k} must be in 1..={num_experts}"),
            ));
        }
        let moe_intermediate_size = f.i64("moe_intermediate_size")?;
        positive(&f, "moe_intermediate_size", moe_intermediate_size)?;
        Some(MoeConfig {
            num_experts,
            num_experts_per_tok: k,
            moe_intermediate_size,
            decoder_sparse_step: f.opt_i64("decoder_sparse_step")?.unwrap_or(1).max(1),
            mlp_only_layers: f.opt_i64_list("mlp_only_layers")?.unwrap_or_default(),
            norm_topk_prob: f.opt_bool("norm_topk_prob")?.unwrap_or(true),
            router_aux_loss_coef: f.opt_f64("router_aux_loss_coef")?.unwrap_or(0.001),
        })
    } else {
        None
    };
    let vocab_size = f.i64("vocab_size")?;
    positive(&f, "vocab_size", vocab_size)?;
    let cfg = TextConfig {
        vocab_size,
        hidden_size,
        intermediate_size: f.i64("intermediate_size")?,
        num_hidden_layers: f.i64("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        hidden_act,
        max_position_embeddings: f.opt_i64("max_position_embeddings")?.unwrap_or(128_000),
        rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta,
        mrope_section,
        mrope_interleaved,
        attention_bias: f.opt_bool("attention_bias")?.unwrap_or(false),
        bos_token_id: f.raw("bos_token_id"),
        eos_token_id: f.raw("eos_token_id"),
        pad_token_id: f.raw("pad_token_id"),
        moe,
    };
    positive(&f, "num_hidden_layers", cfg.num_hidden_layers)?;
    positive(&f, "intermediate_size", cfg.intermediate_size)?;
    if f.get("sliding_window").is_some() || f.opt_bool("use_sliding_window")? == Some(true) {
        return Err(f.err(
            "sliding_window",
            "sliding-window attention is not part of Qwen3-VL",
        ));
    }
    let tie = f.opt_bool("tie_word_embeddings")?;
    let dtype = match f.opt_str("dtype")? {
        Some(d) => Some(d),
        None => f.opt_str("torch_dtype")?,
    };
    f.finish(&["model_type", "rope_type", "shared_expert_intermediate_size"])?;
    if let Some(t) = v.get("model_type").and_then(Value::as_str) {
        let want = if is_moe {
            "qwen3_vl_moe_text"
        } else {
            "qwen3_vl_text"
        };
        if t != want {
            return Err(ModelError::Config {
                file: file.to_path_buf(),
                field: "text_config.model_type".into(),
                reason: format!("expected \"{want}\", got \"{t}\""),
            });
        }
    }
    if v.get("shared_expert_intermediate_size")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0
    {
        return Err(ModelError::Config {
            file: file.to_path_buf(),
            field: "text_config.shared_expert_intermediate_size".into(),
            reason: "shared experts are not part of Qwen3-VL-MoE".into(),
        });
    }
    Ok((cfg, tie, dtype))
}

fn parse_vision(v: &Value, file: &Path, text_hidden: i64) -> Result<VisionConfig> {
    let mut f = Fields::new(file, "vision_config.", v)?;
    let hidden_act = f
        .opt_str("hidden_act")?
        .unwrap_or_else(|| "gelu_pytorch_tanh".into());
    if hidden_act != "gelu_pytorch_tanh" && hidden_act != "gelu" {
        return Err(f.err(
            "hidden_act",
            format!("expected \"gelu_pytorch_tanh\" or \"gelu\", got \"{hidden_act}\""),
        ));
    }
    let cfg = VisionConfig {
        depth: f.i64("depth")?,
        hidden_size: f.i64("hidden_size")?,
        hidden_act,
        intermediate_size: f.i64("intermediate_size")?,
        num_heads: f.i64("num_heads")?,
        in_channels: f.opt_i64("in_channels")?.unwrap_or(3),
        patch_size: f.opt_i64("patch_size")?.unwrap_or(16),
        spatial_merge_size: f.opt_i64("spatial_merge_size")?.unwrap_or(2),
        temporal_patch_size: f.opt_i64("temporal_patch_size")?.unwrap_or(2),
        out_hidden_size: f.i64("out_hidden_size")?,
        num_position_embeddings: f.i64("num_position_embeddings")?,
        deepstack_visual_indexes: f
            .opt_i64_list("deepstack_visual_indexes")?
            .unwrap_or_default(),
    };
    for (k, x) in [
        ("depth", cfg.depth),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_heads", cfg.num_heads),
        ("in_channels", cfg.in_channels),
        ("patch_size", cfg.patch_size),
        ("spatial_merge_size", cfg.spatial_merge_size),
        ("temporal_patch_size", cfg.temporal_patch_size),
        ("num_position_embeddings", cfg.num_position_embeddings),
    ] {
        positive(&f, k, x)?;
    }
    if cfg.hidden_size % cfg.num_heads != 0 || (cfg.hidden_size / cfg.num_heads) % 4 != 0 {
        return Err(f.err(
            "num_heads",
            "hidden_size / num_heads must be an integer divisible by 4 (2-D rotary)",
        ));
    }
    let g = cfg.pos_grid();
    if g * g != cfg.num_position_embeddings {
        return Err(f.err("num_position_embeddings", "must be a perfect square"));
    }
    if cfg.out_hidden_size != text_hidden {
        return Err(f.err(
            "out_hidden_size",
            format!(
                "{} must equal text_config.hidden_size {text_hidden}",
                cfg.out_hidden_size
            ),
        ));
    }
    if let Some(&bad) = cfg
        .deepstack_visual_indexes
        .iter()
        .find(|&&i| i < 0 || i >= cfg.depth)
    {
        return Err(f.err(
            "deepstack_visual_indexes",
            format!("index {bad} outside 0..{}", cfg.depth),
        ));
    }
    let rope_ok = match f.get("rope_parameters") {
        None => true,
        Some(r) => r
            .get("rope_theta")
            .and_then(Value::as_f64)
            .is_none_or(|t| t == 10000.0),
    };
    if !rope_ok {
        return Err(f.err(
            "rope_parameters.rope_theta",
            "only 10000 is supported for vision",
        ));
    }
    f.finish(&["model_type", "dtype", "torch_dtype"])?;
    Ok(cfg)
}

/// The file name used in errors when a config is built in memory.
pub fn in_memory() -> PathBuf {
    PathBuf::from("<in-memory config>")
}
