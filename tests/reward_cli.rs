//! `prism score` end to end: runs the built binary on temporary JSONL files.

use std::fs;
use std::process::Command;

use serde_json::Value;

const GOOD: &str = r#"{"id": 1, "response": "<caption>c</caption><think>t</think><answer>5</answer>", "ground_truth": "5"}"#;
const WRONG: &str = r#"{"id": 2, "response": "<caption>c</caption><think>t</think><answer>6</answer>", "ground_truth": ["5", "five"]}"#;
const INVALID: &str = r#"{"id": 3, "response": "5", "ground_truth": "5"}"#;
const BAD_JSON: &str = r#"{"id": 4, "response": "#;
const BAD_FIELD: &str = r#"{"id": 5, "response": "x", "ground_truth": 5}"#;

fn prism() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prism"))
}

#[test]
fn scores_a_file_and_names_the_bad_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    fs::write(
        &input,
        format!("{GOOD}\n{WRONG}\n\n{INVALID}\n{BAD_JSON}\n{BAD_FIELD}\n"),
    )
    .expect("write");

    // Without --skip-bad: fails naming file and line 5, and writes no output at all.
    let out = prism()
        .args(["score", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .expect("run prism");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in.jsonl:5:"), "stderr: {stderr}");
    assert!(!output.exists(), "partial output left behind");
    let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary file left behind: {leftovers:?}"
    );

    // With --skip-bad: bad lines 5 and 6 skipped and reported, the rest scored in order.
    let out = prism()
        .args(["score", "--skip-bad", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .expect("run prism");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("in.jsonl:5"), "stderr: {stderr}");
    assert!(stderr.contains("in.jsonl:6"), "stderr: {stderr}");
    assert!(stderr.contains("skipped 2 bad lines"), "stderr: {stderr}");
    let text = fs::read_to_string(&output).expect("output");
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 3);
    let expect = [(1, 1.0, 1.0, 1.0), (2, 0.2, 0.0, 1.0), (3, 0.0, 0.0, 0.0)];
    for (row, (id, score, acc, format)) in rows.iter().zip(expect) {
        assert_eq!(row["id"], id);
        assert_eq!(row["score"].as_f64(), Some(score), "{row}");
        assert_eq!(row["acc"].as_f64(), Some(acc), "{row}");
        assert_eq!(row["format"].as_f64(), Some(format), "{row}");
        assert!(row["response"].is_string() && !row["ground_truth"].is_null());
    }
}

#[test]
fn missing_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = prism()
        .args(["score", "--in"])
        .arg(dir.path().join("nope.jsonl"))
        .arg("--out")
        .arg(dir.path().join("out.jsonl"))
        .output()
        .expect("run prism");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.jsonl"), "stderr: {stderr}");
    assert!(!dir.path().join("out.jsonl").exists());
}

#[test]
fn crlf_invalid_utf8_and_overwrite_keep_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("mixed.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(GOOD.as_bytes());
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(b"{\"response\": \"\xff\xfe\", \"ground_truth\": \"1\"}\n");
    bytes.extend_from_slice(b"[1, 2]\n");
    // A line that already has a `score` key: it is overwritten, not duplicated.
    bytes.extend_from_slice(
        br#"{"response": "<caption>c</caption><think>t</think><answer>1/2</answer>", "ground_truth": "0.5", "score": -1}"#,
    );
    fs::write(&input, &bytes).expect("write");
    fs::write(&output, "stale\n").expect("write stale output");

    // Failing run: the old output stays exactly as it was.
    let out = prism()
        .args(["score", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .expect("run prism");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mixed.jsonl:2: invalid UTF-8"),
        "stderr: {stderr}"
    );
    assert_eq!(fs::read_to_string(&output).expect("read"), "stale\n");

    let out = prism()
        .args(["score", "--skip-bad", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .output()
        .expect("run prism");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("mixed.jsonl:2: invalid UTF-8"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("mixed.jsonl:3: expected a JSON object"),
        "stderr: {stderr}"
    );
    let text = fs::read_to_string(&output).expect("output");
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["score"].as_f64(), Some(1.0));
    assert_eq!(rows[1]["score"].as_f64(), Some(1.0));
}

#[test]
fn unwritable_output_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    fs::write(&input, format!("{GOOD}\n")).expect("write");
    let missing_dir = dir.path().join("no_such_dir").join("out.jsonl");
    let out = prism()
        .args(["score", "--in"])
        .arg(&input)
        .arg("--out")
        .arg(&missing_dir)
        .output()
        .expect("run prism");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_dir"), "stderr: {stderr}");
}
