//! `prism report` end to end: metrics logs of seed runs in, results table and charts out.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use prism::report::{MetricRecord, MetricsLog, write_report};

fn prism() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prism"))
}

/// A run log with training curves and one evaluation record per arm and stage.
fn records(acc_shift: f64) -> Vec<MetricRecord> {
    let mut out = Vec::new();
    let rec = |stage: &str, arm: &str, step, pairs: &[(&str, f64)]| MetricRecord {
        stage: stage.into(),
        arm: arm.into(),
        step,
        wall_time: 1.0,
        metrics: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
    };
    for (arm, stages, accs) in [
        (
            "prism",
            &["sft", "align", "rlvr"][..],
            &[0.3, 0.45, 0.6][..],
        ),
        ("baseline", &["sft", "rlvr"][..], &[0.3, 0.5][..]),
    ] {
        for (stage, acc) in stages.iter().zip(accs) {
            for step in 0..10u64 {
                let t = step as f64;
                out.push(rec(
                    stage,
                    arm,
                    step,
                    &[("loss", 1.0 / (1.0 + t)), ("reward_mean", t / 10.0)],
                ));
            }
            out.push(rec(
                stage,
                arm,
                10,
                &[
                    ("accuracy", acc + acc_shift),
                    ("format_valid_rate", 0.95),
                    ("perception_error_rate", 0.2),
                    ("reasoning_error_rate", 0.1),
                    ("n", 100.0),
                ],
            ));
        }
    }
    out
}

fn write_run(dir: &Path, acc_shift: f64) {
    let mut log = MetricsLog::open_in(dir).unwrap();
    for r in records(acc_shift) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
}

#[test]
fn report_over_three_seeds_prints_mean_and_std_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = [-0.05, 0.0, 0.05]
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = dir.path().join(format!("seed{i}"));
            write_run(&p, *d);
            p
        })
        .collect();
    let out_dir = dir.path().join("combined");
    let out = prism()
        .arg("report")
        .args(&runs)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // accuracy 0.55, 0.6, 0.65 -> 0.600 ± 0.050
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("prism") && l.contains("rlvr") && l.contains("0.600 ± 0.050")),
        "{stdout}"
    );
    assert!(stdout.contains("3 seeds"), "{stdout}");
    let md = fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(
        md.contains("| baseline | rlvr | 3 | 100 ± 0 | 0.500 ± 0.050 | 0.950 ± 0.000 |"),
        "{md}"
    );
    assert!(out_dir.join("plots/accuracy_by_stage.png").is_file());
    for i in 0..3 {
        assert!(out_dir.join(format!("plots/seed{i}/losses.png")).is_file());
        assert!(out_dir.join(format!("plots/seed{i}/rewards.png")).is_file());
        // No discriminator metrics were logged, so no empty chart.
        assert!(
            !out_dir
                .join(format!("plots/seed{i}/discriminator.png"))
                .exists()
        );
    }
}

#[test]
fn single_run_reports_into_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), 0.0);
    let out = prism().arg("report").arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(
        md.contains("| prism | align | 1 | 100 | 0.450 | 0.950 | 0.200 | 0.100 |"),
        "{md}"
    );
    assert!(dir.path().join("plots/losses.png").is_file());
}

#[test]
fn bad_logs_and_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write_run(&a, 0.0);
    // A malformed middle line: the error names file and line.
    let b = dir.path().join("b");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("metrics.jsonl"), "{\"stage\":1}\n{}\n").unwrap();
    let out = prism().arg("report").arg(&b).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.jsonl:1:"), "{stderr}");
    // Several runs need --out.
    let out = prism().arg("report").arg(&a).arg(&a).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    // A missing run directory is named.
    let out = prism()
        .arg("report")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing/metrics.jsonl"));
}

#[test]
fn torn_tail_is_warned_about_and_the_report_still_written() {
    let dir = tempfile::tempdir().unwrap();
    write_run(dir.path(), 0.0);
    let log = dir.path().join("metrics.jsonl");
    let mut text = fs::read_to_string(&log).unwrap();
    text.push_str("{\"stage\":\"rlvr\",\"ar");
    fs::write(&log, text).unwrap();
    let out = prism().arg("report").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("is torn"), "{stderr}");
}

#[test]
fn a_log_without_eval_records_gives_curves_but_no_table() {
    let dir = tempfile::tempdir().unwrap();
    let train_only: Vec<MetricRecord> = records(0.0)
        .into_iter()
        .filter(|r| !r.metrics.contains_key("accuracy"))
        .collect();
    let files = write_report(dir.path(), &[train_only]).unwrap();
    assert!(files.table.is_none());
    assert_eq!(files.curves.len(), 2);
    assert!(!dir.path().join("results.md").exists());
}
