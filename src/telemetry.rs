//! Metric names, their descriptions, and the Prometheus exporter. Every name starts `prism_`
//! and carries its unit; labels are `stage`, `actor`, `device` (and `queue` for queues).
//! Metrics are recorded with the `metrics` crate's macros anywhere in the crate; nothing is
//! exported until [`install_prometheus`] sets the global recorder (without it the macros are
//! no-ops, which is what tests get).

use std::net::SocketAddr;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use thiserror::Error;

/// Fraction of wall time an actor spends inside engine compute, since it first started.
pub const ACTOR_BUSY_RATIO: &str = "prism_actor_busy_ratio";
/// Seconds an actor has spent inside engine compute.
pub const ACTOR_BUSY_SECONDS: &str = "prism_actor_busy_seconds";
/// Duration of each engine call.
pub const ACTOR_JOB_SECONDS: &str = "prism_actor_job_seconds";
/// Batches waiting in a bounded queue between pipeline phases.
pub const QUEUE_DEPTH: &str = "prism_queue_depth_batches";
/// Rollouts produced.
pub const ROLLOUTS_TOTAL: &str = "prism_rollouts_total";
/// Response tokens produced.
pub const GENERATED_TOKENS_TOTAL: &str = "prism_generated_tokens_total";
/// Rollouts per second over the last step.
pub const ROLLOUTS_PER_SECOND: &str = "prism_rollouts_per_second";
/// Response tokens per second over the last step.
pub const TOKENS_PER_SECOND: &str = "prism_generated_tokens_per_second";
/// Learner version at training time minus the version that generated the rollout.
pub const STALENESS: &str = "prism_rollout_staleness_versions";
/// Seconds a generator spends loading a new weights version.
pub const WEIGHT_SYNC_SECONDS: &str = "prism_weight_sync_seconds";
/// Actor restarts by the supervisor.
pub const ACTOR_RESTARTS_TOTAL: &str = "prism_actor_restarts_total";
/// Requests that passed their deadline (the actor is reported stuck).
pub const DEADLINE_EXCEEDED_TOTAL: &str = "prism_actor_deadline_exceeded_total";
/// Faults injected by the fault-injection config.
pub const FAULTS_INJECTED_TOTAL: &str = "prism_faults_injected_total";
/// Latest policy version published by the learner.
pub const POLICY_VERSION: &str = "prism_policy_version";
/// Wall seconds per training step.
pub const STEP_SECONDS: &str = "prism_step_seconds";
/// Training steps completed.
pub const STEPS_TOTAL: &str = "prism_steps_total";
/// Teacher-client cache hits and misses.
pub const TEACHER_CACHE_HITS_TOTAL: &str = "prism_teacher_cache_hits_total";
pub const TEACHER_CACHE_MISSES_TOTAL: &str = "prism_teacher_cache_misses_total";
/// HTTP attempts sent to the teacher (retries and re-asks included).
pub const TEACHER_REQUESTS_TOTAL: &str = "prism_teacher_requests_total";
/// Teacher retries, by `reason` (rate_limited, server_error, timeout, connection, malformed).
pub const TEACHER_RETRIES_TOTAL: &str = "prism_teacher_retries_total";
/// Input (prompt) tokens the teacher reported.
pub const TEACHER_INPUT_TOKENS_TOTAL: &str = "prism_teacher_input_tokens_total";
/// Output (completion) tokens the teacher reported.
pub const TEACHER_OUTPUT_TOKENS_TOTAL: &str = "prism_teacher_output_tokens_total";
/// Cumulative teacher cost at the configured prices.
pub const TEACHER_COST_USD: &str = "prism_teacher_cost_usd";
/// Duration of each teacher HTTP attempt.
pub const TEACHER_REQUEST_SECONDS: &str = "prism_teacher_request_seconds";
/// Teacher answers outside the three-block format.
pub const TEACHER_INVALID_ANSWERS_TOTAL: &str = "prism_teacher_invalid_answers_total";
/// Teacher calls that ended without a valid demonstration, by `reason`.
pub const TEACHER_FAILURES_TOTAL: &str = "prism_teacher_failures_total";
/// Prompts whose demonstration was skipped for a step (`on_invalid = "skip"`), by `reason`.
pub const TEACHER_SKIPPED_TOTAL: &str = "prism_teacher_skipped_total";
/// `prism serve`: requests answered, by `status` (HTTP status code).
pub const SERVE_REQUESTS_TOTAL: &str = "prism_serve_requests_total";
/// `prism serve`: prompt tokens of the requests generated for.
pub const SERVE_PROMPT_TOKENS_TOTAL: &str = "prism_serve_prompt_tokens_total";
/// `prism serve`: generated (completion) tokens.
pub const SERVE_COMPLETION_TOKENS_TOTAL: &str = "prism_serve_completion_tokens_total";
/// `prism serve`: rows of each batched `generate` call.
pub const SERVE_BATCH_ROWS: &str = "prism_serve_batch_rows";
/// `prism serve`: seconds from a chat completion request's arrival to its last byte of answer.
pub const SERVE_REQUEST_SECONDS: &str = "prism_serve_request_seconds";
/// `prism serve`: tokens the model generated, counted as they are generated (rows that halt
/// early at a stop string, their own `max_tokens` or a client that went away stop adding).
pub const SERVE_GENERATED_TOKENS_TOTAL: &str = "prism_serve_generated_tokens_total";
/// `prism serve`: requests whose rows are being generated right now.
pub const SERVE_REQUESTS_GENERATING: &str = "prism_serve_requests_generating";

