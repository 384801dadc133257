//! Evaluation of a policy on an RL parquet: accuracy, format validity, and the perception-error
//! and reasoning-error rates of the synthetic task (`prism eval`).
//!
//! Owns three separable steps:
//! 1. **Generation** ([`generate_responses`]): every record becomes system = [`SYSTEM_INSTRUCTION`]
//!    plus one user turn (the record's prompt with its `<image>` placeholders as image parts),
//!    batched with left padding; greedy by default.
//! 2. **Scoring** ([`score_response`]): the Stage-3 reward ([`compute_score`]: format validity and
//!    format-gated accuracy), the ungated accuracy of evaluation (PRISM_ALGORITHM.md §1.3), and,
//!    for rows that carry a synthetic `scene`, the error label of [`classify_rl_record`]
//!    (perception: the caption misstates the scene; reasoning: caption right, answer wrong).
//!    The classifier receives the ungated answer verdict, so a right caption with a right answer
//!    in a malformed response is neither kind of error (it still counts as format-invalid).
//! 3. **Aggregation** ([`aggregate`]) into an [`EvalReport`] (serde) and [`render_table`].
//!
//! Rates are over all `n` items, except the two error rates, which are over the `n_classified`
//! items with a scene (`None`, shown as "n/a", when there are none).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::rl_parquet::{self, RlRecord};
use crate::data::synth::classify::classify_rl_record;
use crate::data::synth::{ErrorLabel, SYSTEM_INSTRUCTION};
use crate::data::{DataError, ReadOptions};
use crate::models::chat_template::{ChatMessage, split_vision_placeholders};
use crate::models::generate_cli::{
    GenerateError, decode_output, generation_config, load_model, load_processor, max_prompt_len,
    model_inputs,
};
use crate::models::generation::{GenerationOutput, Sampling, StopReason, generate};
use crate::models::processor::{PaddingSide, Processor, ProcessorError};
use crate::models::{ModelError, Qwen3Vl};
use crate::reward::format::split_text;
use crate::reward::{GroundTruth, accuracy_ungated, compute_score};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Load(#[from] GenerateError),
    /// An image of a row that cannot be read or decoded.
    #[error("{file}: row {row}{}: {reason}", id_suffix(.id))]
    Image {
        file: PathBuf,
        row: usize,
        id: Option<String>,
        reason: String,
    },
    /// A batch of prompts that cannot be encoded (too long, placeholder count, template).
    #[error("{file}: prompts of rows {first}..{end}")]
    Prompt {
        file: PathBuf,
        first: usize,
        end: usize,
        #[source]
        source: ProcessorError,
    },
    #[error("generation failed")]
    Generation(#[from] ModelError),
    #[error("invalid evaluation options: {0}")]
    Options(String),
    #[error("{file}: no records to evaluate")]
    Empty { file: PathBuf },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn id_suffix(id: &Option<String>) -> String {
    id.as_ref()
        .map(|i| format!(" (id {i})"))
        .unwrap_or_default()
}

/// How to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
    /// Evaluate only the first `limit` records.
    pub limit: Option<usize>,
    /// Maximum generated tokens per response.
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Show a progress bar (or plain progress lines) under this name, counting prompts.
    pub progress: Option<String>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: 8,
            limit: None,
            max_new_tokens: 512,
            sampling: Sampling::Greedy,
            seed: 0,
            progress: None,
        }
    }
}

