//! The teacher-client actor: demonstrations (text only) from the black-box teacher, cached by
//! prompt content hash so a prompt seen again (next epoch, a retried step) never costs a second
//! teacher query. The cache lives outside the actor and survives its restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use super::compute::{BusyMeter, ComputeThread};
use super::config::DeviceSpec;
use super::engine::{TeacherBackend, TeacherFactory};
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
    /// One demonstration per prompt, in order.
    Demonstrate(Arc<Vec<PromptItem>>, RpcReplyPort<Vec<Demo>>),
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
        let (factory, device) = (a.factory, a.device);
        let compute: ComputeThread<dyn TeacherBackend> =
            ComputeThread::start(&a.name, move || factory(device), a.meter)
                .await
                .map_err(|e| format!("{}: {e}", a.name))?;
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
                let demos = demonstrate(state, prompts).await?;
                let _ = reply.send(demos);
            }
        }
        Ok(())
    }
}

async fn demonstrate(
    s: &mut TeacherState,
    prompts: Arc<Vec<PromptItem>>,
) -> Result<Vec<Demo>, String> {
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
    if !missing.is_empty() {
        let todo: Vec<PromptItem> = missing.iter().map(|&i| prompts[i].clone()).collect();
        let fresh = s
            .compute
            .run(move |e| {
                todo.iter()
                    .map(|p| e.demonstrate(p))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| format!("{}: demonstrate: {e}", s.name))?;
        let mut cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
        for (&i, d) in missing.iter().zip(fresh) {
            cache.insert(hashes[i].clone(), d);
        }
    }
    let cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
    Ok(prompts
        .iter()
        .zip(&hashes)
        .map(|(p, h)| {
            let mut d = cache[h].clone();
            d.prompt_uid = p.uid;
            d
        })
        .collect())
}
