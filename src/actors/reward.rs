//! The reward actor: format check, caption/reasoning split and verifiable reward of each
//! rollout, on its own thread (rule-based matching can be slow; it must never stall a tokio
//! worker, and its deadline bounds a hung verifier).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::compute::{BusyMeter, ComputeThread, start_engine};
use super::config::DeviceSpec;
use super::engine::{RewardEngine, RewardFactory};
use super::faults::FaultInjector;
use super::messages::{PromptItem, RewardOutcome, Rollout};

pub enum RewardMsg {
    /// One outcome per rollout, in order; `prompts` holds every prompt the rollouts refer to.
    Evaluate {
        prompts: Arc<Vec<PromptItem>>,
        rollouts: Arc<Vec<Rollout>>,
        reply: RpcReplyPort<Vec<RewardOutcome>>,
    },
}

pub struct RewardActor;

pub struct RewardArgs {
    pub name: String,
    pub stage: String,
    pub device: DeviceSpec,
    pub factory: RewardFactory,
    pub faults: FaultInjector,
    pub meter: BusyMeter,
}

pub struct RewardState {
    name: String,
    stage: String,
    compute: ComputeThread<dyn RewardEngine>,
    faults: FaultInjector,
}

impl Actor for RewardActor {
    type Msg = RewardMsg;
    type State = RewardState;
    type Arguments = RewardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        a: RewardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let compute = start_engine(&a.name, a.factory, a.device, a.meter).await?;
        Ok(RewardState {
            name: a.name,
            stage: a.stage,
            compute,
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
            RewardMsg::Evaluate {
                prompts,
                rollouts,
                reply,
            } => {
                state.faults.apply(&state.stage, "evaluate").await?;
                let out = evaluate(state, prompts, rollouts).await?;
                let _ = reply.send(out);
            }
        }
        Ok(())
    }
}

async fn evaluate(
    s: &mut RewardState,
    prompts: Arc<Vec<PromptItem>>,
    rollouts: Arc<Vec<Rollout>>,
) -> Result<Vec<RewardOutcome>, String> {
    let by_uid: HashMap<u64, usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.uid, i))
        .collect();
    if let Some(r) = rollouts
        .iter()
        .find(|r| !by_uid.contains_key(&r.prompt_uid))
    {
        return Err(format!(
            "{}: rollout for unknown prompt {}",
            s.name, r.prompt_uid
        ));
    }
    s.compute
        .run(move |e| {
            rollouts
                .iter()
                .map(|r| e.evaluate(&prompts[by_uid[&r.prompt_uid]], r))
                .collect()
        })
        .await
        .map_err(|e| format!("{}: evaluate: {e}", s.name))
}
