//! Dedicated compute threads. Each compute actor owns one OS thread that builds and holds its
//! engine (modules, tensors, optimizer) for the actor's whole life; the actor's async handler
//! sends a job over a channel and awaits the reply, so libtorch never runs on a tokio worker
//! and a `Tensor` (Send, not Sync) never crosses an `.await`.
//!
//! A panic inside a job is caught on the compute thread and returned as
//! [`ComputeError::Panicked`]; the engine is then considered poisoned and the thread ends, the
//! actor fails, and the supervisor rebuilds both. A job that never returns (a hung kernel)
//! cannot be interrupted: the actor is killed at its deadline, the thread is left to finish on
//! its own and exits when it sees its channel closed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel;
use thiserror::Error;
use tokio::sync::oneshot;

use super::engine::EngineResult;
use crate::telemetry;

/// Why a compute job gave no result.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ComputeError {
    #[error("engine error: {0}")]
    Engine(String),
    #[error("engine panicked: {0}")]
    Panicked(String),
    #[error("compute thread is gone")]
    Gone,
}

/// Busy time (inside engine calls) over wall time of one actor, kept across its restarts.
/// Cheap to clone; the clones share the counters.
#[derive(Debug, Clone)]
pub struct BusyMeter {
    inner: Arc<MeterInner>,
}

#[derive(Debug)]
struct MeterInner {
    started: Instant,
    busy_nanos: AtomicU64,
    jobs: AtomicU64,
    /// `stage`, `actor`, `device` labels of the actor's metrics.
    labels: Vec<metrics::Label>,
}

impl BusyMeter {
    pub fn new(stage: &str, actor: &str, device: &str) -> BusyMeter {
        BusyMeter {
            inner: Arc::new(MeterInner {
                started: Instant::now(),
                busy_nanos: AtomicU64::new(0),
                jobs: AtomicU64::new(0),
                labels: telemetry::actor_labels(stage, actor, device),
            }),
        }
    }

    /// Metric labels of this actor.
    pub fn labels(&self) -> Vec<metrics::Label> {
        self.inner.labels.clone()
    }

    pub fn add_busy(&self, d: Duration) {
        self.inner
            .busy_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.inner.jobs.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!(telemetry::ACTOR_JOB_SECONDS, self.labels()).record(d.as_secs_f64());
        self.publish();
    }

    pub fn busy_secs(&self) -> f64 {
        self.inner.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    pub fn wall_secs(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    pub fn jobs(&self) -> u64 {
        self.inner.jobs.load(Ordering::Relaxed)
    }

    /// Busy seconds over wall seconds since the actor first started, in `[0, 1]`.
    pub fn ratio(&self) -> f64 {
        let wall = self.wall_secs();
        if wall <= 0.0 {
            0.0
        } else {
            (self.busy_secs() / wall).clamp(0.0, 1.0)
        }
    }

    /// Writes the busy ratio and busy seconds to the metrics recorder.
    pub fn publish(&self) {
        metrics::gauge!(telemetry::ACTOR_BUSY_RATIO, self.labels()).set(self.ratio());
        metrics::gauge!(telemetry::ACTOR_BUSY_SECONDS, self.labels()).set(self.busy_secs());
    }
}

type Job<E> = Box<dyn FnOnce(&mut E) -> bool + Send>;

/// Handle to one compute thread holding an engine `E`. Dropping the handle closes the job
/// channel; the thread exits after its current job.
pub struct ComputeThread<E: ?Sized + 'static> {
    /// Jobs to the thread. Unbounded, but the owning actor sends one job at a time (its
    /// handler awaits each reply), so it never holds more than one.
    tx: channel::Sender<Job<E>>,
    meter: BusyMeter,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

impl<E: ?Sized + 'static> ComputeThread<E> {
    /// Starts a thread named `prism-<name>`, builds the engine there with `build`, and waits
    /// until it is built.
    pub async fn start<B>(name: &str, build: B, meter: BusyMeter) -> Result<Self, ComputeError>
    where
        B: FnOnce() -> EngineResult<Box<E>> + Send + 'static,
    {
        let (tx, rx) = channel::unbounded::<Job<E>>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), ComputeError>>();
        std::thread::Builder::new()
            .name(format!("prism-{name}"))
            .spawn(move || {
                let mut engine = match catch_unwind(AssertUnwindSafe(build)) {
                    Ok(Ok(e)) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(ComputeError::Engine(e.to_string())));
                        return;
                    }
                    Err(p) => {
                        let _ = ready_tx.send(Err(ComputeError::Panicked(panic_message(&*p))));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    if !job(&mut *engine) {
                        // The engine panicked: it may be half-updated, never use it again.
                        return;
                    }
                }
            })
            .map_err(|e| ComputeError::Engine(format!("cannot spawn thread: {e}")))?;
        ready_rx.await.map_err(|_| ComputeError::Gone)??;
        Ok(ComputeThread { tx, meter })
    }

    /// Runs `f` on the engine and awaits its result; the time inside counts as busy.
    pub async fn run<R, F>(&self, f: F) -> Result<R, ComputeError>
    where
        R: Send + 'static,
        F: FnOnce(&mut E) -> EngineResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let meter = self.meter.clone();
        let job: Job<E> = Box::new(move |engine: &mut E| {
            let t0 = Instant::now();
            let out = catch_unwind(AssertUnwindSafe(|| f(engine)));
            meter.add_busy(t0.elapsed());
            let (res, healthy) = match out {
                Ok(Ok(v)) => (Ok(v), true),
                Ok(Err(e)) => (Err(ComputeError::Engine(e.to_string())), true),
                Err(p) => (Err(ComputeError::Panicked(panic_message(&*p))), false),
            };
            let _ = tx.send(res);
            healthy
        });
        self.tx.send(job).map_err(|_| ComputeError::Gone)?;
        rx.await.map_err(|_| ComputeError::Gone)?
    }

    pub fn meter(&self) -> &BusyMeter {
        &self.meter
    }
}

