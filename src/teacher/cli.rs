//! `prism teacher --config … --data FILE --out FILE`: collects teacher demonstrations for every
//! row of an RL parquet (the offline curation of a distillation set) and writes the parquet back
//! with `teacher_response`, `teacher_caption` and `teacher_cot` filled, atomically.
//!
//! Resumable: every answered call is in the cache before the row counts as done, so a rerun
//! after a crash or Ctrl-C pays only for what was never answered. Rows that end without a valid
//! demonstration are reported (row, id, reason) and, by policy, kept with empty teacher columns
//! (default) or dropped (`--drop-failed`); an invalid answer is never written. When `--out` is
//! in another folder than `--data`, relative image paths are rewritten as absolute paths so the
//! output still finds its images (write next to the input to keep them relative).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::client::{TeacherClient, TeacherRequest};
use super::config::TeacherConfig;
use super::error::TeacherError;
use crate::data::rl_parquet::{self, RlRecord};
use crate::data::{DataError, ReadOptions};

/// Arguments of `prism teacher`.
#[derive(Debug, Args)]
pub struct TeacherArgs {
    /// Teacher config (TOML; see configs/teacher-*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Input RL parquet (prompts and images).
    #[arg(long)]
    pub data: PathBuf,
    /// Output parquet: the input rows with the teacher columns filled (may equal --data).
    #[arg(long)]
    pub out: PathBuf,
    /// Ask again for rows that already have a `teacher_response` (default: keep theirs).
    #[arg(long)]
    pub redo: bool,
    /// Drop rows that end without a valid demonstration (default: keep them, teacher columns
    /// empty).
    #[arg(long)]
    pub drop_failed: bool,
    /// Skip (and report) malformed input rows instead of failing on the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

/// A row that ended without a valid demonstration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedRow {
    /// 0-based row among the rows read.
    pub row: usize,
    pub id: Option<String>,
    /// [`TeacherError::reason`].
    pub reason: String,
    pub message: String,
}

/// What a collection run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CollectSummary {
    /// Rows read.
    pub rows: usize,
    /// Rows that already had a teacher response and were kept as they were.
    pub kept_existing: usize,
    /// Rows answered by the teacher in this run.
    pub answered: usize,
    /// Rows answered from the cache (paid for by an earlier run).
    pub cached: usize,
    /// Rows without a valid demonstration.
    pub failed: Vec<FailedRow>,
    /// Input rows skipped as malformed (`--skip-bad`).
    pub skipped_input: usize,
    /// Rows written.
    pub written: usize,
    /// Paid in this run.
    pub requests: u64,
    pub retries: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl CollectSummary {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "teacher: {} rows: {} answered, {} cached, {} kept, {} failed; {} written; \
             {} requests ({} retries), {} in / {} out tokens, ${:.4}",
            self.rows,
            self.answered,
            self.cached,
            self.kept_existing,
            self.failed.len(),
            self.written,
            self.requests,
            self.retries,
            self.input_tokens,
            self.output_tokens,
            self.cost_usd
        )
    }
}

/// Fills the teacher columns of `records` (rows of the parquet `data`, whose folder resolves
/// image paths) with the client's answers, `max_concurrency` rows at a time. Failed rows keep
/// empty teacher columns and are listed in the summary; `progress` advances once per row.
pub async fn collect(
    client: &TeacherClient,
    data: &Path,
    records: &mut [RlRecord],
    redo: bool,
    progress: &ProgressBar,
) -> CollectSummary {
    let before = client.stats();
    let mut summary = CollectSummary {
        rows: records.len(),
        ..CollectSummary::default()
    };
    let todo: Vec<usize> = (0..records.len())
        .filter(|&i| redo || records[i].teacher_response.is_none())
        .collect();
    summary.kept_existing = records.len() - todo.len();
    progress.inc(summary.kept_existing as u64);

    let jobs: Vec<(usize, Result<TeacherRequest, TeacherError>)> = todo
        .iter()
        .map(|&i| (i, request_of(data, i, &records[i])))
        .collect();
    let concurrency = client.config().max_concurrency.max(1);
    let mut results = futures::stream::iter(jobs)
        .map(|(i, req)| async move {
            let outcome = match req {
                Ok(req) => client.ask(&req).await,
                Err(e) => Err(e),
            };
            (i, outcome)
        })
        .buffer_unordered(concurrency);
    while let Some((i, outcome)) = results.next().await {
        let r = &mut records[i];
        match outcome {
            Ok(answer) => {
                if answer.cached {
                    summary.cached += 1;
                } else {
                    summary.answered += 1;
                }
                r.teacher_response = Some(answer.response);
                r.teacher_caption = Some(answer.caption);
                r.teacher_cot = Some(answer.cot);
            }
            Err(e) => {
                r.teacher_response = None;
                r.teacher_caption = None;
                r.teacher_cot = None;
                summary.failed.push(FailedRow {
                    row: i,
                    id: r.id.clone(),
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                });
            }
        }
        progress.inc(1);
        let s = client.stats();
        progress.set_message(format!("${:.4}", s.cost_usd - before.cost_usd));
    }
    summary.failed.sort_by_key(|f| f.row);
    let after = client.stats();
    summary.requests = after.requests - before.requests;
    summary.retries = after.total_retries() - before.total_retries();
    summary.input_tokens = after.input_tokens - before.input_tokens;
    summary.output_tokens = after.output_tokens - before.output_tokens;
    summary.cost_usd = after.cost_usd - before.cost_usd;
    summary
}

