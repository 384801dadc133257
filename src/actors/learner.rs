//! The learner actor: one optimizer step of the policy per batch, then publishes the new
//! version's weights on the policy [`WeightsBus`]. The bus is also its last good state: a
//! restarted learner restores from it, and a retried step is recognised by its
//! `expected_version` so no batch is ever applied twice.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::compute::{BusyMeter, ComputeThread, restore_latest, start_engine};
use super::config::DeviceSpec;
use super::engine::{LearnerEngine, LearnerFactory};
use super::faults::FaultInjector;
use super::messages::{StepStats, TrainBatch};
use super::weights::WeightsBus;
use crate::telemetry;

/// The reply to a step: its stats, and whether it had already been applied (a retry after the
/// learner failed between publishing and replying).
#[derive(Debug, Clone, PartialEq)]
pub struct StepReply {
    pub stats: StepStats,
    pub duplicate: bool,
}

pub enum LearnerMsg {
    /// Train on `batch` if the policy is at `expected_version`; publishes `expected_version + 1`.
    Step {
        expected_version: u64,
        batch: Arc<TrainBatch>,
        reply: RpcReplyPort<StepReply>,
    },
    Version(RpcReplyPort<u64>),
}

pub struct LearnerActor;

pub struct LearnerArgs {
    pub name: String,
    pub stage: String,
    pub device: DeviceSpec,
    pub factory: LearnerFactory,
    /// Published to after every step; restored from on restart.
    pub weights: WeightsBus,
    /// Version of the initial weights when nothing is published yet.
    pub initial_version: u64,
    pub faults: FaultInjector,
    pub meter: BusyMeter,
}

pub struct LearnerState {
    name: String,
    stage: String,
    compute: ComputeThread<dyn LearnerEngine>,
    weights: WeightsBus,
    /// Version of the weights in the engine.
    version: u64,
    /// Stats of the last applied step (replayed to a duplicate request).
    last: Option<StepStats>,
    faults: FaultInjector,
}

impl Actor for LearnerActor {
    type Msg = LearnerMsg;
    type State = LearnerState;
    type Arguments = LearnerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        a: LearnerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let compute = start_engine(&a.name, a.factory, a.device, a.meter).await?;
        // Restart: put back the last published state.
        let version =
            match restore_latest(&compute, &a.name, &a.weights, |e, s| e.restore(s)).await? {
                Some(v) => v,
                None => {
                    let v = a.initial_version;
                    let snap = compute
                        .run(move |e| e.snapshot(v))
                        .await
                        .map_err(|e| format!("{}: snapshot v{v}: {e}", a.name))?;
                    a.weights.publish(Arc::new(snap));
                    v
                }
            };
        Ok(LearnerState {
            name: a.name,
            stage: a.stage,
            compute,
            weights: a.weights,
            version,
            last: None,
            faults: a.faults,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LearnerMsg::Step {
                expected_version,
                batch,
                reply,
            } => {
                state.faults.apply(&state.stage, "learn").await?;
                let r = step(state, expected_version, batch).await?;
                let _ = reply.send(r);
            }
            LearnerMsg::Version(reply) => {
                let _ = reply.send(state.version);
            }
        }
        Ok(())
    }
}

async fn step(
    s: &mut LearnerState,
    expected: u64,
    batch: Arc<TrainBatch>,
) -> Result<StepReply, String> {
    if s.version == expected + 1 {
        let stats = s.last.clone().unwrap_or(StepStats {
            version: s.version,
            ..StepStats::default()
        });
        return Ok(StepReply {
            stats,
            duplicate: true,
        });
    }
    if s.version != expected {
        return Err(format!(
            "{}: step {} expects policy v{expected} but the learner is at v{}",
            s.name, batch.step, s.version
        ));
    }
    let next = expected + 1;
    let (mut stats, snap) = s
        .compute
        .run(move |e| {
            let stats = e.step(&batch)?;
            let snap = e.snapshot(next)?;
            Ok((stats, snap))
        })
        .await
        .map_err(|e| format!("{}: step to v{next}: {e}", s.name))?;
    stats.version = next;
    s.weights.publish(Arc::new(snap));
    s.version = next;
    s.last = Some(stats.clone());
    metrics::gauge!(telemetry::POLICY_VERSION, "stage" => s.stage.clone()).set(next as f64);
    Ok(StepReply {
        stats,
        duplicate: false,
    })
}
