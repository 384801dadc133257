//! The perception and reasoning expert actors (one actor type, two instances): score segments
//! of the policy's responses, and train as Bradley–Terry discriminators on (teacher, student)
//! pairs. After each update the expert publishes a snapshot on its own [`WeightsBus`]; that is
//! the state a restarted expert restores, and the update is keyed by `expected_version` so a
//! retried update is never applied twice.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::compute::{BusyMeter, ComputeThread, restore_latest, start_engine};
use super::config::DeviceSpec;
use super::engine::{ScorerEngine, ScorerFactory};
use super::faults::FaultInjector;
use super::messages::{BtPair, DiscStats, ScoreItem};
use super::weights::WeightsBus;

/// Scores and the expert version that produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReply {
    pub scores: Vec<f32>,
    pub version: u64,
}

/// An update's stats, and whether it had already been applied.
#[derive(Debug, Clone, PartialEq)]
pub struct BtReply {
    pub stats: DiscStats,
    pub duplicate: bool,
}

pub enum ExpertMsg {
    /// Scores each segment in the context of its prompt.
    Score(Arc<Vec<ScoreItem>>, RpcReplyPort<ScoreReply>),
    /// One Bradley–Terry update if the expert is at `expected_version`.
    BtStep {
        expected_version: u64,
        pairs: Arc<Vec<BtPair>>,
        reply: RpcReplyPort<BtReply>,
    },
    Version(RpcReplyPort<u64>),
}

pub struct ExpertActor;

pub struct ExpertArgs {
    pub name: String,
    pub stage: String,
    pub device: DeviceSpec,
    pub factory: ScorerFactory,
    /// This expert's own snapshots: published after each update, restored on restart.
    pub weights: WeightsBus,
    pub faults: FaultInjector,
    pub meter: BusyMeter,
}

pub struct ExpertState {
    name: String,
    stage: String,
    compute: ComputeThread<dyn ScorerEngine>,
    weights: WeightsBus,
    version: u64,
    last: Option<DiscStats>,
    faults: FaultInjector,
}

impl Actor for ExpertActor {
    type Msg = ExpertMsg;
    type State = ExpertState;
    type Arguments = ExpertArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        a: ExpertArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let compute = start_engine(&a.name, a.factory, a.device, a.meter).await?;
        let version = restore_latest(&compute, &a.name, &a.weights, |e, s| e.restore(s))
            .await?
            .unwrap_or(0);
        Ok(ExpertState {
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
            ExpertMsg::Score(items, reply) => {
                state.faults.apply(&state.stage, "score").await?;
                let r = score(state, items).await?;
                let _ = reply.send(r);
            }
            ExpertMsg::BtStep {
                expected_version,
                pairs,
                reply,
            } => {
                state.faults.apply(&state.stage, "bt_step").await?;
                let r = bt_step(state, expected_version, pairs).await?;
                let _ = reply.send(r);
            }
            ExpertMsg::Version(reply) => {
                let _ = reply.send(state.version);
            }
        }
        Ok(())
    }
}

async fn score(s: &mut ExpertState, items: Arc<Vec<ScoreItem>>) -> Result<ScoreReply, String> {
    let n = items.len();
    let uids: Vec<u64> = items.iter().map(|x| x.prompt_uid).collect();
    let scores = s
        .compute
        .run(move |e| e.score(&items))
        .await
        .map_err(|e| format!("{}: score: {e}", s.name))?;
    if scores.len() != n {
        return Err(format!(
            "{}: engine returned {} scores for {n} items",
            s.name,
            scores.len()
        ));
    }
    if let Some(i) = scores.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "{}: score of item {i} (prompt {}) is {}",
            s.name, uids[i], scores[i]
        ));
    }
    Ok(ScoreReply {
        scores,
        version: s.version,
    })
}

async fn bt_step(
    s: &mut ExpertState,
    expected: u64,
    pairs: Arc<Vec<BtPair>>,
) -> Result<BtReply, String> {
    if s.version == expected + 1 {
        let stats = s.last.clone().unwrap_or(DiscStats {
            version: s.version,
            ..DiscStats::default()
        });
        return Ok(BtReply {
            stats,
            duplicate: true,
        });
    }
    if s.version != expected {
        return Err(format!(
            "{}: update expects v{expected} but the expert is at v{}",
            s.name, s.version
        ));
    }
    let next = expected + 1;
    let (mut stats, snap) = s
        .compute
        .run(move |e| {
            let stats = e.bt_step(&pairs)?;
            let snap = e.snapshot(next)?;
            Ok((stats, snap))
        })
        .await
        .map_err(|e| format!("{}: update to v{next}: {e}", s.name))?;
    stats.version = next;
    s.weights.publish(Arc::new(snap));
    s.version = next;
    s.last = Some(stats.clone());
    Ok(BtReply {
        stats,
        duplicate: false,
    })
}
