//! `prism run CONFIG`: phase two of a run. Prepares the data (`run_dir/data`) and the initial
//! policy (`run_dir/init` for a tiny one), writes `config.resolved.toml`, then runs the stages in
//! order, each stage's output checkpoint being the next one's input, and prints a summary line
//! per stage.
//!
//! `prism run --resume RUN_DIR` continues a killed run ([`super::resume`] has the rules): the
//! data and the init policy are reused when their markers match, finished stages (with a
//! `DONE.json`) are skipped, and the stage in progress continues from its newest complete
//! checkpoint.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{
    Result, StageContext, StageError, StageSummary, checkpoint, eval, resume, sft, warmup,
};
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
    /// The run config (TOML). With `--resume`, optional: the run's own
    /// `config.resolved.toml` is used when it is left out.
    #[arg(required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a key: `--set stages.0.lr=1e-4` (dotted path; numbers index arrays).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (overrides `run.out_dir`).
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR: finished stages are skipped, the stage in progress
    /// continues from its newest complete checkpoint. A configuration that differs from the
    /// run's in a key that matters is refused (the keys are listed).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// With `--resume`: resume even though the configuration differs.
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Prometheus exporter address (overrides `run.metrics_addr`), e.g. `0.0.0.0:9464`, or
    /// `none`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
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
    if let Some(addr) = &args.metrics_addr {
        overrides.push(format!(
            "run.metrics_addr={}",
            toml::Value::String(addr.clone())
        ));
    }
    let (cfg, resuming) = match (&args.resume, &args.config) {
        (Some(run_dir), config) => {
            resume::resume_config(run_dir, config.as_deref(), &overrides, args.force)?
        }
        (None, Some(config)) => (RunConfig::load(config, &overrides)?, false),
        (None, None) => {
            return Err(StageError::Invalid {
                stage: "run".into(),
                message: "give a run config or --resume RUN_DIR".into(),
            });
        }
    };
    if let Some(addr) = cfg.metrics_addr() {
        // a busy port must not stop a training run: the JSONL log has every step anyway
        match crate::telemetry::install_prometheus(addr) {
            Ok(()) => tracing::info!("Prometheus metrics on http://{addr}/metrics"),
            Err(e) => tracing::warn!("{e}; continuing without the exporter"),
        }
    }
    resume::install_shutdown_handler()?;
    let summaries = run_pipeline_with(&cfg, resuming)?;
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
    let key = json!({"synth": s, "version": env!("CARGO_PKG_VERSION")});
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
    let eval_path = dir.join("sft_eval.jsonl");
    // generated once per run folder: a resumed run reuses complete, matching data
    resume::prepare_once(&dir, &key, || {
        write_dataset(&dir, &synth)?;
        if s.eval > 0 {
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
            sharegpt::write(&eval_path, &records)?;
        }
        Ok(())
    })?;
    let train = dir.join(format!("sft_{}.jsonl", s.sft_source));
    let eval = (s.eval > 0).then_some(eval_path);
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

/// Runs a validated config: data, policy, stages, then the report (`results.md` and plots in
/// the run directory). With `[run] seeds`, the whole run is repeated per seed in
/// `out_dir/seed-<s>/` and the report in `out_dir` gives mean ± std over the seeds. Returns one
/// summary per stage (per seed, in order).
pub fn run_pipeline(cfg: &RunConfig) -> Result<Vec<StageSummary>> {
    run_pipeline_with(cfg, false)
}

