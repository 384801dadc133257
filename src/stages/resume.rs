//! Run-level resume: `prism run --resume RUN_DIR [CONFIG] [--force]`.
//!
//! Owns what lets a killed run continue where it stopped:
//!
//! - **Stage markers.** A finished stage writes `run_dir/<name>/DONE.json` (its
//!   [`StageSummary`], atomically) after its `final/`. A resumed run skips every stage with a
//!   marker, reusing its summary (output checkpoint and experts' folder included).
//! - **The in-progress stage** continues from its newest complete checkpoint
//!   ([`super::checkpoint::newest_complete`]) through [`resume_stage`], which sets the stage's
//!   `resume_from`; kinds that cannot resume yet restart from scratch (said in the log).
//! - **Prepared inputs** (`run_dir/data`, `run_dir/init`) carry a [`PREPARED_FILE`] written
//!   last, with what they were made from and the SHA-256 of every file: a resumed run reuses a
//!   folder whose marker matches and rebuilds it otherwise ([`is_prepared`], [`mark_prepared`]).
//! - **The metrics log** (`run_dir/metrics.jsonl`): a stage that resumes from step `s` first
//!   drops its own records after `s` ([`retain_metrics`]), so every step appears exactly once.
//! - **The configuration.** The resumed run's configuration is `RUN_DIR/config.resolved.toml`,
//!   or CONFIG when given (with `--set`), and must agree with the resolved one on every key
//!   that matters. Keys that do not matter ([`IGNORED_KEYS`]): `run.out_dir` (it is RUN_DIR),
//!   `run.metrics_addr`, `run.threads`, `[actors.deadlines]`, `[actors.supervision]`, and per
//!   stage `resume_from`, `save_every` and `keep_checkpoints` (where and how often checkpoints
//!   are written, not what is trained). Any other difference refuses the resume, naming every
//!   differing key with both values, unless `--force`.
//!
//! A fresh `prism run` into a folder that holds an earlier run forgets it first
//! ([`reset_stage_dir`] on every stage, a new metrics log).
//!
//! **Shutdown.** `prism run` installs [`install_shutdown_handler`]: the first SIGTERM or SIGINT
//! only sets a flag ([`shutdown_requested`]); SFT checks it after every step, writes a
//! checkpoint and stops with an error that says how to resume, and the pipeline checks it
//! between stages. A second signal kills the process as usual.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CHECKPOINT_PREFIX, FINAL_DIR};
use super::{Result, StageError, StageSummary};
use crate::config::{RunConfig, StageConfig};
use crate::report::metrics_log::{FILE_NAME as METRICS_FILE, MetricRecord, MetricsLog};