/// Training and evaluation quality per step, from every record written to the run's metrics
/// log (labels `stage`, `arm`; the discriminator's per-expert values are separate series of the
/// same stage). Names follow PRISM_ALGORITHM.md §4.2 and §5.
pub const TRAIN_LOSS: &str = "prism_train_loss";
pub const POLICY_LOSS: &str = "prism_policy_loss";
pub const D_LOSS: &str = "prism_discriminator_loss";
pub const CAP_ACC: &str = "prism_cap_acc_ratio";
pub const COT_ACC: &str = "prism_cot_acc_ratio";
pub const REWARD_MEAN: &str = "prism_reward_mean";
pub const REWARD_CAPTION: &str = "prism_reward_caption_mean";
pub const REWARD_COT: &str = "prism_reward_cot_mean";
pub const ACCURACY: &str = "prism_accuracy_ratio";
pub const VALID_RATIO: &str = "prism_valid_ratio";
pub const KL: &str = "prism_kl";
pub const ENTROPY: &str = "prism_entropy_nats";
pub const GRAD_NORM: &str = "prism_grad_norm";
pub const LEARNING_RATE: &str = "prism_learning_rate";
pub const PG_CLIPFRAC: &str = "prism_pg_clipfrac_ratio";
pub const ADVANTAGE_MEAN: &str = "prism_advantage_mean";
pub const ADVANTAGE_STD: &str = "prism_advantage_std";
pub const RESPONSE_LENGTH: &str = "prism_response_length_tokens";
pub const TRAINED_TOKENS_TOTAL: &str = "prism_trained_tokens_total";
/// DAPO dynamic sampling (per step): generation rounds, groups kept and dropped, accuracy over
/// every generated rollout, and steps that trained short of `prompts_per_step` groups.
pub const DS_GEN_BATCHES: &str = "prism_dynamic_sampling_gen_batches";
pub const DS_KEPT_GROUPS: &str = "prism_dynamic_sampling_kept_groups";
pub const DS_DROPPED_GROUPS: &str = "prism_dynamic_sampling_dropped_groups";
pub const GEN_ACCURACY: &str = "prism_gen_accuracy_ratio";
pub const DS_SHORT_STEPS_TOTAL: &str = "prism_dynamic_sampling_short_steps_total";

