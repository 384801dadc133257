//! The coordinator: drives one stage (alignment or RLVR) through the actors, as a three-phase
//! pipeline joined by bounded queues:
//!
//! ```text
//! generation ──[queue_capacity]──▶ scoring ──[queue_capacity]──▶ learning
//!  (generators pull prompts;        (reward; alignment: experts      (staleness check, learner
//!   teacher demos prefetched)        score, then BT-update)            step, publish v+1)
//! ```
//!
//! # Staleness
//!
//! Step `s` trains when the policy is at `base + s`. Its rollouts may only be generated once
//! version `base + s - max_staleness` is published (the gate in `generation_phase`); a
//! generator always loads the newest version before a request. So every rollout's staleness
//! (learner version at training minus the rollout's version) is at most `max_staleness`, and
//! `max_staleness = 0` is strictly on-policy. The learning phase checks the bound on every
//! sample and records the histogram. With `sync = true` the same code runs with every overlap
//! removed (each phase awaited in turn, experts and learner one after the other).
//!
//! # Exactly once
//!
//! Prompts are taken in order from `start_cursor`, `prompts_per_step` per step. A failed request
//! is retried on the restarted actor ([`super::supervisor::call`]); steps are applied in order
//! and a retried learner step is recognised by its expected version, so the ledger counts every
//! prompt as trained exactly once, and the checkpoint's `next_cursor` is exactly the first
//! prompt not trained.
//!
//! # Shutdown
//!
//! When the `shutdown` token is cancelled (SIGINT/SIGTERM, see [`super::shutdown`]), generation
//! takes no new prompts; steps already in flight are finished within `deadlines.drain_secs`;
//! then the actors are stopped and the checkpoint hook is called. The same hook is called when
//! the run fails (with the error) and when it finishes.
//!
//! # Periodic checkpoints
//!
//! After every trained step the learning phase hands the step's record (with the learner's
//! metrics) to [`CheckpointHook::after_step`]; when the hook asks for it, the policy state right
//! after that step is checkpointed ([`CheckpointReason::Periodic`]) before the next step trains.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::Actor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{self, ActorsConfig, LEARNER, PERCEPTION_EXPERT, REASONING_EXPERT, TEACHER};
use super::engine::{DemoOutcome, Engines};
use super::errors::StageError;
use super::expert::{BtReply, ExpertMsg, ScoreReply};
use super::generator::{GenerateRequest, GeneratorMsg};
use super::learner::{LearnerMsg, StepReply};
use super::messages::{
    BtPair, Demo, DiscStats, PromptItem, RewardOutcome, Rollout, SamplingParams, ScoreItem,
    ScoredSample, Segment, StageKind, TrainBatch, WeightsSnapshot,
};
use super::reward::RewardMsg;
use super::supervisor::{
    Kit, Roster, RunCtx, Slot, StuckReport, Supervisor, SupervisorArgs, SupervisorMsg, call,
    try_call, wait_restart,
};
use super::teacher::TeacherMsg;
use super::weights::WeightsBus;
use crate::telemetry;

/// What a stage run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Label of the run's metrics (`stage`), e.g. "align".
    pub name: String,
    pub kind: StageKind,
    /// Steps to run (fewer if the prompts run out; the last partial step is dropped).
    pub steps: u64,
    pub prompts_per_step: usize,
    /// Samples per prompt (the group size).
    pub samples_per_prompt: usize,
    pub sampling: SamplingParams,
    /// Index of the first prompt to use (resume position).
    pub start_cursor: usize,
    /// Version of the policy weights the learner starts with.
    pub initial_policy_version: u64,
}

/// Why the checkpoint hook is called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CheckpointReason {
    Finished,
    /// A shutdown signal: in-flight steps were drained first.
    Interrupted,
    /// The run failed; the error says what failed.
    Failed(String),
    /// A periodic checkpoint requested by [`CheckpointHook::after_step`]; the run goes on.
    Periodic,
}

/// Everything needed to resume a stage exactly where it stopped.
#[derive(Debug, Clone)]
pub struct StageCheckpoint {
    pub stage: String,
    pub reason: CheckpointReason,
    pub steps_done: u64,
    /// Index of the first prompt not yet trained.
    pub next_cursor: usize,
    /// Latest policy / expert weights (the versions every trained step has reached).
    pub policy: Option<Arc<WeightsSnapshot>>,
    pub perception: Option<Arc<WeightsSnapshot>>,
    pub reasoning: Option<Arc<WeightsSnapshot>>,
}