/// Marker of a finished stage, in its folder.
pub const DONE_FILE: &str = "DONE.json";
/// Marker of a complete prepared folder (`data/`, `init/`), written last.
pub const PREPARED_FILE: &str = "PREPARED.json";
/// The resolved configuration in a run folder.
pub const RESOLVED_CONFIG: &str = "config.resolved.toml";
/// Arm of the records the stages write to the metrics log.
pub const DEFAULT_ARM: &str = crate::config::DEFAULT_ARM;
/// Configuration keys a resume may change (`*` = any one key; a trailing `*` = anything below).
pub const IGNORED_KEYS: &[&str] = &[
    "run.out_dir",
    "run.metrics_addr",
    "run.threads",
    "actors.deadlines.*",
    "actors.supervision.*",
    "stages.*.resume_from",
    "stages.*.save_every",
    "stages.*.keep_checkpoints",
    "stages.*.policy.resume_from",
    "stages.*.policy.save_every",
];

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(sig: libc::c_int) {
    // only async-signal-safe calls here: an atomic swap, signal, raise
    if SHUTDOWN.swap(true, Ordering::SeqCst) {
        // SAFETY: restoring the default action and re-raising are async-signal-safe
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Makes the first SIGTERM / SIGINT request a clean stop (see the module doc) instead of
/// killing the process.
pub fn install_shutdown_handler() -> Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_shutdown_signal;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches an atomic and async-signal-safe libc calls
        let prev = unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(StageError::Invalid {
                stage: "run".into(),
                message: format!(
                    "cannot install the handler of signal {sig}: {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
    }
    Ok(())
}

/// Whether a shutdown signal arrived.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::SeqCst)
}

/// The error a stage (or the pipeline) stops with after a shutdown signal.
pub fn stopped(stage: &str, run_dir: &Path, what: &str) -> StageError {
    StageError::Invalid {
        stage: stage.to_string(),
        message: format!(
            "stopped by a shutdown signal {what}; continue with `prism run --resume {}`",
            run_dir.display()
        ),
    }
}

fn other_io(path: &Path, message: impl ToString) -> StageError {
    StageError::io(path, std::io::Error::other(message.to_string()))
}

fn report_err(e: crate::report::ReportError) -> StageError {
    StageError::Invalid {
        stage: "metrics".into(),
        message: e.to_string(),
    }
}

/// A stage's writer of the run's metrics log (`run_dir/metrics.jsonl`).
#[derive(Debug)]
pub struct StageLog {
    log: MetricsLog,
    stage: String,
    arm: String,
}

impl StageLog {
    /// Opens `run_dir/metrics.jsonl` for appending records of `stage` in comparison arm `arm`
    /// (a torn last line left by a crash is cut off).
    pub fn open(run_dir: &Path, stage: &str, arm: &str) -> Result<Self> {
        Ok(StageLog {
            log: MetricsLog::open_in(run_dir).map_err(report_err)?,
            stage: stage.to_string(),
            arm: arm.to_string(),
        })
    }

    /// Appends the metrics of one step.
    pub fn write<'a>(
        &mut self,
        step: u64,
        metrics: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<()> {
        let metrics: BTreeMap<String, f64> = metrics
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.log
            .log(&self.stage, &self.arm, step, metrics)
            .map_err(report_err)
    }

    /// Forces the records so far to disk (before a checkpoint that covers them).
    pub fn sync(&mut self) -> Result<()> {
        self.log.sync().map_err(report_err)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        self.log.path()
    }
}

/// Drops the records of `stage` after step `through` from the metrics log at `path` (all of
/// that stage's records when `through` is `None`), and a torn last line. Other lines are kept
/// byte for byte. The file is rewritten atomically, and only when something is dropped.
/// Returns the number of records dropped.
pub fn retain_metrics(path: &Path, stage: &str, through: Option<u64>) -> Result<usize> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StageError::io(path, e)),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = 0usize;
    let mut torn = false;
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        if !line.ends_with(b"\n") {
            torn = true;
            continue;
        }
        let body = &line[..line.len() - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            kept.extend_from_slice(line);
            continue;
        }
        let rec: MetricRecord = serde_json::from_slice(body).map_err(|e| StageError::Record {
            path: path.to_path_buf(),
            record: i + 1,
            message: format!("malformed metrics record: {e}"),
        })?;
        if rec.stage == stage && through.is_none_or(|s| rec.step > s) {
            dropped += 1;
        } else {
            kept.extend_from_slice(line);
        }
    }
    if dropped > 0 || torn {
        crate::report::atomic_write(path, &kept).map_err(report_err)?;
    }
    if dropped > 0 {
        tracing::info!(stage, dropped, path = %path.display(), "dropped metrics records past the resumed step");
    }
    Ok(dropped)
}

/// `DONE.json`: a finished stage's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub summary: StageSummary,
    /// Seconds since the Unix epoch when the stage finished.
    pub finished_at: f64,
    /// `summary.output` relative to the run folder, when it lies inside it (a run folder that
    /// was moved still resumes from its own outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_in_run: Option<PathBuf>,
    /// `summary.experts` relative to the run folder, when it lies inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts_in_run: Option<PathBuf>,
}

/// The run folder of a stage folder.
fn run_dir_of(stage_dir: &Path) -> &Path {
    stage_dir.parent().unwrap_or(Path::new("."))
}

/// Writes `stage_dir/DONE.json` atomically.
pub fn write_done(stage_dir: &Path, summary: &StageSummary) -> Result<()> {
    std::fs::create_dir_all(stage_dir).map_err(|e| StageError::io(stage_dir, e))?;
    let path = stage_dir.join(DONE_FILE);
    let finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let run_dir = run_dir_of(stage_dir);
    let inside = |p: &Path| p.strip_prefix(run_dir).ok().map(Path::to_path_buf);
    let rec = DoneRecord {
        summary: summary.clone(),
        finished_at,
        output_in_run: inside(&summary.output),
        experts_in_run: summary.experts.as_deref().and_then(inside),
    };
    let mut text = serde_json::to_vec_pretty(&rec).map_err(|e| other_io(&path, e))?;
    text.push(b'\n');
    crate::report::atomic_write(&path, &text).map_err(report_err)
}