/// Metrics-log key → gauge name, help text.
pub const STEP_GAUGES: &[(&str, &str, &str)] = &[
    (
        "loss",
        TRAIN_LOSS,
        "Training loss of the last step (SFT: token NLL)",
    ),
    (
        "policy_loss",
        POLICY_LOSS,
        "Policy-gradient loss of the last step",
    ),
    (
        "disc_loss",
        D_LOSS,
        "Bradley–Terry loss of the experts at the last step",
    ),
    (
        "cap_acc",
        CAP_ACC,
        "Perception expert: fraction of pairs with teacher caption scored higher",
    ),
    (
        "cot_acc",
        COT_ACC,
        "Reasoning expert: fraction of pairs with teacher reasoning scored higher",
    ),
    (
        "reward_mean",
        REWARD_MEAN,
        "Mean sequence reward of the last step's rollouts",
    ),
    (
        "reward_perception",
        REWARD_CAPTION,
        "Mean perception-expert score of the captions",
    ),
    (
        "reward_reasoning",
        REWARD_COT,
        "Mean reasoning-expert score of the reasoning",
    ),
    (
        "accuracy",
        ACCURACY,
        "Fraction of correct answers (rollouts, or an evaluation)",
    ),
    (
        "format_valid_rate",
        VALID_RATIO,
        "Fraction of answers in the three-block format",
    ),
    (
        "kl",
        KL,
        "KL to the reference policy (when the loss has a KL term)",
    ),
    (
        "entropy",
        ENTROPY,
        "Mean token entropy of the policy on its rollouts",
    ),
    (
        "grad_norm",
        GRAD_NORM,
        "Total gradient 2-norm before clipping",
    ),
    (
        "lr",
        LEARNING_RATE,
        "Learning rate of the last optimizer update",
    ),
    (
        "pg_clipfrac",
        PG_CLIPFRAC,
        "Fraction of tokens whose ratio was clipped",
    ),
    (
        "advantage_mean",
        ADVANTAGE_MEAN,
        "Mean advantage of the last step",
    ),
    (
        "advantage_std",
        ADVANTAGE_STD,
        "Standard deviation of the advantages of the last step",
    ),
    (
        "response_length_mean",
        RESPONSE_LENGTH,
        "Mean response length of the last step",
    ),
    (
        "gen_batches",
        DS_GEN_BATCHES,
        "DAPO dynamic sampling: generation rounds of the last step",
    ),
    (
        "kept_groups",
        DS_KEPT_GROUPS,
        "DAPO dynamic sampling: groups with varying accuracy kept for the last step",
    ),
    (
        "dropped_groups",
        DS_DROPPED_GROUPS,
        "DAPO dynamic sampling: groups of constant accuracy dropped in the last step",
    ),
    (
        "gen_accuracy",
        GEN_ACCURACY,
        "Accuracy over every rollout generated for the last step (before the DAPO filter)",
    ),
];

/// Exports one metrics-log record: each known key as its gauge (labels `stage`, `arm`), trained
/// tokens as a counter. A no-op until [`install_prometheus`] runs.
pub fn record_step(stage: &str, arm: &str, values: &std::collections::BTreeMap<String, f64>) {
    let labels = || {
        vec![
            metrics::Label::new("stage", stage.to_string()),
            metrics::Label::new("arm", arm.to_string()),
        ]
    };
    for (key, name, _) in STEP_GAUGES {
        if let Some(v) = values.get(*key).filter(|v| v.is_finite()) {
            metrics::gauge!(*name, labels()).set(*v);
        }
    }
    if let Some(t) = values.get("tokens").filter(|t| t.is_finite() && **t >= 0.0) {
        metrics::counter!(TRAINED_TOKENS_TOTAL, labels()).increment(*t as u64);
    }
    if values.get("dynamic_sampling_short") == Some(&1.0) {
        metrics::counter!(DS_SHORT_STEPS_TOTAL, labels()).increment(1);
    }
}

/// Errors of the exporter set-up.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("cannot start the Prometheus exporter on {addr}: {source}")]
    Install {
        addr: SocketAddr,
        #[source]
        source: BuildError,
    },
}

