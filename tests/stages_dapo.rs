//! DAPO dynamic sampling that refills the step: the coordinator generates rounds of new prompts
//! with the same policy version until `prompts_per_step` groups whose accuracy varies are kept,
//! trims the surplus, and stops at `max_gen_batches` (training short, or skipping the step when
//! nothing varies). With the toy engines and a reward whose accuracy the test chooses per prompt
//! (so which groups vary is known in advance): the exact batches, rounds and cursor of each
//! step, on-policy versions with and without overlap, the limit and end-of-prompts paths, the
//! checkpoint cursor; with the tiny Qwen3-VL: exact resume of a refilling run, and a DAPO
//! pipeline run from its config.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prism::actors::ActorsConfig;
use prism::actors::coordinator::{
    CheckpointHook, CheckpointReason, DynamicSampling, StageCheckpoint, StageOptions, StageReport,
    StepRecord, run_stage_with,
};
use prism::actors::engine::{
    EngineResult, Engines, LearnerEngine, LearnerFactory, RewardEngine, RewardFactory,
};
use prism::actors::messages::{
    PromptItem, RewardOutcome, Rollout, StageKind, StepStats, TrainBatch, WeightsSnapshot,
};
use prism::actors::toy::{self, ToyOptions, ToyProbe};
use prism::config::{RlAlgorithm, RlvrConfig, RunConfig};
use prism::stages::StageContext;
use prism::stages::rl::{RlOptions, read_trainer_state, run_actor_stage_with_reward};
use tch::Tensor;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Test engines

/// A reward whose accuracy the test chooses: a prompt in `vary` gets accuracy 1 on its even
/// samples and 0 on the odd ones (its group varies), every other prompt 0 (constant). Format
/// and segments come from `inner` when given (the toy reward), else the format is valid.
struct ChosenAccuracy {
    vary: Arc<BTreeSet<u64>>,
    inner: Option<toy::TokenReward>,
    /// Policy versions of every rollout scored, by prompt uid (dropped groups included).
    scored: Scored,
}

type Scored = Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>;

impl RewardEngine for ChosenAccuracy {
    fn evaluate(&mut self, prompt: &PromptItem, rollout: &Rollout) -> EngineResult<RewardOutcome> {
        let mut o = match &mut self.inner {
            Some(r) => r.evaluate(prompt, rollout)?,
            None => RewardOutcome {
                format_score: 1.0,
                ..RewardOutcome::default()
            },
        };
        self.scored
            .lock()
            .unwrap()
            .entry(prompt.uid)
            .or_default()
            .insert(rollout.policy_version);
        let varies = self.vary.contains(&prompt.uid);
        o.accuracy = Some(if varies && rollout.sample_index.is_multiple_of(2) {
            1.0
        } else {
            0.0
        });
        Ok(o)
    }
}

fn chosen_reward(vary: &[u64], toy_segments: bool, scored: Scored) -> RewardFactory {
    let vary = Arc::new(vary.iter().copied().collect::<BTreeSet<u64>>());
    Arc::new(move |_| -> EngineResult<Box<dyn RewardEngine>> {
        Ok(Box::new(ChosenAccuracy {
            vary: vary.clone(),
            inner: toy_segments.then_some(toy::TokenReward),
            scored: scored.clone(),
        }))
    })
}

/// One sample as the learner received it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uid: u64,
    version: u64,
    accuracy: f32,
}

/// Every batch the learner was given, by step.
type Batches = Arc<Mutex<BTreeMap<u64, Vec<Seen>>>>;

/// The toy learner, recording each batch it trains.
struct SpyLearner {
    inner: Box<dyn LearnerEngine>,
    seen: Batches,
}

impl LearnerEngine for SpyLearner {
    fn step(&mut self, batch: &TrainBatch) -> EngineResult<StepStats> {
        let rows = batch
            .samples
            .iter()
            .map(|s| Seen {
                uid: s.rollout.prompt_uid,
                version: s.rollout.policy_version,
                accuracy: s.reward.accuracy.unwrap_or(-1.0),
            })
            .collect();
        self.seen.lock().unwrap().insert(batch.step, rows);
        self.inner.step(batch)
    }

    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot> {
        self.inner.snapshot(version)
    }