/// Saves a [`StageCheckpoint`] (runs on a blocking thread; may write files).
pub trait CheckpointHook: Send + Sync {
    fn checkpoint(&self, ckpt: &StageCheckpoint) -> Result<(), String>;
    /// Called by the learning phase after every trained step, in step order (runs on a blocking
    /// thread; may log the step's metrics). Returning `true` asks for a periodic checkpoint of
    /// the state right after this step ([`CheckpointReason::Periodic`]), taken before the next
    /// step is trained. The default logs nothing and asks for none.
    fn after_step(&self, _record: &StepRecord) -> Result<bool, String> {
        Ok(false)
    }
}

/// A hook that saves nothing.
pub struct NoCheckpoint;

impl CheckpointHook for NoCheckpoint {
    fn checkpoint(&self, _: &StageCheckpoint) -> Result<(), String> {
        Ok(())
    }
}

/// One trained step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// Policy version after the step.
    pub version: u64,
    pub loss: f32,
    pub rollouts: usize,
    pub tokens: u64,
    /// Largest staleness among the step's rollouts.
    pub max_staleness: u64,
    /// Wall seconds of the step's generation, of its learner call, and since the stage start
    /// when the step finished.
    pub gen_secs: f64,
    pub learn_secs: f64,
    pub done_at_secs: f64,
    pub perception: Option<DiscStats>,
    pub reasoning: Option<DiscStats>,
    /// The learner's named step metrics ([`super::messages::StepStats::extra`]).
    pub extra: Vec<(String, f64)>,
}

/// Busy time of one actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorBusy {
    pub actor: String,
    pub device: String,
    pub busy_secs: f64,
    pub wall_secs: f64,
    pub ratio: f64,
    pub jobs: u64,
}

/// What a stage run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub steps_done: u64,
    pub next_cursor: usize,
    pub interrupted: bool,
    pub wall_secs: f64,
    pub policy_version: u64,
    pub rollouts: u64,
    pub tokens: u64,
    /// `staleness_counts[d]` = rollouts trained with staleness `d`.
    pub staleness_counts: Vec<u64>,
    /// Times each prompt uid was trained (exactly once each, by construction).
    pub processed: BTreeMap<u64, u32>,
    pub restarts: BTreeMap<String, u32>,
    pub stuck: Vec<StuckReport>,
    pub faults_injected: u64,
    pub busy: Vec<ActorBusy>,
    pub steps: Vec<StepRecord>,
}

impl StageReport {
    pub fn max_staleness(&self) -> Option<u64> {
        self.staleness_counts
            .iter()
            .rposition(|&c| c > 0)
            .map(|d| d as u64)
    }
}

