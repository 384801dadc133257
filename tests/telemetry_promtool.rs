//! A real scrape of the Prometheus exporter, checked by Prometheus' own linter.
//!
//! Installs the exporter of `prism::telemetry` on a free loopback port, records every metric in
//! `telemetry::ALL` once with its labels, fetches `/metrics` with an HTTP GET and pipes the body
//! through `promtool check metrics`. promtool comes from Debian's `prometheus` package:
//! run `scripts/setup-test-tools.sh` (`make test` does) if this test says it is missing.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prism::telemetry;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Label pairs of one sample.
type Labels = Vec<(&'static str, &'static str)>;

/// How each runtime metric is recorded in src/actors (counter, gauge or histogram) and with
/// which labels. Must name exactly the metrics of `telemetry::ALL`.
fn kinds() -> Vec<(&'static str, Kind, Labels)> {
    use Kind::*;
    let actor = vec![
        ("stage", "align"),
        ("actor", "generator"),
        ("device", "cuda:0"),
    ];
    let stage = vec![("stage", "align")];
    let mut v = vec![
        (telemetry::ACTOR_BUSY_RATIO, Gauge, actor.clone()),
        (telemetry::ACTOR_BUSY_SECONDS, Gauge, actor.clone()),
        (telemetry::ACTOR_JOB_SECONDS, Histogram, actor.clone()),
        (
            telemetry::QUEUE_DEPTH,
            Gauge,
            vec![("stage", "align"), ("queue", "rollouts")],
        ),
        (telemetry::ROLLOUTS_TOTAL, Counter, actor.clone()),
        (telemetry::GENERATED_TOKENS_TOTAL, Counter, actor.clone()),
        (telemetry::ROLLOUTS_PER_SECOND, Gauge, stage.clone()),
        (telemetry::TOKENS_PER_SECOND, Gauge, stage.clone()),
        (telemetry::STALENESS, Histogram, stage.clone()),
        (telemetry::WEIGHT_SYNC_SECONDS, Histogram, actor.clone()),
        (telemetry::ACTOR_RESTARTS_TOTAL, Counter, actor.clone()),
        (telemetry::DEADLINE_EXCEEDED_TOTAL, Counter, actor.clone()),
        (
            telemetry::FAULTS_INJECTED_TOTAL,
            Counter,
            vec![("stage", "align"), ("actor", "generator")],
        ),
        (telemetry::POLICY_VERSION, Gauge, stage.clone()),
        (telemetry::STEP_SECONDS, Histogram, stage.clone()),
        (telemetry::STEPS_TOTAL, Counter, stage.clone()),
        (telemetry::TEACHER_CACHE_HITS_TOTAL, Counter, stage.clone()),
        (telemetry::TEACHER_CACHE_MISSES_TOTAL, Counter, stage),
        // The HTTP teacher (src/teacher/client.rs) records these without stage labels.
        (telemetry::TEACHER_REQUESTS_TOTAL, Counter, vec![]),
        (
            telemetry::TEACHER_RETRIES_TOTAL,
            Counter,
            vec![("reason", "rate_limited")],
        ),
        (telemetry::TEACHER_INPUT_TOKENS_TOTAL, Counter, vec![]),
        (telemetry::TEACHER_OUTPUT_TOKENS_TOTAL, Counter, vec![]),
        (telemetry::TEACHER_COST_USD, Gauge, vec![]),
        (telemetry::TEACHER_REQUEST_SECONDS, Histogram, vec![]),
        (telemetry::TEACHER_INVALID_ANSWERS_TOTAL, Counter, vec![]),
        (
            telemetry::TEACHER_FAILURES_TOTAL,
            Counter,
            vec![("reason", "timeout")],
        ),
        // The teacher-client actor (src/actors/teacher.rs) and `prism serve` (src/serve/).
        (
            telemetry::TEACHER_SKIPPED_TOTAL,
            Counter,
            vec![("stage", "align"), ("reason", "invalid_answer")],
        ),
        (
            telemetry::SERVE_REQUESTS_TOTAL,
            Counter,
            vec![("status", "200")],
        ),
        (telemetry::SERVE_PROMPT_TOKENS_TOTAL, Counter, vec![]),
        (telemetry::SERVE_COMPLETION_TOKENS_TOTAL, Counter, vec![]),
        (telemetry::SERVE_BATCH_ROWS, Histogram, vec![]),
        (telemetry::SERVE_REQUEST_SECONDS, Histogram, vec![]),
        (telemetry::SERVE_GENERATED_TOKENS_TOTAL, Counter, vec![]),
        (telemetry::SERVE_REQUESTS_GENERATING, Gauge, vec![]),
    ];
    // Training quality, exported from every metrics-log record (telemetry::record_step).
    let run = vec![("stage", "align"), ("arm", "prism")];
    for (_, name, _) in telemetry::STEP_GAUGES {
        v.push((*name, Gauge, run.clone()));
    }
    v.push((telemetry::TRAINED_TOKENS_TOTAL, Counter, run.clone()));
    v.push((telemetry::DS_SHORT_STEPS_TOTAL, Counter, run));
    v
}