impl EvalOptions {
    /// Checks the options once, before any work.
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.batch_size == 0 {
            return Err(EvalError::Options("batch_size must be at least 1".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(EvalError::Options(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if self.limit == Some(0) {
            return Err(EvalError::Options("limit must be at least 1".into()));
        }
        Ok(())
    }
}

/// The outcome on one record (one line of `--responses-out`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Row of the record in the parquet.
    pub row: usize,
    pub id: Option<String>,
    pub ground_truth: String,
    pub response: String,
    /// Generated tokens (stop token not counted).
    pub response_tokens: usize,
    /// Whether `max_new_tokens` ended the response (no stop token).
    pub truncated: bool,
    /// The reward's format check.
    pub format_valid: bool,
    /// The reward's accuracy (0 when the format is invalid).
    pub correct: bool,
    /// Accuracy without format gating (answer block, else `\boxed{}`, else the whole text).
    pub correct_ungated: bool,
    /// `compute_score` of the response.
    pub reward: f64,
    /// Error label; `None` when the row has no synthetic scene.
    pub error: Option<ErrorLabel>,
    /// The record's difficulty level (synthetic rows), for the per-level breakdown.
    #[serde(default)]
    pub difficulty: Option<i32>,
    /// Why the caption was judged wrong (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Aggregate metrics of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Items evaluated.
    pub n: usize,
    /// Mean format-gated accuracy (the reward's `acc`).
    pub accuracy: f64,
    /// Mean accuracy without format gating.
    pub accuracy_ungated: f64,
    /// Share of format-valid responses.
    pub format_valid_rate: f64,
    /// Mean `compute_score`.
    pub mean_reward: f64,
    /// Items with a synthetic scene (the denominator of the error rates).
    pub n_classified: usize,
    /// Share of classified items whose caption misstates the scene.
    pub perception_error_rate: Option<f64>,
    /// Share of classified items whose caption is right but whose answer is wrong.
    pub reasoning_error_rate: Option<f64>,
    /// Mean generated tokens per response.
    pub mean_response_tokens: f64,
    /// Share of responses cut by `max_new_tokens`.
    pub truncated_rate: f64,
    /// The main metrics per difficulty level, for items that carry one.
    #[serde(default)]
    pub by_difficulty: BTreeMap<i32, GroupMetrics>,
}

/// The main metrics of a subset of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    pub n: usize,
    pub accuracy: f64,
    pub format_valid_rate: f64,
    /// Over the subset's classified items; `None` when it has none.
    pub perception_error_rate: Option<f64>,
    pub reasoning_error_rate: Option<f64>,
}

/// Share of classified items (error label known) with `label`; `None` when none is classified.
fn error_rate<'a>(items: impl Iterator<Item = &'a ItemResult>, label: ErrorLabel) -> Option<f64> {
    let (mut hits, mut classified) = (0usize, 0usize);
    for e in items.filter_map(|i| i.error) {
        classified += 1;
        hits += usize::from(e == label);
    }
    (classified > 0).then(|| hits as f64 / classified as f64)
}

fn group_metrics(items: &[&ItemResult]) -> GroupMetrics {
    let n = items.len();
    let count = |f: fn(&ItemResult) -> bool| items.iter().filter(|i| f(i)).count() as f64;
    GroupMetrics {
        n,
        accuracy: if n == 0 {
            0.0
        } else {
            count(|i| i.correct) / n as f64
        },
        format_valid_rate: if n == 0 {
            0.0
        } else {
            count(|i| i.format_valid) / n as f64
        },
        perception_error_rate: error_rate(items.iter().copied(), ErrorLabel::Perception),
        reasoning_error_rate: error_rate(items.iter().copied(), ErrorLabel::Reasoning),
    }
}

/// The report and the per-item results.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub report: EvalReport,
    pub items: Vec<ItemResult>,
}

/// The conversation for one record: the system instruction, then the user turn with the
/// record's `<image>` placeholders turned into image parts.
pub fn build_messages(record: &RlRecord) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(SYSTEM_INSTRUCTION),
        ChatMessage::parts("user", split_vision_placeholders(&record.prompt)),
    ]
}

