//! The actor-based RL stages on Qwen3-VL: the engines the actor runtime drives ([`QwenPolicy`]
//! samples, [`QwenLearner`] trains, [`SynthReward`] checks format and accuracy), the stage
//! runner shared by `rlvr` and `align` ([`run_actor_stage`]), its checkpoints
//! ([`checkpoint`]) and the `rlvr` stage itself ([`run_rlvr`]).
//!
//! Owns turning stage options into learner options ([`RlOptions`]: the algorithm presets of
//! PRISM_ALGORITHM.md §6 resolved into [`PolicyLoss`], AdamW, LR schedule, DAPO pieces), the
//! prompt list of a stage (rows over `max_prompt_tokens` are reported, never silently dropped),
//! and the per-step metrics records (`run_dir/metrics.jsonl`). The RL math itself is
//! [`crate::algo`]; scheduling, staleness and supervision are [`crate::actors`].
//!
//! The alignment stage reuses [`run_actor_stage`] with [`StageKind::Align`] and its teacher and
//! experts in [`AlignEngines`]; the learner then uses PRISM's multi-reward advantage
//! ([`RlOptions::multi_reward`]).

pub mod checkpoint;
pub mod learner;
pub mod policy;
pub mod reward;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tch::Kind;

pub use checkpoint::{RlCheckpointHook, RlTrainerState, read_trainer_state};
pub use learner::QwenLearner;
pub use policy::{PromptInputs, QwenPolicy, sample_seed};
pub use reward::SynthReward;

use super::prompts::PromptStore;
use super::{Result, StageContext, StageError, StageSummary};
use crate::actors::config::{ActorsConfig, DeviceSpec};
use crate::actors::coordinator::{DynamicSampling, StageOptions, run_stage_with};
use crate::actors::engine::{
    EngineResult, Engines, LearnerEngine, LearnerFactory, PolicyEngine, PolicyFactory,
    RewardEngine, RewardFactory, ScorerFactory, TeacherFactory,
};
use crate::actors::messages::{PromptItem, SamplingParams, StageKind};
use crate::actors::{StageSpec, shutdown_on_signals};
use crate::algo::adamw::{AdamWConfig, LrSchedule};
use crate::algo::advantage::{MultiRewardOptions, OverlongBuffer};
use crate::algo::policy_loss::{Aggregation, Clip, KlEstimator, KlPenalty, PolicyLoss, RatioLevel};
use crate::config::{KlEstimatorName, LossAggMode, LrScheduler, RlAlgorithm, RlvrConfig};
use crate::models::processor::Processor;

/// Everything the learner and the runner of an RL stage need, resolved from a stage config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlOptions {
    /// Comparison arm of the metrics records.
    pub arm: String,
    pub steps: u64,
    pub prompts_per_step: usize,
    pub samples_per_prompt: usize,
    /// Rollout sampling (temperature, top-p, max new tokens, base seed).
    pub sampling: SamplingParams,
    pub max_prompt_tokens: usize,
    pub passes: usize,
    /// RL parquet; `None` = the context's `rl_train_file`.
    pub data: Option<PathBuf>,
    pub limit: Option<usize>,
    pub adamw: AdamWConfig,
    /// Multiplier of `adamw.lr` per optimizer update.
    pub schedule: LrSchedule,
    pub max_grad_norm: f64,
    pub loss: PolicyLoss,
    /// Optimizer updates per step.
    pub mini_batches: usize,
    /// Rollouts per forward/backward (gradient accumulation within a mini-batch); 0 = the
    /// whole mini-batch at once.
    pub micro_batch_size: usize,
    /// DAPO dynamic sampling (drop groups of constant accuracy, refill the step with new
    /// prompts).
    pub dynamic_sampling: bool,
    /// Generation rounds per step at most under dynamic sampling; 0 = unlimited.
    pub max_gen_batches: u32,
    /// Prompts per generation round under dynamic sampling.
    pub gen_batch_size: usize,
    /// DAPO overlong shaping.
    pub overlong: Option<OverlongBuffer>,
    /// PRISM's multi-reward advantage (alignment only).
    pub multi_reward: MultiRewardOptions,
    pub save_every: u64,
    pub resume_from: Option<PathBuf>,
    pub max_bad_steps_in_row: u64,
    /// 1-based stage steps whose loss is multiplied by NaN (fault injection for tests).
    pub inject_nan_steps: Vec<u64>,
    /// The stage config as written (recorded in `trainer_state.json`).
    pub stage_config: serde_json::Value,
}