    fn restore(&mut self, w: &WeightsSnapshot) -> EngineResult<()> {
        self.inner.restore(w)
    }
}

/// Toy engines with the chosen reward and a spying learner.
fn engines(vary: &[u64], toy_segments: bool) -> (Engines, Arc<ToyProbe>, Batches, Scored) {
    let (mut e, probe) = toy::engines(ToyOptions::default());
    let scored = Scored::default();
    e.reward = chosen_reward(vary, toy_segments, scored.clone());
    let seen: Batches = Arc::default();
    let (inner, s) = (e.learner.clone(), seen.clone());
    let learner: LearnerFactory = Arc::new(move |d| -> EngineResult<Box<dyn LearnerEngine>> {
        Ok(Box::new(SpyLearner {
            inner: inner(d)?,
            seen: s.clone(),
        }))
    });
    e.learner = learner;
    (e, probe, seen, scored)
}

/// Records step records and checkpoints; asks for a periodic checkpoint after every step.
#[derive(Default)]
struct EveryStep {
    ckpts: Mutex<Vec<(CheckpointReason, u64, usize)>>,
    records: Mutex<Vec<StepRecord>>,
}

impl CheckpointHook for EveryStep {
    fn checkpoint(&self, c: &StageCheckpoint) -> Result<(), String> {
        self.ckpts
            .lock()
            .unwrap()
            .push((c.reason.clone(), c.steps_done, c.next_cursor));
        Ok(())
    }

    fn after_step(&self, r: &StepRecord) -> Result<bool, String> {
        self.records.lock().unwrap().push(r.clone());
        Ok(true)
    }
}

/// Dynamic sampling with rounds of 2 prompts (the steps' size in these tests).
fn dapo(max_gen_batches: u32) -> StageOptions {
    dapo_rounds(max_gen_batches, 2)
}

fn dapo_rounds(max_gen_batches: u32, gen_batch_size: usize) -> StageOptions {
    StageOptions {
        dynamic_sampling: Some(DynamicSampling {
            max_gen_batches,
            gen_batch_size,
        }),
    }
}

struct Run {
    report: StageReport,
    batches: BTreeMap<u64, Vec<Seen>>,
    /// Versions of every generated rollout, by prompt uid.
    scored: BTreeMap<u64, BTreeSet<u64>>,
    hook: Arc<EveryStep>,
    probe: Arc<ToyProbe>,
}

/// A toy stage of `steps` × `b` prompts × 4 samples over `n_prompts` prompts, with the chosen
/// reward; fails the test if it does not finish within a minute (no wedge).
fn run_toy(
    kind: StageKind,
    cfg: ActorsConfig,
    steps: u64,
    b: usize,
    n_prompts: usize,
    vary: &[u64],
    opts: StageOptions,
) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (e, probe, seen, scored) = engines(vary, kind == StageKind::Align);
    let hook = Arc::new(EveryStep::default());
    let report = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                run_stage_with(
                    &cfg,
                    common::spec(kind, steps, b, 4),
                    opts,
                    e,
                    Arc::new(toy::prompts(n_prompts, 5)),
                    hook.clone(),
                    CancellationToken::new(),
                ),
            )
            .await
        })
        .expect("the stage wedged")
        .unwrap();
    let batches = seen.lock().unwrap().clone();
    let scored = scored.lock().unwrap().clone();
    Run {
        report,
        batches,
        scored,
        hook,
        probe,
    }
}

/// Prompt uids of a batch, one per group, in batch order.
fn groups(batch: &[Seen]) -> Vec<u64> {
    let mut u: Vec<u64> = batch.iter().map(|s| s.uid).collect();
    u.dedup();
    u
}

fn sampling(r: &StepRecord) -> (u32, usize, usize, usize, bool) {
    let s = r
        .sampling
        .as_ref()
        .expect("a dynamic-sampling step has stats");
    (
        s.gen_batches,
        s.kept_groups,
        s.dropped_groups,
        s.surplus_groups,
        s.short,
    )
}

