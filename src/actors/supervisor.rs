//! Supervision: the shared state of one stage run ([`RunCtx`]), the restartable actor slots
//! ([`Slot`]), the deadline-aware request helper ([`call`]), and the [`Supervisor`] actor that
//! owns every other actor of the stage.
//!
//! # Policy (all of it lives here)
//!
//! - Every actor (generators, teacher-client, experts, reward, learner) is spawned linked to the
//!   supervisor. When one fails (error or panic in a handler, an engine error or panic on its
//!   compute thread) or is killed for passing a deadline, the supervisor records the failure and
//!   respawns it with its last good state: generators reload the newest policy weights, the
//!   learner and the experts restore their last published snapshot, the teacher-client keeps its
//!   cache (held outside the actor). The request that failed is retried by [`call`], so no
//!   prompt is lost; the coordinator's ledger counts each prompt as trained exactly once.
//! - More than `supervision.max_failures` failures of one actor within
//!   `supervision.window_secs` end the run: [`RunCtx::fail`] stores a
//!   [`StageError::GaveUp`] naming the actor and cancels the run; the coordinator then calls the
//!   checkpoint hook and returns the error.
//! - Every request has a deadline. A request past it reports the actor stuck (log, metric,
//!   [`StuckReport`]), kills it (which counts as a failure) and retries on the restarted actor.
//!   A compute thread stuck inside libtorch cannot be interrupted; it is abandoned and exits on
//!   its own when its job returns.
//!
//! # Shutdown order
//!
//! The coordinator stops dispatching, lets in-flight steps drain, sets [`RunCtx::stopping`] (so
//! terminations are no longer failures), then stops the supervisor, whose `post_stop` stops
//! every child (kills them if the run failed, since one may be inside a handler); dropping a
//! child's state closes its compute thread's channel and the thread exits after its current
//! job.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort,
    SupervisionEvent, rpc::CallResult,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::compute::BusyMeter;
use super::config::{
    self, ActorsConfig, DeviceSpec, LEARNER, PERCEPTION_EXPERT, REASONING_EXPERT, REWARD, TEACHER,
};
use super::engine::Engines;
use super::errors::StageError;
use super::expert::{ExpertActor, ExpertArgs, ExpertMsg};
use super::faults::FaultInjector;
use super::generator::{GeneratorActor, GeneratorArgs, GeneratorMsg};
use super::learner::{LearnerActor, LearnerArgs, LearnerMsg};
use super::reward::{RewardActor, RewardArgs, RewardMsg};
use super::teacher::{DemoCache, TeacherActor, TeacherArgs, TeacherMsg};
use super::weights::WeightsBus;
use crate::telemetry;

/// A request that passed its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StuckReport {
    pub actor: String,
    pub request: String,
    pub waited_secs: f64,
}

/// Per-actor bookkeeping shared by the supervisor and the pipeline.
#[derive(Debug)]
pub struct ActorInfo {
    pub device: DeviceSpec,
    pub meter: BusyMeter,
    pub faults: FaultInjector,
}

