//! The generator actor: samples rollouts from the policy on its device. Replicable (one per
//! entry of `placement.generators`); the coordinator spreads work by having replicas pull
//! prompts as they free up. Before each request it swaps to the newest published weights
//! (never during a batch), so every rollout carries the version that made it and the
//! behaviour log-probs under that version.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

use super::compute::{BusyMeter, ComputeThread, start_engine};
use super::config::DeviceSpec;
use super::engine::{PolicyEngine, PolicyFactory};
use super::faults::FaultInjector;
use super::messages::{PromptItem, Rollout, SamplingParams};
use super::weights::WeightsBus;
use crate::telemetry;

/// One generation request: `n` samples for each prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompts: Vec<PromptItem>,
    pub n: usize,
    pub params: SamplingParams,
    /// The oldest policy version allowed to produce these rollouts (staleness bound); the
    /// generator loads the newest published version, which is at least this.
    pub min_version: u64,
}

pub enum GeneratorMsg {
    Generate(GenerateRequest, RpcReplyPort<Vec<Rollout>>),
    /// The policy version currently loaded.
    Version(RpcReplyPort<Option<u64>>),
}

pub struct GeneratorActor;

pub struct GeneratorArgs {
    pub name: String,
    pub stage: String,
    pub device: DeviceSpec,
    pub factory: PolicyFactory,
    pub weights: WeightsBus,
    pub faults: FaultInjector,
    pub meter: BusyMeter,
}

pub struct GeneratorState {
    name: String,
    stage: String,
    /// The policy engine's thread; dropped (closing it) when this incarnation ends.
    compute: ComputeThread<dyn PolicyEngine>,
    /// Newest published policy weights; read before each request.
    weights: WeightsBus,
    /// Version loaded in the engine (`None` until the first swap).
    loaded: Option<u64>,
    faults: FaultInjector,
    labels: Vec<metrics::Label>,
}

impl Actor for GeneratorActor {
    type Msg = GeneratorMsg;
    type State = GeneratorState;
    type Arguments = GeneratorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        a: GeneratorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let compute = start_engine(&a.name, a.factory, a.device, a.meter.clone()).await?;
        Ok(GeneratorState {
            labels: a.meter.labels(),
            name: a.name,
            stage: a.stage,
            compute,
            weights: a.weights,
            loaded: None,
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
            GeneratorMsg::Generate(req, reply) => {
                state.faults.apply(&state.stage, "generate").await?;
                let rollouts = generate(state, req).await?;
                let _ = reply.send(rollouts);
            }
            GeneratorMsg::Version(reply) => {
                let _ = reply.send(state.loaded);
            }
        }
        Ok(())
    }
}

/// Swaps to the newest weights if needed, then samples and stamps the rollouts.
async fn generate(s: &mut GeneratorState, req: GenerateRequest) -> Result<Vec<Rollout>, String> {
    sync_weights(s, req.min_version).await?;
    let version = s.loaded.unwrap_or_default();
    let expected = req.prompts.len() * req.n;
    let uids: Vec<u64> = req.prompts.iter().map(|p| p.uid).collect();
    let GenerateRequest {
        prompts, n, params, ..
    } = req;
    let mut rollouts = s
        .compute
        .run(move |e| e.generate(&prompts, n, &params))
        .await
        .map_err(|e| format!("{}: generate: {e}", s.name))?;
    check_rollouts(&s.name, &rollouts, &uids, n)?;
    debug_assert_eq!(rollouts.len(), expected);
    let mut tokens = 0u64;
    for r in &mut rollouts {
        r.policy_version = version;
        r.generator = s.name.clone();
        tokens += r.response_ids.len() as u64;
    }
    metrics::counter!(telemetry::ROLLOUTS_TOTAL, s.labels.clone()).increment(rollouts.len() as u64);
    metrics::counter!(telemetry::GENERATED_TOKENS_TOTAL, s.labels.clone()).increment(tokens);
    Ok(rollouts)
}

async fn sync_weights(s: &mut GeneratorState, min_version: u64) -> Result<(), String> {
    let Some(snap) = s.weights.latest() else {
        return Err(format!("{}: no policy weights published yet", s.name));
    };
    if snap.version < min_version {
        return Err(format!(
            "{}: needs policy v{min_version} but the newest published is v{}",
            s.name, snap.version
        ));
    }
    if s.loaded == Some(snap.version) {
        return Ok(());
    }
    let t0 = Instant::now();
    let version = snap.version;
    let w = Arc::clone(&snap);
    s.compute
        .run(move |e| e.load_weights(&w))
        .await
        .map_err(|e| format!("{}: load weights v{version}: {e}", s.name))?;
    s.loaded = Some(version);
    metrics::histogram!(telemetry::WEIGHT_SYNC_SECONDS, s.labels.clone())
        .record(t0.elapsed().as_secs_f64());
    Ok(())
}

/// The engine contract: `n` rollouts per prompt, prompt-major, one log-prob per token.
fn check_rollouts(name: &str, r: &[Rollout], uids: &[u64], n: usize) -> Result<(), String> {
    if r.len() != uids.len() * n {
        return Err(format!(
            "{name}: engine returned {} rollouts for {} prompts x {n} samples",
            r.len(),
            uids.len()
        ));
    }
    for (i, ro) in r.iter().enumerate() {
        let uid = uids[i / n];
        if ro.prompt_uid != uid {
            return Err(format!(
                "{name}: rollout {i} is for prompt {} but prompt {uid} was expected there",
                ro.prompt_uid
            ));
        }
        if ro.behaviour_logprobs.len() != ro.response_ids.len() {
            return Err(format!(
                "{name}: rollout {i} (prompt {uid}) has {} tokens but {} log-probs",
                ro.response_ids.len(),
                ro.behaviour_logprobs.len()
            ));
        }
    }
    Ok(())
}