/// Shared state of the three phases.
struct Pipe {
    ctx: Arc<RunCtx>,
    roster: Arc<Roster>,
    kit: Arc<Kit>,
    spec: StageSpec,
    prompts: Arc<Vec<PromptItem>>,
    /// Policy version when the stage started: step `s` trains at `base + s`.
    base: u64,
    steps: u64,
    staleness: u64,
    sync: bool,
    started: Instant,
    /// Written by the learning phase (and the scoring phase for expert stats).
    ledger: Mutex<Ledger>,
    /// Told about every step; may ask for periodic checkpoints.
    hook: Arc<dyn CheckpointHook>,
    /// Alignment: number of steps whose expert (Bradley–Terry) update has finished, so the
    /// learning phase can put the experts' stats of step `s` into step `s`'s record.
    bt_done: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Ledger {
    steps_done: u64,
    processed: BTreeMap<u64, u32>,
    staleness_counts: Vec<u64>,
    rollouts: u64,
    tokens: u64,
    records: BTreeMap<u64, StepRecord>,
}

/// A generated step on its way to scoring.
struct GenBatch {
    step: u64,
    prompts: Arc<Vec<PromptItem>>,
    rollouts: Vec<Rollout>,
    demos: Demos,
    gen_secs: f64,
}

enum Demos {
    None,
    Ready(Vec<Demo>),
    Pending(JoinHandle<Result<Vec<Demo>, StageError>>),
}

/// A scored step on its way to the learner.
struct ScoredBatch {
    batch: Arc<TrainBatch>,
    gen_secs: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup(stage: &str, msg: impl Into<String>) -> StageError {
    StageError::Setup {
        stage: stage.to_string(),
        msg: msg.into(),
    }
}

fn invariant(p: &Pipe, msg: String) -> StageError {
    StageError::Invariant {
        stage: p.spec.name.clone(),
        msg,
    }
}

/// Runs `a` and `b` concurrently, or one after the other in `sync` mode.
async fn both<A, B>(sync: bool, a: impl Future<Output = A>, b: impl Future<Output = B>) -> (A, B) {
    if sync {
        let x = a.await;
        (x, b.await)
    } else {
        tokio::join!(a, b)
    }
}

fn check_spec(
    cfg: &ActorsConfig,
    spec: &StageSpec,
    engines: &Engines,
    n_prompts: usize,
) -> Result<u64, StageError> {
    cfg.validate()?;
    let name = &spec.name;
    if spec.prompts_per_step == 0 || spec.samples_per_prompt == 0 {
        return Err(setup(
            name,
            "prompts_per_step and samples_per_prompt must be at least 1",
        ));
    }
    if spec.kind == StageKind::Align
        && (engines.teacher.is_none()
            || engines.perception.is_none()
            || engines.reasoning.is_none())
    {
        return Err(setup(
            name,
            "alignment needs a teacher backend and perception and reasoning expert engines",
        ));
    }
    if spec.start_cursor > n_prompts {
        return Err(setup(
            name,
            format!(
                "start_cursor {} is past the {n_prompts} prompts",
                spec.start_cursor
            ),
        ));
    }
    let available = ((n_prompts - spec.start_cursor) / spec.prompts_per_step) as u64;
    let steps = spec.steps.min(available);
    if steps == 0 {
        return Err(setup(
            name,
            format!(
                "no full step: {} prompts left from cursor {}, {} per step",
                n_prompts - spec.start_cursor,
                spec.start_cursor,
                spec.prompts_per_step
            ),
        ));
    }
    Ok(steps)
}

/// Runs a stage to the end, to a shutdown signal (`shutdown` cancelled), or to a fatal error.
/// Always calls `hook` before returning (reason `Finished`, `Interrupted` or `Failed`).
pub async fn run_stage(
    cfg: &ActorsConfig,
    spec: StageSpec,
    engines: Engines,
    prompts: Arc<Vec<PromptItem>>,
    hook: Arc<dyn CheckpointHook>,
    shutdown: CancellationToken,
) -> Result<StageReport, StageError> {
    let steps = check_spec(cfg, &spec, &engines, prompts.len())?;
    let align = spec.kind == StageKind::Align;
    let ctx = Arc::new(RunCtx::new(&spec.name, cfg));
    let kit = Arc::new(Kit {
        engines,
        policy: WeightsBus::new(),
        perception: WeightsBus::new(),
        reasoning: WeightsBus::new(),
        demo_cache: Default::default(),
        initial_policy_version: spec.initial_policy_version,
    });
    let roster = Arc::new(Roster {
        generators: (0..cfg.placement.generators.len())
            .map(|i| Slot::new(&config::generator_name(i)))
            .collect(),
        teacher: align.then(|| Slot::new(TEACHER)),
        perception: align.then(|| Slot::new(PERCEPTION_EXPERT)),
        reasoning: align.then(|| Slot::new(REASONING_EXPERT)),
        reward: Slot::new(config::REWARD),
        learner: Slot::new(LEARNER),
    });
    let (sup, sup_handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            ctx: ctx.clone(),
            kit: kit.clone(),
            roster: roster.clone(),
        },
    )
    .await
    .map_err(|e| setup(&spec.name, format!("cannot start the supervisor: {e}")))?;
    let ready = sup
        .call(
            SupervisorMsg::Ready,
            Some(config::secs(cfg.deadlines.restart_secs)),
        )
        .await;
    let ready = match ready {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => Err(setup(
            &spec.name,
            "actors did not start within deadlines.restart_secs",
        )),
    };
    if let Err(e) = ready {
        ctx.stopping.store(true, Ordering::SeqCst);
        sup.stop(None);
        let _ = sup_handle.await;
        return Err(e);
    }

