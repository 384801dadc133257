//! The small engine traits the stage code implements with the real models. The runtime never
//! sees a tensor: it hands plain messages to an engine living on its actor's dedicated compute
//! thread and gets plain data back.
//!
//! Every engine is built by a factory *on its compute thread* (so it never moves between
//! threads and its thread-local torch state, e.g. `no_grad`, stays put), and rebuilt by the same
//! factory when its actor is restarted. Errors are boxed so any library's error converts with
//! `?`; an engine error fails the actor, which the supervisor restarts.

use std::sync::Arc;

use super::config::DeviceSpec;
use super::messages::{
    BtPair, Demo, DiscStats, PromptItem, RewardOutcome, Rollout, SamplingParams, ScoreItem,
    StepStats, TrainBatch, WeightsSnapshot,
};

/// Error type of every engine call.
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;
/// Result type of every engine call.
pub type EngineResult<T> = Result<T, EngineError>;

/// A sampler of the policy (one per generator replica, on that replica's device).
pub trait PolicyEngine {
    /// Samples `n` responses for each prompt, prompt-major (`prompts[0]`'s n samples first).
    /// Each rollout records the behaviour log-prob of every sampled token; `policy_version` and
    /// `generator` are filled in by the actor.
    fn generate(
        &mut self,
        prompts: &[PromptItem],
        n: usize,
        params: &SamplingParams,
    ) -> EngineResult<Vec<Rollout>>;
    /// Replaces the weights (called between batches, never during one).
    fn load_weights(&mut self, weights: &WeightsSnapshot) -> EngineResult<()>;
}

/// The trainer of the policy: advantages, loss, one optimizer step per batch.
pub trait LearnerEngine {
    fn step(&mut self, batch: &TrainBatch) -> EngineResult<StepStats>;
    /// The current weights as a snapshot stamped `version` (what generators load).
    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot>;
    /// Puts back a state taken by [`LearnerEngine::snapshot`] (after a restart).
    fn restore(&mut self, weights: &WeightsSnapshot) -> EngineResult<()>;
}

/// A perception or reasoning expert: scores segments and trains as a Bradley–Terry
/// discriminator (teacher ≻ student). Both calls see each segment with its prompt's uid:
/// the engine scores the prompt's context followed by the segment.
pub trait ScorerEngine {
    /// One score per item, in order.
    fn score(&mut self, items: &[ScoreItem]) -> EngineResult<Vec<f32>>;
    fn bt_step(&mut self, pairs: &[BtPair]) -> EngineResult<DiscStats>;
    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot>;
    fn restore(&mut self, weights: &WeightsSnapshot) -> EngineResult<()>;
}

/// What a teacher backend made of one prompt of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum DemoOutcome {
    /// A format-valid demonstration.
    Demo(Demo),
    /// No demonstration for this prompt this time (the teacher never answered in format, or
    /// refused this prompt alone), reported instead of failing the actor: the prompt's
    /// Bradley–Terry pairs are left out of the step.
    Skipped {
        prompt_uid: u64,
        /// Short label-safe reason (`invalid_answer`, `rejected`, …).
        reason: String,
        /// What happened, for the log.
        message: String,
    },
}

impl DemoOutcome {
    /// The uid of the prompt this outcome belongs to.
    pub fn prompt_uid(&self) -> u64 {
        match self {
            DemoOutcome::Demo(d) => d.prompt_uid,
            DemoOutcome::Skipped { prompt_uid, .. } => *prompt_uid,
        }
    }
}

/// The black-box teacher: a demonstration (text) for a prompt. A dataset column, the synthetic
/// oracle, or an HTTP client; it runs on its own thread so blocking I/O is fine.
pub trait TeacherBackend {
    fn demonstrate(&mut self, prompt: &PromptItem) -> EngineResult<Demo>;

    /// One outcome per prompt, in order. Backends that can ask several prompts at once
    /// (HTTP) override this; the default asks one at a time and never skips (an error of
    /// any prompt is the batch's error).
    fn demonstrate_batch(&mut self, prompts: &[PromptItem]) -> EngineResult<Vec<DemoOutcome>> {
        prompts
            .iter()
            .map(|p| self.demonstrate(p).map(DemoOutcome::Demo))
            .collect()
    }
}

/// Format check, caption/reasoning split and verifiable reward of one rollout.
pub trait RewardEngine {
    fn evaluate(&mut self, prompt: &PromptItem, rollout: &Rollout) -> EngineResult<RewardOutcome>;
}

/// Builds a policy engine for a device (called on the generator's compute thread).
pub type PolicyFactory =
    Arc<dyn Fn(DeviceSpec) -> EngineResult<Box<dyn PolicyEngine>> + Send + Sync>;
/// Builds the learner engine.
pub type LearnerFactory =
    Arc<dyn Fn(DeviceSpec) -> EngineResult<Box<dyn LearnerEngine>> + Send + Sync>;
/// Builds an expert engine.
pub type ScorerFactory =
    Arc<dyn Fn(DeviceSpec) -> EngineResult<Box<dyn ScorerEngine>> + Send + Sync>;
/// Builds the teacher backend.
pub type TeacherFactory =
    Arc<dyn Fn(DeviceSpec) -> EngineResult<Box<dyn TeacherBackend>> + Send + Sync>;
/// Builds the reward engine.
pub type RewardFactory =
    Arc<dyn Fn(DeviceSpec) -> EngineResult<Box<dyn RewardEngine>> + Send + Sync>;

/// The engines of one stage. Alignment needs all five; RLVR needs no teacher or experts.
#[derive(Clone)]
pub struct Engines {
    pub policy: PolicyFactory,
    pub learner: LearnerFactory,
    pub reward: RewardFactory,
    pub teacher: Option<TeacherFactory>,
    pub perception: Option<ScorerFactory>,
    pub reasoning: Option<ScorerFactory>,
}