/// Shared state of one stage run.
pub struct RunCtx {
    pub stage: String,
    pub cfg: ActorsConfig,
    /// Meter, fault injector and device of every actor, by name (fixed for the run).
    pub actors: BTreeMap<String, ActorInfo>,
    /// Cancelled when the run must end with an error (the error is in `fatal`).
    pub abort: CancellationToken,
    /// Set once the coordinator is shutting the actors down: terminations are expected.
    pub stopping: AtomicBool,
    /// The first fatal error. Written once by [`RunCtx::fail`].
    fatal: Mutex<Option<StageError>>,
    /// Failure times per actor within the supervision window.
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Restarts per actor.
    restarts: Mutex<BTreeMap<String, u32>>,
    /// Requests that passed their deadline.
    stuck: Mutex<Vec<StuckReport>>,
    /// Why the pipeline killed an actor (read by the supervisor when the termination arrives).
    kill_reasons: Mutex<HashMap<ActorId, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunCtx {
    pub fn new(stage: &str, cfg: &ActorsConfig) -> RunCtx {
        let p = &cfg.placement;
        let mut devices: Vec<(String, DeviceSpec)> = p
            .generators
            .iter()
            .enumerate()
            .map(|(i, d)| (config::generator_name(i), *d))
            .collect();
        devices.extend([
            (TEACHER.to_string(), p.teacher),
            (PERCEPTION_EXPERT.to_string(), p.perception_expert),
            (REASONING_EXPERT.to_string(), p.reasoning_expert),
            (REWARD.to_string(), p.reward),
            (LEARNER.to_string(), p.learner),
        ]);
        let actors = devices
            .into_iter()
            .map(|(name, device)| {
                let info = ActorInfo {
                    device,
                    meter: BusyMeter::new(stage, &name, &device.to_string()),
                    faults: FaultInjector::new(&cfg.faults, &name),
                };
                (name, info)
            })
            .collect();
        RunCtx {
            stage: stage.to_string(),
            cfg: cfg.clone(),
            actors,
            abort: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            fatal: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            restarts: Mutex::new(BTreeMap::new()),
            stuck: Mutex::new(Vec::new()),
            kill_reasons: Mutex::new(HashMap::new()),
        }
    }

    pub fn info(&self, actor: &str) -> &ActorInfo {
        &self.actors[actor]
    }

    /// Ends the run with `err` (the first error wins) and cancels everything waiting.
    pub fn fail(&self, err: StageError) {
        let mut f = lock(&self.fatal);
        if f.is_none() {
            tracing::error!(stage = %self.stage, error = %err, "stage failed");
            *f = Some(err);
        }
        self.abort.cancel();
    }

    pub fn fatal(&self) -> Option<StageError> {
        lock(&self.fatal).clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Records one failure of `actor`; returns the error that ends the run if it is over budget.
    pub fn record_failure(&self, actor: &str, reason: &str) -> Result<(), StageError> {
        let sup = &self.cfg.supervision;
        let window = Duration::from_secs_f64(sup.window_secs);
        let mut all = lock(&self.failures);
        let times = all.entry(actor.to_string()).or_default();
        let now = Instant::now();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            times.pop_front();
        }
        tracing::warn!(stage = %self.stage, actor, reason, in_window = times.len(), "actor failed");
        if times.len() as u32 > sup.max_failures {
            return Err(StageError::GaveUp {
                actor: actor.to_string(),
                failures: times.len() as u32,
                budget: sup.max_failures,
                window_secs: sup.window_secs,
                last: reason.to_string(),
            });
        }
        Ok(())
    }

    fn count_restart(&self, actor: &str) {
        *lock(&self.restarts).entry(actor.to_string()).or_default() += 1;
        metrics::counter!(
            telemetry::ACTOR_RESTARTS_TOTAL,
            "stage" => self.stage.clone(),
            "actor" => actor.to_string()
        )
        .increment(1);
    }

    pub fn restarts(&self) -> BTreeMap<String, u32> {
        lock(&self.restarts).clone()
    }

    pub fn stuck_reports(&self) -> Vec<StuckReport> {
        lock(&self.stuck).clone()
    }

    /// Reports `actor` stuck on `request` (log + metric + report) and remembers why it is killed.
    fn report_stuck(&self, actor: &str, id: ActorId, request: &str, waited: Duration) {
        let waited_secs = waited.as_secs_f64();
        tracing::error!(
            stage = %self.stage,
            actor,
            request,
            waited_secs,
            "deadline passed: actor is stuck, restarting it"
        );
        metrics::counter!(
            telemetry::DEADLINE_EXCEEDED_TOTAL,
            "stage" => self.stage.clone(),
            "actor" => actor.to_string()
        )
        .increment(1);
        lock(&self.stuck).push(StuckReport {
            actor: actor.to_string(),
            request: request.to_string(),
            waited_secs,
        });
        lock(&self.kill_reasons).insert(
            id,
            format!("stuck: no reply to {request} within its {waited_secs:.3} s deadline"),
        );
    }

    fn take_kill_reason(&self, id: ActorId) -> Option<String> {
        lock(&self.kill_reasons).remove(&id)
    }
}

/// The current incarnation of a restartable actor, and a count of its restarts (the epoch).
pub struct Slot<M: Message> {
    pub name: String,
    /// Written by the supervisor on every (re)spawn; read by [`call`], which waits on it for a
    /// restart after a failure.
    tx: watch::Sender<(Option<ActorRef<M>>, u64)>,
}

impl<M: Message> Slot<M> {
    pub fn new(name: &str) -> Slot<M> {
        Slot {
            name: name.to_string(),
            tx: watch::channel((None, 0)).0,
        }
    }

