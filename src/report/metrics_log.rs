//! The per-step metrics log of a run directory: `metrics.jsonl`, one JSON object per line,
//!
//! ```text
//! {"stage":"align","arm":"prism","step":12,"wall_time":1764169200.5,"metrics":{"loss":0.71}}
//! ```
//!
//! `wall_time` is seconds since the Unix epoch. Metric values that are not finite (a NaN loss)
//! are written as `null` and read back as NaN, so a diverging run still logs.
//!
//! The writer flushes every line to the OS (one `write` per record) and fsyncs on
//! [`MetricsLog::sync`], which the trainer calls at checkpoints. A crash can therefore leave a
//! torn last line: the reader reports it in [`MetricsRead::torn_tail`] instead of failing, while
//! a malformed line anywhere else is an error naming `file:line`. Reopening a log for appending
//! cuts a torn tail off first (with a warning), so the next record starts on its own line.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ReportError;

/// File name of the metrics log inside a run directory.
pub const FILE_NAME: &str = "metrics.jsonl";

/// Metric keys the stages log and the plots and table read.
pub mod keys {
    /// Total training loss of the step.
    pub const LOSS: &str = "loss";
    /// Policy-gradient part of the loss.
    pub const POLICY_LOSS: &str = "policy_loss";
    /// Discriminator (expert) Bradley–Terry loss.
    pub const DISC_LOSS: &str = "disc_loss";
    /// KL penalty term against the reference policy.
    pub const KL: &str = "kl";
    /// Mean reward of the step's rollouts.
    pub const REWARD_MEAN: &str = "reward_mean";
    /// Mean perception-expert score of the step's rollouts.
    pub const REWARD_PERCEPTION: &str = "reward_perception";
    /// Mean reasoning-expert score of the step's rollouts.
    pub const REWARD_REASONING: &str = "reward_reasoning";
    /// Discriminator accuracy on captions (teacher ranked above policy).
    pub const CAP_ACC: &str = "cap_acc";
    /// Discriminator accuracy on chains of thought.
    pub const COT_ACC: &str = "cot_acc";
    /// Evaluation: answer accuracy.
    pub const ACCURACY: &str = "accuracy";
    /// Evaluation: fraction of responses in the required format.
    pub const FORMAT_VALID_RATE: &str = "format_valid_rate";
    /// Evaluation: fraction of responses with a perception error.
    pub const PERCEPTION_ERROR_RATE: &str = "perception_error_rate";
    /// Evaluation: fraction of responses with a reasoning error.
    pub const REASONING_ERROR_RATE: &str = "reasoning_error_rate";
    /// Evaluation: number of examples scored.
    pub const N: &str = "n";
}

/// One line of the metrics log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub stage: String,
    /// Comparison arm (`prism`, `baseline`, ...).
    pub arm: String,
    pub step: u64,
    /// Seconds since the Unix epoch when the record was written.
    pub wall_time: f64,
    #[serde(with = "finite_or_null")]
    pub metrics: BTreeMap<String, f64>,
}

impl MetricRecord {
    /// A record stamped with the current wall time.
    pub fn now(
        stage: impl Into<String>,
        arm: impl Into<String>,
        step: u64,
        metrics: BTreeMap<String, f64>,
    ) -> Self {
        let wall_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        MetricRecord {
            stage: stage.into(),
            arm: arm.into(),
            step,
            wall_time,
            metrics,
        }
    }
}

/// Non-finite metric values as JSON `null` (JSON has no NaN), read back as NaN.
mod finite_or_null {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let view: BTreeMap<&str, Option<f64>> = m
            .iter()
            .map(|(k, v)| (k.as_str(), v.is_finite().then_some(*v)))
            .collect();
        view.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
        Ok(m.into_iter()
            .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
            .collect())
    }
}

/// Appending writer of `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    torn_bytes_cut: u64,
}