fn uids(m: &BTreeMap<u64, u32>) -> Vec<u64> {
    assert!(m.values().all(|&c| c == 1), "{m:?}");
    m.keys().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Toy runs

/// Prompts whose groups vary in the refill runs below. With 2 prompts per step:
/// step 0: [0 1] keeps 1, [2 3] nothing, [4 5] keeps 4 (5 is surplus) → 3 rounds, cursor 6;
/// step 1: [6 7] keeps 6, [8 9] keeps 9 → 2 rounds, cursor 10; step 2: [10 11] → 1 round.
const VARY: [u64; 8] = [1, 4, 5, 6, 9, 10, 11, 12];

fn check_refill_run(run: &Run, cfg_name: &str) {
    let r = &run.report;
    assert_eq!(r.steps_done, 3, "{cfg_name}");
    let want = [vec![1, 4], vec![6, 9], vec![10, 11]];
    for (step, uids_want) in want.iter().enumerate() {
        let b = &run.batches[&(step as u64)];
        assert_eq!(&groups(b), uids_want, "{cfg_name}: step {step}");
        // exactly prompts_per_step groups of 4, each one varying
        assert_eq!(b.len(), 8, "{cfg_name}: step {step}");
        for g in b.chunks(4) {
            let acc: Vec<f32> = g.iter().map(|s| s.accuracy).collect();
            assert!(acc.iter().any(|&a| a != acc[0]), "{cfg_name}: {acc:?}");
        }
    }
    let recs: Vec<_> = r.steps.iter().map(sampling).collect();
    assert_eq!(
        recs,
        [
            (3, 2, 3, 1, false),
            (2, 2, 2, 0, false),
            (1, 2, 0, 0, false)
        ],
        "{cfg_name}"
    );
    let gen_acc: Vec<f64> = r
        .steps
        .iter()
        .map(|s| s.sampling.as_ref().unwrap().gen_accuracy)
        .collect();
    // step 0: 3 varying groups of 6 generated, each half right → 0.25; step 1: 2 of 4; step 2
    assert_eq!(gen_acc, [0.25, 0.25, 0.5], "{cfg_name}");
    assert_eq!((r.gen_batches, r.short_steps), (6, 0), "{cfg_name}");
    assert_eq!(r.rollouts, 24, "{cfg_name}");
    // the cursor skips everything generated; every prompt before it was trained or filtered
    assert_eq!(r.next_cursor, 12, "{cfg_name}");
    assert_eq!(uids(&r.processed), [1, 4, 6, 9, 10, 11], "{cfg_name}");
    assert_eq!(uids(&r.filtered), [0, 2, 3, 5, 7, 8], "{cfg_name}");
    assert_eq!(
        run.probe.trained.lock().unwrap().clone(),
        r.processed,
        "{cfg_name}"
    );
    // the periodic checkpoint after each step carries that step's cursor
    let ck = run.hook.ckpts.lock().unwrap().clone();
    let periodic: Vec<(u64, usize)> = ck
        .iter()
        .filter(|c| c.0 == CheckpointReason::Periodic)
        .map(|c| (c.1, c.2))
        .collect();
    assert_eq!(periodic, [(1, 6), (2, 10), (3, 12)], "{cfg_name}");
    assert_eq!(
        ck.last().map(|c| (&c.0, c.2)),
        Some((&CheckpointReason::Finished, 12)),
        "{cfg_name}"
    );
    assert_eq!(run.hook.records.lock().unwrap().len(), 3, "{cfg_name}");
}

#[test]
fn a_step_with_constant_groups_is_refilled_to_exactly_its_varying_groups_on_policy() {
    // (a) + (c), strictly on-policy with overlap allowed elsewhere in the pipeline
    let on_policy = common::config(1, 0);
    let run = run_toy(StageKind::Rlvr, on_policy, 3, 2, 40, &VARY, dapo(10));
    check_refill_run(&run, "max_staleness 0");
    for (step, b) in &run.batches {
        assert!(
            b.iter().all(|s| s.version == *step),
            "step {step} trained rollouts of other versions: {b:?}"
        );
    }
    // every refill round, kept or dropped, was generated by the step's version: prompts 0-5
    // by v0 (step 0's three rounds), 6-9 by v1, 10-11 by v2; one load per version
    let by_version = |run: &Run| -> Vec<(u64, Vec<u64>)> {
        run.scored
            .iter()
            .map(|(u, v)| (*u, v.iter().copied().collect()))
            .collect()
    };
    let want: Vec<(u64, Vec<u64>)> = (0..12u64)
        .map(|u| {
            (
                u,
                vec![if u < 6 {
                    0
                } else if u < 10 {
                    1
                } else {
                    2
                }],
            )
        })
        .collect();
    assert_eq!(by_version(&run), want);
    assert_eq!(*run.probe.loaded_versions.lock().unwrap(), vec![0, 1, 2]);

    // the same with everything in turn (sync), and with 2 generators and overlap up to 2
    // versions: the same batches (the chosen accuracy does not depend on the weights), the
    // staleness within its bound
    let mut sync = common::config(1, 0);
    sync.sync = true;
    let run = run_toy(StageKind::Rlvr, sync, 3, 2, 40, &VARY, dapo(10));
    check_refill_run(&run, "sync");
    assert_eq!(by_version(&run), want);
    assert!(
        run.batches
            .iter()
            .all(|(step, b)| b.iter().all(|s| s.version == *step))
    );
    let mut overlap = common::config(2, 2);
    overlap.prompts_per_request = 1;
    let run = run_toy(StageKind::Rlvr, overlap, 3, 2, 40, &VARY, dapo(0));
    check_refill_run(&run, "max_staleness 2, 2 generators");
    for (step, b) in &run.batches {
        assert!(
            b.iter()
                .all(|s| s.version <= *step && step - s.version <= 2),
            "{b:?}"
        );
    }
    assert!(run.report.max_staleness().unwrap() <= 2);
}

#[test]
fn rounds_larger_than_the_step_trim_the_surplus() {
    // gen_batch_size 3 for 2 prompts per step (verl's DAPO draws 96 for 32): step 0: [0 1 2]
    // keeps 1, [3 4 5] keeps 4 (5 is surplus); step 1: [6 7 8] keeps 6, [9 10 11] keeps 9
    // (10 and 11 are surplus)
    let run = run_toy(
        StageKind::Rlvr,
        common::config(1, 0),
        2,
        2,
        40,
        &VARY,
        dapo_rounds(10, 3),
    );
    let r = &run.report;
    assert_eq!(groups(&run.batches[&0]), [1, 4]);
    assert_eq!(groups(&run.batches[&1]), [6, 9]);
    let recs: Vec<_> = r.steps.iter().map(sampling).collect();
    assert_eq!(recs, [(2, 2, 3, 1, false), (2, 2, 2, 2, false)]);
    assert_eq!(r.next_cursor, 12);
    assert_eq!(uids(&r.filtered), [0, 2, 3, 5, 7, 8, 10, 11]);
    // a round size of 0 is refused up front
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (e, _, _, _) = engines(&VARY, false);
    let err = rt
        .block_on(run_stage_with(
            &common::config(1, 0),
            common::spec(StageKind::Rlvr, 1, 2, 4),
            dapo_rounds(1, 0),
            e,
            Arc::new(toy::prompts(4, 5)),
            common::recorder(),
            CancellationToken::new(),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("gen_batch_size"), "{err}");
}

#[test]
fn without_dynamic_sampling_constant_groups_are_trained_as_before() {
    let run = run_toy(
        StageKind::Rlvr,
        common::config(1, 0),
        3,
        2,
        40,
        &VARY,
        StageOptions::default(),
    );
    let r = &run.report;
    assert_eq!(r.next_cursor, 6);
    assert_eq!(uids(&r.processed), [0, 1, 2, 3, 4, 5]);
    assert!(r.filtered.is_empty() && r.gen_batches == 0);
    assert!(r.steps.iter().all(|s| s.sampling.is_none()));
    assert_eq!(groups(&run.batches[&1]), [2, 3]);
}

#[test]
fn the_round_limit_trains_short_or_skips_counted_and_never_wedges() {
    // (b) max_gen_batches = 2: step 0: [0 1] keeps 1, [2 3] nothing → short with 1 group;
    // step 1: [4 5], [6 7] nothing → skipped: the learner gets the first round's constant
    // groups (a filtering learner drops them); step 2: [8 9] keeps 9, [10 11] keeps 10 → full
    let vary = [1, 9, 10];
    let run = run_toy(
        StageKind::Rlvr,
        common::config(1, 0),
        3,
        2,
        40,
        &vary,
        dapo(2),
    );
    let r = &run.report;
    assert_eq!(r.steps_done, 3);
    let recs: Vec<_> = r.steps.iter().map(sampling).collect();
    assert_eq!(
        recs,
        [(2, 1, 3, 0, true), (2, 0, 4, 0, true), (2, 2, 2, 0, false)]
    );
    assert_eq!(groups(&run.batches[&0]), [1]);
    assert_eq!(run.batches[&0].len(), 4);
    let skipped = &run.batches[&1];
    assert_eq!(groups(skipped), [4, 5]);
    assert!(skipped.iter().all(|s| s.accuracy == 0.0));
    assert_eq!(groups(&run.batches[&2]), [9, 10]);
    assert_eq!((r.gen_batches, r.short_steps, r.next_cursor), (6, 2, 12));
    assert_eq!(uids(&r.processed), [1, 4, 5, 9, 10]);
    assert_eq!(uids(&r.filtered), [0, 2, 3, 6, 7, 8, 11]);
    // every step published a version, so the next step's rounds ran on the next version
    assert_eq!(r.policy_version, 3);
    for (step, b) in &run.batches {
        assert!(b.iter().all(|s| s.version == *step));
    }
}

#[test]
fn prompts_running_out_end_the_step_short_and_the_stage() {
    // unlimited rounds, only prompt 1 varies, 7 prompts: step 0 generates [0 1] [2 3] [4 5]
    // [6] and trains short on prompt 1; no full round is left for step 1
    let run = run_toy(
        StageKind::Rlvr,
        common::config(1, 0),
        5,
        2,
        7,
        &[1],
        dapo(0),
    );
    let r = &run.report;
    assert_eq!(r.steps_done, 1);
    assert_eq!(sampling(&r.steps[0]), (4, 1, 6, 0, true));
    assert_eq!((r.next_cursor, r.short_steps), (7, 1));
    assert_eq!(uids(&r.filtered), [0, 2, 3, 4, 5, 6]);
    assert_eq!(groups(&run.batches[&0]), [1]);
}

#[test]
fn alignment_refills_too_and_asks_the_teacher_only_for_the_kept_prompts() {
    let run = run_toy(
        StageKind::Align,
        common::config(1, 0),
        3,
        2,
        40,
        &VARY,
        dapo(10),
    );
    check_refill_run(&run, "align");
    assert_eq!(
        run.probe
            .teacher_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
}

/// Cancels the run's shutdown token once the first step is trained.
struct StopAfterFirst {
    token: CancellationToken,
    ckpts: Mutex<Vec<(CheckpointReason, u64, usize)>>,
}

impl CheckpointHook for StopAfterFirst {
    fn checkpoint(&self, c: &StageCheckpoint) -> Result<(), String> {
        self.ckpts
            .lock()
            .unwrap()
            .push((c.reason.clone(), c.steps_done, c.next_cursor));
        Ok(())
    }

    fn after_step(&self, _: &StepRecord) -> Result<bool, String> {
        self.token.cancel();
        Ok(false)
    }
}

#[test]
fn a_shutdown_during_the_rounds_abandons_the_step_and_checkpoints_its_start() {
    // step 1 needs two rounds ([6 7], [8 9]); the signal comes while its first one is being
    // generated (generation is slow), so the step is abandoned and the checkpoint's cursor is
    // step 0's: a resumed run generates step 1 from prompt 6 again
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut e, _probe, seen, _) = engines(&VARY, false);
    let (slow, _) = toy::engines(ToyOptions {
        generate_delay: toy::fixed_delay(Duration::from_millis(300)),
        ..ToyOptions::default()
    });
    e.policy = slow.policy;
    let token = CancellationToken::new();
    let hook = Arc::new(StopAfterFirst {
        token: token.clone(),
        ckpts: Mutex::default(),
    });
    let report = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                run_stage_with(
                    &common::config(1, 0),
                    common::spec(StageKind::Rlvr, 3, 2, 4),
                    dapo(10),
                    e,
                    Arc::new(toy::prompts(40, 5)),
                    hook.clone(),
                    token,
                ),
            )
            .await
        })
        .expect("the stage wedged")
        .unwrap();
    assert!(report.interrupted);
    assert_eq!((report.steps_done, report.next_cursor), (1, 6));
    assert_eq!(uids(&report.processed), [1, 4]);
    assert_eq!(uids(&report.filtered), [0, 2, 3, 5]);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        *hook.ckpts.lock().unwrap(),
        [(CheckpointReason::Interrupted, 1, 6)]
    );
}