    let pipe = Arc::new(Pipe {
        base: kit.policy.version().unwrap_or(spec.initial_policy_version),
        staleness: cfg.effective_staleness(),
        sync: cfg.sync,
        ctx: ctx.clone(),
        roster,
        kit: kit.clone(),
        prompts,
        steps,
        started: Instant::now(),
        ledger: Mutex::new(Ledger::default()),
        hook: hook.clone(),
        bt_done: tokio::sync::watch::Sender::new(0),
        spec,
    });
    tracing::info!(
        stage = %pipe.spec.name, steps, staleness = pipe.staleness, sync = pipe.sync,
        generators = pipe.roster.generators.len(), "stage starting"
    );
    let cap = cfg.queue_capacity;
    let (tx1, rx1) = mpsc::channel(cap);
    let (tx2, rx2) = mpsc::channel(cap);
    let phases = [
        tokio::spawn(guard(
            pipe.clone(),
            generation_phase(pipe.clone(), tx1, shutdown.clone()),
        )),
        tokio::spawn(guard(pipe.clone(), scoring_phase(pipe.clone(), rx1, tx2))),
        tokio::spawn(guard(pipe.clone(), learning_phase(pipe.clone(), rx2))),
    ];
    // After a shutdown signal, in-flight work has `drain_secs` to finish.
    let drain = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let d = config::secs(cfg.deadlines.drain_secs);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(d).await;
            ctx.fail(StageError::Invariant {
                stage: ctx.stage.clone(),
                msg: format!(
                    "in-flight steps did not drain within {} s of the shutdown signal",
                    d.as_secs_f64()
                ),
            });
        })
    };
    for h in phases {
        if let Err(e) = h.await {
            ctx.fail(invariant(&pipe, format!("a pipeline phase panicked: {e}")));
        }
    }
    drain.abort();

    ctx.stopping.store(true, Ordering::SeqCst);
    sup.stop(Some("stage over".into()));
    let _ = tokio::time::timeout(Duration::from_secs(30), sup_handle).await;

    let fatal = ctx.fatal();
    let interrupted = shutdown.is_cancelled() && fatal.is_none();
    let report = build_report(&pipe, interrupted);
    let reason = match &fatal {
        Some(e) => CheckpointReason::Failed(e.to_string()),
        None if interrupted => CheckpointReason::Interrupted,
        None => CheckpointReason::Finished,
    };
    let ckpt = StageCheckpoint {
        stage: pipe.spec.name.clone(),
        reason: reason.clone(),
        steps_done: report.steps_done,
        next_cursor: report.next_cursor,
        policy: kit.policy.latest(),
        perception: kit.perception.latest(),
        reasoning: kit.reasoning.latest(),
    };
    let saved = tokio::task::spawn_blocking(move || hook.checkpoint(&ckpt))
        .await
        .unwrap_or_else(|e| Err(format!("checkpoint hook panicked: {e}")));
    tracing::info!(stage = %pipe.spec.name, steps = report.steps_done, ?reason, "stage over");
    if let Some(e) = fatal {
        return Err(e);
    }
    saved.map_err(|msg| StageError::Checkpoint {
        reason: format!("{reason:?}"),
        msg,
    })?;
    Ok(report)
}

/// Turns a phase's error into the run's fatal error (which cancels the other phases).
async fn guard(p: Arc<Pipe>, f: impl Future<Output = Result<(), StageError>>) {
    if let Err(e) = f.await {
        p.ctx.fail(e);
    }
}

fn build_report(p: &Pipe, interrupted: bool) -> StageReport {
    let l = lock(&p.ledger);
    let busy = p
        .ctx
        .actors
        .iter()
        .filter(|(_, a)| a.meter.jobs() > 0)
        .map(|(name, a)| ActorBusy {
            actor: name.clone(),
            device: a.device.to_string(),
            busy_secs: a.meter.busy_secs(),
            wall_secs: a.meter.wall_secs(),
            ratio: a.meter.ratio(),
            jobs: a.meter.jobs(),
        })
        .collect();
    StageReport {
        stage: p.spec.name.clone(),
        steps_done: l.steps_done,
        next_cursor: p.spec.start_cursor + l.steps_done as usize * p.spec.prompts_per_step,
        interrupted,
        wall_secs: p.started.elapsed().as_secs_f64(),
        policy_version: p.kit.policy.version().unwrap_or(p.base),
        rollouts: l.rollouts,
        tokens: l.tokens,
        staleness_counts: l.staleness_counts.clone(),
        processed: l.processed.clone(),
        restarts: p.ctx.restarts(),
        stuck: p.ctx.stuck_reports(),
        faults_injected: p.ctx.actors.values().map(|a| a.faults.injected()).sum(),
        busy,
        steps: l.records.values().cloned().collect(),
    }
}

fn queue_depth<T>(p: &Pipe, queue: &str, tx: &mpsc::Sender<T>) {
    let depth = tx.max_capacity() - tx.capacity();
    metrics::gauge!(telemetry::QUEUE_DEPTH, "stage" => p.spec.name.clone(), "queue" => queue.to_string())
        .set(depth as f64);
}

/// Sum of all request deadlines: the longest a step can legitimately take.
fn gate_deadline(cfg: &ActorsConfig) -> Duration {
    let d = &cfg.deadlines;
    config::secs(
        d.generate_secs
            + d.teacher_secs
            + d.reward_secs
            + d.score_secs
            + d.bt_step_secs
            + d.learn_secs
            + 2.0 * d.restart_secs,
    )
}

