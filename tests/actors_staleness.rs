//! Property: under randomised compute delays of every actor, any staleness bound k, any number
//! of generator replicas and with or without the sync switch, no rollout is trained more than k
//! versions after the version that generated it, and every prompt is trained exactly once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, recorder, spec};
use prism::actors::messages::StageKind;
use prism::actors::run_stage;
use prism::actors::toy::{self, ToyOptions};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn staleness_never_exceeds_the_bound(
        k in 0u64..4,
        gens in 1usize..4,
        sync in proptest::bool::weighted(0.2),
        align in any::<bool>(),
        seed in any::<u64>(),
        gen_hi in 1u64..12,
        learn_hi in 1u64..25,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = config(gens, k);
        cfg.sync = sync;
        let opts = ToyOptions {
            seed,
            generate_delay: toy::random_delay(seed, ms(0), ms(gen_hi)),
            learn_delay: toy::random_delay(seed ^ 1, ms(0), ms(learn_hi)),
            score_delay: toy::random_delay(seed ^ 2, ms(0), ms(5)),
            teacher_delay: toy::random_delay(seed ^ 3, ms(0), ms(5)),
            ..ToyOptions::default()
        };
        let (engines, probe) = toy::engines(opts);
        let kind = if align { StageKind::Align } else { StageKind::Rlvr };
        let steps = 6;
        let report = rt
            .block_on(run_stage(
                &cfg,
                spec(kind, steps, 2, 2),
                engines,
                Arc::new(toy::prompts(12, seed)),
                recorder(),
                CancellationToken::new(),
            ))
            .unwrap();
        let bound = if sync { 0 } else { k };
        prop_assert_eq!(report.steps_done, steps);
        prop_assert!(report.max_staleness().unwrap() <= bound, "{:?} > {}", report.staleness_counts, bound);
        for s in &report.steps {
            prop_assert!(s.max_staleness <= bound);
        }
        prop_assert_eq!(report.processed.len(), 12);
        prop_assert!(report.processed.values().all(|&c| c == 1));
        prop_assert_eq!(probe.trained.lock().unwrap().clone(), report.processed);
    }
}

const ACTORS: [&str; 7] = [
    "generator-0",
    "generator-1",
    "teacher-client",
    "perception-expert",
    "reasoning-expert",
    "reward",
    "learner",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random faults (errors and panics) on random actors, with random delays: the stage still
    /// finishes, every prompt is trained exactly once, and the bound holds.
    #[test]
    fn random_faults_never_lose_or_duplicate_a_prompt(
        k in 0u64..3,
        seed in any::<u64>(),
        picks in proptest::collection::vec((0usize..7, any::<bool>(), 0u64..4), 1..5),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = config(2, k);
        cfg.supervision.max_failures = 50;
        cfg.faults.seed = seed;
        cfg.faults.rules = picks
            .iter()
            .map(|&(a, panic, after)| prism::actors::FaultRule {
                actor: ACTORS[a].into(),
                mode: if panic { prism::actors::FaultMode::Panic } else { prism::actors::FaultMode::Error },
                rate: 0.5,
                after,
                max_faults: Some(2),
                hang_secs: 0.0,
            })
            .collect();
        let (engines, probe) = toy::engines(ToyOptions {
            seed,
            generate_delay: toy::random_delay(seed, ms(0), ms(4)),
            learn_delay: toy::random_delay(seed ^ 1, ms(0), ms(8)),
            ..ToyOptions::default()
        });
        let report = rt
            .block_on(run_stage(
                &cfg,
                spec(StageKind::Align, 5, 2, 2),
                engines,
                Arc::new(toy::prompts(10, seed)),
                recorder(),
                CancellationToken::new(),
            ))
            .unwrap();
        prop_assert_eq!(report.steps_done, 5);
        prop_assert!(report.max_staleness().unwrap() <= k);
        prop_assert_eq!(report.processed.len(), 10);
        prop_assert!(report.processed.values().all(|&c| c == 1));
        prop_assert_eq!(probe.trained.lock().unwrap().clone(), report.processed);
        prop_assert_eq!(report.policy_version, 5);
        let restarts: u32 = report.restarts.values().sum();
        prop_assert_eq!(restarts as u64, report.faults_injected);
    }
}