/// Decodes the images of `record` (row `row` of `parquet_path`) with the processor's decoder.
pub fn load_record_images(
    processor: &Processor,
    record: &RlRecord,
    row: usize,
    parquet_path: &Path,
) -> Result<Vec<RgbImage>, EvalError> {
    (0..record.images.len())
        .map(|i| {
            record
                .image_bytes(i, parquet_path)
                .and_then(|b| {
                    processor
                        .image_processor
                        .decode(&b, &format!("image {i}"))
                        .map_err(|e| e.to_string())
                })
                .map_err(|reason| EvalError::Image {
                    file: parquet_path.to_path_buf(),
                    row,
                    id: record.id.clone(),
                    reason,
                })
        })
        .collect()
}

/// Scores one response to `record` (see the module doc); `row` and the token counts are carried
/// into the result.
pub fn score_response(
    record: &RlRecord,
    row: usize,
    response: &str,
    response_tokens: usize,
    truncated: bool,
) -> ItemResult {
    let gt = GroundTruth::One(record.ground_truth.clone());
    let reward = compute_score(response, &gt);
    let correct_ungated = accuracy_ungated(response, &gt);
    let (error, problems) = match record.scene {
        Some(_) => match classify_rl_record(record, response, correct_ungated) {
            Ok(v) => (Some(v.label), v.problems),
            Err(why) => (None, vec![why]),
        },
        None => (None, Vec::new()),
    };
    ItemResult {
        row,
        id: record.id.clone(),
        ground_truth: record.ground_truth.clone(),
        response: response.to_string(),
        response_tokens,
        truncated,
        format_valid: reward.format > 0.5,
        correct: reward.acc > 0.5,
        correct_ungated,
        reward: reward.score,
        error,
        difficulty: record.difficulty,
        problems,
    }
}

fn mean(xs: impl Iterator<Item = f64>, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        xs.sum::<f64>() / n as f64
    }
}

fn share(items: &[ItemResult], f: impl Fn(&ItemResult) -> bool) -> f64 {
    mean(
        items.iter().map(|i| if f(i) { 1.0 } else { 0.0 }),
        items.len(),
    )
}

/// Aggregates per-item results. With no items every rate is 0 and the error rates are `None`.
pub fn aggregate(items: &[ItemResult]) -> EvalReport {
    let n = items.len();
    let classified: Vec<&ItemResult> = items.iter().filter(|i| i.error.is_some()).collect();
    let nc = classified.len();
    let mut levels: BTreeMap<i32, Vec<&ItemResult>> = BTreeMap::new();
    for i in items {
        if let Some(d) = i.difficulty {
            levels.entry(d).or_default().push(i);
        }
    }
    EvalReport {
        n,
        accuracy: share(items, |i| i.correct),
        accuracy_ungated: share(items, |i| i.correct_ungated),
        format_valid_rate: share(items, |i| i.format_valid),
        mean_reward: mean(items.iter().map(|i| i.reward), n),
        n_classified: nc,
        perception_error_rate: error_rate(items.iter(), ErrorLabel::Perception),
        reasoning_error_rate: error_rate(items.iter(), ErrorLabel::Reasoning),
        mean_response_tokens: mean(items.iter().map(|i| i.response_tokens as f64), n),
        truncated_rate: share(items, |i| i.truncated),
        by_difficulty: levels
            .iter()
            .map(|(&d, group)| (d, group_metrics(group)))
            .collect(),
    }
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}

