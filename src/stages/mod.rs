//! Training stages: SFT, discriminator warm-up, PRISM alignment, RLVR, evaluation, and the
//! pipeline that chains them.
//!
//! Owns the stage error type and the plain stage signature: a stage takes its options, a
//! [`StageContext`] (run directory, device, seed, prepared data) and the input checkpoint
//! directory, and returns a [`StageSummary`] whose `output` is the next stage's input.

pub mod align;
pub mod checkpoint;
pub mod eval;
pub mod expert;
pub mod pipeline;
pub mod prompts;
pub mod resume;
pub mod rl;
pub mod sft;
pub mod warmup;

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// Errors of preparing or running a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::error::DataError),
    #[error(transparent)]
    Processor(#[from] crate::models::processor::ProcessorError),
    #[error(transparent)]
    Tokenizer(#[from] crate::models::tokenizer_train::TrainError),
    #[error(transparent)]
    Algo(#[from] crate::algo::AlgoError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: record {record}: {message}", path.display())]
    Record {
        path: PathBuf,
        record: usize,
        message: String,
    },
    #[error(
        "stage `{stage}`: {in_row} non-finite steps in a row (at step {step}; {total} skipped in all), stopping"
    )]
    NonFinite {
        stage: String,
        step: u64,
        in_row: u64,
        total: u64,
    },
    #[error("stage `{stage}`: {message}")]
    Invalid { stage: String, message: String },
}

impl StageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result of the stages module.
pub type Result<T, E = StageError> = std::result::Result<T, E>;

/// What every stage gets besides its own options.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Output name of this stage (`run_dir/<name>/`).
    pub name: String,
    /// Comparison arm of this stage (the `arm` label of its metrics records).
    pub arm: String,
    /// Device of the trained model.
    pub device: tch::Device,
    /// Parameter dtype of the trained model.
    pub kind: tch::Kind,
    /// The run seed.
    pub seed: u64,
    /// Default train file (ShareGPT JSONL).
    pub train_file: Option<PathBuf>,
    /// Default held-out file (ShareGPT JSONL).
    pub eval_file: Option<PathBuf>,
    /// Default RL prompts with teacher columns (RL parquet): align and rlvr.
    pub rl_train_file: Option<PathBuf>,
    /// Default held-out RL prompts (RL parquet): eval.
    pub rl_eval_file: Option<PathBuf>,
    /// Default warm-up pairs (JSONL): warmup.
    pub warmup_file: Option<PathBuf>,
    /// The experts' folder written by the latest earlier stage that trained experts (warmup or
    /// align), if any: align starts its experts from it.
    pub experts: Option<PathBuf>,
}

impl StageContext {
    /// The context of stage `name` of the run in `run_dir` over the prepared `data`: on the
    /// CPU in float32, arm `prism`, no experts yet (set the other fields with struct update).
    pub fn new(
        run_dir: impl Into<PathBuf>,
        name: &str,
        data: &pipeline::PreparedData,
        seed: u64,
    ) -> Self {
        StageContext {
            run_dir: run_dir.into(),
            name: name.to_string(),
            arm: crate::config::DEFAULT_ARM.to_string(),
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
            seed,
            train_file: Some(data.train.clone()),
            eval_file: data.eval.clone(),
            rl_train_file: data.rl_train.clone(),
            rl_eval_file: data.rl_eval.clone(),
            warmup_file: data.warmup.clone(),
            experts: None,
        }
    }

    /// `run_dir/<name>`.
    pub fn stage_dir(&self) -> PathBuf {
        self.run_dir.join(&self.name)
    }
}

/// What a stage reports when it finishes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageSummary {
    pub name: String,
    pub kind: String,
    /// The output checkpoint (next stage's input).
    pub output: PathBuf,
    /// The experts' folder this stage wrote (warmup, align), for the stages after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<PathBuf>,
    /// Steps run (skipped ones included).
    pub steps: u64,
    /// Non-finite steps skipped.
    pub skipped_steps: u64,
    /// Mean training loss of the first and last (up to 5) finite steps.
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// Eval loss before training and after the last step, when computed.
    pub first_eval_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub seconds: f64,
}

impl std::fmt::Display for StageSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        write!(
            f,
            "stage {} ({}): {} steps ({} skipped) in {:.1}s; train loss {} → {}; eval loss {} → {}; output {}",
            self.name,
            self.kind,
            self.steps,
            self.skipped_steps,
            self.seconds,
            opt(self.first_loss),
            opt(self.last_loss),
            opt(self.first_eval_loss),
            opt(self.last_eval_loss),
            self.output.display()
        )
    }
}

/// The skipped-step bookkeeping of a training loop (SFT, warm-up): every skipped (non-finite)
/// step counts, and too many of them in a row stop the stage with [`StageError::NonFinite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SkipStreak {
    /// Steps skipped in all (carried over a resume).
    pub total: u64,
    /// The current run of consecutive skipped steps (a resume starts a new one).
    pub in_row: u64,
}

impl SkipStreak {
    /// A loop that has skipped `total` steps before (0 on a fresh start).
    pub fn starting_at(total: u64) -> Self {
        SkipStreak { total, in_row: 0 }
    }

    /// Counts one step: a skipped one extends the streak, a taken one ends it.
    pub fn record(&mut self, skipped: bool) {
        if skipped {
            self.total += 1;
            self.in_row += 1;
        } else {
            self.in_row = 0;
        }
    }

    /// The error that stops stage `stage` at `step` once `max_in_row` steps in a row were
    /// skipped.
    pub fn check(&self, stage: &str, step: u64, max_in_row: u64) -> Result<()> {
        if self.in_row >= max_in_row {
            return Err(StageError::NonFinite {
                stage: stage.to_string(),
                step,
                in_row: self.in_row,
                total: self.total,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_streak_stops_at_the_limit_and_a_taken_step_resets_it() {
        let mut s = SkipStreak::starting_at(2);
        s.record(true);
        s.record(true);
        assert!(s.check("sft", 4, 3).is_ok());
        s.record(false);
        assert_eq!(
            s,
            SkipStreak {
                total: 4,
                in_row: 0
            }
        );
        for _ in 0..3 {
            s.record(true);
        }
        let err = s.check("sft", 8, 3).unwrap_err();
        assert!(
            matches!(
                err,
                StageError::NonFinite { ref stage, step: 8, in_row: 3, total: 7 } if stage == "sft"
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("3 non-finite steps in a row"),
            "{err}"
        );
    }
}
