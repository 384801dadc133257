//! `prism run CONFIG`: phase two of a run. Prepares the data (`run_dir/data`) and the initial
//! policy (`run_dir/init` for a tiny one), writes `config.resolved.toml`, then runs the stages in
//! order, each stage's output checkpoint being the next one's input, and prints a summary line
//! per stage.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Result, StageContext, StageError, StageSummary, eval, sft, warmup};
use crate::config::{RunConfig, StageConfig, TinyPolicy};
use crate::data::sharegpt::{self, ShareGptRecord};
use crate::data::synth::demo::user_prompt;
use crate::data::synth::{
    PublicNoise, SYSTEM_INSTRUCTION, SynthConfig, generate_items, teacher_demo_for, write_dataset,
};
use crate::models::config::{Qwen3VlConfig, in_memory};
use crate::models::image_processor::ImageProcessorConfig;
use crate::models::tokenizer_train::{TokenizerTrainOptions, train_demo_tokenizer};
use crate::models::{Heads, Qwen3Vl};

/// Arguments of `prism run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The run config (TOML).
    pub config: PathBuf,
    /// Override a key: `--set stages.0.lr=1e-4` (dotted path; numbers index arrays).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (overrides `run.out_dir`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Entry point of `prism run`.
pub fn run(args: &RunArgs) -> Result<Vec<StageSummary>> {
    let mut overrides = args.set.clone();
    if let Some(out) = &args.out {
        overrides.push(format!(
            "run.out_dir={}",
            toml::Value::String(out.display().to_string())
        ));
    }
    let cfg = RunConfig::load(&args.config, &overrides)?;
    if let Some(addr) = cfg.metrics_addr() {
        // a busy port must not stop a training run: the JSONL log has every step anyway
        match crate::telemetry::install_prometheus(addr) {
            Ok(()) => tracing::info!("Prometheus metrics on http://{addr}/metrics"),
            Err(e) => tracing::warn!("{e}; continuing without the exporter"),
        }
    }
    let summaries = run_pipeline(&cfg)?;
    for s in &summaries {
        println!("{s}");
    }
    Ok(summaries)
}

/// The data files the stages read.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedData {
    /// ShareGPT SFT train file.
    pub train: PathBuf,
    /// ShareGPT held-out file.
    pub eval: Option<PathBuf>,
    /// RL parquet of held-out prompts (the eval stage's default data).
    pub rl_eval: Option<PathBuf>,
    /// RL parquet of training prompts with teacher columns (align and rlvr's default data).
    pub rl_train: Option<PathBuf>,
    /// Warm-up pairs JSONL, teacher vs public segments (the warmup stage's default data).
    pub warmup: Option<PathBuf>,
}