impl MetricsLog {
    /// Opens `<run_dir>/metrics.jsonl` for appending (creating the directory and file), so a
    /// resumed run continues the same log.
    pub fn open_in(run_dir: &Path) -> Result<Self, ReportError> {
        fs::create_dir_all(run_dir).map_err(|e| ReportError::io(run_dir, e))?;
        Self::open(&run_dir.join(FILE_NAME))
    }

    /// Opens the log at `path` for appending. A torn last line (no final newline) left by a
    /// crash is cut off first, with a warning, so appended records stay one per line.
    pub fn open(path: &Path) -> Result<Self, ReportError> {
        let io = |e| ReportError::io(path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let keep = complete_prefix_len(&mut file, len).map_err(io)?;
        let torn_bytes_cut = len - keep;
        if torn_bytes_cut > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = torn_bytes_cut,
                "metrics log ends in a torn line (crash while writing); cutting it before appending"
            );
            file.set_len(keep).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            torn_bytes_cut,
        })
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of a torn last line cut off when the log was opened (0 when it ended cleanly).
    pub fn torn_bytes_cut(&self) -> u64 {
        self.torn_bytes_cut
    }

    /// Appends one record as one line, handed to the OS in one write (no user-space buffer),
    /// and exports its known values to Prometheus ([`crate::telemetry::record_step`]).
    pub fn append(&mut self, record: &MetricRecord) -> Result<(), ReportError> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| ReportError::Input(format!("cannot serialise metrics record: {e}")))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| ReportError::io(&self.path, e))?;
        crate::telemetry::record_step(&record.stage, &record.arm, &record.metrics);
        Ok(())
    }

    /// Appends a record stamped with the current wall time.
    pub fn log(
        &mut self,
        stage: &str,
        arm: &str,
        step: u64,
        metrics: BTreeMap<String, f64>,
    ) -> Result<(), ReportError> {
        self.append(&MetricRecord::now(stage, arm, step, metrics))
    }

    /// Forces everything appended so far to disk (call at checkpoints).
    pub fn sync(&mut self) -> Result<(), ReportError> {
        self.file
            .sync_data()
            .map_err(|e| ReportError::io(&self.path, e))
    }
}

/// Length of the file up to and including its last newline.
fn complete_prefix_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 4096;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A last line that was cut short by a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct TornLine {
    /// 1-based line number.
    pub line: usize,
    /// Bytes in the torn line.
    pub bytes: usize,
}

/// The records of a metrics log and whether its last line was torn.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRead {
    pub records: Vec<MetricRecord>,
    pub torn_tail: Option<TornLine>,
}

/// Reads a metrics log. Blank lines are skipped. A last line without a final newline that does
/// not parse is a torn write: it is reported in `torn_tail` (and logged as a warning). Any other
/// line that does not parse is an error naming file:line.
pub fn read_metrics(path: &Path) -> Result<MetricsRead, ReportError> {
    let bytes = fs::read(path).map_err(|e| ReportError::io(path, e))?;
    parse_metrics(path, &bytes)
}

/// [`read_metrics`] over bytes already in memory; `path` is used only in messages.
pub fn parse_metrics(path: &Path, bytes: &[u8]) -> Result<MetricsRead, ReportError> {
    let ends_clean = bytes.is_empty() || bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .split(|&b| b == b'\n')
        .collect();
    let last = lines.len();
    let mut records = Vec::with_capacity(last);
    let mut torn_tail = None;
    for (i, raw) in lines.into_iter().enumerate() {
        let line = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<MetricRecord>(raw) {
            // serde_json rejects out-of-range numbers (1e999), so wall_time is finite here.
            Ok(r) => records.push(r),
            Err(_) if line == last && !ends_clean => {
                tracing::warn!(
                    path = %path.display(),
                    line,
                    bytes = raw.len(),
                    "metrics log ends in a torn line (crash while writing); ignoring that line"
                );
                torn_tail = Some(TornLine {
                    line,
                    bytes: raw.len(),
                });
            }
            Err(source) => {
                return Err(ReportError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    source,
                });
            }
        }
    }
    Ok(MetricsRead { records, torn_tail })
}
