//! Run reports: what a run leaves behind for people to read, and what it shows while it runs.
//!
//! - [`metrics_log`]: the per-step metrics JSONL of a run directory (writer and tolerant reader).
//! - [`plots`]: PNG line charts of the metrics log and the accuracy-by-stage chart (plotters).
//! - [`table`]: the results table per arm and stage, in Markdown and fixed-width text, with the
//!   multi-seed mean ± sample std.
//! - [`progress`]: one progress bar per stage (indicatif), or plain log lines off a terminal.
//! - [`write_report`] puts them together for a run directory (or several seeds), and [`cli`]
//!   is `prism report`.
//!
//! Every file here is written atomically ([`atomic_write`]): a reader never sees half a PNG or
//! half a table.
//!
//! How a stage uses it (evaluation logs `accuracy`, `format_valid_rate`,
//! `perception_error_rate`, `reasoning_error_rate` and `n` under the same stage and arm, which
//! is where the table's rows come from):
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use prism::report::{MetricsLog, Progress, ProgressOptions, read_metrics, write_report};
//! # fn main() -> Result<(), prism::report::ReportError> {
//! let run_dir = std::path::Path::new("runs/demo");
//! let mut log = MetricsLog::open_in(run_dir)?;
//! let progress = Progress::new(ProgressOptions::default());
//! let mut bar = progress.stage("align", 100);
//! for step in 1..=100 {
//!     let reward = 0.5;
//!     log.log("align", "prism", step, BTreeMap::from([("reward_mean".into(), reward)]))?;
//!     bar.set_metric("reward", reward);
//!     bar.set_step(step);
//! }
//! bar.finish();
//! log.sync()?; // at each checkpoint
//! let records = read_metrics(log.path())?.records;
//! write_report(run_dir, &[records])?; // results.md and plots/
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod metrics_log;
pub mod plots;
pub mod progress;
pub mod table;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

pub use metrics_log::{MetricRecord, MetricsLog, MetricsRead, TornLine, read_metrics};
pub use plots::{MetricGroup, Series, accuracy_by_stage_chart, line_chart, plot_run};
pub use progress::{Progress, ProgressMode, ProgressOptions, StageProgress};
pub use table::{EvalRow, MeanStd, SummaryRow, SummaryTable, aggregate_seeds};

/// Errors of the report writers and readers; each names the file (and line) concerned.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed metrics record: {source}")]
    Malformed {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("bad report input: {0}")]
    Input(String),
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory so the rename survives a crash.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ReportError::Input(format!("{} names no file", path.display())))?;
    // Unique per process and call, so concurrent writers of one path never share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}-{seq}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| ReportError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| ReportError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ReportError::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ReportError::io(path, e))?;
        // Directory fsync is best effort: some filesystems refuse to open directories.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// File name of the results table in a run or report directory.
pub const TABLE_FILE: &str = "results.md";
/// Sub-directory of the charts.
pub const PLOTS_DIR: &str = "plots";
/// File name of the accuracy-by-stage chart inside [`PLOTS_DIR`].
pub const ACCURACY_CHART: &str = "accuracy_by_stage.png";

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// The results table and the accuracy chart; `None` when no seed logged evaluation rows.
    pub table: Option<(SummaryTable, PathBuf, PathBuf)>,
    /// Curve charts (losses, rewards, discriminator); per seed under `plots/seed<i>/` when
    /// there are several seeds.
    pub curves: Vec<PathBuf>,
}

/// Writes the report of one run (one seed) or of the same comparison over several seeds into
/// `out_dir`: `results.md` (mean ± std over seeds), `plots/accuracy_by_stage.png` and the curve
/// charts of [`MetricGroup::defaults`]. The table rows come from the evaluation records of each
/// seed's log ([`table::rows_from_log`]).
pub fn write_report(
    out_dir: &Path,
    seeds: &[Vec<MetricRecord>],
) -> Result<ReportFiles, ReportError> {
    if seeds.is_empty() {
        return Err(ReportError::Input("no runs to report".into()));
    }
    let plots = out_dir.join(PLOTS_DIR);
    fs::create_dir_all(&plots).map_err(|e| ReportError::io(&plots, e))?;
    let per_seed: Vec<Vec<EvalRow>> = seeds.iter().map(|r| table::rows_from_log(r)).collect();
    let table = if per_seed.iter().all(Vec::is_empty) {
        None
    } else {
        let t = aggregate_seeds(&per_seed)?;
        let md = out_dir.join(TABLE_FILE);
        t.write_markdown(&md)?;
        let chart = plots.join(ACCURACY_CHART);
        accuracy_by_stage_chart(&chart, &t, plots::SIZE)?;
        Some((t, md, chart))
    };
    let groups = MetricGroup::defaults();
    let mut curves = Vec::new();
    if seeds.len() == 1 {
        curves.extend(plot_run(&seeds[0], &plots, &groups)?);
    } else {
        for (i, records) in seeds.iter().enumerate() {
            curves.extend(plot_run(records, &plots.join(format!("seed{i}")), &groups)?);
        }
    }
    Ok(ReportFiles { table, curves })
}
