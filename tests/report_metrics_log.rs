//! The metrics JSONL of a run directory: round trip, NaN values, torn last line, malformed
//! middle lines, and resuming a log that a crash left torn.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use prism::report::metrics_log::{FILE_NAME, parse_metrics};
use prism::report::{MetricRecord, MetricsLog, ReportError, TornLine, read_metrics};

fn rec(stage: &str, arm: &str, step: u64, pairs: &[(&str, f64)]) -> MetricRecord {
    MetricRecord {
        stage: stage.into(),
        arm: arm.into(),
        step,
        wall_time: 1_764_169_200.0 + step as f64 * 0.5,
        metrics: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

#[test]
fn round_trip_keeps_every_field_and_one_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        rec("sft", "prism", 0, &[("loss", 2.5)]),
        rec("align", "prism", 1, &[("loss", 0.7), ("cap_acc", 0.625)]),
        rec(
            "rlvr",
            "baseline",
            2,
            &[("reward_mean", -0.125), ("kl", 1e-9)],
        ),
    ];
    {
        let mut log = MetricsLog::open_in(dir.path()).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.torn_bytes_cut(), 0);
    }
    let path = dir.path().join(FILE_NAME);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.ends_with('\n'));
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("{\"stage\":\"sft\",\"arm\":\"prism\",\"step\":0,"),
        "{text}"
    );
    let read = read_metrics(&path).unwrap();
    assert_eq!(read.records, records);
    assert_eq!(read.torn_tail, None);
}

#[test]
fn reopening_appends_after_existing_records() {
    let dir = tempfile::tempdir().unwrap();
    MetricsLog::open_in(dir.path())
        .unwrap()
        .append(&rec("sft", "prism", 0, &[("loss", 1.0)]))
        .unwrap();
    let mut log = MetricsLog::open_in(dir.path()).unwrap();
    log.log(
        "sft",
        "prism",
        1,
        BTreeMap::from([("loss".to_string(), 0.5)]),
    )
    .unwrap();
    let read = read_metrics(log.path()).unwrap();
    assert_eq!(read.records.len(), 2);
    assert_eq!(read.records[1].step, 1);
    // `log` stamps the current wall time.
    assert!(read.records[1].wall_time > 1.7e9);
}

#[test]
fn non_finite_values_are_null_on_disk_and_nan_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::open_in(dir.path()).unwrap();
    log.append(&rec(
        "align",
        "prism",
        3,
        &[("loss", f64::NAN), ("kl", f64::INFINITY), ("ok", 1.0)],
    ))
    .unwrap();
    let text = fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("\"loss\":null") && text.contains("\"kl\":null"),
        "{text}"
    );
    let r = &read_metrics(log.path()).unwrap().records[0];
    assert!(r.metrics["loss"].is_nan() && r.metrics["kl"].is_nan());
    assert_eq!(r.metrics["ok"], 1.0);
}

#[test]
fn torn_last_line_is_reported_not_silently_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let good = serde_json::to_string(&rec("sft", "prism", 0, &[("loss", 1.0)])).unwrap();
    let torn = "{\"stage\":\"sft\",\"arm\":\"pri";
    fs::write(&path, format!("{good}\n{good}\n{torn}")).unwrap();
    let read = read_metrics(&path).unwrap();
    assert_eq!(read.records.len(), 2);
    assert_eq!(
        read.torn_tail,
        Some(TornLine {
            line: 3,
            bytes: torn.len()
        })
    );
}

#[test]
fn complete_last_record_without_newline_is_kept() {
    let good = serde_json::to_string(&rec("sft", "prism", 7, &[("loss", 1.0)])).unwrap();
    let read = parse_metrics("m.jsonl".as_ref(), good.as_bytes()).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.torn_tail, None);
}

#[test]
fn malformed_middle_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let good = serde_json::to_string(&rec("sft", "prism", 0, &[("loss", 1.0)])).unwrap();
    fs::write(&path, format!("{good}\n\n{{\"stage\":\"sft\"}}\n{good}\n")).unwrap();
    let err = read_metrics(&path).unwrap_err();
    assert!(
        matches!(err, ReportError::Malformed { line: 3, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:3:", path.display())), "{msg}");
}

#[test]
fn malformed_last_line_with_newline_is_an_error_not_a_torn_tail() {
    let good = serde_json::to_string(&rec("sft", "prism", 0, &[("loss", 1.0)])).unwrap();
    let bytes = format!("{good}\nnot json\n");
    let err = parse_metrics("run/metrics.jsonl".as_ref(), bytes.as_bytes()).unwrap_err();
    assert!(err.to_string().starts_with("run/metrics.jsonl:2:"), "{err}");
}

#[test]
fn wrong_field_types_name_the_line() {
    let bytes = b"{\"stage\":\"sft\",\"arm\":\"a\",\"step\":-1,\"wall_time\":1.0,\"metrics\":{}}\n";
    let err = parse_metrics("m.jsonl".as_ref(), bytes).unwrap_err();
    assert!(err.to_string().starts_with("m.jsonl:1:"), "{err}");
    let bytes = b"{\"stage\":\"sft\",\"arm\":\"a\",\"step\":1,\"wall_time\":1.0,\"metrics\":{\"x\":\"hi\"}}\n";
    assert!(parse_metrics("m.jsonl".as_ref(), bytes).is_err());
}

#[test]
fn missing_file_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jsonl");
    let err = read_metrics(&path).unwrap_err();
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}

#[test]
fn reopening_a_torn_log_cuts_the_tail_so_new_records_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let good = serde_json::to_string(&rec("sft", "prism", 0, &[("loss", 1.0)])).unwrap();
    let torn = "{\"stage\":\"s";
    fs::write(&path, format!("{good}\n{torn}")).unwrap();
    let mut log = MetricsLog::open(&path).unwrap();
    assert_eq!(log.torn_bytes_cut(), torn.len() as u64);
    log.append(&rec("sft", "prism", 1, &[("loss", 0.9)]))
        .unwrap();
    let read = read_metrics(&path).unwrap();
    assert_eq!(read.torn_tail, None);
    assert_eq!(
        read.records.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

#[test]
fn a_log_that_is_only_a_torn_line_reopens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    // Longer than the reader's 4 KiB backwards scan chunk, with no newline at all.
    fs::File::create(&path)
        .unwrap()
        .write_all(&vec![b'x'; 9000])
        .unwrap();
    let log = MetricsLog::open(&path).unwrap();
    assert_eq!(log.torn_bytes_cut(), 9000);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

#[test]
fn out_of_range_wall_time_names_the_line() {
    let bytes = b"{\"stage\":\"s\",\"arm\":\"a\",\"step\":1,\"wall_time\":1e999,\"metrics\":{}}\n";
    let err = parse_metrics("m.jsonl".as_ref(), bytes).unwrap_err();
    assert!(err.to_string().starts_with("m.jsonl:1:"), "{err}");
}
