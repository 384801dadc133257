//! End-to-end message flow of alignment and RLVR steps on CPU with the toy tch engines:
//! versions, staleness, exactly-once processing, supervision under injected faults, deadlines.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, fault, recorder, spec};
use prism::actors::messages::StageKind;
use prism::actors::toy::{self, ToyOptions};
use prism::actors::{CheckpointReason, FaultMode, StageError, run_stage};
use tokio_util::sync::CancellationToken;

fn each_once(processed: &std::collections::BTreeMap<u64, u32>, n: u64) {
    assert_eq!(processed.len() as u64, n, "{processed:?}");
    for uid in 0..n {
        assert_eq!(processed.get(&uid), Some(&1), "prompt {uid}: {processed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alignment_steps_flow_through_every_actor() {
    let cfg = config(2, 1);
    let (engines, probe) = toy::engines(ToyOptions::default());
    let hook = recorder();
    let prompts = Arc::new(toy::prompts(8, 1));
    let report = run_stage(
        &cfg,
        spec(StageKind::Align, 3, 2, 4),
        engines,
        prompts,
        hook.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.steps_done, 3);
    assert_eq!(report.policy_version, 3);
    assert_eq!(report.rollouts, 3 * 2 * 4);
    assert_eq!(report.next_cursor, 6);
    each_once(&report.processed, 6);
    assert_eq!(probe.trained.lock().unwrap().clone(), report.processed);
    assert!(report.max_staleness().unwrap() <= 1);
    // The teacher was asked once per prompt; experts were updated against its demos.
    assert_eq!(
        probe
            .teacher_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    let updated = report
        .steps
        .iter()
        .filter(|s| s.perception.is_some())
        .count();
    assert!(updated >= 1, "{:?}", report.steps);
    // the record each step hands to the hook already carries that step's expert update (which
    // runs beside the learner's), as the final report does
    let told = hook.steps.lock().unwrap().clone();
    assert_eq!(told.len(), 3);
    for (r, fin) in told.iter().zip(&report.steps) {
        assert_eq!(
            (r.perception.is_some(), r.reasoning.is_some()),
            (fin.perception.is_some(), fin.reasoning.is_some()),
            "step {} recorded without its expert update: {r:?}",
            r.step
        );
    }
    let ckpts = hook.seen.lock().unwrap();
    assert_eq!(ckpts.len(), 1);
    assert_eq!(ckpts[0].reason, CheckpointReason::Finished);
    assert_eq!(ckpts[0].policy.as_ref().unwrap().version, 3);
    assert_eq!(
        ckpts[0].perception.as_ref().map(|w| w.version).unwrap_or(0),
        report
            .steps
            .iter()
            .filter(|s| s.perception.is_some())
            .count() as u64
    );
    // Every compute actor did work on its own thread and reports a busy ratio.
    for a in [
        "generator-0",
        "learner",
        "reward",
        "teacher-client",
        "perception-expert",
        "reasoning-expert",
    ] {
        let b = report
            .busy
            .iter()
            .find(|b| b.actor == a)
            .unwrap_or_else(|| panic!("{a} idle"));
        assert!(
            b.ratio > 0.0 && b.ratio <= 1.0 && b.device == "cpu",
            "{b:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlvr_with_zero_staleness_is_strictly_on_policy() {
    let cfg = config(1, 0);
    let (engines, probe) = toy::engines(ToyOptions {
        learn_delay: toy::fixed_delay(Duration::from_millis(20)),
        ..ToyOptions::default()
    });
    let report = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 4, 2, 4),
        engines,
        Arc::new(toy::prompts(8, 2)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.steps_done, 4);
    assert_eq!(report.staleness_counts, vec![32]);
    // The single generator loaded every version, in order, before the step that needed it.
    assert_eq!(*probe.loaded_versions.lock().unwrap(), vec![0, 1, 2, 3]);
    each_once(&report.processed, 8);
    let losses: Vec<f32> = report.steps.iter().map(|s| s.loss).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_runs_ahead_up_to_the_bound() {
    let cfg = config(1, 2);
    let (engines, _) = toy::engines(ToyOptions {
        learn_delay: toy::fixed_delay(Duration::from_millis(60)),
        ..ToyOptions::default()
    });
    let report = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 6, 1, 2),
        engines,
        Arc::new(toy::prompts(6, 3)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // With a slow learner, generation overlaps it and uses older weights, never beyond 2.
    assert_eq!(
        report.max_staleness(),
        Some(2),
        "{:?}",
        report.staleness_counts
    );
    each_once(&report.processed, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_switch_removes_overlap() {
    let mut cfg = config(2, 3);
    cfg.sync = true;
    let (engines, _) = toy::engines(ToyOptions {
        learn_delay: toy::fixed_delay(Duration::from_millis(30)),
        ..ToyOptions::default()
    });
    let report = run_stage(
        &cfg,
        spec(StageKind::Align, 3, 2, 2),
        engines,
        Arc::new(toy::prompts(6, 4)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.max_staleness(), Some(0));
    // No overlap: each step's generation starts after the previous step's learner finished.
    for w in report.steps.windows(2) {
        assert!(w[1].done_at_secs - w[0].done_at_secs >= w[1].gen_secs + w[1].learn_secs - 0.01);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_are_recovered_and_every_prompt_trained_once() {
    let mut cfg = config(2, 1);
    cfg.faults.seed = 9;
    cfg.faults.rules = vec![
        fault("generator-0", FaultMode::Panic, 1, 2),
        fault("generator-1", FaultMode::Error, 2, 1),
        fault("teacher-client", FaultMode::Error, 0, 2),
        fault("perception-expert", FaultMode::Panic, 2, 1),
        fault("reasoning-expert", FaultMode::Error, 3, 1),
        fault("reward", FaultMode::Error, 1, 1),
        fault("learner", FaultMode::Panic, 1, 1),
    ];
    let (engines, probe) = toy::engines(ToyOptions::default());
    let report = run_stage(
        &cfg,
        spec(StageKind::Align, 4, 3, 2),
        engines,
        Arc::new(toy::prompts(12, 5)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.steps_done, 4);
    each_once(&report.processed, 12);
    assert_eq!(probe.trained.lock().unwrap().clone(), report.processed);
    assert_eq!(report.faults_injected, 2 + 1 + 2 + 1 + 1 + 1 + 1);
    for (a, n) in [
        ("generator-0", 2),
        ("generator-1", 1),
        ("teacher-client", 2),
        ("perception-expert", 1),
        ("reasoning-expert", 1),
        ("reward", 1),
        ("learner", 1),
    ] {
        assert_eq!(
            report.restarts.get(a),
            Some(&n),
            "{a}: {:?}",
            report.restarts
        );
    }
    // The learner restored its last published version: no step lost or doubled.
    assert_eq!(report.policy_version, 4);
    assert!(report.max_staleness().unwrap() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_generator_is_reported_by_name_and_replaced() {
    let mut cfg = config(2, 0);
    cfg.deadlines.generate_secs = 0.5;
    cfg.faults.rules = vec![fault("generator-1", FaultMode::Hang, 1, 1)];
    let (engines, _) = toy::engines(ToyOptions::default());
    let report = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 3, 4, 2),
        engines,
        Arc::new(toy::prompts(12, 6)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.stuck.len(), 1, "{:?}", report.stuck);
    assert_eq!(report.stuck[0].actor, "generator-1");
    assert_eq!(report.stuck[0].request, "generate");
    assert_eq!(report.restarts.get("generator-1"), Some(&1));
    each_once(&report.processed, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_stuck_actor_ends_the_run_with_its_name_and_a_checkpoint() {
    let mut cfg = config(1, 0);
    cfg.deadlines.learn_secs = 0.3;
    cfg.supervision.max_failures = 1;
    let mut rule = fault("learner", FaultMode::Hang, 1, 100);
    rule.max_faults = None;
    cfg.faults.rules = vec![rule];
    let (engines, _) = toy::engines(ToyOptions::default());
    let hook = recorder();
    let t0 = std::time::Instant::now();
    let err = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 5, 1, 2),
        engines,
        Arc::new(toy::prompts(5, 7)),
        hook.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(15), "no silent hang");
    assert_eq!(err.actor(), Some("learner"), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("learner") && msg.contains("stuck") && msg.contains("learn"),
        "{msg}"
    );
    assert!(
        matches!(err, StageError::GaveUp { failures: 2, .. }),
        "{err:?}"
    );
    let ckpts = hook.seen.lock().unwrap();
    assert!(matches!(&ckpts[0].reason, CheckpointReason::Failed(m) if m.contains("learner")));
    // Step 0 was trained before the learner started hanging: resume from prompt 1.
    assert_eq!(ckpts[0].steps_done, 1);
    assert_eq!(ckpts[0].next_cursor, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_cannot_start_is_named() {
    let mut cfg = config(1, 0);
    cfg.placement.learner = prism::actors::DeviceSpec::Cuda(7);
    let (mut engines, _) = toy::engines(ToyOptions::default());
    let inner = engines.learner.clone();
    engines.learner = Arc::new(move |d| match d {
        prism::actors::DeviceSpec::Cuda(i) => Err(format!("no CUDA device {i}").into()),
        d => inner(d),
    });
    let err = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 1, 1, 2),
        engines,
        Arc::new(toy::prompts(2, 8)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.actor(), Some("learner"));
    assert!(err.to_string().contains("no CUDA device 7"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stage_inputs_are_rejected_up_front() {
    let cfg = config(1, 0);
    let (mut engines, _) = toy::engines(ToyOptions::default());
    let e = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 1, 4, 2),
        engines.clone(),
        Arc::new(toy::prompts(3, 8)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no full step"), "{e}");
    engines.teacher = None;
    let e = run_stage(
        &cfg,
        spec(StageKind::Align, 1, 1, 2),
        engines,
        Arc::new(toy::prompts(3, 8)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("teacher"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_thread_stuck_in_the_engine_is_abandoned_and_replaced() {
    // The first generate call blocks its compute thread for 3 s (a hung kernel), far past the
    // 0.4 s deadline: the actor is reported, killed and rebuilt on a fresh thread; the stuck
    // thread finishes later on its own and its result is discarded.
    let mut cfg = config(1, 0);
    cfg.deadlines.generate_secs = 0.4;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (engines, probe) = toy::engines(ToyOptions {
        generate_delay: Arc::new(move || {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            }
        }),
        ..ToyOptions::default()
    });
    let t0 = std::time::Instant::now();
    let report = run_stage(
        &cfg,
        spec(StageKind::Rlvr, 3, 2, 2),
        engines,
        Arc::new(toy::prompts(6, 11)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "did not wait for the stuck thread"
    );
    assert_eq!(report.stuck.len(), 1);
    assert_eq!(report.stuck[0].actor, "generator-0");
    assert_eq!(report.restarts.get("generator-0"), Some(&1));
    assert_eq!(probe.builds.lock().unwrap()["policy"], 2);
    each_once(&report.processed, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_is_built_for_its_configured_device() {
    // Devices are only labels to the toy engines: each factory records what it was asked for.
    use prism::actors::DeviceSpec::{Cpu, Cuda};
    let mut cfg = config(3, 1);
    cfg.placement.generators = vec![Cuda(0), Cuda(1), Cuda(1)];
    cfg.placement.learner = Cuda(2);
    cfg.placement.perception_expert = Cuda(3);
    cfg.placement.reasoning_expert = Cuda(3);
    let (mut engines, _) = toy::engines(ToyOptions::default());
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cpu_only = |d: prism::actors::DeviceSpec| match d {
        Cuda(_) => Cpu,
        d => d,
    };
    let (inner, log) = (engines.policy.clone(), asked.clone());
    engines.policy = Arc::new(move |d| {
        log.lock().unwrap().push(("policy", d));
        inner(cpu_only(d))
    });
    let (inner, log) = (engines.learner.clone(), asked.clone());
    engines.learner = Arc::new(move |d| {
        log.lock().unwrap().push(("learner", d));
        inner(cpu_only(d))
    });
    let (inner, log) = (engines.perception.clone().unwrap(), asked.clone());
    engines.perception = Some(Arc::new(move |d| {
        log.lock().unwrap().push(("perception", d));
        inner(cpu_only(d))
    }));
    let (inner, log) = (engines.reasoning.clone().unwrap(), asked.clone());
    engines.reasoning = Some(Arc::new(move |d| {
        log.lock().unwrap().push(("reasoning", d));
        inner(cpu_only(d))
    }));
    let report = run_stage(
        &cfg,
        spec(StageKind::Align, 2, 3, 2),
        engines,
        Arc::new(toy::prompts(6, 12)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut asked = asked.lock().unwrap().clone();
    asked.sort_by_key(|(k, d)| (*k, d.to_string()));
    assert_eq!(
        asked,
        vec![
            ("learner", Cuda(2)),
            ("perception", Cuda(3)),
            ("policy", Cuda(0)),
            ("policy", Cuda(1)),
            ("policy", Cuda(1)),
            ("reasoning", Cuda(3)),
        ]
    );
    let dev = |a: &str| {
        report
            .busy
            .iter()
            .find(|b| b.actor == a)
            .map(|b| b.device.clone())
    };
    assert_eq!(dev("learner").as_deref(), Some("cuda:2"));
    assert_eq!(dev("reward").as_deref(), Some("cpu"));
    each_once(&report.processed, 6);
}
