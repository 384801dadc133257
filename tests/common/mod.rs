//! Shared helpers of the actor and stage tests: a small config, stage spec, a recording
//! checkpoint hook, synthetic data with a tiny policy for stage tests, and that policy SFT'd on
//! the demonstrations with experts warmed up from it (the starting point of alignment tests).
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

impl TinySetup {
    /// The context of stage `name` of run `root/<run>` (no held-out SFT file, so no eval loss).
    pub fn ctx(&self, run: &str, name: &str, seed: u64) -> prism::stages::StageContext {
        prism::stages::StageContext {
            eval_file: None,
            ..prism::stages::StageContext::new(self.root.join(run), name, &self.data, seed)
        }
    }
}

/// The SFT of the stage tests' trained policies: `steps` steps of 8 demonstrations at lr 3e-3.
pub fn sft_config(steps: u64) -> prism::config::SftConfig {
    prism::config::SftConfig {
        name: Some("sft".into()),
        steps,
        batch_size: 8,
        lr: 3e-3,
        warmup_ratio: 0.05,
        max_length: 1024,
        ..prism::config::SftConfig::default()
    }
}

/// The warm-up of the stage tests' experts: `steps` steps of 6 pairs at lr 3e-3, the last
/// `eval_pairs` lines held out.
pub fn warmup_config(steps: u64, eval_pairs: usize) -> prism::config::WarmupConfig {
    prism::config::WarmupConfig {
        name: Some("warmup".into()),
        steps,
        batch_size: 6,
        eval_pairs,
        expert: prism::stages::expert::ExpertOptions {
            lr: 3e-3,
            ..prism::stages::expert::ExpertOptions::default()
        },
        ..prism::config::WarmupConfig::default()
    }
}

/// A [`TinySetup`] whose policy was SFT'd on the demonstrations, and dedicated experts warmed
/// up from that policy on the warm-up pairs.
pub struct TrainedSetup {
    pub tiny: TinySetup,
    /// The SFT'd policy.
    pub policy: std::path::PathBuf,
    /// The warmed-up experts' folder (`perception/`, `reasoning/`).
    pub experts: std::path::PathBuf,
}

/// [`tiny_setup`] of `text`, then `sft_steps` of SFT ([`sft_config`]) and `warmup_steps` of
/// warm-up ([`warmup_config`], nothing held out), in run `setup/` of the temporary folder.
pub fn trained_setup(text: &str, sft_steps: u64, warmup_steps: u64) -> TrainedSetup {
    use prism::stages::{sft::run_sft, warmup::run_warmup};
    let tiny = tiny_setup(text, "init");
    let t = std::time::Instant::now();
    let policy = run_sft(
        &sft_config(sft_steps),
        &tiny.ctx("setup", "sft", 0),
        &tiny.init,
    )
    .unwrap()
    .output;
    eprintln!(
        "setup: SFT {sft_steps} steps in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    let experts = run_warmup(
        &warmup_config(warmup_steps, 0),
        &tiny.ctx("setup", "warmup", 0),
        &policy,
    )
    .unwrap()
    .experts
    .unwrap();
    eprintln!(
        "setup: warm-up {warmup_steps} steps in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    TrainedSetup {
        tiny,
        policy,
        experts,
    }
}