/// Reads `stage_dir/DONE.json`: `None` when the stage has not finished. Outputs inside the run
/// folder are resolved against the folder `stage_dir` is in now. A marker that does not parse is
/// an error naming the file.
pub fn read_done(stage_dir: &Path) -> Result<Option<StageSummary>> {
    let path = stage_dir.join(DONE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StageError::io(&path, e)),
    };
    let rec: DoneRecord = serde_json::from_str(&text).map_err(|e| StageError::Record {
        path: path.clone(),
        record: 1,
        message: format!("not a stage marker: {e}"),
    })?;
    let mut summary = rec.summary;
    let run_dir = run_dir_of(stage_dir);
    if let Some(rel) = rec.output_in_run {
        summary.output = run_dir.join(rel);
    }
    if let Some(rel) = rec.experts_in_run {
        summary.experts = Some(run_dir.join(rel));
    }
    Ok(Some(summary))
}

/// Forgets a stage's earlier outputs: `DONE.json`, `final/`, every `checkpoint-<step>/` and
/// interrupted writes. Other files of the stage folder stay.
pub fn reset_stage_dir(stage_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(stage_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StageError::io(stage_dir, e)),
    };
    // the marker goes first, so an interrupted reset never leaves a stage marked done
    let done = stage_dir.join(DONE_FILE);
    if done.exists() {
        std::fs::remove_file(&done).map_err(|e| StageError::io(&done, e))?;
    }
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(stage_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if path.is_dir() && (name == FINAL_DIR || name.starts_with(CHECKPOINT_PREFIX)) {
            std::fs::remove_dir_all(&path).map_err(|e| StageError::io(&path, e))?;
        }
    }
    checkpoint::remove_stale(stage_dir)?;
    Ok(())
}

/// The stage configured to continue from `ckpt`, or `None` when its kind cannot resume yet
/// (the stage then restarts from scratch).
pub fn resume_stage(stage: &StageConfig, ckpt: &Path) -> Option<StageConfig> {
    match stage {
        StageConfig::Sft(s) => {
            let mut s = s.clone();
            s.resume_from = Some(ckpt.to_path_buf());
            Some(StageConfig::Sft(s))
        }
        StageConfig::Rlvr(r) => {
            let mut r = r.clone();
            r.resume_from = Some(ckpt.to_path_buf());
            Some(StageConfig::Rlvr(r))
        }
        StageConfig::Align(a) => {
            let mut a = a.clone();
            a.policy.resume_from = Some(ckpt.to_path_buf());
            Some(StageConfig::Align(a))
        }
        StageConfig::Warmup(w) => {
            let mut w = w.clone();
            w.resume_from = Some(ckpt.to_path_buf());
            Some(StageConfig::Warmup(w))
        }
        StageConfig::Eval(_) => None,
    }
}

/// One key whose value differs between the resolved and the given configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDifference {
    /// Dotted key (`stages.0.lr`).
    pub key: String,
    /// Value in `config.resolved.toml` (`(unset)` when absent).
    pub resolved: String,
    /// Value in the given configuration.
    pub given: String,
}

impl std::fmt::Display for ConfigDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} → {}", self.key, self.resolved, self.given)
    }
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&key(k), v, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

/// Whether a dotted key is one a resume must not change (see [`IGNORED_KEYS`]).
pub fn key_matters(key: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    !IGNORED_KEYS.iter().any(|pattern| {
        let pat: Vec<&str> = pattern.split('.').collect();
        let (body, rest_any) = match pat.split_last() {
            Some((&"*", body)) => (body, true),
            _ => (&pat[..], false),
        };
        let len_ok = if rest_any {
            parts.len() > body.len()
        } else {
            parts.len() == body.len()
        };
        len_ok && body.iter().zip(&parts).all(|(p, k)| *p == "*" || p == k)
    })
}

/// The keys that matter ([`key_matters`]) whose values differ, in key order.
pub fn config_diff(resolved: &RunConfig, given: &RunConfig) -> Result<Vec<ConfigDifference>> {
    let tree = |c: &RunConfig| -> Result<BTreeMap<String, String>> {
        let v = toml::Value::try_from(c)
            .map_err(|e| other_io(Path::new(RESOLVED_CONFIG), e.to_string()))?;
        let mut out = BTreeMap::new();
        flatten("", &v, &mut out);
        Ok(out)
    };
    let (a, b) = (tree(resolved)?, tree(given)?);
    let unset = || "(unset)".to_string();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| key_matters(k) && a.get(*k) != b.get(*k))
        .map(|k| ConfigDifference {
            key: k.clone(),
            resolved: a.get(k).cloned().unwrap_or_else(unset),
            given: b.get(k).cloned().unwrap_or_else(unset),
        })
        .collect())
}