/// Every metric name above, for checks that dashboards and docs name only real series.
pub const ALL: &[&str] = &[
    ACTOR_BUSY_RATIO,
    ACTOR_BUSY_SECONDS,
    ACTOR_JOB_SECONDS,
    QUEUE_DEPTH,
    ROLLOUTS_TOTAL,
    GENERATED_TOKENS_TOTAL,
    ROLLOUTS_PER_SECOND,
    TOKENS_PER_SECOND,
    STALENESS,
    WEIGHT_SYNC_SECONDS,
    ACTOR_RESTARTS_TOTAL,
    DEADLINE_EXCEEDED_TOTAL,
    FAULTS_INJECTED_TOTAL,
    POLICY_VERSION,
    STEP_SECONDS,
    STEPS_TOTAL,
    TEACHER_CACHE_HITS_TOTAL,
    TEACHER_CACHE_MISSES_TOTAL,
    TEACHER_REQUESTS_TOTAL,
    TEACHER_RETRIES_TOTAL,
    TEACHER_INPUT_TOKENS_TOTAL,
    TEACHER_OUTPUT_TOKENS_TOTAL,
    TEACHER_COST_USD,
    TEACHER_REQUEST_SECONDS,
    TEACHER_INVALID_ANSWERS_TOTAL,
    TEACHER_FAILURES_TOTAL,
    TRAIN_LOSS,
    POLICY_LOSS,
    D_LOSS,
    CAP_ACC,
    COT_ACC,
    REWARD_MEAN,
    REWARD_CAPTION,
    REWARD_COT,
    ACCURACY,
    VALID_RATIO,
    KL,
    ENTROPY,
    GRAD_NORM,
    LEARNING_RATE,
    PG_CLIPFRAC,
    ADVANTAGE_MEAN,
    ADVANTAGE_STD,
    RESPONSE_LENGTH,
    TRAINED_TOKENS_TOTAL,
    DS_GEN_BATCHES,
    DS_KEPT_GROUPS,
    DS_DROPPED_GROUPS,
    GEN_ACCURACY,
    DS_SHORT_STEPS_TOTAL,
    TEACHER_SKIPPED_TOTAL,
    SERVE_REQUESTS_TOTAL,
    SERVE_PROMPT_TOKENS_TOTAL,
    SERVE_COMPLETION_TOKENS_TOTAL,
    SERVE_BATCH_ROWS,
    SERVE_REQUEST_SECONDS,
    SERVE_GENERATED_TOKENS_TOTAL,
    SERVE_REQUESTS_GENERATING,
];

/// The `stage`, `actor`, `device` labels of an actor's metrics.
pub fn actor_labels(stage: &str, actor: &str, device: &str) -> Vec<metrics::Label> {
    vec![
        metrics::Label::new("stage", stage.to_string()),
        metrics::Label::new("actor", actor.to_string()),
        metrics::Label::new("device", device.to_string()),
    ]
}

