//! Checkpoints and step records of an actor-based RL stage ([`RlCheckpointHook`]).
//!
//! A checkpoint folder (`run_dir/<name>/checkpoint-<step>/` or `final/`) has the SFT layout:
//! the policy as an HF checkpoint (`config.json` + safetensors), the processor files of the
//! input, `optimizer.safetensors` (the AdamW moments and step count) and `trainer_state.json`
//! ([`RlTrainerState`]: kind, config, steps done, next prompt cursor, versions); alignment also
//! gets the experts' snapshots (`perception.safetensors`, `reasoning.safetensors`). It is
//! written to `<dir>.partial` and renamed, so a folder that exists is complete. `resume_from`
//! continues from any of them ([`read_trainer_state`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::RlOptions;
use super::learner::{OPTIMIZER_PREFIX, SKIPPED_KEY};
use crate::actors::coordinator::StepRecord;
use crate::actors::messages::{DType, SamplingStats, StageKind, WeightsSnapshot};
use crate::actors::{CheckpointHook, CheckpointReason, StageCheckpoint};
use crate::models::config::Qwen3VlConfig;
use crate::models::weights::{DEFAULT_MAX_SHARD_BYTES, save_tensors};
use crate::report::metrics_log::{MetricsLog, keys};
use crate::stages::sft::{OPTIMIZER_STATE, TRAINER_STATE, copy_processor_files};
use crate::stages::{Result, StageContext, StageError};

/// `trainer_state.json` of an RL stage checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlTrainerState {
    /// `rlvr` or `align`.
    pub kind: String,
    pub stage: String,
    pub arm: String,
    /// The checkpoint the stage started from (also the KL reference).
    pub input: PathBuf,
    /// The RL parquet of the prompts.
    pub data: PathBuf,
    /// Stage steps trained.
    pub steps_done: u64,
    /// Index of the first prompt not trained yet.
    pub next_cursor: usize,
    pub policy_version: u64,
    pub perception_version: Option<u64>,
    pub reasoning_version: Option<u64>,
    /// AdamW updates done.
    pub optimizer_steps: i64,
    /// Steps skipped (non-finite, or nothing left after the DAPO filter).
    pub skipped_steps: u64,
    /// Rows of the parquet left out as longer than `max_prompt_tokens`.
    pub prompts_too_long: Vec<usize>,
    /// Why the checkpoint was written (`Finished`, `Periodic`, `Interrupted`, `Failed(..)`).
    pub reason: String,
    /// The stage options.
    pub config: serde_json::Value,
}

/// Reads `dir/trainer_state.json` of a checkpoint of an RL stage of `kind`.
pub fn read_trainer_state(dir: &Path, kind: StageKind) -> Result<RlTrainerState> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let state: RlTrainerState = serde_json::from_str(&text).map_err(|e| StageError::Record {
        path: path.clone(),
        record: 1,
        message: format!("not the trainer state of an RL stage: {e}"),
    })?;
    if state.kind != kind.as_str() {
        return Err(StageError::Record {
            path,
            record: 1,
            message: format!(
                "written by a `{}` stage, cannot resume a `{}` stage",
                state.kind,
                kind.as_str()
            ),
        });
    }
    Ok(state)
}

fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
    }
}

/// The tensors of a snapshot whose names pass `keep`, renamed by `rename`, as host tensors.
fn snapshot_tensors(
    snap: &WeightsSnapshot,
    keep: impl Fn(&str) -> Option<String>,
) -> std::result::Result<Vec<(String, Tensor)>, String> {
    snap.tensors
        .iter()
        .filter_map(|b| keep(&b.name).map(|n| (n, b)))
        .map(|(n, b)| {
            Tensor::f_from_data_size(&b.data, &b.shape, kind_of(b.dtype))
                .map(|t| (n, t))
                .map_err(|e| format!("snapshot tensor {}: {e}", b.name))
        })
        .collect()
}