/// The rows of the table: (metric, value per report).
fn table_rows(reports: &[&EvalReport]) -> Vec<(String, Vec<String>)> {
    type Cell = fn(&EvalReport) -> String;
    let main: [(&str, Cell); 10] = [
        ("items", |r| r.n.to_string()),
        ("accuracy", |r| format!("{:.4}", r.accuracy)),
        ("accuracy (ungated)", |r| {
            format!("{:.4}", r.accuracy_ungated)
        }),
        ("format-valid rate", |r| {
            format!("{:.4}", r.format_valid_rate)
        }),
        ("mean reward", |r| format!("{:.4}", r.mean_reward)),
        ("classified items", |r| r.n_classified.to_string()),
        ("perception-error rate", |r| {
            fmt_rate(r.perception_error_rate)
        }),
        ("reasoning-error rate", |r| fmt_rate(r.reasoning_error_rate)),
        ("mean response tokens", |r| {
            format!("{:.1}", r.mean_response_tokens)
        }),
        ("truncated rate", |r| format!("{:.4}", r.truncated_rate)),
    ];
    let mut rows: Vec<(String, Vec<String>)> = main
        .iter()
        .map(|(name, cell)| (name.to_string(), reports.iter().map(|r| cell(r)).collect()))
        .collect();
    let levels: std::collections::BTreeSet<i32> = reports
        .iter()
        .flat_map(|r| r.by_difficulty.keys().copied())
        .collect();
    type LevelCell = fn(&GroupMetrics) -> String;
    let per_level: [(&str, LevelCell); 4] = [
        ("accuracy", |g| format!("{:.4}", g.accuracy)),
        ("format-valid", |g| format!("{:.4}", g.format_valid_rate)),
        ("perception err", |g| fmt_rate(g.perception_error_rate)),
        ("reasoning err", |g| fmt_rate(g.reasoning_error_rate)),
    ];
    for level in levels {
        let n = reports
            .iter()
            .map(|r| r.by_difficulty.get(&level).map_or(0, |g| g.n).to_string())
            .collect();
        rows.push((format!("L{level} items"), n));
        for (name, cell) in per_level {
            let values = reports
                .iter()
                .map(|r| {
                    r.by_difficulty
                        .get(&level)
                        .map_or_else(|| "n/a".to_string(), cell)
                })
                .collect();
            rows.push((format!("L{level} {name}"), values));
        }
    }
    rows
}

/// A fixed-width table comparing reports side by side, one column per `(name, report)`; rows
/// are the metrics, then the per-difficulty ones (`L1 accuracy`, ...).
pub fn render_comparison(columns: &[(&str, &EvalReport)]) -> String {
    const NAME: usize = 24;
    let reports: Vec<&EvalReport> = columns.iter().map(|(_, r)| *r).collect();
    let widths: Vec<usize> = columns
        .iter()
        .map(|(name, _)| name.chars().count().max(10) + 2)
        .collect();
    let total = NAME + widths.iter().sum::<usize>();
    let mut out = format!("{:<NAME$}", "metric");
    for ((name, _), w) in columns.iter().zip(&widths) {
        out.push_str(&format!("{name:>w$}"));
    }
    out.push('\n');
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for (metric, values) in table_rows(&reports) {
        out.push_str(&format!("{metric:<NAME$}"));
        for (v, w) in values.iter().zip(&widths) {
            out.push_str(&format!("{v:>w$}"));
        }
        out.push('\n');
    }
    out
}

/// A fixed-width two-column table of one report.
pub fn render_table(report: &EvalReport) -> String {
    render_comparison(&[("value", report)])
}