/// Registers unit and help text of every metric with the current recorder.
pub fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    for (_, name, help) in STEP_GAUGES {
        describe_gauge!(*name, *help);
    }
    describe_counter!(
        TRAINED_TOKENS_TOTAL,
        Unit::Count,
        "Response (RL) or target (SFT) tokens trained on"
    );
    describe_counter!(
        DS_SHORT_STEPS_TOTAL,
        Unit::Count,
        "DAPO dynamic sampling: steps trained on fewer than prompts_per_step groups (round limit or end of prompts)"
    );
    describe_gauge!(
        ACTOR_BUSY_RATIO,
        "Fraction (0 to 1) of wall time the actor spends inside engine compute"
    );
    describe_gauge!(
        ACTOR_BUSY_SECONDS,
        Unit::Seconds,
        "Seconds the actor has spent inside engine compute"
    );
    describe_histogram!(
        ACTOR_JOB_SECONDS,
        Unit::Seconds,
        "Duration of each engine call"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Batches waiting in a bounded queue between pipeline phases"
    );
    describe_counter!(ROLLOUTS_TOTAL, Unit::Count, "Rollouts produced");
    describe_counter!(
        GENERATED_TOKENS_TOTAL,
        Unit::Count,
        "Response tokens produced"
    );
    describe_gauge!(
        ROLLOUTS_PER_SECOND,
        Unit::CountPerSecond,
        "Rollouts per second over the last step"
    );
    describe_gauge!(
        TOKENS_PER_SECOND,
        Unit::CountPerSecond,
        "Response tokens per second over the last step"
    );
    describe_histogram!(
        STALENESS,
        Unit::Count,
        "Policy versions between the rollout's generator weights and the learner at training"
    );
    describe_histogram!(
        WEIGHT_SYNC_SECONDS,
        Unit::Seconds,
        "Seconds to load a new weights version"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        Unit::Count,
        "Actor restarts by the supervisor"
    );
    describe_counter!(
        DEADLINE_EXCEEDED_TOTAL,
        Unit::Count,
        "Requests that passed their deadline (actor reported stuck)"
    );
    describe_counter!(
        FAULTS_INJECTED_TOTAL,
        Unit::Count,
        "Faults injected by config"
    );
    describe_gauge!(
        POLICY_VERSION,
        Unit::Count,
        "Latest policy version published by the learner"
    );
    describe_histogram!(
        STEP_SECONDS,
        Unit::Seconds,
        "Wall seconds per training step"
    );
    describe_counter!(STEPS_TOTAL, Unit::Count, "Training steps completed");
    describe_counter!(
        TEACHER_CACHE_HITS_TOTAL,
        Unit::Count,
        "Teacher demonstrations served from the cache"
    );
    describe_counter!(
        TEACHER_CACHE_MISSES_TOTAL,
        Unit::Count,
        "Teacher demonstrations requested from the backend"
    );
    describe_counter!(
        TEACHER_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP attempts sent to the teacher, retries and re-asks included"
    );
    describe_counter!(
        TEACHER_RETRIES_TOTAL,
        Unit::Count,
        "Teacher retries by reason"
    );
    describe_counter!(
        TEACHER_INPUT_TOKENS_TOTAL,
        Unit::Count,
        "Input tokens reported by the teacher"
    );
    describe_counter!(
        TEACHER_OUTPUT_TOKENS_TOTAL,
        Unit::Count,
        "Output tokens reported by the teacher"
    );
    describe_gauge!(
        TEACHER_COST_USD,
        "Cumulative teacher cost in US dollars at the configured prices"
    );
    describe_histogram!(
        TEACHER_REQUEST_SECONDS,
        Unit::Seconds,
        "Duration of each teacher HTTP attempt"
    );
    describe_counter!(
        TEACHER_INVALID_ANSWERS_TOTAL,
        Unit::Count,
        "Teacher answers outside the three-block format"
    );
    describe_counter!(
        TEACHER_FAILURES_TOTAL,
        Unit::Count,
        "Teacher calls that ended without a valid demonstration, by reason"
    );
    describe_counter!(
        TEACHER_SKIPPED_TOTAL,
        Unit::Count,
        "Prompts left without a teacher demonstration for a step, by reason"
    );
    describe_counter!(
        SERVE_REQUESTS_TOTAL,
        Unit::Count,
        "prism serve: chat completion requests answered, by HTTP status"
    );
    describe_counter!(
        SERVE_PROMPT_TOKENS_TOTAL,
        Unit::Count,
        "prism serve: prompt tokens of generated requests"
    );
    describe_counter!(
        SERVE_COMPLETION_TOKENS_TOTAL,
        Unit::Count,
        "prism serve: generated tokens"
    );
    describe_histogram!(
        SERVE_BATCH_ROWS,
        Unit::Count,
        "prism serve: rows of each batched generate call"
    );
    describe_counter!(
        SERVE_GENERATED_TOKENS_TOTAL,
        Unit::Count,
        "prism serve: tokens generated, counted as they are generated"
    );
    describe_gauge!(
        SERVE_REQUESTS_GENERATING,
        "prism serve: requests whose rows are being generated right now"
    );
    describe_histogram!(
        SERVE_REQUEST_SECONDS,
        Unit::Seconds,
        "prism serve: seconds from a request's arrival to its answer"
    );
}

/// Installs the global Prometheus recorder with an HTTP listener on `addr` (use 127.0.0.1 unless
/// you mean to expose it) and describes every metric. Must run inside a tokio runtime or it
/// starts its own thread. Call once per process.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), TelemetryError> {
    let err = |source| TelemetryError::Install { addr, source };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(STALENESS.to_string()),
            &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0],
        )
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Full(SERVE_BATCH_ROWS.to_string()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        )
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_string()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ],
        )
        .map_err(err)?
        .install()
        .map_err(err)?;
    describe_all();
    Ok(())
}