    pub fn current(&self) -> (Option<ActorRef<M>>, u64) {
        self.tx.borrow().clone()
    }

    fn install(&self, actor: ActorRef<M>) {
        self.tx.send_modify(|(a, e)| {
            *a = Some(actor);
            *e += 1;
        });
    }

    fn clear(&self) {
        self.tx.send_modify(|(a, _)| *a = None);
    }

    /// Waits until the actor has been replaced after `epoch`, the run is aborted, or the restart
    /// deadline passes.
    async fn wait_restart(&self, epoch: u64, ctx: &RunCtx) -> Result<(), StageError> {
        let mut rx = self.tx.subscribe();
        let deadline = config::secs(ctx.cfg.deadlines.restart_secs);
        tokio::select! {
            r = rx.wait_for(|(a, e)| *e > epoch && a.is_some()) => {
                r.map(|_| ()).map_err(|_| StageError::RestartTimeout {
                    actor: self.name.clone(),
                    waited_secs: 0.0,
                })
            }
            _ = ctx.abort.cancelled() => Err(ctx.fatal().unwrap_or_else(|| aborted(ctx))),
            _ = tokio::time::sleep(deadline) => Err(StageError::RestartTimeout {
                actor: self.name.clone(),
                waited_secs: deadline.as_secs_f64(),
            }),
        }
    }
}

fn aborted(ctx: &RunCtx) -> StageError {
    StageError::Invariant {
        stage: ctx.stage.clone(),
        msg: "run aborted".into(),
    }
}

/// One attempt of a request: the reply, or the epoch of the incarnation that failed it (the
/// caller waits for the next one with [`wait_restart`]).
pub async fn try_call<M, R, B>(
    ctx: &RunCtx,
    slot: &Slot<M>,
    request: &str,
    deadline: Duration,
    build: B,
) -> Result<Result<R, u64>, StageError>
where
    M: Message,
    R: Send + 'static,
    B: FnOnce(RpcReplyPort<R>) -> M,
{
    if let Some(e) = ctx.fatal() {
        return Err(e);
    }
    let (actor, epoch) = slot.current();
    let Some(actor) = actor else {
        return Ok(Err(epoch));
    };
    let res = tokio::select! {
        r = actor.call(build, Some(deadline)) => r,
        _ = ctx.abort.cancelled() => return Err(ctx.fatal().unwrap_or_else(|| aborted(ctx))),
    };
    match res {
        Ok(CallResult::Success(r)) => return Ok(Ok(r)),
        Ok(CallResult::Timeout) => {
            ctx.report_stuck(&slot.name, actor.get_id(), request, deadline);
            actor.kill();
        }
        // The actor failed while handling the request (its reply port was dropped) or was
        // already dead: the supervisor restarts it.
        Ok(CallResult::SenderError) | Err(_) => {}
    }
    Ok(Err(epoch))
}

/// Waits until the actor in `slot` has been replaced after incarnation `epoch` (or the run is
/// aborted, or the restart deadline passes).
pub async fn wait_restart<M: Message>(
    ctx: &RunCtx,
    slot: &Slot<M>,
    epoch: u64,
) -> Result<(), StageError> {
    slot.wait_restart(epoch, ctx).await
}

/// Sends a request built by `build` to the actor in `slot` and awaits the reply within
/// `deadline`. On a timeout the actor is reported stuck and killed; on a failure of the actor
/// the request waits for the supervisor's restart and is sent again. Returns an error only when
/// the run is aborted (budget exhausted, another fatal error) or the actor does not come back.
pub async fn call<M, R, B>(
    ctx: &RunCtx,
    slot: &Slot<M>,
    request: &str,
    deadline: Duration,
    build: B,
) -> Result<R, StageError>
where
    M: Message,
    R: Send + 'static,
    B: Fn(RpcReplyPort<R>) -> M,
{
    loop {
        match try_call(ctx, slot, request, deadline, &build).await? {
            Ok(r) => return Ok(r),
            Err(epoch) => slot.wait_restart(epoch, ctx).await?,
        }
        tracing::info!(stage = %ctx.stage, actor = %slot.name, request, "retrying on the restarted actor");
    }
}

/// Checkpoint-free state every incarnation of an actor needs (weights buses, caches).
pub struct Kit {
    pub engines: Engines,
    /// Policy weights: written by the learner, read by the generators.
    pub policy: WeightsBus,
    /// Expert weights: written and (after a restart) read by each expert.
    pub perception: WeightsBus,
    pub reasoning: WeightsBus,
    /// Teacher demonstrations by prompt hash; survives teacher-client restarts.
    pub demo_cache: DemoCache,
    /// Policy version the learner starts from when nothing is published yet.
    pub initial_policy_version: u64,
}

/// Every actor slot of a stage.
pub struct Roster {
    pub generators: Vec<Slot<GeneratorMsg>>,
    pub teacher: Option<Slot<TeacherMsg>>,
    pub perception: Option<Slot<ExpertMsg>>,
    pub reasoning: Option<Slot<ExpertMsg>>,
    pub reward: Slot<RewardMsg>,
    pub learner: Slot<LearnerMsg>,
}

/// Which child an actor id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Generator(usize),
    Teacher,
    Perception,
    Reasoning,
    Reward,
    Learner,
}