/// The configuration of `prism run --resume RUN_DIR`: CONFIG (or, without one, the run's
/// `config.resolved.toml`) with `overrides` and `run.out_dir = RUN_DIR`, checked against the
/// resolved configuration. Returns it and whether there is a run to resume: a folder without a
/// resolved configuration starts a fresh run when CONFIG is given (a run killed before it
/// wrote anything), and is an error otherwise.
pub fn resume_config(
    run_dir: &Path,
    config: Option<&Path>,
    overrides: &[String],
    force: bool,
) -> Result<(RunConfig, bool)> {
    let mut overrides = overrides.to_vec();
    overrides.push(format!(
        "run.out_dir={}",
        toml::Value::String(run_dir.display().to_string())
    ));
    let resolved_path = run_dir.join(RESOLVED_CONFIG);
    if !resolved_path.is_file() {
        let Some(config) = config else {
            return Err(StageError::Invalid {
                stage: "resume".into(),
                message: format!(
                    "{} does not exist: {} holds no run to resume (give the run config too to start it)",
                    resolved_path.display(),
                    run_dir.display()
                ),
            });
        };
        tracing::info!(run_dir = %run_dir.display(), "nothing to resume yet: starting the run");
        return Ok((RunConfig::load(config, &overrides)?, false));
    }
    let mut resolved = RunConfig::load(&resolved_path, &[])?;
    resolved.run.out_dir = run_dir.to_path_buf();
    let given = RunConfig::load(config.unwrap_or(&resolved_path), &overrides)?;
    let diff = config_diff(&resolved, &given)?;
    if !diff.is_empty() {
        let list = diff
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if !force {
            return Err(StageError::Invalid {
                stage: "resume".into(),
                message: format!(
                    "the configuration differs from {} in {} key(s) that change what is trained: {list}. \
                     Resume with the run's own configuration, or pass --force to resume anyway",
                    resolved_path.display(),
                    diff.len()
                ),
            });
        }
        tracing::warn!("--force: resuming with a configuration that differs in {list}");
    }
    Ok((given, true))
}