// ---------------------------------------------------------------------------------------------
// The tiny Qwen3-VL

fn setup() -> &'static common::TinySetup {
    static S: OnceLock<common::TinySetup> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[data.synth]
train = 32
eval = 4
seed = 7
difficulties = [1]
perception_error_rate = 0.0
reasoning_error_rate = 0.0
[policy.tiny]
image_max_pixels = 4096
[[stages]]
kind = "sft"
"#;
        common::tiny_setup(text, "init")
    })
}

fn ctx(run: &str) -> StageContext {
    let s = setup();
    StageContext::new(s.root.join(run), "dapo", &s.data, 3)
}

fn read_sorted(path: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(path).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_resumed_refilling_dapo_run_ends_with_the_weights_of_an_uninterrupted_one() {
    // (d) 2 prompts per step, 2 samples each; prompts 1, 4, 5, 6, 9, 10, 11, 12 vary: step 1
    // takes 3 rounds (cursor 6), step 2 two (cursor 10), step 3 one (12), step 4 [12 13] keeps
    // 12, then [14 15] and [16 17] nothing → short at the limit of 3 rounds (cursor 18)
    let init = setup().init.clone();
    let cfg = RlvrConfig {
        name: Some("dapo".into()),
        algorithm: RlAlgorithm::Dapo,
        steps: 4,
        prompts_per_step: 2,
        samples_per_prompt: 2,
        max_new_tokens: 8,
        overlong_buffer_len: 4,
        warmup_steps: Some(0),
        max_gen_batches: Some(3),
        lr: 1e-3,
        limit: Some(32),
        save_every: 2,
        ..RlvrConfig::default()
    };
    cfg.validate(&|k| k.to_string(), true).unwrap();
    let opts = RlOptions::from_rlvr(&cfg, 11).unwrap();
    assert_eq!(opts.max_gen_batches, 3);
    let actors = ActorsConfig {
        sync: true,
        ..ActorsConfig::default()
    };
    let reward = || Some(chosen_reward(&VARY, false, Scored::default()));
    let full = ctx("full");
    let s = run_actor_stage_with_reward(
        &opts,
        StageKind::Rlvr,
        &full,
        &init,
        &actors,
        None,
        reward(),
    )
    .unwrap();
    assert_eq!(s.steps, 4);
    // the run trained: its weights moved away from the input's
    let w0 = read_sorted(&init.join("model.safetensors"));
    assert!(max_abs_diff(&w0, &read_sorted(&s.output.join("model.safetensors"))) > 0.0);
    let dir = full.stage_dir();
    let mid = read_trainer_state(&dir.join("checkpoint-2"), StageKind::Rlvr).unwrap();
    assert_eq!((mid.steps_done, mid.next_cursor), (2, 10));
    let fin = read_trainer_state(&s.output, StageKind::Rlvr).unwrap();
    assert_eq!((fin.steps_done, fin.next_cursor), (4, 18));
    let recs = metrics(&full.run_dir);
    assert_eq!(recs.len(), 4);
    let col = |k: &str| -> Vec<f64> {
        recs.iter()
            .map(|r| {
                r["metrics"][k]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{k}: {r}"))
            })
            .collect()
    };
    assert_eq!(col("gen_batches"), [3.0, 2.0, 1.0, 3.0]);
    assert_eq!(col("kept_groups"), [2.0, 2.0, 2.0, 1.0]);
    assert_eq!(col("dropped_groups"), [3.0, 2.0, 0.0, 5.0]);
    assert_eq!(col("surplus_groups"), [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(col("dynamic_sampling_short"), [0.0, 0.0, 0.0, 1.0]);
    // the learner's own filter finds nothing more to drop; the reward metrics are over the
    // kept samples (half right in every kept group), gen_accuracy over all generated
    assert_eq!(col("groups_kept"), col("groups_total"));
    assert_eq!(col("accuracy"), [0.5; 4]);
    assert_eq!(col("gen_accuracy"), [0.25, 0.25, 0.5, 1.0 / 12.0]);
    assert_eq!(col("rollouts"), [4.0, 4.0, 4.0, 2.0]);

    let resumed = ctx("resumed");
    let opts2 = RlOptions {
        resume_from: Some(dir.join("checkpoint-2")),
        ..opts.clone()
    };
    let s2 = run_actor_stage_with_reward(
        &opts2,
        StageKind::Rlvr,
        &resumed,
        &init,
        &actors,
        None,
        reward(),
    )
    .unwrap();
    assert_eq!(s2.steps, 4);
    let fin2 = read_trainer_state(&s2.output, StageKind::Rlvr).unwrap();
    assert_eq!(fin2.next_cursor, 18);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (
            read_sorted(&s.output.join(file)),
            read_sorted(&s2.output.join(file)),
        );
        assert_eq!(max_abs_diff(&a, &b), 0.0, "resumed {file} differs");
    }
    let recs2 = metrics(&resumed.run_dir);
    let steps: Vec<u64> = recs2.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [3, 4]);
    for (a, b) in recs[2..].iter().zip(&recs2) {
        for k in ["gen_batches", "kept_groups", "loss", "gen_accuracy"] {
            assert_eq!(a["metrics"][k], b["metrics"][k], "{k}");
        }
    }
}

#[test]
fn max_gen_batches_is_validated_and_defaults_to_verl() {
    let dapo = RlvrConfig {
        algorithm: RlAlgorithm::Dapo,
        overlong_buffer: Some(false),
        ..RlvrConfig::default()
    };
    assert_eq!(dapo.resolved_max_gen_batches(), Some(10));
    let unlimited = RlvrConfig {
        max_gen_batches: Some(0),
        ..dapo.clone()
    };
    assert!(unlimited.validate(&|k| k.to_string(), true).is_ok());
    assert_eq!(
        RlOptions::from_rlvr(&unlimited, 0).unwrap().max_gen_batches,
        0
    );
    // only meaningful with dynamic sampling on
    let grpo = RlvrConfig {
        max_gen_batches: Some(4),
        ..RlvrConfig::default()
    };
    let (key, msg) = grpo
        .validate(&|k| format!("stages.1.{k}"), true)
        .unwrap_err();
    assert_eq!(key, "stages.1.max_gen_batches");
    assert!(msg.contains("dynamic sampling is off"), "{msg}");
    let on = RlvrConfig {
        dynamic_sampling: Some(true),
        ..grpo.clone()
    };
    assert_eq!(on.resolved_max_gen_batches(), Some(4));
    let rounds = RlvrConfig {
        gen_batch_size: Some(96),
        ..dapo.clone()
    };
    assert!(rounds.validate(&|k| k.to_string(), true).is_ok());
    assert_eq!(RlOptions::from_rlvr(&rounds, 0).unwrap().gen_batch_size, 96);
    assert_eq!(RlOptions::from_rlvr(&dapo, 0).unwrap().gen_batch_size, 32);
    for (bad, msg) in [
        (Some(0), "at least 1"),
        (Some(8), "dynamic sampling is off"),
    ] {
        let c = RlvrConfig {
            gen_batch_size: bad,
            dynamic_sampling: Some(bad == Some(0)),
            ..dapo.clone()
        };
        let (key, m) = c.validate(&|k| k.to_string(), true).unwrap_err();
        assert_eq!(key, "gen_batch_size");
        assert!(m.contains(msg), "{m}");
    }
    assert_eq!(RlvrConfig::default().resolved_max_gen_batches(), None);
    // a run config names the stage's key
    let e = RunConfig::from_toml_str(
        r#"
[data.synth]
train = 8
[policy.tiny]
[[stages]]
kind = "rlvr"
algorithm = "grpo"
max_gen_batches = 3
"#,
        Path::new("c.toml"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("stages.0.max_gen_batches"), "{e}");
}

#[test]
fn a_dapo_pipeline_stage_runs_from_its_config_and_logs_the_refill() {
    // (e) the random tiny policy never answers right: every group is constant, so every step
    // spends its max_gen_batches rounds and is skipped, counted, without wedging
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[run]
out_dir = "{}"
metrics_addr = "none"
[data.synth]
train = 12
eval = 0
seed = 1
difficulties = [1]
[policy.tiny]
image_max_pixels = 4096
[actors]
max_staleness = 0
[[stages]]
kind = "rlvr"
name = "rl"
algorithm = "dapo"
steps = 2
prompts_per_step = 2
samples_per_prompt = 2
max_new_tokens = 8
overlong_buffer_len = 4
max_gen_batches = 2
warmup_steps = 0
lr = 1e-3
save_every = 0
"#,
        dir.path().join("run").display()
    );
    let cfg = RunConfig::from_toml_str(&text, Path::new("p.toml"), &[]).unwrap();
    let out = prism::stages::pipeline::run_pipeline(&cfg).unwrap();
    assert_eq!((out[0].kind.as_str(), out[0].steps), ("rlvr", 2));
    let recs = metrics(&dir.path().join("run"));
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let m = &r["metrics"];
        assert_eq!(m["gen_batches"], 2.0, "{r}");
        assert_eq!(m["dynamic_sampling_short"], 1.0, "{r}");
        assert_eq!(m["kept_groups"], 0.0, "{r}");
        assert_eq!(m["dynamic_sampling_skipped"], 1.0, "{r}");
        assert_eq!(m["gen_accuracy"], 0.0, "{r}");
    }
    let fin = read_trainer_state(&out[0].output, StageKind::Rlvr).unwrap();
    assert_eq!(fin.next_cursor, 8);
    assert_eq!(fin.skipped_steps, 2);
}