/// The supervisor actor of a stage (see the module doc for its policy).
pub struct Supervisor;

pub struct SupervisorArgs {
    pub ctx: Arc<RunCtx>,
    pub kit: Arc<Kit>,
    pub roster: Arc<Roster>,
}

pub struct SupervisorState {
    ctx: Arc<RunCtx>,
    kit: Arc<Kit>,
    roster: Arc<Roster>,
    /// Live children by actor id (updated on every respawn).
    children: HashMap<ActorId, Child>,
}

/// Messages of the supervisor (control only; the pipeline talks to children directly).
pub enum SupervisorMsg {
    /// Replies once every child is up (or with the spawn error).
    Ready(RpcReplyPort<Result<(), StageError>>),
}

impl SupervisorState {
    fn name(&self, c: Child) -> String {
        match c {
            Child::Generator(i) => config::generator_name(i),
            Child::Teacher => TEACHER.into(),
            Child::Perception => PERCEPTION_EXPERT.into(),
            Child::Reasoning => REASONING_EXPERT.into(),
            Child::Reward => REWARD.into(),
            Child::Learner => LEARNER.into(),
        }
    }

    fn all_children(&self) -> Vec<Child> {
        let mut v: Vec<Child> = (0..self.roster.generators.len())
            .map(Child::Generator)
            .collect();
        if self.roster.teacher.is_some() {
            v.push(Child::Teacher);
        }
        if self.roster.perception.is_some() {
            v.push(Child::Perception);
        }
        if self.roster.reasoning.is_some() {
            v.push(Child::Reasoning);
        }
        v.extend([Child::Reward, Child::Learner]);
        v
    }

