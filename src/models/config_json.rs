//! Field-by-field reading of HF `config.json` objects for [`config`](super::config): required
//! and optional fields with typed errors naming `file` and `section.field`, both rope dialects,
//! and the rule that every key is either understood or known to be irrelevant.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::config::{MoeConfig, TextConfig, VisionConfig};
use super::error::{ModelError, Result};

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

/// Reads the fields of one JSON object, remembering which keys were consumed.
pub(crate) struct Fields<'a> {
    file: &'a Path,
    prefix: &'static str,
    map: &'a Map<String, Value>,
    seen: BTreeSet<String>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(file: &'a Path, prefix: &'static str, v: &'a Value) -> Result<Self> {
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

    pub(crate) fn err(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Config {
            file: self.file.to_path_buf(),
            field: format!("{}{key}", self.prefix),
            reason: reason.into(),
        }
    }

    pub(crate) fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.seen.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn opt_i64(&mut self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected an integer, got {v}"))),
        }
    }

    pub(crate) fn i64(&mut self, key: &str) -> Result<i64> {
        self.opt_i64(key)?
            .ok_or_else(|| self.err(key, "required field is missing"))
    }

    pub(crate) fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    pub(crate) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true/false, got {v}"))),
        }
    }

    pub(crate) fn opt_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }

    pub(crate) fn opt_i64_list(&mut self, key: &str) -> Result<Option<Vec<i64>>> {
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

    pub(crate) fn raw(&mut self, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }

    /// Errors on the first key that was neither read nor listed as known-but-irrelevant.
    pub(crate) fn finish(self, extra_known: &[&str]) -> Result<()> {
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

pub(crate) fn positive(f: &Fields<'_>, key: &str, v: i64) -> Result<i64> {
    if v <= 0 {
        return Err(f.err(key, format!("must be > 0, got {v}")));
    }
    Ok(v)
}

pub(crate) fn parse_text(
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

pub(crate) fn parse_vision(v: &Value, file: &Path, text_hidden: i64) -> Result<VisionConfig> {
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
