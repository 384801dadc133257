//! The Prometheus exporter on a random loopback port serves the prism_ metrics of a run.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use common::{config, fault, recorder, spec};
use prism::actors::messages::StageKind;
use prism::actors::toy::{self, ToyOptions};
use prism::actors::{FaultMode, run_stage};
use tokio_util::sync::CancellationToken;

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_returns_prism_metrics() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    prism::telemetry::install_prometheus(addr).unwrap();
    let mut cfg = config(2, 1);
    cfg.faults.rules = vec![fault("reward", FaultMode::Error, 1, 1)];
    let (engines, _) = toy::engines(ToyOptions::default());
    run_stage(
        &cfg,
        spec(StageKind::Align, 3, 2, 2),
        engines,
        Arc::new(toy::prompts(6, 1)),
        recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let body = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for name in [
        "prism_actor_busy_ratio{",
        "prism_queue_depth_batches{",
        "prism_rollouts_total{",
        "prism_generated_tokens_total{",
        "prism_rollouts_per_second{",
        "prism_generated_tokens_per_second{",
        "prism_rollout_staleness_versions_bucket{",
        "prism_weight_sync_seconds_bucket{",
        "prism_actor_restarts_total{",
        "prism_policy_version{",
        "prism_steps_total{",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert!(body.contains("# HELP prism_actor_busy_ratio"), "{body}");
    let busy = body
        .lines()
        .find(|l| l.starts_with("prism_actor_busy_ratio{") && l.contains("actor=\"learner\""))
        .expect("learner busy ratio");
    assert!(
        busy.contains("stage=\"align\"") && busy.contains("device=\"cpu\""),
        "{busy}"
    );
    let restarts = body
        .lines()
        .find(|l| l.starts_with("prism_actor_restarts_total{") && l.contains("actor=\"reward\""))
        .expect("reward restart counted");
    assert!(restarts.ends_with(" 1"), "{restarts}");
}