// ---------------------------------------------------------------------------------------------
// Property

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

        /// Under any staleness bound, generator count, sync switch, round limit and round size,
        /// and any set of varying prompts: every trained sample is within the staleness bound,
        /// every step trains at most `prompts_per_step` groups (exactly that many, all varying,
        /// unless it is short), every prompt before the final cursor was trained or filtered
        /// exactly once, and the round limit holds.
        #[test]
        fn refill_keeps_its_invariants(
            k in 0u64..3,
            gens in 1usize..3,
            sync in proptest::bool::weighted(0.3),
            max_rounds in 0u32..4,
            round in 1usize..4,
            vary in proptest::collection::btree_set(0u64..60, 0..30),
        ) {
            let mut cfg = common::config(gens, k);
            cfg.sync = sync;
            cfg.prompts_per_request = 1;
            let vary: Vec<u64> = vary.into_iter().collect();
            let (b, steps) = (2usize, 4u64);
            let run = run_toy(
                StageKind::Rlvr, cfg, steps, b, 60, &vary, dapo_rounds(max_rounds, round),
            );
            let r = &run.report;
            let bound = if sync { 0 } else { k };
            prop_assert!(r.max_staleness().unwrap_or(0) <= bound);
            prop_assert!(r.steps_done >= 1 && r.steps_done <= steps);
            for rec in &r.steps {
                let s = rec.sampling.as_ref().unwrap();
                prop_assert!(max_rounds == 0 || s.gen_batches <= max_rounds);
                prop_assert!(s.kept_groups <= b);
                prop_assert_eq!(s.short, s.kept_groups < b);
                let batch = &run.batches[&rec.step];
                let g = groups(batch);
                if s.kept_groups > 0 {
                    prop_assert_eq!(g.len(), s.kept_groups);
                    for chunk in batch.chunks(4) {
                        prop_assert!(chunk.iter().any(|x| x.accuracy != chunk[0].accuracy));
                    }
                } else {
                    // skipped: the first round's constant groups
                    prop_assert!(batch.iter().all(|x| x.accuracy == 0.0));
                }
                for x in batch {
                    prop_assert!(x.version <= rec.step && rec.step - x.version <= bound);
                }
            }
            let mut all: Vec<u64> = r.processed.keys().chain(r.filtered.keys()).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..r.next_cursor as u64).collect::<Vec<_>>());
            prop_assert!(r.processed.values().chain(r.filtered.values()).all(|&c| c == 1));
            prop_assert_eq!(
                r.gen_batches,
                r.steps.iter().map(|s| u64::from(s.sampling.as_ref().unwrap().gen_batches)).sum::<u64>()
            );
        }
    }
}
