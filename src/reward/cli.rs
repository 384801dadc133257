//! `prism score`: scores a JSONL file of responses with the verifiable reward.
//!
//! Owns the file format and its error policy. Each input line is a JSON object with `response`
//! (string) and `ground_truth` (string or array of strings); each output line is that object
//! plus `score`, `acc` and `format` (existing keys of those names are overwritten). Blank lines
//! are ignored and counted. A malformed line is an error naming the file and line, or, with
//! `--skip-bad`, is skipped, counted and reported on stderr; nothing is dropped silently. The
//! output is written to a temporary file next to it and renamed into place only on success, so
//! an error never leaves a partial output file.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::score::{GroundTruth, RewardOutput, compute_score};

/// Arguments of `prism score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Input JSONL: one object per line with `response` and `ground_truth` (string or list).
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,
    /// Output JSONL: each input object plus `score`, `acc`, `format`. Written atomically.
    #[arg(long = "out", value_name = "FILE")]
    pub output: PathBuf,
    /// Skip malformed lines (reported on stderr) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
}

/// A malformed input line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub reason: String,
}

/// What one `prism score` run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreSummary {
    /// Lines scored and written.
    pub scored: usize,
    /// Malformed lines skipped (only with `skip_bad`).
    pub skipped: Vec<BadLine>,
    /// Blank lines ignored.
    pub blank: usize,
    /// Sum of `score` over scored lines.
    pub score_sum: f64,
    /// Sum of `acc` over scored lines.
    pub acc_sum: f64,
    /// Sum of `format` over scored lines.
    pub format_sum: f64,
}

impl ScoreSummary {
    /// One-line human summary (means over scored lines).
    pub fn report(&self) -> String {
        let n = self.scored.max(1) as f64;
        format!(
            "scored {} responses (mean score {:.4}, acc {:.4}, format {:.4}); skipped {} bad \
             lines; ignored {} blank lines",
            self.scored,
            self.score_sum / n,
            self.acc_sum / n,
            self.format_sum / n,
            self.skipped.len(),
            self.blank
        )
    }
}

/// Errors of `prism score`; each names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ScoreFileError {
    /// The input could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Input path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A malformed input line (without `--skip-bad`).
    #[error("{path}:{line}: {reason}")]
    BadLine {
        /// Input path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The output could not be written or moved into place.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Output path (or its temporary file).
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
}

/// Parses one input line into its JSON object, response and ground truth.
fn parse_line(text: &str) -> Result<(Map<String, Value>, String, GroundTruth), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".to_string());
    };
    let response = match obj.get("response") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("field `response` must be a string".to_string()),
        None => return Err("missing field `response`".to_string()),
    };
    let ground_truth = match obj.get("ground_truth") {
        Some(Value::String(s)) => GroundTruth::One(s.clone()),
        Some(Value::Array(items)) => {
            let mut answers = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => answers.push(s.clone()),
                    _ => return Err(format!("field `ground_truth[{i}]` must be a string")),
                }
            }
            GroundTruth::Any(answers)
        }
        Some(_) => {
            return Err("field `ground_truth` must be a string or a list of strings".to_string());
        }
        None => return Err("missing field `ground_truth`".to_string()),
    };
    Ok((obj, response, ground_truth))
}

/// The temporary path the output is written to before the rename.
fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    output.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Scores `input` into `output` (see the module doc). On error the output is left untouched.
pub fn score_file(
    input: &Path,
    output: &Path,
    skip_bad: bool,
) -> Result<ScoreSummary, ScoreFileError> {
    let read_err = |source| ScoreFileError::Read {
        path: input.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(input).map_err(read_err)?);
    let tmp = temp_path(output);
    let write_err = |source| ScoreFileError::Write {
        path: tmp.clone(),
        source,
    };
    let file = File::create(&tmp).map_err(write_err)?;
    let result = (|| {
        let mut writer = BufWriter::new(file);
        let mut summary = ScoreSummary::default();
        let mut buf = Vec::new();
        let mut line = 0usize;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            line += 1;
            let parsed = match std::str::from_utf8(&buf) {
                Ok(text) => {
                    let text = text.trim_end_matches(['\n', '\r']);
                    if text.trim().is_empty() {
                        summary.blank += 1;
                        continue;
                    }
                    parse_line(text)
                }
                Err(e) => Err(format!("invalid UTF-8: {e}")),
            };
            let (mut obj, response, ground_truth) = match parsed {
                Ok(p) => p,
                Err(reason) if skip_bad => {
                    summary.skipped.push(BadLine { line, reason });
                    continue;
                }
                Err(reason) => {
                    return Err(ScoreFileError::BadLine {
                        path: input.to_path_buf(),
                        line,
                        reason,
                    });
                }
            };
            let RewardOutput { score, acc, format } = compute_score(&response, &ground_truth);
            obj.insert("score".to_string(), Value::from(score));
            obj.insert("acc".to_string(), Value::from(acc));
            obj.insert("format".to_string(), Value::from(format));
            serde_json::to_writer(&mut writer, &obj).map_err(|e| write_err(e.into()))?;
            writer.write_all(b"\n").map_err(write_err)?;
            summary.scored += 1;
            summary.score_sum += score;
            summary.acc_sum += acc;
            summary.format_sum += format;
        }
        let file = writer.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        Ok(summary)
    })();
    match result {
        Ok(summary) => {
            fs::rename(&tmp, output).map_err(|source| {
                let _ = fs::remove_file(&tmp);
                ScoreFileError::Write {
                    path: output.to_path_buf(),
                    source,
                }
            })?;
            Ok(summary)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Entry point of `prism score`: scores the file and reports skipped lines and totals on stderr.
pub fn run(args: &ScoreArgs) -> Result<ScoreSummary, ScoreFileError> {
    let summary = score_file(&args.input, &args.output, args.skip_bad)?;
    for bad in &summary.skipped {
        eprintln!(
            "warning: skipped {}:{}: {}",
            args.input.display(),
            bad.line,
            bad.reason
        );
    }
    eprintln!("{} -> {}", summary.report(), args.output.display());
    Ok(summary)
}
