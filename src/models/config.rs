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

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::config_json::{Fields, parse_text, parse_vision};
use super::error::{ModelError, Result};
use super::value_head::ValueHeadConfig;

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

/// The file name used in errors when a config is built in memory.
pub fn in_memory() -> PathBuf {
    PathBuf::from("<in-memory config>")
}