/// [`run_pipeline`], or with `resume` the continuation of the run in `cfg.run.out_dir`:
/// prepared folders reused, finished stages skipped (their `DONE.json` summaries returned),
/// the stage in progress continued from its newest complete checkpoint (per seed).
pub fn run_pipeline_with(cfg: &RunConfig, resume: bool) -> Result<Vec<StageSummary>> {
    let seeds = cfg.seeds();
    if cfg.run.seeds.is_empty() {
        let out = run_one(cfg, resume)?;
        report_runs(&cfg.run.out_dir, std::slice::from_ref(&cfg.run.out_dir))?;
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut dirs = Vec::with_capacity(seeds.len());
    for seed in seeds {
        let mut c = cfg.clone();
        c.run.seed = seed;
        c.run.seeds.clear();
        c.run.out_dir = cfg.run.out_dir.join(format!("seed-{seed}"));
        tracing::info!("seed {seed}: run directory {}", c.run.out_dir.display());
        out.extend(run_one(&c, resume)?);
        dirs.push(c.run.out_dir);
    }
    std::fs::create_dir_all(&cfg.run.out_dir).map_err(|e| StageError::io(&cfg.run.out_dir, e))?;
    report_runs(&cfg.run.out_dir, &dirs)?;
    Ok(out)
}

/// Writes the report of the runs in `run_dirs` (one per seed) into `out_dir` and prints the
/// results table when the runs evaluated anything.
fn report_runs(out_dir: &Path, run_dirs: &[PathBuf]) -> Result<()> {
    use crate::report::metrics_log::{FILE_NAME, read_metrics};
    let mut seeds = Vec::with_capacity(run_dirs.len());
    for d in run_dirs {
        let path = d.join(FILE_NAME);
        if !path.is_file() {
            return Ok(());
        }
        let read = read_metrics(&path).map_err(|e| report_error(&path, e))?;
        seeds.push(read.records);
    }
    let files =
        crate::report::write_report(out_dir, &seeds).map_err(|e| report_error(out_dir, e))?;
    if let Some((table, md, chart)) = &files.table {
        println!("\n{}", table.to_markdown());
        println!("results: {} (chart {})", md.display(), chart.display());
    }
    for c in &files.curves {
        tracing::info!("plot: {}", c.display());
    }
    Ok(())
}

fn report_error(path: &Path, e: crate::report::ReportError) -> StageError {
    StageError::io(path, std::io::Error::other(e.to_string()))
}

/// One run of the pipeline in `cfg.run.out_dir` with `cfg.run.seed`.
fn run_one(cfg: &RunConfig, resume: bool) -> Result<Vec<StageSummary>> {
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
    let resolved = run_dir.join(resume::RESOLVED_CONFIG);
    let text = cfg
        .to_toml()
        .map_err(|e| StageError::io(&resolved, std::io::Error::other(e.to_string())))?;
    crate::report::atomic_write(&resolved, text.as_bytes()).map_err(|e| StageError::Invalid {
        stage: "run".into(),
        message: e.to_string(),
    })?;
    if !resume {
        // a fresh run into a folder that holds an earlier one forgets it
        resume::reset_metrics(&run_dir)?;
        for i in 0..cfg.stages.len() {
            resume::reset_stage_dir(&run_dir.join(cfg.stage_name(i)))?;
        }
    }

    let data = prepare_data(cfg, &run_dir)?;
    let init = match (&cfg.policy.path, &cfg.policy.tiny) {
        (Some(p), _) => p.clone(),
        (None, Some(t)) => {
            let dir = run_dir.join("init");
            let train_sha = crate::data::io::sha256_file(&data.train)?;
            let key = json!({"tiny": t, "seed": cfg.run.seed, "train_sha256": train_sha});
            resume::prepare_once(&dir, &key, || {
                build_tiny_policy(t, &data, &dir, cfg.run.seed).map(|_| ())
            })?;
            dir
        }
        (None, None) => {
            return Err(StageError::Invalid {
                stage: "policy".into(),
                message: "no policy given".into(),
            });
        }
    };
    let mut out: Vec<StageSummary> = Vec::new();
    for (i, st) in cfg.stages.iter().enumerate() {
        if resume::shutdown_requested() {
            return Err(resume::stopped(
                &cfg.stage_name(i),
                &run_dir,
                "before the stage started",
            ));
        }
        let stage_dir = run_dir.join(cfg.stage_name(i));
        if resume && let Some(done) = resume::read_done(&stage_dir)? {
            if done.output.exists() {
                tracing::info!(stage = %done.name, "finished before the resume: skipped");
                out.push(done);
                continue;
            }
            tracing::warn!(
                stage = %done.name,
                output = %done.output.display(),
                "marked done but its output is missing: running it again"
            );
        }
        let resumed_st = if resume {
            resumable(st, &stage_dir, &cfg.stage_name(i))?
        } else {
            None
        };
        let st = resumed_st.as_ref().unwrap_or(st);
        let from = cfg.input_of(i);
        let input = from.map_or_else(|| init.clone(), |j| out[j].output.clone());
        // experts: from the nearest stage up the input chain that wrote some
        let mut experts = None;
        let mut at = from;
        while let Some(j) = at {
            if out[j].experts.is_some() {
                experts = out[j].experts.clone();
                break;
            }
            at = cfg.input_of(j);
        }
        let ctx = StageContext {
            arm: cfg.arm_of(i),
            device: cfg.device(),
            kind: cfg.kind(),
            experts,
            ..StageContext::new(&run_dir, &cfg.stage_name(i), &data, cfg.run.seed)
        };
        let summary = match st {
            StageConfig::Sft(s) => sft::run_sft(s, &ctx, &input)?,
            StageConfig::Warmup(w) => warmup::run_warmup(w, &ctx, &input)?,
            StageConfig::Eval(e) => {
                eval::run_eval_stage(e, &cfg.eval_label(i), &ctx, &input, data.rl_eval.as_deref())?
            }
            StageConfig::Rlvr(r) => super::rl::run_rlvr(r, &ctx, &input, &cfg.actors)?,
            StageConfig::Align(a) => super::align::run_align(a, &ctx, &input, &cfg.actors)?,
        };
        resume::write_done(&stage_dir, &summary)?;
        tracing::info!("{summary}");
        out.push(summary);
    }
    Ok(out)
}

/// The stage configured to continue from its newest complete checkpoint, or `None` to run it
/// from scratch (no checkpoint yet, or a kind that cannot resume: its earlier outputs are
/// removed).
fn resumable(st: &StageConfig, stage_dir: &Path, name: &str) -> Result<Option<StageConfig>> {
    checkpoint::remove_stale(stage_dir)?;
    let Some((step, ckpt)) = checkpoint::newest_complete(stage_dir)? else {
        resume::reset_stage_dir(stage_dir)?;
        return Ok(None);
    };
    match resume::resume_stage(st, &ckpt) {
        Some(s) => {
            tracing::info!(stage = name, step, checkpoint = %ckpt.display(), "resuming the stage");
            Ok(Some(s))
        }
        None => {
            tracing::warn!(
                stage = name,
                kind = st.kind(),
                "this stage kind cannot resume from a checkpoint yet: restarting it from scratch"
            );
            resume::reset_stage_dir(stage_dir)?;
            Ok(None)
        }
    }
}