/// Generates one response per record, in batches of `opts.batch_size` (left-padded). `rows[i]`
/// is the parquet row of `records[i]` (for error messages).
pub fn generate_responses(
    model: &Qwen3Vl,
    processor: &Processor,
    records: &[RlRecord],
    parquet_path: &Path,
    opts: &EvalOptions,
) -> Result<Vec<(String, GenerationOutput)>, EvalError> {
    opts.validate()?;
    let cfg = generation_config(processor, opts.sampling, opts.max_new_tokens, opts.seed);
    let max_len = max_prompt_len(model);
    let mut out = Vec::with_capacity(records.len());
    let mut bar = opts
        .progress
        .as_ref()
        .map(|name| crate::report::progress::global().stage(name, records.len() as u64));
    for (chunk_index, chunk) in records.chunks(opts.batch_size).enumerate() {
        let first = chunk_index * opts.batch_size;
        let conversations: Vec<Vec<ChatMessage>> = chunk.iter().map(build_messages).collect();
        let images = chunk
            .iter()
            .enumerate()
            .map(|(j, r)| load_record_images(processor, r, first + j, parquet_path))
            .collect::<Result<Vec<_>, _>>()?;
        let enc = processor
            .batch_chats(
                &conversations,
                &images,
                true,
                PaddingSide::Left,
                Some(max_len),
            )
            .map_err(|source| EvalError::Prompt {
                file: parquet_path.to_path_buf(),
                first,
                end: first + chunk.len(),
                source,
            })?;
        let inputs = model_inputs(&enc, model.device())?;
        let mut cfg = cfg.clone();
        // Distinct sampling streams per batch; greedy ignores the seed.
        cfg.seed = opts.seed.wrapping_add(first as u64);
        for o in generate(model, &inputs, &cfg)? {
            let decoded = decode_output(processor, o.clone())?;
            out.push((decoded.text, o));
        }
        match bar.as_mut() {
            Some(b) => {
                b.set_step((first + chunk.len()) as u64);
                let valid = out.iter().filter(|(t, _)| split_text(t).is_some()).count();
                b.set_metric("format_valid", valid as f64 / out.len() as f64);
            }
            None => tracing::info!(
                "eval: generated {}/{} responses",
                first + chunk.len(),
                records.len()
            ),
        }
    }
    if let Some(b) = bar.as_mut() {
        b.finish();
    }
    Ok(out)
}

/// Generates, scores and aggregates: the evaluation the pipeline calls. `records` are the rows
/// of `parquet_path` in order (its images are resolved against it); `opts.limit` takes a prefix.
pub fn evaluate(
    model: &Qwen3Vl,
    processor: &Processor,
    records: &[RlRecord],
    parquet_path: &Path,
    opts: &EvalOptions,
) -> Result<Evaluation, EvalError> {
    opts.validate()?;
    let records = &records[..opts.limit.unwrap_or(usize::MAX).min(records.len())];
    if records.is_empty() {
        return Err(EvalError::Empty {
            file: parquet_path.to_path_buf(),
        });
    }
    let responses = generate_responses(model, processor, records, parquet_path, opts)?;
    let items: Vec<ItemResult> = records
        .iter()
        .zip(&responses)
        .enumerate()
        .map(|(row, (r, (text, o)))| {
            score_response(
                r,
                row,
                text,
                o.token_ids.len(),
                o.stop_reason == StopReason::Length,
            )
        })
        .collect();
    Ok(Evaluation {
        report: aggregate(&items),
        items,
    })
}

/// Writes one JSON object per line.
pub fn write_responses(path: &Path, items: &[ItemResult]) -> Result<(), EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for item in items {
        serde_json::to_writer(&mut w, item).map_err(|e| io(e.into()))?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

/// `prism eval` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// RL parquet (e.g. rl_eval.parquet of `prism data synth`).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Maximum generated tokens per response.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write every response with its scores as JSONL to this file.
    #[arg(long)]
    pub responses_out: Option<PathBuf>,
}

/// Runs `prism eval`: prints the table, then the report as one JSON line.
pub fn run(args: &EvalArgs) -> Result<EvalReport, EvalError> {
    let opts = EvalOptions {
        batch_size: args.batch_size,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
        ..EvalOptions::default()
    };
    opts.validate()?;
    let records = rl_parquet::read(&args.data, ReadOptions::default())?.records;
    let processor = load_processor(&args.model)?;
    let model = load_model(&args.model)?;
    if model.device() != Device::Cpu {
        tracing::info!("eval on {:?}", model.device());
    }
    let ev = evaluate(&model, &processor, &records, &args.data, &opts)?;
    let json = serde_json::to_string(&ev.report).expect("numbers and options serialise");
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n")).map_err(|source| EvalError::Io {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &args.responses_out {
        write_responses(path, &ev.items)?;
    }
    print!("{}", render_table(&ev.report));
    println!("{json}");
    Ok(ev.report)
}