/// The metrics-log keys of a step's DAPO dynamic sampling: generation rounds, groups kept
/// (trained), dropped (constant accuracy) and trimmed (past the target), whether the step fell
/// short of `prompts_per_step` (0/1), and the accuracy over everything generated (`accuracy` and
/// `reward_mean` are over the trained samples).
pub fn dynamic_sampling_metrics(d: &SamplingStats) -> [(&'static str, f64); 7] {
    [
        ("gen_batches", f64::from(d.gen_batches)),
        ("kept_groups", d.kept_groups as f64),
        ("dropped_groups", d.dropped_groups as f64),
        ("surplus_groups", d.surplus_groups as f64),
        ("dynamic_sampling_short", f64::from(u8::from(d.short))),
        ("generated_rollouts", d.generated as f64),
        ("gen_accuracy", d.gen_accuracy),
    ]
}

/// Whether a snapshot key is a model weight (not optimizer state or a counter).
fn is_weight(name: &str) -> bool {
    !name.starts_with(OPTIMIZER_PREFIX) && !name.starts_with("learner/")
}

/// The stage's [`CheckpointHook`]: metrics records after every step, periodic checkpoints every
/// `save_every` stage steps, `final/` when the stage finishes, a resumable
/// `checkpoint-<step>/` when it is interrupted or fails after some steps.
pub struct RlCheckpointHook {
    stage_dir: PathBuf,
    stage: String,
    kind: StageKind,
    arm: String,
    input: PathBuf,
    /// Where the processor files and `config.json` come from.
    weights_dir: PathBuf,
    data: PathBuf,
    /// Stage steps done before this run (resume).
    offset: u64,
    save_every: u64,
    total_steps: u64,
    config: serde_json::Value,
    too_long: Vec<usize>,
    log: Mutex<MetricsLog>,
    skipped: AtomicU64,
    bar: Mutex<crate::report::progress::StageProgress>,
}

impl RlCheckpointHook {
    /// A hook for the stage of `ctx` (opens `run_dir/metrics.jsonl` for appending).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &StageContext,
        kind: StageKind,
        opts: &RlOptions,
        input: &Path,
        weights_dir: &Path,
        data: &Path,
        offset: u64,
        too_long: Vec<usize>,
    ) -> Result<Self> {
        let stage_dir = ctx.stage_dir();
        std::fs::create_dir_all(&stage_dir).map_err(|e| StageError::io(&stage_dir, e))?;
        let log = MetricsLog::open_in(&ctx.run_dir).map_err(|e| StageError::Invalid {
            stage: ctx.name.clone(),
            message: e.to_string(),
        })?;
        Ok(RlCheckpointHook {
            stage_dir,
            stage: ctx.name.clone(),
            kind,
            arm: opts.arm.clone(),
            input: input.to_path_buf(),
            weights_dir: weights_dir.to_path_buf(),
            data: data.to_path_buf(),
            offset,
            save_every: opts.save_every,
            total_steps: opts.steps,
            config: opts.stage_config.clone(),
            too_long,
            log: Mutex::new(log),
            skipped: AtomicU64::new(0),
            bar: Mutex::new({
                let mut b = crate::report::progress::global().stage(&ctx.name, opts.steps);
                b.set_step(offset);
                b
            }),
        })
    }

    /// `run_dir/<name>/checkpoint-<step>`.
    pub fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.stage_dir.join(format!("checkpoint-{step}"))
    }

    /// `run_dir/<name>/final`.
    pub fn final_dir(&self) -> PathBuf {
        self.stage_dir.join("final")
    }

    /// Steps skipped so far (as the learner last reported).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Writes one checkpoint folder from the stage's snapshots.
    fn save(&self, dir: &Path, ckpt: &StageCheckpoint) -> std::result::Result<(), String> {
        let policy = ckpt
            .policy
            .as_ref()
            .ok_or("no policy weights were published")?;
        let mut tmp = dir.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let weights = snapshot_tensors(policy, |n| is_weight(n).then(|| n.to_string()))?;
        save_tensors(&tmp, &weights, DEFAULT_MAX_SHARD_BYTES).map_err(|e| e.to_string())?;
        let mut config = Qwen3VlConfig::from_dir(&self.weights_dir).map_err(|e| e.to_string())?;
        config.dtype = match weights.first().map(|(_, t)| t.kind()) {
            Some(Kind::BFloat16) => Some("bfloat16".into()),
            Some(Kind::Half) => Some("float16".into()),
            _ => Some("float32".into()),
        };
        config.save(&tmp).map_err(|e| e.to_string())?;
        copy_processor_files(&self.weights_dir, &tmp).map_err(|e| e.to_string())?;
        let optimizer = snapshot_tensors(policy, |n| {
            n.strip_prefix(OPTIMIZER_PREFIX).map(str::to_string)
        })?;
        let optimizer_steps = optimizer
            .iter()
            .find(|(n, _)| n == crate::algo::adamw::STEP_KEY)
            .and_then(|(_, t)| t.f_int64_value(&[]).ok())
            .unwrap_or(0);
        Tensor::write_safetensors(&optimizer, tmp.join(OPTIMIZER_STATE))
            .map_err(|e| format!("{}: {e}", tmp.join(OPTIMIZER_STATE).display()))?;
        for (name, snap) in [
            ("perception", &ckpt.perception),
            ("reasoning", &ckpt.reasoning),
        ] {
            let path = tmp.join(format!("{name}.safetensors"));
            if let Some(s) = snap {
                let t = snapshot_tensors(s, |n| Some(n.to_string()))?;
                Tensor::write_safetensors(&t, &path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            } else if self.offset > 0 {
                // resumed, and the expert has not stepped since: its state is still the one it
                // was restored from (the resumed checkpoint's file), which must not be lost
                let from = self.weights_dir.join(format!("{name}.safetensors"));
                if from.is_file() {
                    std::fs::copy(&from, &path).map_err(|e| io(&from, e))?;
                }
            }
        }
        let skipped = snapshot_tensors(policy, |n| (n == SKIPPED_KEY).then(|| n.to_string()))?
            .first()
            .and_then(|(_, t)| t.f_int64_value(&[]).ok())
            .unwrap_or(0)
            .max(0) as u64;
        let state = RlTrainerState {
            kind: self.kind.as_str().into(),
            stage: self.stage.clone(),
            arm: self.arm.clone(),
            input: self.input.clone(),
            data: self.data.clone(),
            steps_done: self.offset + ckpt.steps_done,
            next_cursor: ckpt.next_cursor,
            policy_version: policy.version,
            perception_version: ckpt.perception.as_ref().map(|s| s.version),
            reasoning_version: ckpt.reasoning.as_ref().map(|s| s.version),
            optimizer_steps,
            skipped_steps: skipped,
            prompts_too_long: self.too_long.clone(),
            reason: format!("{:?}", ckpt.reason),
            config: self.config.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
        crate::report::atomic_write(&tmp.join(TRAINER_STATE), text.as_bytes())
            .map_err(|e| e.to_string())?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
        tracing::info!(stage = %self.stage, dir = %dir.display(), "checkpoint written");
        Ok(())
    }
}

impl CheckpointHook for RlCheckpointHook {
    fn checkpoint(&self, ckpt: &StageCheckpoint) -> std::result::Result<(), String> {
        let step = self.offset + ckpt.steps_done;
        if ckpt.reason == CheckpointReason::Finished {
            // the stage may end before its planned steps (dynamic sampling used the prompts up)
            self.bar.lock().unwrap_or_else(|p| p.into_inner()).finish();
        }
        let dir = match &ckpt.reason {
            CheckpointReason::Finished => self.final_dir(),
            // nothing new to keep when a run stops before its first step
            _ if ckpt.steps_done == 0 => return Ok(()),
            _ => self.checkpoint_dir(step),
        };
        self.save(&dir, ckpt)?;
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.sync().map_err(|e| e.to_string())
    }

    fn after_step(&self, record: &StepRecord) -> std::result::Result<bool, String> {
        let step = self.offset + record.step + 1;
        let mut metrics: std::collections::BTreeMap<String, f64> =
            record.extra.iter().cloned().collect();
        metrics.insert("gen_secs".into(), record.gen_secs);
        metrics.insert("learn_secs".into(), record.learn_secs);
        metrics.insert("rollouts".into(), record.rollouts as f64);
        metrics.insert("max_staleness".into(), record.max_staleness as f64);
        metrics.insert("policy_version".into(), record.version as f64);
        if let Some(d) = &record.sampling {
            for (k, v) in dynamic_sampling_metrics(d) {
                metrics.insert(k.into(), v);
            }
        }
        if let Some(s) = metrics.get("skipped_total") {
            self.skipped.store(*s as u64, Ordering::Relaxed);
        }
        let mut disc_losses = Vec::new();
        for (key, acc_key, d) in [
            ("perception", keys::CAP_ACC, &record.perception),
            ("reasoning", keys::COT_ACC, &record.reasoning),
        ] {
            if let Some(d) = d {
                metrics.insert(format!("{key}_disc_loss"), f64::from(d.loss));
                metrics.insert(acc_key.to_string(), f64::from(d.accuracy));
                disc_losses.push(f64::from(d.loss));
            }
        }
        if !disc_losses.is_empty() {
            let mean = disc_losses.iter().sum::<f64>() / disc_losses.len() as f64;
            metrics.insert(keys::DISC_LOSS.to_string(), mean);
        }
        {
            let mut bar = self.bar.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(r) = metrics.get(keys::REWARD_MEAN).filter(|r| r.is_finite()) {
                bar.set_metric("reward", *r);
            }
            bar.set_step(step);
            if step >= self.total_steps {
                bar.finish();
            }
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log(&self.stage, &self.arm, step, metrics)
            .map_err(|e| e.to_string())?;
        Ok(self.save_every > 0 && step.is_multiple_of(self.save_every) && step < self.total_steps)
    }
}