    /// Spawns (or respawns) one child linked to `sup` and installs it in its slot.
    async fn spawn(&mut self, c: Child, sup: ActorCell) -> Result<(), String> {
        let name = self.name(c);
        let ctx = self.ctx.clone();
        let info = ctx.info(&name);
        let (stage, device) = (ctx.stage.clone(), info.device);
        let (meter, faults) = (info.meter.clone(), info.faults.clone());
        let kit = &self.kit;
        let err = |e: ractor::SpawnErr| e.to_string();
        let id = match c {
            Child::Generator(i) => {
                let args = GeneratorArgs {
                    name,
                    stage,
                    device,
                    factory: kit.engines.policy.clone(),
                    weights: kit.policy.clone(),
                    faults,
                    meter,
                };
                let (r, _) = Actor::spawn_linked(None, GeneratorActor, args, sup)
                    .await
                    .map_err(err)?;
                let id = r.get_id();
                self.roster.generators[i].install(r);
                id
            }
            Child::Teacher => {
                let args = TeacherArgs {
                    name,
                    stage,
                    device,
                    factory: kit.engines.teacher.clone().ok_or("no teacher engine")?,
                    cache: kit.demo_cache.clone(),
                    faults,
                    meter,
                };
                let (r, _) = Actor::spawn_linked(None, TeacherActor, args, sup)
                    .await
                    .map_err(err)?;
                let id = r.get_id();
                self.roster.teacher.as_ref().ok_or("no slot")?.install(r);
                id
            }
            Child::Perception | Child::Reasoning => {
                let (factory, bus, slot) = if c == Child::Perception {
                    (
                        &kit.engines.perception,
                        &kit.perception,
                        &self.roster.perception,
                    )
                } else {
                    (
                        &kit.engines.reasoning,
                        &kit.reasoning,
                        &self.roster.reasoning,
                    )
                };
                let args = ExpertArgs {
                    name,
                    stage,
                    device,
                    factory: factory.clone().ok_or("no expert engine")?,
                    weights: bus.clone(),
                    faults,
                    meter,
                };
                let (r, _) = Actor::spawn_linked(None, ExpertActor, args, sup)
                    .await
                    .map_err(err)?;
                let id = r.get_id();
                slot.as_ref().ok_or("no slot")?.install(r);
                id
            }
            Child::Reward => {
                let args = RewardArgs {
                    name,
                    stage,
                    device,
                    factory: kit.engines.reward.clone(),
                    faults,
                    meter,
                };
                let (r, _) = Actor::spawn_linked(None, RewardActor, args, sup)
                    .await
                    .map_err(err)?;
                let id = r.get_id();
                self.roster.reward.install(r);
                id
            }
            Child::Learner => {
                let args = LearnerArgs {
                    name,
                    stage,
                    device,
                    factory: kit.engines.learner.clone(),
                    weights: kit.policy.clone(),
                    initial_version: kit.initial_policy_version,
                    faults,
                    meter,
                };
                let (r, _) = Actor::spawn_linked(None, LearnerActor, args, sup)
                    .await
                    .map_err(err)?;
                let id = r.get_id();
                self.roster.learner.install(r);
                id
            }
        };
        self.children.insert(id, c);
        Ok(())
    }

    fn clear_slot(&self, c: Child) {
        match c {
            Child::Generator(i) => self.roster.generators[i].clear(),
            Child::Teacher => self.roster.teacher.iter().for_each(Slot::clear),
            Child::Perception => self.roster.perception.iter().for_each(Slot::clear),
            Child::Reasoning => self.roster.reasoning.iter().for_each(Slot::clear),
            Child::Reward => self.roster.reward.clear(),
            Child::Learner => self.roster.learner.clear(),
        }
    }

