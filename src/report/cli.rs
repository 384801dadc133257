//! `prism report RUN_DIR... [--out DIR]`: rebuilds the table and charts from the metrics logs
//! of one run directory, or of several seed runs of the same comparison (mean ± std), and
//! prints the table.

use std::path::PathBuf;

use clap::Args;

use super::metrics_log::{FILE_NAME, read_metrics};
use super::{ReportError, ReportFiles, write_report};

/// Arguments of `prism report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (each holds metrics.jsonl); several are treated as seeds of one
    /// comparison.
    #[arg(required = true)]
    pub run_dirs: Vec<PathBuf>,
    /// Where to write results.md and plots/ (default: the run directory when there is one).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Reads every run's log, writes the report, prints the table on stdout and the written files
/// on stderr.
pub fn run(args: &ReportArgs) -> Result<ReportFiles, ReportError> {
    let out = match (&args.out, args.run_dirs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.clone(),
        (None, _) => {
            return Err(ReportError::Input(
                "several run directories need --out DIR for the combined report".into(),
            ));
        }
    };
    let mut seeds = Vec::with_capacity(args.run_dirs.len());
    for dir in &args.run_dirs {
        let read = read_metrics(&dir.join(FILE_NAME))?;
        if let Some(t) = &read.torn_tail {
            eprintln!(
                "warning: {}: line {} is torn ({} bytes, crash while writing); ignored",
                dir.join(FILE_NAME).display(),
                t.line,
                t.bytes
            );
        }
        seeds.push(read.records);
    }
    let files = write_report(&out, &seeds)?;
    match &files.table {
        Some((table, md, chart)) => {
            print!("{}", table.to_terminal());
            eprintln!("wrote {}", md.display());
            eprintln!("wrote {}", chart.display());
        }
        None => eprintln!("no evaluation records in the logs: no results table"),
    }
    for c in &files.curves {
        eprintln!("wrote {}", c.display());
    }
    Ok(files)
}
