//! The actor runtime: generator, teacher-client, perception and reasoning experts, reward,
//! learner, and the coordinator that drives a stage (ractor on tokio; libtorch work on
//! dedicated OS threads owned by the compute actors). It owns scheduling, versioning,
//! supervision and metrics; it never does model math (that lives behind the engine traits).
//!
//! # Layout
//!
//! - [`engine`]: the traits the stage code implements with real models ([`PolicyEngine`],
//!   [`LearnerEngine`], [`ScorerEngine`], [`TeacherBackend`], [`RewardEngine`]) and their
//!   factories ([`Engines`]).
//! - [`messages`]: the plain serde data that travels between actors (no tensors).
//! - [`compute`]: the dedicated compute thread of each actor and its busy meter.
//! - [`weights`]: versioned weight snapshots, the bus that publishes them, tensor conversion.
//! - one file per actor: [`generator`], [`teacher`], [`expert`] (perception and reasoning),
//!   [`reward`], [`learner`].
//! - [`supervisor`]: restart policy, deadlines, failure budget (the policy is in its doc).
//! - [`coordinator`]: the stage pipeline (alignment and RLVR step flows), the staleness bound,
//!   exactly-once accounting, checkpoints ([`run_stage`]).
//! - [`shutdown`]: SIGINT/SIGTERM handling for the binary.
//! - [`config`]: the `[actors]` config section (placement, staleness, deadlines, faults).
//! - [`faults`]: fault injection.
//! - [`toy`]: tiny real tch engines for tests and benchmarks.
//!
//! # Flow of one alignment step
//!
//! coordinator → generators (rollouts + behaviour log-probs + policy version) → reward (format,
//! caption/reasoning split) → perception expert (captions) ∥ reasoning expert (reasoning) score
//! → learner step (publishes v+1) ∥ experts' Bradley–Terry update against the teacher's
//! demonstrations (prefetched by the teacher-client during generation). RLVR skips the teacher
//! and experts.
//!
//! # Known limits
//!
//! - Weights move as host copies ([`messages::WeightsSnapshot`]): the learner snapshots after
//!   every step and each generator copies the new version in before its next request; the
//!   experts snapshot after every update (their restart state). Fine for the tiny models; for
//!   multi-GB models this is the path to replace (device-to-device copy, CUDA IPC) behind the
//!   same bus.
//! - A compute thread stuck inside libtorch cannot be interrupted: its actor is killed at the
//!   deadline and rebuilt on a fresh thread, and the stuck thread (with its engine's memory) is
//!   abandoned until its call returns.
//! - Restoring a learner or expert restores what its engine puts in the snapshot; the toy
//!   engines keep weights only, so their Adam moments restart from zero.

pub mod compute;
pub mod config;
pub mod coordinator;
pub mod engine;
pub mod errors;
pub mod expert;
pub mod faults;
pub mod generator;
pub mod learner;
pub mod messages;
pub mod reward;
pub mod shutdown;
pub mod supervisor;
pub mod teacher;
pub mod toy;
pub mod weights;

pub use config::{ActorsConfig, DeviceSpec, FaultMode, FaultRule};
pub use coordinator::{
    CheckpointHook, CheckpointReason, NoCheckpoint, StageCheckpoint, StageReport, StageSpec,
    run_stage,
};
pub use engine::{
    EngineResult, Engines, LearnerEngine, PolicyEngine, RewardEngine, ScorerEngine, TeacherBackend,
};
pub use errors::{ConfigError, StageError};
pub use shutdown::{exit_code, run_stage_with_signals, shutdown_on_signals};