fn free_loopback_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local address of the probe listener")
}

fn record_all() {
    for (name, kind, labels) in kinds() {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, *v))
            .collect();
        match kind {
            Kind::Counter => metrics::counter!(name, labels).increment(3),
            Kind::Gauge => metrics::gauge!(name, labels).set(0.5),
            Kind::Histogram => {
                let h = metrics::histogram!(name, labels);
                h.record(0.02);
                h.record(2.0);
            }
        }
    }
}

async fn scrape(addr: SocketAddr) -> String {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => {
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap_or("").to_string())
                    .unwrap_or_default();
                assert!(
                    content_type.starts_with("text/plain"),
                    "scrape content type is {content_type:?}, not the text exposition format"
                );
                return resp.text().await.expect("read the scrape body");
            }
            Ok(resp) if Instant::now() > deadline => {
                panic!("GET {url} answered {} for 10 s", resp.status())
            }
            Err(e) if Instant::now() > deadline => panic!("GET {url} failed for 10 s: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs `promtool check metrics` on `body`; returns (success, combined output).
fn promtool_check(body: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed (it lints the Prometheus scrape in this test); \
             run `bash scripts/setup-test-tools.sh` (as root, or follow what it prints)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(body.as_bytes())
        .expect("write the scrape to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kinds_table_names_every_metric_once() {
    let mut listed: Vec<&str> = kinds().iter().map(|k| k.0).collect();
    listed.sort_unstable();
    let mut all = telemetry::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(
        listed, all,
        "the test's table of metric kinds must match telemetry::ALL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_passes_promtool_check_metrics() {
    let addr = free_loopback_addr();
    telemetry::install_prometheus(addr).expect("install the Prometheus exporter");
    record_all();
    // a metrics-log record reaches Prometheus through record_step, under its stage and arm
    let step: std::collections::BTreeMap<String, f64> = [
        ("reward_mean", 0.75),
        ("cap_acc", 0.625),
        ("tokens", 40.0),
        ("not_exported", 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    telemetry::record_step("align", "prism", &step);
    let body = scrape(addr).await;
    for line in [
        "prism_reward_mean{stage=\"align\",arm=\"prism\"} 0.75",
        "prism_cap_acc_ratio{stage=\"align\",arm=\"prism\"} 0.625",
        // the table above counted 3 already
        "prism_trained_tokens_total{stage=\"align\",arm=\"prism\"} 43",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "scrape lacks `{line}`:\n{body}"
        );
    }
    assert!(!body.contains("not_exported"));

    let (ok, report) = promtool_check(&body);
    assert!(
        ok && report.trim().is_empty(),
        "promtool check metrics rejected the scrape:\n{report}\n--- scrape ---\n{body}"
    );

    for (name, kind, labels) in kinds() {
        assert!(name.starts_with("prism_"), "{name} lacks the prism_ prefix");
        let kind_word = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert!(
            body.contains(&format!("# TYPE {name} {kind_word}\n")),
            "scrape lacks `# TYPE {name} {kind_word}`:\n{body}"
        );
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "scrape lacks help text for {name}:\n{body}"
        );
        if kind == Kind::Counter {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        let sample = match kind {
            Kind::Histogram => format!("{name}_bucket{{"),
            _ if labels.is_empty() => format!("{name} "),
            _ => format!("{name}{{"),
        };
        let line = body
            .lines()
            .find(|l| l.starts_with(&sample))
            .unwrap_or_else(|| panic!("no sample line of {name} in the scrape:\n{body}"));
        for (k, v) in labels {
            assert!(
                line.contains(&format!("{k}=\"{v}\"")),
                "sample of {name} lacks label {k}=\"{v}\": {line}"
            );
        }
    }
    // Units in names: durations in base-unit seconds, and histograms of durations carry the
    // bucket layout the exporter was configured with.
    for name in [
        telemetry::ACTOR_JOB_SECONDS,
        telemetry::WEIGHT_SYNC_SECONDS,
        telemetry::STEP_SECONDS,
    ] {
        assert!(
            body.contains(&format!("{name}_bucket{{"))
                && body
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}_bucket")) && l.contains("le=\"0.005\"")),
            "{name} lacks the seconds buckets:\n{body}"
        );
        assert!(body.contains(&format!("{name}_sum{{")));
        assert!(body.contains(&format!("{name}_count{{")));
    }
}

/// The check above is only worth something if promtool really lints: a counter without
/// `_total`, a non-base unit and a metric without help must be rejected.
#[test]
fn promtool_rejects_a_bad_exposition() {
    let bad = "# HELP prism_steps Steps\n# TYPE prism_steps counter\nprism_steps 1\n\
               # TYPE prism_step_milliseconds gauge\nprism_step_milliseconds 3\n";
    let (ok, report) = promtool_check(bad);
    assert!(!ok, "promtool accepted a bad exposition: {report}");
    assert!(report.contains("_total"), "{report}");
    assert!(report.contains("base unit"), "{report}");
}
