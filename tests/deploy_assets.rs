//! The deployment files agree with the code: the Grafana dashboard queries only metrics prism
//! exports and charts every one of them, Prometheus scrapes the port the compose file exposes,
//! and the compose command passes only flags `prism run` accepts.

use std::collections::BTreeSet;
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The metric names each panel's queries use (histogram suffixes removed), by panel title.
fn queried_metrics() -> Vec<(String, Vec<String>)> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/dashboards/prism.json")).expect("valid JSON");
    let name = regex::Regex::new(r"prism_[a-z_]+").unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title").to_string();
        let mut names = Vec::new();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for m in name.find_iter(expr) {
                let series = m.as_str();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s))
                    .unwrap_or(series);
                names.push(base.to_string());
            }
        }
        out.push((title, names));
    }
    out
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let known: BTreeSet<&str> = prism::telemetry::ALL.iter().copied().collect();
    let mut queried = 0;
    for (title, names) in queried_metrics() {
        for n in names {
            assert!(
                known.contains(n.as_str()),
                "panel {title:?} queries {n}, which prism does not export"
            );
            queried += 1;
        }
    }
    assert!(
        queried >= 10,
        "the dashboard should chart the runtime metrics"
    );
}

#[test]
fn dashboard_charts_every_exported_metric() {
    let charted: BTreeSet<String> = queried_metrics()
        .into_iter()
        .flat_map(|(_, names)| names)
        .collect();
    let missing: Vec<&str> = prism::telemetry::ALL
        .iter()
        .copied()
        .filter(|m| !charted.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "no panel of docker/grafana/dashboards/prism.json charts {missing:?}"
    );
}

#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/dashboards/prism.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "duplicate panel ids");
    let cells: Vec<(i64, i64, i64, i64)> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let v = |k: &str| g[k].as_i64().unwrap();
            (v("x"), v("y"), v("w"), v("h"))
        })
        .collect();
    for (i, a) in cells.iter().enumerate() {
        assert!(a.0 + a.2 <= 24, "panel {i} is wider than the grid");
        for b in &cells[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "panels at {a:?} and {b:?} overlap");
        }
    }
}

#[test]
fn prometheus_scrapes_the_exposed_port() {
    let prom = read("docker/prometheus.yml");
    let compose = read("docker/compose.yml");
    assert!(
        prom.contains("prism:9464"),
        "prometheus.yml must scrape prism:9464"
    );
    assert!(
        compose.contains("expose: [\"9464\"]") && compose.contains("0.0.0.0:9464"),
        "compose.yml must expose 9464 on the internal network and bind the exporter there"
    );
    assert!(read("docker/Dockerfile").contains("EXPOSE 9464"));
}

#[test]
fn the_compose_command_uses_only_flags_prism_run_accepts() {
    let compose = read("docker/compose.yml");
    let line = compose
        .lines()
        .find(|l| l.trim_start().starts_with("command: [\"run\""))
        .expect("the prism service runs `prism run`");
    let flags: Vec<&str> = regex::Regex::new(r#""(--[a-z-]+)""#)
        .unwrap()
        .captures_iter(line)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(flags.contains(&"--metrics-addr") && flags.contains(&"--resume"));
    let help = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in flags {
        assert!(
            help.contains(f),
            "compose.yml passes {f}, which `prism run` does not accept:\n{help}"
        );
    }
}