/// Appends one record with the report's rates to `run_dir`'s metrics log (error rates only
/// when the data has synthetic scenes to classify against).
fn log_report(
    run_dir: &Path,
    arm: &str,
    label: &str,
    r: &EvalReport,
) -> Result<(), crate::report::ReportError> {
    use crate::report::metrics_log::{MetricsLog, keys};
    let mut m = BTreeMap::new();
    m.insert(keys::ACCURACY.to_string(), r.accuracy);
    m.insert(keys::FORMAT_VALID_RATE.to_string(), r.format_valid_rate);
    m.insert(keys::N.to_string(), r.n as f64);
    m.insert("accuracy_ungated".to_string(), r.accuracy_ungated);
    m.insert("mean_response_tokens".to_string(), r.mean_response_tokens);
    if let Some(v) = r.perception_error_rate {
        m.insert(keys::PERCEPTION_ERROR_RATE.to_string(), v);
    }
    if let Some(v) = r.reasoning_error_rate {
        m.insert(keys::REASONING_ERROR_RATE.to_string(), v);
    }
    let mut log = MetricsLog::open_in(run_dir)?;
    log.log(label, arm, 0, m)?;
    log.sync()
}

/// The pipeline's `eval` stage: evaluates the incoming checkpoint `input` on `cfg.data` (or the
/// synthetic `default_data`), writes `report.json`, `responses.jsonl` and `table.txt` into
/// `run_dir/<name>/`, appends the rates to the run's metrics log as stage `label` of the
/// context's arm (the rows of the results table), prints the table, and passes `input` on
/// unchanged.
pub fn run_eval_stage(
    cfg: &crate::config::EvalStageConfig,
    label: &str,
    ctx: &super::StageContext,
    input: &Path,
    default_data: Option<&Path>,
) -> super::Result<super::StageSummary> {
    let started = std::time::Instant::now();
    let invalid = |message: String| super::StageError::Invalid {
        stage: ctx.name.clone(),
        message,
    };
    let data = cfg
        .data
        .as_deref()
        .or(default_data)
        .ok_or_else(|| invalid("no evaluation data".into()))?;
    let processor =
        crate::models::generate_cli::load_processor(input).map_err(|e| invalid(e.to_string()))?;
    let model = Qwen3Vl::load(input, ctx.device, ctx.kind)?;
    let records = rl_parquet::read(data, ReadOptions::default())?.records;
    let opts = EvalOptions {
        batch_size: cfg.batch_size,
        limit: cfg.limit,
        max_new_tokens: cfg.max_new_tokens,
        sampling: Sampling::Greedy,
        seed: ctx.seed,
        progress: Some(ctx.name.clone()),
    };
    let evaluation = tch::no_grad(|| evaluate(&model, &processor, &records, data, &opts))
        .map_err(|e| invalid(e.to_string()))?;
    let dir = ctx.stage_dir();
    std::fs::create_dir_all(&dir).map_err(|e| super::StageError::io(&dir, e))?;
    let table = render_table(&evaluation.report);
    let report_json = serde_json::to_vec_pretty(&evaluation.report)
        .map_err(|e| invalid(format!("report.json: {e}")))?;
    for (file, bytes) in [
        ("report.json", report_json),
        ("table.txt", table.clone().into_bytes()),
    ] {
        let path = dir.join(file);
        crate::report::atomic_write(&path, &bytes).map_err(|e| invalid(e.to_string()))?;
    }
    write_responses(&dir.join("responses.jsonl"), &evaluation.items)
        .map_err(|e| invalid(e.to_string()))?;
    log_report(&ctx.run_dir, &ctx.arm, label, &evaluation.report)
        .map_err(|e| invalid(e.to_string()))?;
    println!(
        "{} on {} ({} items):\n{table}",
        ctx.name,
        data.display(),
        evaluation.report.n
    );
    Ok(super::StageSummary {
        name: ctx.name.clone(),
        kind: "eval".into(),
        output: input.to_path_buf(),
        experts: None,
        steps: 0,
        skipped_steps: 0,
        first_loss: None,
        last_loss: None,
        first_eval_loss: None,
        last_eval_loss: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(correct: bool, format: bool, error: Option<ErrorLabel>, tokens: usize) -> ItemResult {
        ItemResult {
            row: 0,
            id: None,
            ground_truth: "1".into(),
            response: String::new(),
            response_tokens: tokens,
            truncated: tokens >= 10,
            format_valid: format,
            correct,
            correct_ungated: correct,
            reward: 0.8 * f64::from(u8::from(correct)) + 0.2 * f64::from(u8::from(format)),
            error,
            difficulty: None,
            problems: Vec::new(),
        }
    }

    #[test]
    fn aggregate_counts_and_denominators() {
        let items = [
            item(true, true, Some(ErrorLabel::None), 4),
            item(false, true, Some(ErrorLabel::Reasoning), 6),
            item(false, false, Some(ErrorLabel::Perception), 10),
            item(false, true, None, 0),
        ];
        let r = aggregate(&items);
        assert_eq!(r.n, 4);
        assert_eq!(r.n_classified, 3);
        assert_eq!(r.accuracy, 0.25);
        assert_eq!(r.format_valid_rate, 0.75);
        assert_eq!(r.perception_error_rate, Some(1.0 / 3.0));
        assert_eq!(r.reasoning_error_rate, Some(1.0 / 3.0));
        assert_eq!(r.mean_response_tokens, 5.0);
        assert_eq!(r.truncated_rate, 0.25);
        assert!((r.mean_reward - (1.0 + 0.2 + 0.0 + 0.2) / 4.0).abs() < 1e-12);
        let none = aggregate(&[item(true, true, None, 1)]);
        assert_eq!(none.perception_error_rate, None);
        let table = render_table(&none);
        assert!(table.contains("perception-error rate") && table.contains("n/a"));
        let empty = aggregate(&[]);
        assert_eq!((empty.n, empty.accuracy), (0, 0.0));
    }

    #[test]
    fn table_rows_have_fixed_width() {
        let mut a = item(true, true, Some(ErrorLabel::None), 3);
        a.difficulty = Some(1);
        let mut b = item(false, true, Some(ErrorLabel::Reasoning), 3);
        b.difficulty = Some(2);
        let r = aggregate(&[a.clone(), b]);
        assert_eq!(r.by_difficulty.len(), 2);
        assert_eq!(r.by_difficulty[&1].accuracy, 1.0);
        assert_eq!(r.by_difficulty[&2].reasoning_error_rate, Some(1.0));
        let table = render_table(&r);
        for line in table.lines() {
            assert_eq!(line.chars().count(), 36, "{line:?}");
        }
        assert!(table.contains("L2 reasoning err"), "{table}");
        // Side by side: a level only one report has shows n/a in the other column.
        let only1 = aggregate(&[a]);
        let cmp = render_comparison(&[("sft->rlvr", &only1), ("prism pipeline", &r)]);
        let widths: Vec<usize> = cmp.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == 24 + 12 + 16), "{cmp}");
        let l2 = cmp.lines().find(|l| l.starts_with("L2 accuracy")).unwrap();
        assert!(
            l2.contains("n/a") && l2.trim_end().ends_with("0.0000"),
            "{l2}"
        );
    }

    #[test]
    fn options_are_validated() {
        let bad = EvalOptions {
            batch_size: 0,
            ..EvalOptions::default()
        };
        assert!(bad.validate().is_err());
        let bad = EvalOptions {
            limit: Some(0),
            ..EvalOptions::default()
        };
        assert!(bad.validate().is_err());
        assert!(EvalOptions::default().validate().is_ok());
    }

    #[test]
    fn messages_split_the_image_placeholder() {
        let r = RlRecord {
            prompt: "<image>\nHow many?".into(),
            ..RlRecord::default()
        };
        let m = build_messages(&r);
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].num_images(), 1);
    }
}