/// The request for one row: its prompt and the bytes of its images.
fn request_of(data: &Path, row: usize, r: &RlRecord) -> Result<TeacherRequest, TeacherError> {
    let label = match &r.id {
        Some(id) => format!("row {row} (id {id})"),
        None => format!("row {row}"),
    };
    let images = (0..r.images.len())
        .map(|k| {
            r.image_bytes(k, data)
                .map_err(|message| TeacherError::Image {
                    prompt: label.clone(),
                    index: k,
                    message,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TeacherRequest {
        label,
        text: r.prompt.clone(),
        images,
    })
}

/// Relative image paths resolve against the parquet's folder: when `out` lies in another folder
/// than `data`, they are replaced by the absolute path of the file they name, so the output
/// still finds its images.
fn rebase_image_paths(
    data: &Path,
    out: &Path,
    records: &mut [RlRecord],
) -> Result<(), TeacherError> {
    let folder = |p: &Path| -> PathBuf {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::canonicalize(&dir).unwrap_or(dir)
    };
    if let Some(dir) = out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if folder(data) == folder(out) {
        return Ok(());
    }
    for r in records.iter_mut() {
        for img in &mut r.images {
            let has_bytes = img.bytes.as_ref().is_some_and(|b| !b.is_empty());
            if let Some(p) = &img.path
                && !has_bytes
                && Path::new(p).is_relative()
            {
                let full = crate::data::io::resolve(data, p);
                let abs = std::fs::canonicalize(&full).map_err(|source| DataError::Io {
                    path: full.clone(),
                    source,
                })?;
                img.path = Some(abs.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {msg}  {elapsed} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Runs `prism teacher`: reads the config and the parquet, collects, writes the output (and the
/// JSON summary), prints the summary line and every failed row.
pub fn run(args: &TeacherArgs) -> Result<CollectSummary, TeacherError> {
    let cfg = TeacherConfig::load(&args.config)?;
    let opts = ReadOptions {
        skip_bad: args.skip_bad,
    };
    let loaded = rl_parquet::read(&args.data, opts)?;
    let client = TeacherClient::new(cfg)?;
    let mut records = loaded.records;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TeacherError::Client(format!("tokio runtime: {e}")))?;
    let bar = progress_bar(records.len() as u64);
    let mut summary = runtime.block_on(collect(&client, &args.data, &mut records, args.redo, &bar));
    bar.finish_and_clear();
    summary.skipped_input = loaded.skipped.len();
    if args.drop_failed {
        let failed: std::collections::HashSet<usize> =
            summary.failed.iter().map(|f| f.row).collect();
        records = records
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .map(|(_, r)| r)
            .collect();
    }
    summary.written = records.len();
    rebase_image_paths(&args.data, &args.out, &mut records)?;
    rl_parquet::write(&args.out, &records)?;
    for f in &summary.failed {
        eprintln!("failed: {}", f.message);
    }
    if let Some(path) = &args.summary {
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| {
            TeacherError::Data(DataError::Format {
                path: path.clone(),
                message: e.to_string(),
            })
        })?;
        crate::data::io::atomic_write_bytes(path, &json)?;
    }
    println!("{}", summary.line());
    Ok(summary)
}