/// Whether `dir` holds a complete prepared folder made from `key`: its [`PREPARED_FILE`] names
/// the same `key`, and every file it lists has the recorded SHA-256.
pub fn is_prepared(dir: &Path, key: &serde_json::Value) -> Result<bool> {
    let path = dir.join(PREPARED_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let Ok(marker) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(path = %path.display(), "unreadable marker: rebuilding");
        return Ok(false);
    };
    if marker.get("key") != Some(key) {
        tracing::info!(dir = %dir.display(), "made from other settings: rebuilding");
        return Ok(false);
    }
    let Some(files) = marker.get("sha256").and_then(|v| v.as_object()) else {
        return Ok(false);
    };
    for (name, want) in files {
        let file = dir.join(name);
        let same = file.is_file()
            && crate::data::io::sha256_file(&file)
                .is_ok_and(|got| Some(got.as_str()) == want.as_str());
        if !same {
            tracing::info!(file = %file.display(), "changed or missing: rebuilding");
            return Ok(false);
        }
    }
    Ok(true)
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            files_under(root, &path, out)?;
        } else if path.file_name().is_some_and(|n| n != PREPARED_FILE) {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// Marks `dir` complete: writes [`PREPARED_FILE`] (atomically, last) with `key` and the
/// SHA-256 of every file under `dir`. Files are fsynced first.
pub fn mark_prepared(dir: &Path, key: &serde_json::Value) -> Result<()> {
    let mut files = Vec::new();
    files_under(dir, dir, &mut files)?;
    files.sort();
    let mut sha = serde_json::Map::new();
    for f in files {
        let path = dir.join(&f);
        std::fs::File::open(&path)
            .and_then(|h| h.sync_all())
            .map_err(|e| StageError::io(&path, e))?;
        sha.insert(
            f.to_string_lossy().replace('\\', "/"),
            crate::data::io::sha256_file(&path)?.into(),
        );
    }
    let marker = serde_json::json!({"key": key, "sha256": sha});
    let path = dir.join(PREPARED_FILE);
    let text = serde_json::to_vec_pretty(&marker).map_err(|e| other_io(&path, e))?;
    crate::report::atomic_write(&path, &text).map_err(report_err)
}

/// Builds a prepared folder once: reuses `dir` when [`is_prepared`] with `key`, else empties
/// it, runs `build` and marks it.
pub fn prepare_once(
    dir: &Path,
    key: &serde_json::Value,
    build: impl FnOnce() -> Result<()>,
) -> Result<bool> {
    if is_prepared(dir, key)? {
        tracing::info!(dir = %dir.display(), "reusing the prepared folder");
        return Ok(false);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    build()?;
    mark_prepared(dir, key)?;
    Ok(true)
}

/// Removes a previous run's metrics log (a fresh run into an old folder).
pub fn reset_metrics(run_dir: &Path) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "a fresh run: the earlier run's metrics log is removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StageError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stage: &str, step: u64) -> String {
        let r = MetricRecord {
            stage: stage.into(),
            arm: DEFAULT_ARM.into(),
            step,
            wall_time: 1.0,
            metrics: BTreeMap::from([("loss".into(), step as f64)]),
        };
        serde_json::to_string(&r).unwrap() + "\n"
    }

    #[test]
    fn retain_drops_later_steps_of_the_stage_and_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.jsonl");
        let mut text = String::new();
        for (s, k) in [("a", 1), ("b", 1), ("b", 2), ("b", 3), ("b", 4)] {
            text += &record(s, k);
        }
        text += "{\"stage\":\"b\",\"ar";
        std::fs::write(&path, &text).unwrap();
        assert_eq!(retain_metrics(&path, "b", Some(2)).unwrap(), 2);
        let left = std::fs::read_to_string(&path).unwrap();
        assert_eq!(left, record("a", 1) + &record("b", 1) + &record("b", 2));
        assert_eq!(retain_metrics(&path, "b", Some(2)).unwrap(), 0);
        assert_eq!(retain_metrics(&path, "b", None).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), record("a", 1));
        // a malformed middle line is an error naming the file and line
        std::fs::write(&path, "nope\n".to_string() + &record("a", 1)).unwrap();
        let e = retain_metrics(&path, "a", None).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("record 1"), "{e}");
        assert_eq!(
            retain_metrics(&d.path().join("none"), "a", None).unwrap(),
            0
        );
    }

    #[test]
    fn ignored_keys_match_by_segment() {
        assert!(!key_matters("run.threads"));
        assert!(!key_matters("actors.deadlines.learn_secs"));
        assert!(!key_matters("stages.3.resume_from"));
        assert!(key_matters("stages.3.lr"));
        assert!(key_matters("run.seed"));
        assert!(
            key_matters("actors.deadlines"),
            "the table itself is not a leaf"
        );
        assert!(key_matters("run.threads.x"));
    }

    #[test]
    fn config_diff_names_each_key_that_matters() {
        let text = r#"
[run]
seed = 1
[data.synth]
train = 4
[policy.tiny]
[[stages]]
kind = "sft"
steps = 3
"#;
        let p = Path::new("x.toml");
        let a = RunConfig::from_toml_str(text, p, &[]).unwrap();
        let b = RunConfig::from_toml_str(
            text,
            p,
            &[
                "run.threads=3".into(),
                "stages.0.save_every=1".into(),
                "actors.deadlines.learn_secs=5.0".into(),
            ],
        )
        .unwrap();
        assert!(config_diff(&a, &b).unwrap().is_empty());
        let c = RunConfig::from_toml_str(
            text,
            p,
            &[
                "run.seed=2".into(),
                "stages.0.lr=0.5".into(),
                "stages.0.name=\"x\"".into(),
            ],
        )
        .unwrap();
        let d = config_diff(&a, &c).unwrap();
        let keys: Vec<&str> = d.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["run.seed", "stages.0.lr", "stages.0.name"]);
        assert_eq!(d[0].to_string(), "run.seed: 1 → 2");
        assert_eq!(d[2].resolved, "(unset)");
    }

    #[test]
    fn prepared_folders_are_reused_only_when_whole_and_matching() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let key = serde_json::json!({"seed": 1});
        let build = |dir: PathBuf| {
            move || -> Result<()> {
                std::fs::create_dir_all(dir.join("img")).unwrap();
                std::fs::write(dir.join("img/a.png"), b"png").unwrap();
                std::fs::write(dir.join("train.jsonl"), b"{}\n").unwrap();
                Ok(())
            }
        };
        assert!(prepare_once(&dir, &key, build(dir.clone())).unwrap());
        assert!(!prepare_once(&dir, &key, build(dir.clone())).unwrap());
        // a changed file or another key: rebuilt
        std::fs::write(dir.join("img/a.png"), b"pn").unwrap();
        assert!(!is_prepared(&dir, &key).unwrap());
        assert!(prepare_once(&dir, &key, build(dir.clone())).unwrap());
        assert!(!is_prepared(&dir, &serde_json::json!({"seed": 2})).unwrap());
        // no marker (a build that was killed): rebuilt
        std::fs::remove_file(dir.join(PREPARED_FILE)).unwrap();
        assert!(prepare_once(&dir, &key, build(dir.clone())).unwrap());
    }
}