impl RlOptions {
    /// The coordinator's sampling options: dynamic sampling with its round limit, when on.
    pub fn stage_options(&self) -> StageOptions {
        StageOptions {
            dynamic_sampling: self.dynamic_sampling.then_some(DynamicSampling {
                max_gen_batches: self.max_gen_batches,
                gen_batch_size: self.gen_batch_size,
            }),
        }
    }

    /// Resolves an `rlvr` stage config (`run_seed` when it sets no seed of its own).
    pub fn from_rlvr(cfg: &RlvrConfig, run_seed: u64) -> Result<Self> {
        let (low, high, dual_clip, agg) = cfg.resolved_clip();
        let (dynamic_sampling, overlong) = cfg.resolved_dapo();
        let updates = cfg.steps * cfg.mini_batches as u64;
        let warmup = cfg.resolved_warmup_steps(updates) as i64;
        let schedule = match cfg.lr_scheduler {
            LrScheduler::Constant if warmup == 0 => LrSchedule::Constant,
            LrScheduler::Constant => LrSchedule::ConstantWithWarmup {
                warmup_steps: warmup,
            },
            LrScheduler::Cosine => LrSchedule::CosineWithWarmup {
                warmup_steps: warmup,
                total_steps: updates as i64,
            },
        };
        schedule.validate()?;
        let kl = if cfg.kl_coef > 0.0 {
            KlPenalty::Loss {
                estimator: match cfg.kl_estimator {
                    KlEstimatorName::K1 => KlEstimator::K1,
                    KlEstimatorName::K2 => KlEstimator::K2,
                    KlEstimatorName::K3 => KlEstimator::K3,
                    KlEstimatorName::Abs => KlEstimator::Abs,
                },
                coef: cfg.kl_coef,
                straight_through: false,
            }
        } else {
            KlPenalty::None
        };
        let loss = PolicyLoss {
            ratio: if cfg.algorithm == RlAlgorithm::Gspo {
                RatioLevel::Sequence
            } else {
                RatioLevel::Token
            },
            clip: if low == high {
                Clip::Symmetric(low)
            } else {
                Clip::Decoupled { low, high }
            },
            dual_clip,
            aggregation: match agg {
                LossAggMode::TokenMean => Aggregation::TokenMean,
                LossAggMode::SeqMeanTokenMean => Aggregation::SeqMeanTokenMean,
                LossAggMode::SeqMeanTokenSum => Aggregation::SeqMeanTokenSum,
                LossAggMode::SeqMeanTokenSumNorm => Aggregation::SeqMeanTokenSumNorm {
                    horizon: Some(cfg.max_new_tokens as f64),
                },
            },
            kl,
            entropy_coef: cfg.entropy_coef,
        };
        loss.validate()?;
        let overlong = overlong.then_some(OverlongBuffer {
            max_response_length: cfg.max_new_tokens as i64,
            buffer_length: cfg.overlong_buffer_len as i64,
            penalty_factor: cfg.overlong_penalty_factor,
        });
        if let Some(o) = &overlong {
            o.validate()?;
        }
        let adamw = AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.resolved_weight_decay(),
            ..AdamWConfig::default()
        };
        adamw.validate()?;
        Ok(RlOptions {
            arm: crate::config::DEFAULT_ARM.to_string(),
            steps: cfg.steps,
            prompts_per_step: cfg.prompts_per_step,
            samples_per_prompt: cfg.samples_per_prompt,
            sampling: SamplingParams {
                temperature: cfg.temperature as f32,
                top_p: cfg.top_p as f32,
                top_k: -1,
                max_new_tokens: cfg.max_new_tokens,
                seed: cfg.seed.unwrap_or(run_seed),
            },
            max_prompt_tokens: cfg.max_prompt_tokens,
            passes: cfg.passes,
            data: cfg.data.clone(),
            limit: cfg.limit,
            adamw,
            schedule,
            max_grad_norm: cfg.max_grad_norm,
            loss,
            mini_batches: cfg.mini_batches,
            micro_batch_size: cfg.micro_batch_size,
            dynamic_sampling,
            max_gen_batches: cfg
                .resolved_max_gen_batches()
                .unwrap_or(crate::config::DEFAULT_MAX_GEN_BATCHES),
            gen_batch_size: cfg.gen_batch_size.unwrap_or(cfg.prompts_per_step),
            overlong,
            multi_reward: MultiRewardOptions::paper(),
            save_every: cfg.save_every,
            resume_from: cfg.resume_from.clone(),
            max_bad_steps_in_row: cfg.max_bad_steps_in_row,
            inject_nan_steps: cfg.inject_nan_steps.clone(),
            stage_config: serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// The alignment-only engines: the teacher and the two experts.
#[derive(Clone)]
pub struct AlignEngines {
    pub teacher: TeacherFactory,
    pub perception: ScorerFactory,
    pub reasoning: ScorerFactory,
}

/// Builds the alignment engines once the stage knows its prompts (the shared store and the
/// runtime's prompt list, whose uids the teacher and the experts look prompts up by).
pub type AlignBuilder<'a> = &'a dyn Fn(&Arc<PromptStore>, &[PromptItem]) -> Result<AlignEngines>;

/// The engine factories of a Qwen3-VL RL stage: every generator and the learner load the policy
/// of `weights_dir` on their own device as `kind`; the learner restores `optimizer` when given
/// and keeps the frozen `reference_dir` policy when the loss has a KL term.
#[allow(clippy::too_many_arguments)]
pub fn qwen_engines(
    opts: &RlOptions,
    store: Arc<PromptStore>,
    weights_dir: &Path,
    reference_dir: &Path,
    optimizer: Option<PathBuf>,
    kind: Kind,
    step_offset: u64,
    extra: Option<AlignEngines>,
) -> Engines {
    let (dir, st) = (weights_dir.to_path_buf(), store.clone());
    let policy: PolicyFactory = Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn PolicyEngine>> {
            Ok(Box::new(QwenPolicy::load(&dir, st.clone(), d, kind)?))
        },
    );
    let (dir, rdir, st, o) = (
        weights_dir.to_path_buf(),
        reference_dir.to_path_buf(),
        store,
        opts.clone(),
    );
    let learner: LearnerFactory = Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn LearnerEngine>> {
            Ok(Box::new(QwenLearner::load(
                &dir,
                &rdir,
                optimizer.as_deref(),
                st.clone(),
                o.clone(),
                d,
                kind,
                step_offset,
            )?))
        },
    );
    let dir = weights_dir.to_path_buf();
    let reward: RewardFactory = Arc::new(
        move |_d: DeviceSpec| -> EngineResult<Box<dyn RewardEngine>> {
            Ok(Box::new(SynthReward::load(&dir)?))
        },
    );
    Engines {
        policy,
        learner,
        reward,
        teacher: extra.as_ref().map(|e| e.teacher.clone()),
        perception: extra.as_ref().map(|e| e.perception.clone()),
        reasoning: extra.map(|e| e.reasoning),
    }
}

/// Runs an actor-based RL stage (`rlvr`, or `align` with [`AlignEngines`]) from the checkpoint
/// `input`: builds the prompt list from the RL parquet, the engines on the `[actors]`
/// placement, runs the coordinator (SIGINT/SIGTERM stop it cleanly with a checkpoint), logs one
/// metrics record per step to `run_dir/metrics.jsonl`, writes `checkpoint-<step>/` every
/// `save_every` steps and `final/` at the end (in `run_dir/<name>/`).
pub fn run_actor_stage(
    opts: &RlOptions,
    kind: StageKind,
    ctx: &StageContext,
    input: &Path,
    actors: &ActorsConfig,
    align: Option<AlignBuilder>,
) -> Result<StageSummary> {
    run_actor_stage_with_reward(opts, kind, ctx, input, actors, align, None)
}

/// [`run_actor_stage`] with another reward engine than the verifiable [`SynthReward`] (a
/// custom verifier; tests use one whose accuracy they choose).
pub fn run_actor_stage_with_reward(
    opts: &RlOptions,
    kind: StageKind,
    ctx: &StageContext,
    input: &Path,
    actors: &ActorsConfig,
    align: Option<AlignBuilder>,
    reward: Option<RewardFactory>,
) -> Result<StageSummary> {
    let started = Instant::now();
    let stage = ctx.name.clone();
    let invalid = |message: String| StageError::Invalid {
        stage: stage.clone(),
        message,
    };
    if (kind == StageKind::Align) != align.is_some() {
        return Err(invalid(
            "alignment needs the teacher and expert engines, and only alignment takes them".into(),
        ));
    }
    let resumed = opts
        .resume_from
        .as_deref()
        .map(|d| read_trainer_state(d, kind))
        .transpose()?;
    let weights_dir = opts.resume_from.as_deref().unwrap_or(input);
    let reference_dir = resumed.as_ref().map_or(input, |s| s.input.as_path());
    let processor = Processor::from_dir(weights_dir)?;
    let data = opts
        .data
        .clone()
        .or_else(|| ctx.rl_train_file.clone())
        .ok_or_else(|| invalid("no RL prompts: set `data` to an RL parquet".into()))?;
    let store = Arc::new(PromptStore::load(&processor, &data, opts.limit)?);
    let (items, too_long) = store.items(&processor, opts.passes, opts.max_prompt_tokens)?;
    for t in &too_long {
        tracing::warn!(
            stage = %stage, file = %data.display(), row = t.row, tokens = t.tokens,
            max = opts.max_prompt_tokens, "prompt longer than max_prompt_tokens: left out"
        );
    }
    if items.is_empty() {
        return Err(invalid(format!(
            "{}: every prompt is longer than max_prompt_tokens = {}",
            data.display(),
            opts.max_prompt_tokens
        )));
    }
    let (offset, cursor) = resumed
        .as_ref()
        .map_or((0, 0), |s| (s.steps_done, s.next_cursor));
    if offset >= opts.steps {
        return Err(invalid(format!(
            "resumes after step {offset} but the stage has only {} steps",
            opts.steps
        )));
    }
    let spec = StageSpec {
        name: stage.clone(),
        kind,
        steps: opts.steps - offset,
        prompts_per_step: opts.prompts_per_step,
        samples_per_prompt: opts.samples_per_prompt,
        sampling: opts.sampling.clone(),
        start_cursor: cursor,
        initial_policy_version: offset,
    };
    let optimizer = opts
        .resume_from
        .as_ref()
        .map(|d| d.join(super::sft::OPTIMIZER_STATE));
    let extra = align.map(|build| build(&store, &items)).transpose()?;
    let mut engines = qwen_engines(
        opts,
        store,
        weights_dir,
        reference_dir,
        optimizer,
        ctx.kind,
        offset,
        extra,
    );
    if let Some(r) = reward {
        engines.reward = r;
    }
    let hook = Arc::new(RlCheckpointHook::new(
        ctx,
        kind,
        opts,
        input,
        weights_dir,
        &data,
        offset,
        too_long.iter().map(|t| t.row).collect(),
    )?);
    tracing::info!(
        stage = %stage, kind = kind.as_str(), prompts = items.len(), left_out = too_long.len(),
        steps = spec.steps, from_step = offset, "actor stage starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| invalid(format!("cannot start the tokio runtime: {e}")))?;
    let report = runtime.block_on(async {
        let token = shutdown_on_signals()
            .map_err(|e| invalid(format!("cannot install signal handlers: {e}")))?;
        run_stage_with(
            actors,
            spec,
            opts.stage_options(),
            engines,
            Arc::new(items),
            hook.clone(),
            token,
        )
        .await
        .map_err(|e| invalid(e.to_string()))
    })?;
    let steps = offset + report.steps_done;
    if report.interrupted {
        return Err(invalid(format!(
            "stopped by a signal after step {steps}; resume with resume_from = {}",
            hook.checkpoint_dir(steps).display()
        )));
    }
    let losses: Vec<f64> = report
        .steps
        .iter()
        .map(|r| f64::from(r.loss))
        .filter(|l| l.is_finite())
        .collect();
    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let k = losses.len().min(5);
    Ok(StageSummary {
        name: stage,
        kind: kind.as_str().into(),
        output: hook.final_dir(),
        experts: None,
        steps,
        skipped_steps: hook.skipped_steps(),
        first_loss: mean(&losses[..k]),
        last_loss: mean(&losses[losses.len() - k..]),
        first_eval_loss: None,
        last_eval_loss: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The `rlvr` stage: [`run_actor_stage`] with the verifiable reward.
pub fn run_rlvr(
    cfg: &RlvrConfig,
    ctx: &StageContext,
    input: &Path,
    actors: &ActorsConfig,
) -> Result<StageSummary> {
    let mut opts = RlOptions::from_rlvr(cfg, ctx.seed)?;
    opts.arm = ctx.arm.clone();
    run_actor_stage(&opts, StageKind::Rlvr, ctx, input, actors, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_to_the_paper_settings() {
        let grpo = RlOptions::from_rlvr(&RlvrConfig::default(), 9).unwrap();
        assert_eq!(grpo.loss, PolicyLoss::grpo());
        assert_eq!(grpo.schedule, LrSchedule::Constant);
        assert_eq!((grpo.adamw.lr, grpo.adamw.weight_decay), (1e-6, 0.01));
        assert_eq!(grpo.sampling.seed, 9);
        assert_eq!((grpo.sampling.temperature, grpo.sampling.top_k), (1.0, -1));
        let dapo = RlvrConfig {
            algorithm: RlAlgorithm::Dapo,
            ..RlvrConfig::default()
        };
        let o = RlOptions::from_rlvr(&dapo, 0).unwrap();
        assert_eq!(o.loss, PolicyLoss::dapo());
        assert!(o.dynamic_sampling);
        assert_eq!(o.max_gen_batches, 10);
        assert_eq!(
            o.stage_options().dynamic_sampling,
            Some(DynamicSampling {
                max_gen_batches: 10,
                gen_batch_size: 32
            })
        );
        assert_eq!(o.overlong, Some(OverlongBuffer::dapo(8192)));
        let gspo = RlvrConfig {
            algorithm: RlAlgorithm::Gspo,
            lr_scheduler: LrScheduler::Cosine,
            mini_batches: 2,
            ..RlvrConfig::default()
        };
        let o = RlOptions::from_rlvr(&gspo, 0).unwrap();
        assert_eq!(o.loss, PolicyLoss::gspo());
        assert_eq!(o.stage_options(), StageOptions::default());
        // 5 % of 1500 steps × 2 updates
        assert_eq!(
            o.schedule,
            LrSchedule::CosineWithWarmup {
                warmup_steps: 150,
                total_steps: 3000
            }
        );
        // explicit options win over the preset; c = 0 turns the dual clip off
        let custom = RlvrConfig {
            clip_ratio_low: Some(0.1),
            clip_ratio_high: Some(0.3),
            clip_ratio_c: Some(0.0),
            kl_coef: 0.01,
            kl_estimator: KlEstimatorName::K1,
            ..RlvrConfig::default()
        };
        let o = RlOptions::from_rlvr(&custom, 0).unwrap();
        assert_eq!(
            o.loss.clip,
            Clip::Decoupled {
                low: 0.1,
                high: 0.3
            }
        );
        assert_eq!(o.loss.dual_clip, None);
        assert_eq!(
            o.loss.kl,
            KlPenalty::Loss {
                estimator: KlEstimator::K1,
                coef: 0.01,
                straight_through: false
            }
        );
    }

    #[test]
    fn sample_seeds_differ_by_seed_uid_and_index() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..4 {
            for uid in 0..16 {
                for j in 0..8 {
                    assert!(seen.insert(sample_seed(seed, uid, j)));
                }
            }
        }
        assert_eq!(sample_seed(1, 2, 3), sample_seed(1, 2, 3));
    }
}
