//! Fault injection: makes chosen actors fail (error, panic or hang) at a given rate or after a
//! given count of requests, as the `[actors.faults]` config section says. The injector of an
//! actor outlives the actor's restarts, so counts and the random stream carry on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::config::{FaultConfig, FaultMode, FaultRule};
use crate::telemetry;

/// A fault drawn for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Error,
    Panic,
    Hang(Duration),
}

#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    injected: u64,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<RuleState>,
    served: u64,
    rng: StdRng,
}

/// The faults of one actor. Shared (`Arc`) between the supervisor and each incarnation of the
/// actor.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    actor: String,
    inner: Arc<Mutex<Inner>>,
}

fn name_hash(s: &str) -> u64 {
    // FNV-1a: a stable per-actor stream offset (std's hasher is randomly seeded).
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl FaultInjector {
    /// The injector of `actor` under `cfg` (no rules: never fires).
    pub fn new(cfg: &FaultConfig, actor: &str) -> FaultInjector {
        let rules = cfg
            .rules
            .iter()
            .filter(|r| r.actor == actor)
            .map(|r| RuleState {
                rule: r.clone(),
                injected: 0,
            })
            .collect();
        FaultInjector {
            actor: actor.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                rules,
                served: 0,
                rng: StdRng::seed_from_u64(cfg.seed ^ name_hash(actor)),
            })),
        }
    }

    /// Counts one request and draws whether it fails, and how.
    pub fn draw(&self) -> Option<Fault> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let served = g.served;
        g.served += 1;
        let Inner { rules, rng, .. } = &mut *g;
        for st in rules.iter_mut() {
            if served < st.rule.after {
                continue;
            }
            if st.rule.max_faults.is_some_and(|m| st.injected >= m) {
                continue;
            }
            if st.rule.rate >= 1.0 || rng.random::<f64>() < st.rule.rate {
                st.injected += 1;
                return Some(match st.rule.mode {
                    FaultMode::Error => Fault::Error,
                    FaultMode::Panic => Fault::Panic,
                    FaultMode::Hang => Fault::Hang(Duration::from_secs_f64(st.rule.hang_secs)),
                });
            }
        }
        None
    }

    /// Total faults injected so far.
    pub fn injected(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.rules.iter().map(|r| r.injected).sum()
    }

    /// Draws and applies a fault at the start of a request: returns an error, panics, or
    /// sleeps, as drawn. `request` names the request in the message.
    pub async fn apply(&self, stage: &str, request: &str) -> Result<(), String> {
        let Some(fault) = self.draw() else {
            return Ok(());
        };
        metrics::counter!(
            telemetry::FAULTS_INJECTED_TOTAL,
            "stage" => stage.to_string(),
            "actor" => self.actor.clone()
        )
        .increment(1);
        tracing::warn!(actor = %self.actor, request, ?fault, "injecting fault");
        match fault {
            Fault::Error => Err(format!(
                "injected fault: {} fails request {request}",
                self.actor
            )),
            Fault::Panic => panic!("injected fault: {} panics on request {request}", self.actor),
            Fault::Hang(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mode: FaultMode, rate: f64, after: u64, max: Option<u64>) -> FaultRule {
        FaultRule {
            actor: "reward".into(),
            mode,
            rate,
            after,
            max_faults: max,
            hang_secs: 0.5,
        }
    }

    #[test]
    fn after_count_and_max_faults() {
        let cfg = FaultConfig {
            seed: 1,
            rules: vec![rule(FaultMode::Error, 1.0, 2, Some(2))],
        };
        let f = FaultInjector::new(&cfg, "reward");
        let draws: Vec<_> = (0..6).map(|_| f.draw()).collect();
        assert_eq!(
            draws,
            vec![
                None,
                None,
                Some(Fault::Error),
                Some(Fault::Error),
                None,
                None
            ]
        );
        // Another actor is untouched; a clone shares the counts (restarts).
        assert_eq!(FaultInjector::new(&cfg, "learner").draw(), None);
        let g = f.clone();
        assert_eq!(g.draw(), None);
        assert_eq!(g.injected(), 2);
    }

    #[test]
    fn rate_is_roughly_respected_and_seeded() {
        let cfg = FaultConfig {
            seed: 42,
            rules: vec![rule(FaultMode::Hang, 0.25, 0, None)],
        };
        let count = |cfg: &FaultConfig| {
            let f = FaultInjector::new(cfg, "reward");
            (0..4000).filter(|_| f.draw().is_some()).count()
        };
        let n = count(&cfg);
        assert!((800..1200).contains(&n), "{n}");
        assert_eq!(n, count(&cfg), "same seed, same draws");
    }
}