/// Phase 1: for each step, wait for the staleness gate, then generate its rollouts (and
/// prefetch its teacher demonstrations).
async fn generation_phase(
    p: Arc<Pipe>,
    tx: mpsc::Sender<GenBatch>,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let b = p.spec.prompts_per_step;
    for s in 0..p.steps {
        if shutdown.is_cancelled() {
            break;
        }
        let need = p.base + s.saturating_sub(p.staleness);
        let gate = gate_deadline(&p.ctx.cfg);
        tokio::select! {
            _ = p.kit.policy.wait_for_version(need) => {}
            _ = shutdown.cancelled() => break,
            _ = p.ctx.abort.cancelled() => return Ok(()),
            _ = tokio::time::sleep(gate) => {
                return Err(invariant(&p, format!(
                    "waited {} s for {LEARNER} to publish policy v{need} (step {s})",
                    gate.as_secs_f64()
                )));
            }
        }
        let lo = p.spec.start_cursor + s as usize * b;
        let prompts = Arc::new(p.prompts[lo..lo + b].to_vec());
        let t0 = Instant::now();
        let demos = if p.spec.kind == StageKind::Align {
            let fut = fetch_demos(p.clone(), prompts.clone());
            if p.sync {
                Demos::Ready(fut.await?)
            } else {
                Demos::Pending(tokio::spawn(fut))
            }
        } else {
            Demos::None
        };
        let rollouts = generate_step(&p, &prompts, need).await?;
        let batch = GenBatch {
            step: s,
            prompts,
            rollouts,
            demos,
            gen_secs: t0.elapsed().as_secs_f64(),
        };
        if tx.send(batch).await.is_err() {
            return Ok(()); // a later phase ended; it reports why
        }
        queue_depth(&p, "rollouts", &tx);
    }
    Ok(())
}