/// Starts actor `name`'s compute thread and builds its engine there with `factory` on `device`
/// (the start-up every compute actor shares); the error names the actor.
pub async fn start_engine<E: ?Sized + 'static>(
    name: &str,
    factory: std::sync::Arc<
        dyn Fn(super::config::DeviceSpec) -> EngineResult<Box<E>> + Send + Sync,
    >,
    device: super::config::DeviceSpec,
    meter: BusyMeter,
) -> Result<ComputeThread<E>, String> {
    ComputeThread::start(name, move || factory(device), meter)
        .await
        .map_err(|e| format!("{name}: {e}"))
}

/// After a restart: puts the newest snapshot published on `weights` back into the engine with
/// `restore` and returns its version; `None` when nothing was published yet (first start).
pub async fn restore_latest<E: ?Sized + 'static>(
    compute: &ComputeThread<E>,
    name: &str,
    weights: &super::weights::WeightsBus,
    restore: fn(&mut E, &super::messages::WeightsSnapshot) -> EngineResult<()>,
) -> Result<Option<u64>, String> {
    let Some(snap) = weights.latest() else {
        return Ok(None);
    };
    let v = snap.version;
    compute
        .run(move |e| restore(e, &snap))
        .await
        .map_err(|e| format!("{name}: restore v{v}: {e}"))?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u64);

    #[tokio::test]
    async fn runs_jobs_on_one_dedicated_thread_and_reports_panics() {
        let meter = BusyMeter::new("test", "counter", "cpu");
        let t: ComputeThread<Counter> =
            ComputeThread::start("counter", || Ok(Box::new(Counter(0))), meter.clone())
                .await
                .unwrap();
        let name1 = t
            .run(|c| {
                c.0 += 1;
                std::thread::sleep(Duration::from_millis(20));
                Ok(std::thread::current().name().map(String::from))
            })
            .await
            .unwrap();
        let name2 = t
            .run(|c| {
                c.0 += 1;
                Ok(std::thread::current().name().map(String::from))
            })
            .await
            .unwrap();
        assert_eq!(name1.as_deref(), Some("prism-counter"));
        assert_eq!(name1, name2);
        assert_eq!(t.run(|c| Ok(c.0)).await.unwrap(), 2);
        assert!(meter.busy_secs() >= 0.02 && meter.jobs() == 3);
        let e = t
            .run(|_| Err::<(), _>("bad input".into()))
            .await
            .unwrap_err();
        assert_eq!(e, ComputeError::Engine("bad input".into()));
        let e = t
            .run(|_| -> EngineResult<()> { panic!("kaboom") })
            .await
            .unwrap_err();
        assert_eq!(e, ComputeError::Panicked("kaboom".into()));
        // The thread is gone after a panic.
        assert_eq!(t.run(|c| Ok(c.0)).await.unwrap_err(), ComputeError::Gone);
    }

    #[tokio::test]
    async fn build_failure_is_reported() {
        let r = ComputeThread::<Counter>::start(
            "broken",
            || Err("no such device cuda:9".into()),
            BusyMeter::new("t", "broken", "cuda:9"),
        )
        .await;
        assert_eq!(
            r.err(),
            Some(ComputeError::Engine("no such device cuda:9".into()))
        );
    }
}
