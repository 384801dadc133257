//! The deployment files agree with the code: the Grafana dashboard queries only metrics prism
//! exports, and Prometheus scrapes the port the compose file exposes.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/dashboards/prism.json")).expect("valid JSON");
    let known: BTreeSet<&str> = prism::telemetry::ALL.iter().copied().collect();
    let name = regex::Regex::new(r"prism_[a-z_]+").unwrap();
    let mut queried = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for m in name.find_iter(expr) {
                let series = m.as_str();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s))
                    .unwrap_or(series);
                assert!(
                    known.contains(base),
                    "panel {:?} queries {series}, which prism does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(
        queried >= 10,
        "the dashboard should chart the runtime metrics"
    );
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
}
