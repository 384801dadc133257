//! Exactly-once at the actor level: a retried learner step is recognised and not applied twice,
//! a restarted learner resumes from the last published version, and the teacher-client's cache
//! (which outlives restarts) answers repeated prompts without asking the teacher again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prism::actors::compute::BusyMeter;
use prism::actors::config::{ActorsConfig, DeviceSpec};
use prism::actors::engine::{PolicyEngine, RewardEngine};
use prism::actors::faults::FaultInjector;
use prism::actors::learner::{LearnerActor, LearnerArgs, LearnerMsg, StepReply};
use prism::actors::messages::{SamplingParams, ScoredSample, StageKind, TrainBatch};
use prism::actors::teacher::{DemoCache, TeacherActor, TeacherArgs, TeacherMsg};
use prism::actors::toy::{self, BigramPolicy, TokenReward, ToyOptions};
use prism::actors::weights::WeightsBus;
use ractor::Actor;
use ractor::rpc::CallResult;

const T: Option<Duration> = Some(Duration::from_secs(20));

fn learner_args(engines: &prism::actors::Engines, bus: &WeightsBus) -> LearnerArgs {
    LearnerArgs {
        name: "learner".into(),
        stage: "test".into(),
        device: DeviceSpec::Cpu,
        factory: engines.learner.clone(),
        weights: bus.clone(),
        initial_version: 5,
        faults: FaultInjector::new(&ActorsConfig::default().faults, "learner"),
        meter: BusyMeter::new("test", "learner", "cpu"),
    }
}

fn batch(probe: Arc<toy::ToyProbe>) -> Arc<TrainBatch> {
    let ps = toy::prompts(2, 3);
    let mut pol = BigramPolicy::new(tch::Device::Cpu, 0, toy::no_delay(), probe);
    let rs = pol.generate(&ps, 4, &SamplingParams::default()).unwrap();
    let samples = rs
        .into_iter()
        .map(|r| {
            let p = ps[r.prompt_uid as usize].clone();
            let mut reward = TokenReward.evaluate(&p, &r).unwrap();
            // Distinct rewards within each group so the step has a gradient.
            reward.accuracy = Some(r.sample_index as f32);
            ScoredSample {
                prompt: p,
                rollout: r,
                reward,
                caption_score: None,
                reasoning_score: None,
                perception_version: None,
                reasoning_version: None,
                teacher_source: None,
            }
        })
        .collect();
    Arc::new(TrainBatch {
        step: 0,
        kind: StageKind::Rlvr,
        group_size: 4,
        samples,
    })
}

async fn step(
    l: &ractor::ActorRef<LearnerMsg>,
    ev: u64,
    b: &Arc<TrainBatch>,
) -> CallResult<StepReply> {
    l.call(
        |reply| LearnerMsg::Step {
            expected_version: ev,
            batch: b.clone(),
            reply,
        },
        T,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_step_is_applied_once_and_a_restart_resumes_from_the_bus() {
    let (engines, probe) = toy::engines(ToyOptions::default());
    let bus = WeightsBus::new();
    let (l, h) = Actor::spawn(None, LearnerActor, learner_args(&engines, &bus))
        .await
        .unwrap();
    assert_eq!(bus.version(), Some(5), "initial weights published as v5");
    let b = batch(probe.clone());
    let CallResult::Success(first) = step(&l, 5, &b).await else {
        panic!("step failed")
    };
    assert!(!first.duplicate);
    assert_eq!(first.stats.version, 6);
    assert_eq!(bus.version(), Some(6));
    let v6 = bus.latest().unwrap();
    // The same step again (a retry whose first reply was lost): replayed, not re-applied.
    let CallResult::Success(again) = step(&l, 5, &b).await else {
        panic!("retry failed")
    };
    assert!(again.duplicate);
    assert_eq!(again.stats, first.stats);
    assert_eq!(bus.latest().unwrap(), v6, "weights unchanged by the retry");
    assert!(probe.trained.lock().unwrap().values().all(|&c| c == 1));
    // A step from the wrong version is an error: the actor fails, the reply port is dropped.
    assert_eq!(step(&l, 9, &b).await, CallResult::SenderError);
    h.await.unwrap();
    // A new incarnation restores v6 from the bus and continues with v6 → v7.
    let (l2, h2) = Actor::spawn(None, LearnerActor, learner_args(&engines, &bus))
        .await
        .unwrap();
    let v = l2.call(LearnerMsg::Version, T).await.unwrap();
    assert_eq!(v, CallResult::Success(6));
    let CallResult::Success(next) = step(&l2, 6, &b).await else {
        panic!("step after restart failed")
    };
    assert_eq!(next.stats.version, 7);
    assert_eq!(probe.builds.lock().unwrap()["learner"], 2);
    l2.stop(None);
    h2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_cache_is_by_content_and_survives_restarts() {
    let (engines, probe) = toy::engines(ToyOptions::default());
    let cache = DemoCache::default();
    let args = || TeacherArgs {
        name: "teacher-client".into(),
        stage: "test".into(),
        device: DeviceSpec::Cpu,
        factory: engines.teacher.clone().unwrap(),
        cache: cache.clone(),
        faults: FaultInjector::new(&ActorsConfig::default().faults, "teacher-client"),
        meter: BusyMeter::new("test", "teacher-client", "cpu"),
    };
    let ps = toy::prompts(2, 4);
    let mut same_content = ps[0].clone();
    same_content.uid = 99;
    let ask = Arc::new(vec![ps[0].clone(), same_content, ps[1].clone()]);
    let (t, h) = Actor::spawn(None, TeacherActor, args()).await.unwrap();
    let CallResult::Success(demos) = t
        .call(|r| TeacherMsg::Demonstrate(ask.clone(), r), T)
        .await
        .unwrap()
    else {
        panic!("teacher failed")
    };
    assert_eq!(
        demos.iter().map(|d| d.prompt_uid).collect::<Vec<_>>(),
        vec![0, 99, 1]
    );
    assert_eq!(demos[0].caption, demos[1].caption);
    assert_eq!(probe.teacher_calls.load(Ordering::Relaxed), 2);
    t.stop(None);
    h.await.unwrap();
    let (t2, h2) = Actor::spawn(None, TeacherActor, args()).await.unwrap();
    let again = t2
        .call(|r| TeacherMsg::Demonstrate(ask.clone(), r), T)
        .await
        .unwrap();
    assert_eq!(again, CallResult::Success(demos));
    assert_eq!(
        probe.teacher_calls.load(Ordering::Relaxed),
        2,
        "served from the cache"
    );
    t2.stop(None);
    h2.await.unwrap();
}