    /// A child ended unexpectedly: count it, and respawn it until the budget runs out.
    async fn on_child_down(&mut self, c: Child, reason: String, sup: ActorCell) {
        let name = self.name(c);
        self.clear_slot(c);
        let mut reason = reason;
        let mut attempt = 0u32;
        loop {
            if let Err(e) = self.ctx.record_failure(&name, &reason) {
                self.ctx.fail(e);
                return;
            }
            if attempt > 0 {
                // A respawn that failed (engine factory error) is retried with a growing pause,
                // so a transient cause (device still freeing memory) gets time to clear.
                let pause = Duration::from_millis(50u64 << attempt.min(6));
                tokio::time::sleep(pause).await;
            }
            attempt += 1;
            match self.spawn(c, sup.clone()).await {
                Ok(()) => {
                    self.ctx.count_restart(&name);
                    tracing::info!(stage = %self.ctx.stage, actor = %name, "actor restarted");
                    return;
                }
                Err(e) => reason = format!("restart failed: {e}"),
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            ctx: args.ctx,
            kit: args.kit,
            roster: args.roster,
            children: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Ready(reply) => {
                let mut res = Ok(());
                for c in state.all_children() {
                    if let Err(msg) = state.spawn(c, myself.get_cell()).await {
                        res = Err(StageError::Spawn {
                            actor: state.name(c),
                            msg,
                        });
                        break;
                    }
                }
                let _ = reply.send(res);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let r = reason.unwrap_or_else(|| "terminated".into());
                (cell, r)
            }
            _ => return Ok(()),
        };
        let Some(c) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.ctx.is_stopping() {
            return Ok(());
        }
        let reason = state.ctx.take_kill_reason(cell.get_id()).unwrap_or(reason);
        state.on_child_down(c, reason, myself.get_cell()).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.stopping.store(true, Ordering::SeqCst);
        let r = &state.roster;
        // After a drained finish the children are idle and stop gracefully; after a failure a
        // child may be inside a handler (stuck or retrying), so it is killed instead.
        let failed = state.ctx.fatal().is_some();
        let stop = |a: Option<ActorCell>| match a {
            Some(a) if failed => a.kill(),
            Some(a) => a.stop(Some("stage finished".into())),
            None => {}
        };
        for g in &r.generators {
            stop(g.current().0.map(|a| a.get_cell()));
        }
        for s in [&r.perception, &r.reasoning].into_iter().flatten() {
            stop(s.current().0.map(|a| a.get_cell()));
        }
        if let Some(t) = &r.teacher {
            stop(t.current().0.map(|a| a.get_cell()));
        }
        stop(r.reward.current().0.map(|a| a.get_cell()));
        stop(r.learner.current().0.map(|a| a.get_cell()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway actor whose one request never finishes.
    struct Sleeper;

    enum SleeperMsg {
        Ask(RpcReplyPort<u32>),
    }

    impl Actor for Sleeper {
        type Msg = SleeperMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let SleeperMsg::Ask(reply) = msg;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = reply.send(1);
            Ok(())
        }
    }

    #[tokio::test]
    async fn deadline_reports_the_stuck_actor_by_name_and_never_waits_silently() {
        let mut cfg = ActorsConfig::default();
        cfg.deadlines.restart_secs = 0.3;
        let ctx = RunCtx::new("test", &cfg);
        let (actor, handle) = Actor::spawn(None, Sleeper, ()).await.unwrap();
        let slot = Slot::new("sleeper");
        slot.install(actor);
        let t0 = tokio::time::Instant::now();
        let err = call(
            &ctx,
            &slot,
            "ask",
            Duration::from_millis(200),
            SleeperMsg::Ask,
        )
        .await
        .unwrap_err();
        // 0.2 s deadline, then 0.3 s for a restart that no supervisor performs: no silent hang.
        let waited = t0.elapsed().as_secs_f64();
        assert!((0.5..5.0).contains(&waited), "{waited}");
        assert!(
            matches!(&err, StageError::RestartTimeout { actor, .. } if actor == "sleeper"),
            "{err:?}"
        );
        assert_eq!(
            ctx.stuck_reports(),
            vec![StuckReport {
                actor: "sleeper".into(),
                request: "ask".into(),
                waited_secs: 0.2
            }]
        );
        // The stuck actor was killed, not left running.
        handle.await.unwrap();
    }

    #[test]
    fn failure_budget_counts_within_the_window_and_names_the_actor() {
        let mut cfg = ActorsConfig::default();
        cfg.supervision.max_failures = 2;
        let ctx = RunCtx::new("test", &cfg);
        ctx.record_failure("reward", "boom 1").unwrap();
        ctx.record_failure("learner", "other actor").unwrap();
        ctx.record_failure("reward", "boom 2").unwrap();
        let e = ctx.record_failure("reward", "boom 3").unwrap_err();
        assert_eq!(e.actor(), Some("reward"));
        assert!(e.to_string().contains("boom 3"), "{e}");
    }
}
