//! Shared helpers of the actor and stage tests: a small config, stage spec, a recording
//! checkpoint hook, and synthetic data with a tiny policy for stage tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use prism::actors::config::{DeviceSpec, FaultRule};
use prism::actors::messages::{SamplingParams, StageKind};
use prism::actors::{ActorsConfig, CheckpointHook, StageCheckpoint, StageSpec};

/// A config with `gens` CPU generators, staleness `k` and short deadlines.
pub fn config(gens: usize, k: u64) -> ActorsConfig {
    let mut c = ActorsConfig::default();
    c.placement.generators = vec![DeviceSpec::Cpu; gens];
    c.max_staleness = k;
    c.deadlines.generate_secs = 20.0;
    c.deadlines.learn_secs = 20.0;
    c.deadlines.restart_secs = 20.0;
    c.deadlines.drain_secs = 30.0;
    c.supervision.max_failures = 8;
    c.supervision.window_secs = 60.0;
    c
}

pub fn spec(kind: StageKind, steps: u64, prompts_per_step: usize, n: usize) -> StageSpec {
    StageSpec {
        name: kind.as_str().to_string(),
        kind,
        steps,
        prompts_per_step,
        samples_per_prompt: n,
        sampling: SamplingParams {
            max_new_tokens: 8,
            ..SamplingParams::default()
        },
        start_cursor: 0,
        initial_policy_version: 0,
    }
}

pub fn fault(actor: &str, mode: prism::actors::FaultMode, after: u64, max: u64) -> FaultRule {
    FaultRule {
        actor: actor.into(),
        mode,
        rate: 1.0,
        after,
        max_faults: Some(max),
        hang_secs: 60.0,
    }
}

/// Records every checkpoint and every step record it is given.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<StageCheckpoint>>,
    pub steps: Mutex<Vec<prism::actors::coordinator::StepRecord>>,
}

impl CheckpointHook for Recorder {
    fn checkpoint(&self, c: &StageCheckpoint) -> Result<(), String> {
        self.seen.lock().unwrap().push(c.clone());
        Ok(())
    }

    fn after_step(&self, r: &prism::actors::coordinator::StepRecord) -> Result<bool, String> {
        self.steps.lock().unwrap().push(r.clone());
        Ok(false)
    }
}

pub fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder::default())
}

/// Synthetic data and a tiny random policy in a temporary folder (kept while this lives).
pub struct TinySetup {
    pub _dir: tempfile::TempDir,
    pub root: std::path::PathBuf,
    pub data: prism::stages::pipeline::PreparedData,
    /// The tiny policy (in `root/<policy_dir>`).
    pub init: std::path::PathBuf,
}

/// Builds the `[data.synth]` and `[policy.tiny]` of the run config `text` (which must also name
/// a stage) into a fresh temporary folder, the policy into `policy_dir` under it.
pub fn tiny_setup(text: &str, policy_dir: &str) -> TinySetup {
    use prism::stages::pipeline::{build_tiny_policy, prepare_data};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let cfg =
        prism::config::RunConfig::from_toml_str(text, std::path::Path::new("setup.toml"), &[])
            .unwrap();
    let data = prepare_data(&cfg, &root).unwrap();
    let init = build_tiny_policy(
        cfg.policy.tiny.as_ref().unwrap(),
        &data,
        &root.join(policy_dir),
        0,
    )
    .unwrap();
    TinySetup {
        _dir: dir,
        root,
        data,
        init,
    }
}