/// Generates the synthetic data into `run_dir/data` or points at the configured files.
pub fn prepare_data(cfg: &RunConfig, run_dir: &Path) -> Result<PreparedData> {
    let Some(s) = &cfg.data.synth else {
        let train = cfg.data.train.clone().ok_or_else(|| StageError::Invalid {
            stage: "data".into(),
            message: "no train file".into(),
        })?;
        return Ok(PreparedData {
            train,
            eval: cfg.data.eval.clone(),
            rl_eval: None,
            rl_train: None,
            warmup: None,
        });
    };
    let dir = run_dir.join("data");
    let synth = SynthConfig {
        train: s.train,
        eval: s.eval,
        seed: s.seed,
        difficulties: s.difficulties.clone(),
        noise: PublicNoise {
            perception_error_rate: s.perception_error_rate,
            reasoning_error_rate: s.reasoning_error_rate,
        },
    };
    write_dataset(&dir, &synth)?;
    let train = dir.join(format!("sft_{}.jsonl", s.sft_source));
    let eval = if s.eval > 0 {
        // held-out SFT file: teacher demonstrations of the eval items (images already written)
        let (_, eval_items) = generate_items(&synth)?;
        let records = eval_items
            .iter()
            .map(|item| {
                Ok(ShareGptRecord::single_turn(
                    SYSTEM_INSTRUCTION,
                    &user_prompt(&item.question_text()),
                    &teacher_demo_for(item)?.response(),
                    &item.image_path(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join("sft_eval.jsonl");
        sharegpt::write(&path, &records)?;
        Some(path)
    } else {
        None
    };
    let rl_eval = (s.eval > 0).then(|| dir.join("rl_eval.parquet"));
    Ok(PreparedData {
        train,
        eval,
        rl_eval,
        rl_train: Some(dir.join("rl_train.parquet")),
        warmup: Some(dir.join("warmup_pairs.jsonl")),
    })
}

/// Every message text of a ShareGPT file (the tokenizer's training corpus).
fn corpus_of(path: &Path, out: &mut Vec<String>) -> Result<()> {
    let loaded = sharegpt::read(path, Default::default())?;
    for r in loaded.records {
        out.extend(r.messages.into_iter().map(|m| m.content));
    }
    Ok(())
}

/// Builds the tiny random policy into `dir`: a tokenizer trained on the data's corpus (with
/// Qwen3-VL's special tokens), the processor files, and a random Qwen3-VL with those ids.
pub fn build_tiny_policy(
    tiny: &TinyPolicy,
    data: &PreparedData,
    dir: &Path,
    seed: u64,
) -> Result<PathBuf> {
    let mut corpus = Vec::new();
    corpus_of(&data.train, &mut corpus)?;
    if let Some(e) = &data.eval {
        corpus_of(e, &mut corpus)?;
    }
    let image_cfg = ImageProcessorConfig {
        min_pixels: tiny.image_min_pixels,
        max_pixels: tiny.image_max_pixels,
        ..Default::default()
    };
    let opts = TokenizerTrainOptions {
        vocab_size: tiny.tokenizer_vocab_size,
        ..Default::default()
    };
    let tok = train_demo_tokenizer(&corpus, dir, &opts, &image_cfg)?;
    let sp = *tok.special();
    let h = tiny.head_dim / 2;
    // M-RoPE sections (T, H, W) summing to head_dim/2, in Qwen3-VL's 24:20:20 proportion
    let hw = h * 5 / 16;
    let mrope = [h - 2 * hw, hw, hw];
    let config = json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": tok.vocab_size(),
            "hidden_size": tiny.hidden_size,
            "intermediate_size": tiny.intermediate_size,
            "num_hidden_layers": tiny.num_hidden_layers,
            "num_attention_heads": tiny.num_attention_heads,
            "num_key_value_heads": tiny.num_key_value_heads,
            "head_dim": tiny.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5_000_000.0,
            "rope_scaling": {
                "rope_type": "default",
                "mrope_section": mrope,
                "mrope_interleaved": true
            },
            "attention_bias": false,
            "bos_token_id": sp.bos,
            "eos_token_id": sp.eos,
            "pad_token_id": sp.pad,
            "tie_word_embeddings": true
        },
        "vision_config": {
            "model_type": "qwen3_vl",
            "depth": tiny.vision_depth,
            "hidden_size": tiny.vision_hidden_size,
            "intermediate_size": tiny.vision_intermediate_size,
            "num_heads": tiny.vision_num_heads,
            "hidden_act": "gelu_pytorch_tanh",
            "in_channels": 3,
            "patch_size": image_cfg.patch_size,
            "temporal_patch_size": image_cfg.temporal_patch_size,
            "spatial_merge_size": image_cfg.merge_size,
            "out_hidden_size": tiny.hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0]
        },
        "image_token_id": sp.image_pad,
        "video_token_id": sp.video_pad,
        "vision_start_token_id": sp.vision_start,
        "vision_end_token_id": sp.vision_end,
        "tie_word_embeddings": true,
        "torch_dtype": "float32"
    });
    let config = Qwen3VlConfig::from_json(&config, &in_memory())?;
    let model = Qwen3Vl::new_random(
        &config,
        &Heads::lm(),
        tch::Device::Cpu,
        tch::Kind::Float,
        seed,
    )?;
    model.save(dir)?;
    Ok(dir.to_path_buf())
}

/// Runs a validated config: data, policy, stages. Returns one summary per stage.
pub fn run_pipeline(cfg: &RunConfig) -> Result<Vec<StageSummary>> {
    if let tch::Device::Cuda(i) = cfg.device() {
        let n = tch::Cuda::device_count();
        if i as i64 >= n {
            return Err(StageError::Invalid {
                stage: "run".into(),
                message: format!(
                    "run.device = {:?} but this machine has {n} CUDA device(s) visible to libtorch",
                    cfg.run.device
                ),
            });
        }
    }
    let run_dir = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| StageError::io(&run_dir, e))?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let resolved = run_dir.join("config.resolved.toml");
    let text = cfg
        .to_toml()
        .map_err(|e| StageError::io(&resolved, std::io::Error::other(e.to_string())))?;
    std::fs::write(&resolved, text).map_err(|e| StageError::io(&resolved, e))?;

    let data = prepare_data(cfg, &run_dir)?;
    let mut input = match (&cfg.policy.path, &cfg.policy.tiny) {
        (Some(p), _) => p.clone(),
        (None, Some(t)) => build_tiny_policy(t, &data, &run_dir.join("init"), cfg.run.seed)?,
        (None, None) => {
            return Err(StageError::Invalid {
                stage: "policy".into(),
                message: "no policy given".into(),
            });
        }
    };
    let mut out: Vec<StageSummary> = Vec::new();
    let mut experts: Option<PathBuf> = None;
    for (i, st) in cfg.stages.iter().enumerate() {
        let ctx = StageContext {
            run_dir: run_dir.clone(),
            name: cfg.stage_name(i),
            device: cfg.device(),
            kind: cfg.kind(),
            seed: cfg.run.seed,
            train_file: Some(data.train.clone()),
            eval_file: data.eval.clone(),
            rl_train_file: data.rl_train.clone(),
            rl_eval_file: data.rl_eval.clone(),
            warmup_file: data.warmup.clone(),
            experts: experts.clone(),
        };
        let summary = match st {
            StageConfig::Sft(s) => sft::run_sft(s, &ctx, &input)?,
            StageConfig::Warmup(w) => warmup::run_warmup(w, &ctx, &input)?,
            StageConfig::Eval(e) => eval::run_eval_stage(e, &ctx, &input, data.rl_eval.as_deref())?,
            other => {
                return Err(StageError::Invalid {
                    stage: ctx.name,
                    message: format!("stage kind {:?} is not built yet", other.kind()),
                });
            }
        };
        tracing::info!("{summary}");
        input = summary.output.clone();
        if summary.experts.is_some() {
            experts = summary.experts.clone();
        }
        out.push(summary);
    }
    Ok(out)
}