/// The teacher's demonstrations for a step's prompts. Prompts the teacher reports as skipped
/// (never a valid answer, under `on_invalid = "skip"`) have no demonstration: their
/// Bradley–Terry pairs are left out of the step ([`bt_pairs`] pairs only prompts with a demo).
async fn fetch_demos(p: Arc<Pipe>, prompts: Arc<Vec<PromptItem>>) -> Result<Vec<Demo>, StageError> {
    let slot = p.roster.teacher.as_ref().expect("alignment has a teacher");
    let deadline = config::secs(p.ctx.cfg.deadlines.teacher_secs);
    let outcomes = call(&p.ctx, slot, "demonstrate", deadline, |r| {
        TeacherMsg::Outcomes(prompts.clone(), r)
    })
    .await?;
    if outcomes.len() != prompts.len()
        || outcomes
            .iter()
            .zip(prompts.iter())
            .any(|(d, q)| d.prompt_uid() != q.uid)
    {
        return Err(invariant(
            &p,
            format!("{TEACHER} returned demonstrations for the wrong prompts"),
        ));
    }
    let mut demos = Vec::with_capacity(outcomes.len());
    let mut skipped = Vec::new();
    for o in outcomes {
        match o {
            DemoOutcome::Demo(d) => demos.push(d),
            DemoOutcome::Skipped { prompt_uid, .. } => skipped.push(prompt_uid),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(
            "stage {}: no teacher demonstration for prompt(s) {skipped:?}; their expert pairs \
             are left out of this step",
            p.spec.name
        );
    }
    Ok(demos)
}

/// Generates `n` samples for every prompt of a step. Replicas pull chunks of
/// `prompts_per_request` prompts from a shared queue, so faster replicas take more work; a
/// chunk whose replica fails goes back to the front of the queue for any replica, and the
/// failed replica rejoins once restarted.
async fn generate_step(
    p: &Pipe,
    prompts: &[PromptItem],
    min_version: u64,
) -> Result<Vec<Rollout>, StageError> {
    let chunks: Vec<Vec<PromptItem>> = prompts
        .chunks(p.ctx.cfg.prompts_per_request)
        .map(|c| c.to_vec())
        .collect();
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..chunks.len()).collect());
    let results: Mutex<Vec<Option<Vec<Rollout>>>> = Mutex::new(vec![None; chunks.len()]);
    let deadline = config::secs(p.ctx.cfg.deadlines.generate_secs);
    let workers = p.roster.generators.iter().map(|slot| async {
        loop {
            let Some(i) = lock(&queue).pop_front() else {
                return Ok::<(), StageError>(());
            };
            let req = GenerateRequest {
                prompts: chunks[i].clone(),
                n: p.spec.samples_per_prompt,
                params: p.spec.sampling.clone(),
                min_version,
            };
            let attempt = try_call(&p.ctx, slot, "generate", deadline, |reply| {
                GeneratorMsg::Generate(req, reply)
            })
            .await?;
            match attempt {
                Ok(r) => lock(&results)[i] = Some(r),
                Err(epoch) => {
                    lock(&queue).push_front(i);
                    wait_restart(&p.ctx, slot, epoch).await?;
                }
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = results.iter().position(Option::is_none) {
        return Err(invariant(
            p,
            format!("generation chunk {i} was never produced"),
        ));
    }
    Ok(results.into_iter().flatten().flatten().collect())
}

/// Phase 2: reward for every rollout; in alignment, expert scores and then the experts'
/// Bradley–Terry update on (teacher, student) pairs, which overlaps the learner's step.
async fn scoring_phase(
    p: Arc<Pipe>,
    mut rx: mpsc::Receiver<GenBatch>,
    tx: mpsc::Sender<ScoredBatch>,
) -> Result<(), StageError> {
    let align = p.spec.kind == StageKind::Align;
    let d = p.ctx.cfg.deadlines.clone();
    let mut expert_versions = (0u64, 0u64);
    if align {
        let (pv, rv) = both(
            false,
            call(
                &p.ctx,
                expert(&p, true),
                "version",
                config::secs(d.score_secs),
                ExpertMsg::Version,
            ),
            call(
                &p.ctx,
                expert(&p, false),
                "version",
                config::secs(d.score_secs),
                ExpertMsg::Version,
            ),
        )
        .await;
        expert_versions = (pv?, rv?);
    }
    while let Some(gb) = rx.recv().await {
        let step = gb.step;
        let rollouts = Arc::new(gb.rollouts);
        let outcomes = call(
            &p.ctx,
            &p.roster.reward,
            "evaluate",
            config::secs(d.reward_secs),
            |r| RewardMsg::Evaluate {
                prompts: gb.prompts.clone(),
                rollouts: rollouts.clone(),
                reply: r,
            },
        )
        .await?;
        if outcomes.len() != rollouts.len() {
            return Err(invariant(
                &p,
                format!(
                    "reward returned {} outcomes for {} rollouts",
                    outcomes.len(),
                    rollouts.len()
                ),
            ));
        }
        let by_uid: BTreeMap<u64, &PromptItem> = gb.prompts.iter().map(|q| (q.uid, q)).collect();
        let mut samples: Vec<ScoredSample> = rollouts
            .iter()
            .zip(outcomes)
            .map(|(r, o)| ScoredSample {
                prompt: by_uid[&r.prompt_uid].clone(),
                rollout: r.clone(),
                reward: o,
                caption_score: None,
                reasoning_score: None,
                perception_version: None,
                reasoning_version: None,
                teacher_source: None,
            })
            .collect();
        let mut pairs = None;
        if align {
            let demos = match gb.demos {
                Demos::Ready(d) => d,
                Demos::Pending(h) => h
                    .await
                    .map_err(|e| invariant(&p, format!("teacher prefetch panicked: {e}")))??,
                Demos::None => Vec::new(),
            };
            score_samples(&p, &mut samples).await?;
            pairs = Some(bt_pairs(&samples, &demos));
        }
        let batch = Arc::new(TrainBatch {
            step,
            kind: p.spec.kind,
            group_size: p.spec.samples_per_prompt,
            samples,
        });
        let scored = ScoredBatch {
            batch,
            gen_secs: gb.gen_secs,
        };
        if p.sync
            && let Some((pp, rp)) = pairs.take()
        {
            bt_update(&p, step, &mut expert_versions, pp, rp).await?;
        }
        if tx.send(scored).await.is_err() {
            return Ok(());
        }
        queue_depth(&p, "scored", &tx);
        if let Some((pp, rp)) = pairs {
            bt_update(&p, step, &mut expert_versions, pp, rp).await?;
        }
    }
    Ok(())
}

fn expert(p: &Pipe, perception: bool) -> &Slot<ExpertMsg> {
    let s = if perception {
        &p.roster.perception
    } else {
        &p.roster.reasoning
    };
    s.as_ref().expect("alignment has both experts")
}

/// Scores every valid caption with the perception expert and every valid reasoning with the
/// reasoning expert (concurrently unless `sync`).
async fn score_samples(p: &Pipe, samples: &mut [ScoredSample]) -> Result<(), StageError> {
    let deadline = config::secs(p.ctx.cfg.deadlines.score_secs);
    let pick = |f: fn(&RewardOutcome) -> &Option<Segment>| {
        let (idx, items): (Vec<usize>, Vec<ScoreItem>) = samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                f(&s.reward).clone().map(|segment| {
                    let item = ScoreItem {
                        prompt_uid: s.rollout.prompt_uid,
                        segment,
                    };
                    (i, item)
                })
            })
            .unzip();
        (idx, Arc::new(items))
    };
    let (cap_idx, caps) = pick(|o| &o.caption);
    let (cot_idx, cots) = pick(|o| &o.reasoning);
    let (pc, rc) = both(
        p.sync,
        call(&p.ctx, expert(p, true), "score", deadline, |r| {
            ExpertMsg::Score(caps.clone(), r)
        }),
        call(&p.ctx, expert(p, false), "score", deadline, |r| {
            ExpertMsg::Score(cots.clone(), r)
        }),
    )
    .await;
    let (pc, rc): (ScoreReply, ScoreReply) = (pc?, rc?);
    for (i, x) in cap_idx.into_iter().zip(pc.scores) {
        samples[i].caption_score = Some(x);
        samples[i].perception_version = Some(pc.version);
    }
    for (i, x) in cot_idx.into_iter().zip(rc.scores) {
        samples[i].reasoning_score = Some(x);
        samples[i].reasoning_version = Some(rc.version);
    }
    Ok(())
}

/// (teacher ≻ student) pairs for both experts, from every well-formatted sample; each sample
/// records the teacher source it was paired with.
fn bt_pairs(samples: &[ScoredSample], demos: &[Demo]) -> (Vec<BtPair>, Vec<BtPair>) {
    let by_uid: BTreeMap<u64, &Demo> = demos.iter().map(|d| (d.prompt_uid, d)).collect();
    let (mut pp, mut rp) = (Vec::new(), Vec::new());
    for s in samples {
        let Some(d) = by_uid.get(&s.rollout.prompt_uid) else {
            continue;
        };
        if let Some(c) = &s.reward.caption {
            pp.push(BtPair {
                prompt_uid: d.prompt_uid,
                chosen: d.caption.clone(),
                rejected: c.clone(),
            });
        }
        if let Some(r) = &s.reward.reasoning {
            rp.push(BtPair {
                prompt_uid: d.prompt_uid,
                chosen: d.reasoning.clone(),
                rejected: r.clone(),
            });
        }
    }
    (pp, rp)
}

/// One Bradley–Terry update of each expert (skipped for an expert with no pairs).
async fn bt_update(
    p: &Pipe,
    step: u64,
    versions: &mut (u64, u64),
    pp: Vec<BtPair>,
    rp: Vec<BtPair>,
) -> Result<(), StageError> {
    let deadline = config::secs(p.ctx.cfg.deadlines.bt_step_secs);
    let (pp, rp) = (Arc::new(pp), Arc::new(rp));
    let (ev_p, ev_r) = *versions;
    let upd = |perception: bool, ev: u64, pairs: Arc<Vec<BtPair>>| async move {
        if pairs.is_empty() {
            return Ok(None);
        }
        call(&p.ctx, expert(p, perception), "bt_step", deadline, |r| {
            ExpertMsg::BtStep {
                expected_version: ev,
                pairs: pairs.clone(),
                reply: r,
            }
        })
        .await
        .map(Some)
    };
    let (a, b) = both(p.sync, upd(true, ev_p, pp), upd(false, ev_r, rp)).await;
    let (a, b): (Option<BtReply>, Option<BtReply>) = (a?, b?);
    if a.is_some() {
        versions.0 += 1;
    }
    if b.is_some() {
        versions.1 += 1;
    }
    {
        let mut l = lock(&p.ledger);
        let rec = l.records.entry(step).or_default();
        rec.perception = a.map(|r| r.stats);
        rec.reasoning = b.map(|r| r.stats);
    }
    p.bt_done.send_modify(|n| *n = (*n).max(step + 1));
    Ok(())
}

/// Hands a trained step to the hook and, when it asks for one, saves a periodic checkpoint of
/// the policy right after that step (no later step can be trained meanwhile: this runs inside
/// the learning phase).
async fn after_step(p: &Arc<Pipe>, record: StepRecord, steps_done: u64) -> Result<(), StageError> {
    let hook = p.hook.clone();
    let checkpoint_err = |msg: String| StageError::Checkpoint {
        reason: format!("{:?}", CheckpointReason::Periodic),
        msg,
    };
    let wanted = tokio::task::spawn_blocking(move || hook.after_step(&record))
        .await
        .unwrap_or_else(|e| Err(format!("checkpoint hook panicked: {e}")))
        .map_err(checkpoint_err)?;
    if !wanted {
        return Ok(());
    }
    let ckpt = StageCheckpoint {
        stage: p.spec.name.clone(),
        reason: CheckpointReason::Periodic,
        steps_done,
        next_cursor: p.spec.start_cursor + steps_done as usize * p.spec.prompts_per_step,
        policy: p.kit.policy.latest(),
        perception: p.kit.perception.latest(),
        reasoning: p.kit.reasoning.latest(),
    };
    let hook = p.hook.clone();
    tokio::task::spawn_blocking(move || hook.checkpoint(&ckpt))
        .await
        .unwrap_or_else(|e| Err(format!("checkpoint hook panicked: {e}")))
        .map_err(checkpoint_err)
}

/// Phase 3: check the staleness bound, train, count every prompt as processed.
async fn learning_phase(
    p: Arc<Pipe>,
    mut rx: mpsc::Receiver<ScoredBatch>,
) -> Result<(), StageError> {
    let deadline = config::secs(p.ctx.cfg.deadlines.learn_secs);
    let stage = p.spec.name.clone();
    let mut last_done = Instant::now();
    while let Some(sb) = rx.recv().await {
        let step = sb.batch.step;
        let ev = p.base + step;
        let mut max_st = 0;
        let mut tokens = 0u64;
        for s in &sb.batch.samples {
            let v = s.rollout.policy_version;
            if v > ev || ev - v > p.staleness {
                return Err(invariant(
                    &p,
                    format!(
                        "rollout of prompt {} made by policy v{v} reached the learner at v{ev} (bound {})",
                        s.rollout.prompt_uid, p.staleness
                    ),
                ));
            }
            max_st = max_st.max(ev - v);
            tokens += s.rollout.response_ids.len() as u64;
            metrics::histogram!(telemetry::STALENESS, "stage" => stage.clone())
                .record((ev - v) as f64);
        }
        let t0 = Instant::now();
        let reply: StepReply = call(&p.ctx, &p.roster.learner, "learn", deadline, |r| {
            LearnerMsg::Step {
                expected_version: ev,
                batch: sb.batch.clone(),
                reply: r,
            }
        })
        .await?;
        let learn_secs = t0.elapsed().as_secs_f64();
        if p.spec.kind == StageKind::Align {
            // the experts' update of this step runs beside the learner's: wait for it (within
            // its own deadline) so the step's record carries the experts' stats
            let bt_deadline = config::secs(p.ctx.cfg.deadlines.bt_step_secs);
            let mut done = p.bt_done.subscribe();
            tokio::select! {
                r = tokio::time::timeout(bt_deadline, done.wait_for(|n| *n > step)) => {
                    if r.is_err() {
                        tracing::warn!(stage = %stage, step, "expert update not done by its deadline: step recorded without it");
                    }
                }
                // a failed phase aborts the run: stop waiting
                _ = p.ctx.abort.cancelled() => return Ok(()),
            }
        }
        let n = sb.batch.samples.len();
        // the ledger lock is a std mutex: scoped so that it is never held across an await
        let (record, steps_done) = {
            let mut l = lock(&p.ledger);
            let mut uids: Vec<u64> = sb
                .batch
                .samples
                .iter()
                .map(|s| s.rollout.prompt_uid)
                .collect();
            uids.dedup();
            for uid in uids {
                let c = l.processed.entry(uid).or_default();
                *c += 1;
                if *c > 1 {
                    return Err(invariant(&p, format!("prompt {uid} was trained twice")));
                }
            }
            for s in &sb.batch.samples {
                let d = (ev - s.rollout.policy_version) as usize;
                if l.staleness_counts.len() <= d {
                    l.staleness_counts.resize(d + 1, 0);
                }
                l.staleness_counts[d] += 1;
            }
            l.steps_done += 1;
            l.rollouts += n as u64;
            l.tokens += tokens;
            let rec = l.records.entry(step).or_default();
            rec.step = step;
            rec.version = reply.stats.version;
            rec.loss = reply.stats.loss;
            rec.rollouts = n;
            rec.tokens = tokens;
            rec.max_staleness = max_st;
            rec.gen_secs = sb.gen_secs;
            rec.learn_secs = learn_secs;
            rec.done_at_secs = p.started.elapsed().as_secs_f64();
            rec.extra = reply.stats.extra.clone();
            (rec.clone(), l.steps_done)
        };
        after_step(&p, record, steps_done).await?;
        let dt = last_done.elapsed().as_secs_f64().max(1e-9);
        last_done = Instant::now();
        metrics::counter!(telemetry::STEPS_TOTAL, "stage" => stage.clone()).increment(1);
        metrics::histogram!(telemetry::STEP_SECONDS, "stage" => stage.clone()).record(dt);
        metrics::gauge!(telemetry::ROLLOUTS_PER_SECOND, "stage" => stage.clone())
            .set(n as f64 / dt);
        metrics::gauge!(telemetry::TOKENS_PER_SECOND, "stage" => stage.clone())
            .set(tokens as f64 / dt);
        for a in p.ctx.actors.values() {
            a.meter.publish();
        }
        tracing::debug!(stage = %stage, step, version = reply.stats.version, loss = reply.stats.loss, "step done");
    }
    Ok(())
}
