//! Typed errors of the actor runtime. Every variant names the actor (or config field) at fault,
//! so a failed run says what failed.

use thiserror::Error;

/// A bad value in the `[actors]` config section.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("config field {field}: {msg}")]
pub struct ConfigError {
    pub field: String,
    pub msg: String,
}

/// Why a stage run ended with an error.
#[derive(Debug, Clone, Error)]
pub enum StageError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stage was given inputs it cannot run (missing engines, too few prompts, …).
    #[error("stage {stage}: {msg}")]
    Setup { stage: String, msg: String },
    /// An actor could not be started (its engine factory failed).
    #[error("actor {actor} failed to start: {msg}")]
    Spawn { actor: String, msg: String },
    /// An actor failed more often than the supervision budget allows.
    #[error(
        "actor {actor} failed {failures} times within {window_secs} s (budget {budget}); last failure: {last}"
    )]
    GaveUp {
        actor: String,
        failures: u32,
        budget: u32,
        window_secs: f64,
        last: String,
    },
    /// A failed actor did not come back within the restart deadline.
    #[error("actor {actor} did not restart within {waited_secs} s")]
    RestartTimeout { actor: String, waited_secs: f64 },
    /// An internal invariant broke (for example a rollout older than the staleness bound).
    #[error("invariant broken in stage {stage}: {msg}")]
    Invariant { stage: String, msg: String },
    /// The checkpoint hook failed.
    #[error("checkpoint hook failed ({reason}): {msg}")]
    Checkpoint { reason: String, msg: String },
}

impl StageError {
    /// The actor this error names, if any.
    pub fn actor(&self) -> Option<&str> {
        match self {
            StageError::Spawn { actor, .. }
            | StageError::GaveUp { actor, .. }
            | StageError::RestartTimeout { actor, .. } => Some(actor),
            _ => None,
        }
    }
}
