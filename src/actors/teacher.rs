//! The teacher-client actor: demonstrations (text only) from the black-box teacher, cached by
//! prompt content hash so a prompt seen again (next epoch, a retried step) never costs a second
//! teacher query. The cache lives outside the actor and survives its restarts.
//!
//! Prompts are handed to the backend as one batch ([`TeacherBackend::demonstrate_batch`]), so
//! an HTTP teacher asks them concurrently. A prompt the backend reports as skipped (its answer
//! never became valid, under `on_invalid = "skip"`) is logged, counted in
//! `prism_teacher_skipped_total{reason}` and never cached: it is asked again (from the
//! backend's own answer cache, for the HTTP teacher) the next time it comes up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use super::compute::{BusyMeter, ComputeThread, start_engine};
use super::config::DeviceSpec;
use super::engine::{DemoOutcome, TeacherBackend, TeacherFactory};
use super::faults::FaultInjector;
use super::messages::{Demo, PromptItem};
use crate::telemetry;

/// Demonstrations by prompt hash. Written by the teacher-client on a miss; unbounded, one entry
/// per distinct prompt of the dataset (text only, small).
pub type DemoCache = Arc<Mutex<HashMap<String, Demo>>>;

/// Content hash of a prompt (token ids, text and image hash; not the uid).
pub fn prompt_hash(p: &PromptItem) -> String {
    let mut h = Sha256::new();
    for t in &p.prompt_ids {
        h.update(t.to_le_bytes());
    }
    h.update([0xff]);
    h.update(p.text.as_bytes());
    h.update([0xff]);
    if let Some(img) = &p.image_hash {
        h.update(img.as_bytes());
    }
    hex::encode(h.finalize())
}

pub enum TeacherMsg {
    /// One demonstration per prompt, in order; a skipped prompt fails the request.
    Demonstrate(Arc<Vec<PromptItem>>, RpcReplyPort<Vec<Demo>>),
    /// One outcome per prompt, in order: a demonstration or a reported skip (what alignment
    /// asks for).
    Outcomes(Arc<Vec<PromptItem>>, RpcReplyPort<Vec<DemoOutcome>>),
}

pub struct TeacherActor;

pub struct TeacherArgs {
    pub name: String,
    pub stage: String,
    pub device: DeviceSpec,
    pub factory: TeacherFactory,
    pub cache: DemoCache,
    pub faults: FaultInjector,
    pub meter: BusyMeter,
}

pub struct TeacherState {
    name: String,
    stage: String,
    /// The backend's thread (blocking HTTP or an oracle program is fine there).
    compute: ComputeThread<dyn TeacherBackend>,
    cache: DemoCache,
    faults: FaultInjector,
}

impl Actor for TeacherActor {
    type Msg = TeacherMsg;
    type State = TeacherState;
    type Arguments = TeacherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        a: TeacherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let compute = start_engine(&a.name, a.factory, a.device, a.meter).await?;
        Ok(TeacherState {
            name: a.name,
            stage: a.stage,
            compute,
            cache: a.cache,
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
            TeacherMsg::Demonstrate(prompts, reply) => {
                state.faults.apply(&state.stage, "demonstrate").await?;
                let outcomes = demonstrate(state, prompts).await?;
                let demos = outcomes
                    .into_iter()
                    .map(|o| match o {
                        DemoOutcome::Demo(d) => Ok(d),
                        DemoOutcome::Skipped {
                            prompt_uid,
                            message,
                            ..
                        } => Err(format!(
                            "{}: no demonstration for prompt {prompt_uid}: {message}",
                            state.name
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let _ = reply.send(demos);
            }
            TeacherMsg::Outcomes(prompts, reply) => {
                state.faults.apply(&state.stage, "demonstrate").await?;
                let outcomes = demonstrate(state, prompts).await?;
                let _ = reply.send(outcomes);
            }
        }
        Ok(())
    }
}

async fn demonstrate(
    s: &mut TeacherState,
    prompts: Arc<Vec<PromptItem>>,
) -> Result<Vec<DemoOutcome>, String> {
    let hashes: Vec<String> = prompts.iter().map(prompt_hash).collect();
    // First occurrence of each prompt content not in the cache (a repeated prompt within the
    // request is asked once).
    let missing: Vec<usize> = {
        let cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        (0..prompts.len())
            .filter(|&i| !cache.contains_key(&hashes[i]) && seen.insert(&hashes[i]))
            .collect()
    };
    let hits = (prompts.len() - missing.len()) as u64;
    metrics::counter!(telemetry::TEACHER_CACHE_HITS_TOTAL, "stage" => s.stage.clone())
        .increment(hits);
    metrics::counter!(telemetry::TEACHER_CACHE_MISSES_TOTAL, "stage" => s.stage.clone())
        .increment(missing.len() as u64);
    // Skips of this request by prompt hash (reason, message); never cached.
    let mut skipped: HashMap<String, (String, String)> = HashMap::new();
    if !missing.is_empty() {
        let todo: Vec<PromptItem> = missing.iter().map(|&i| prompts[i].clone()).collect();
        let asked = todo.len();
        let fresh = s
            .compute
            .run(move |e| e.demonstrate_batch(&todo))
            .await
            .map_err(|e| format!("{}: demonstrate: {e}", s.name))?;
        if fresh.len() != asked
            || fresh
                .iter()
                .zip(&missing)
                .any(|(o, &i)| o.prompt_uid() != prompts[i].uid)
        {
            return Err(format!(
                "{}: the backend returned {} outcomes for {asked} prompts, or for the wrong prompts",
                s.name,
                fresh.len()
            ));
        }
        let mut cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (&i, o) in missing.iter().zip(fresh) {
            match o {
                DemoOutcome::Demo(d) => {
                    cache.insert(hashes[i].clone(), d);
                }
                DemoOutcome::Skipped {
                    prompt_uid,
                    reason,
                    message,
                } => {
                    tracing::warn!(
                        "{}: skipping prompt {prompt_uid} for this step ({reason}): {message}",
                        s.name
                    );
                    metrics::counter!(
                        telemetry::TEACHER_SKIPPED_TOTAL,
                        "stage" => s.stage.clone(),
                        "reason" => reason.clone()
                    )
                    .increment(1);
                    skipped.insert(hashes[i].clone(), (reason, message));
                }
            }
        }
    }
    let cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
    prompts
        .iter()
        .zip(&hashes)
        .map(|(p, h)| {
            if let Some(d) = cache.get(h) {
                let mut d = d.clone();
                d.prompt_uid = p.uid;
                Ok(DemoOutcome::Demo(d))
            } else if let Some((reason, message)) = skipped.get(h) {
                Ok(DemoOutcome::Skipped {
                    prompt_uid: p.uid,
                    reason: reason.clone(),
                    message: message.clone(),
                })
            } else {
                Err(format!(
                    "{}: prompt {} was neither demonstrated nor skipped",
                    s.name, p.uid
                ))
            }
        })
        .collect()
}
