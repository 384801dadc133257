//! The results table: one row per (arm, stage) with accuracy, format-valid rate,
//! perception-error rate, reasoning-error rate and the number of examples, rendered as Markdown
//! (for the run directory and the README) and as a fixed-width table (for the terminal).
//!
//! One seed and several seeds share one shape: [`aggregate_seeds`] turns the rows of each seed
//! into a [`SummaryTable`] whose cells are mean ± sample standard deviation (n − 1 in the
//! denominator); with one seed the std is absent and the cell shows the value alone.

use std::collections::BTreeMap;
use std::path::Path;

use super::ReportError;
use super::metrics_log::{MetricRecord, keys};

/// Evaluation result of one arm after one stage, for one seed. Rates are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub arm: String,
    pub stage: String,
    /// Examples scored.
    pub n: u64,
    pub accuracy: f64,
    pub format_valid_rate: f64,
    pub perception_error_rate: f64,
    pub reasoning_error_rate: f64,
}

impl EvalRow {
    fn rates(&self) -> [f64; 4] {
        [
            self.accuracy,
            self.format_valid_rate,
            self.perception_error_rate,
            self.reasoning_error_rate,
        ]
    }

    /// Checks that every rate is a finite fraction in [0, 1].
    pub fn validate(&self) -> Result<(), ReportError> {
        let names = [
            keys::ACCURACY,
            keys::FORMAT_VALID_RATE,
            keys::PERCEPTION_ERROR_RATE,
            keys::REASONING_ERROR_RATE,
        ];
        for (name, v) in names.iter().zip(self.rates()) {
            if !(0.0..=1.0).contains(&v) {
                return Err(ReportError::Input(format!(
                    "{} of arm {:?} stage {:?} is {v}, not a fraction in [0, 1]",
                    name, self.arm, self.stage
                )));
            }
        }
        Ok(())
    }
}

/// The evaluation rows in a metrics log: for each (arm, stage), the last record that carries
/// all four rates and `n`. Records without them (training steps) are ignored. Order is the
/// order in which each (arm, stage) first appears.
pub fn rows_from_log(records: &[MetricRecord]) -> Vec<EvalRow> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut last: BTreeMap<(String, String), EvalRow> = BTreeMap::new();
    for r in records {
        let get = |k: &str| r.metrics.get(k).copied();
        let (Some(acc), Some(fv), Some(pe), Some(re), Some(n)) = (
            get(keys::ACCURACY),
            get(keys::FORMAT_VALID_RATE),
            get(keys::PERCEPTION_ERROR_RATE),
            get(keys::REASONING_ERROR_RATE),
            get(keys::N),
        ) else {
            continue;
        };
        let key = (r.arm.clone(), r.stage.clone());
        if !last.contains_key(&key) {
            order.push(key.clone());
        }
        let n = if n.is_finite() && n >= 0.0 {
            n.round() as u64
        } else {
            0
        };
        last.insert(
            key,
            EvalRow {
                arm: r.arm.clone(),
                stage: r.stage.clone(),
                n,
                accuracy: acc,
                format_valid_rate: fv,
                perception_error_rate: pe,
                reasoning_error_rate: re,
            },
        );
    }
    order.into_iter().filter_map(|k| last.remove(&k)).collect()
}

/// Mean and sample standard deviation of one cell over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    /// Sample std (n − 1 denominator); `None` with a single seed.
    pub std: Option<f64>,
}

impl MeanStd {
    /// Mean and sample std of `xs` (must be non-empty).
    pub fn of(xs: &[f64]) -> MeanStd {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = (xs.len() > 1).then(|| {
            let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
            (ss / (n - 1.0)).sqrt()
        });
        MeanStd { mean, std }
    }

    fn render(&self, decimals: usize) -> String {
        match self.std {
            Some(s) => format!("{:.*} ± {:.*}", decimals, self.mean, decimals, s),
            None => format!("{:.*}", decimals, self.mean),
        }
    }
}

/// One row of the summary: an (arm, stage) over the seeds that have it.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub arm: String,
    pub stage: String,
    /// Seeds this row aggregates.
    pub seeds: usize,
    /// Examples per seed (mean over seeds).
    pub n: MeanStd,
    pub accuracy: MeanStd,
    pub format_valid_rate: MeanStd,
    pub perception_error_rate: MeanStd,
    pub reasoning_error_rate: MeanStd,
}

/// The results table, one or more seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryTable {
    pub rows: Vec<SummaryRow>,
    /// Seeds given to [`aggregate_seeds`].
    pub seeds: usize,
}

const HEADERS: [&str; 8] = [
    "arm",
    "stage",
    "seeds",
    "n",
    "accuracy",
    "format-valid",
    "perception err",
    "reasoning err",
];

/// Aggregates per-seed rows (`per_seed[s]` = the rows of seed `s`) into mean ± sample std per
/// (arm, stage). Rows keep the order in which each (arm, stage) first appears. An (arm, stage)
/// twice in one seed, a rate outside [0, 1], or no seeds at all is an error.
pub fn aggregate_seeds(per_seed: &[Vec<EvalRow>]) -> Result<SummaryTable, ReportError> {
    if per_seed.is_empty() {
        return Err(ReportError::Input("no seeds to aggregate".into()));
    }
    let mut order: Vec<(String, String)> = Vec::new();
    let mut cells: BTreeMap<(String, String), Vec<&EvalRow>> = BTreeMap::new();
    for (s, rows) in per_seed.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for row in rows {
            row.validate()?;
            let key = (row.arm.clone(), row.stage.clone());
            if !seen.insert(key.clone()) {
                return Err(ReportError::Input(format!(
                    "seed {s} has arm {:?} stage {:?} twice",
                    row.arm, row.stage
                )));
            }
            cells
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(row);
        }
    }
    let rows = order
        .into_iter()
        .map(|key| {
            let rs = &cells[&key];
            let col =
                |f: fn(&EvalRow) -> f64| MeanStd::of(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            SummaryRow {
                arm: key.0.clone(),
                stage: key.1.clone(),
                seeds: rs.len(),
                n: col(|r| r.n as f64),
                accuracy: col(|r| r.accuracy),
                format_valid_rate: col(|r| r.format_valid_rate),
                perception_error_rate: col(|r| r.perception_error_rate),
                reasoning_error_rate: col(|r| r.reasoning_error_rate),
            }
        })
        .collect();
    Ok(SummaryTable {
        rows,
        seeds: per_seed.len(),
    })
}

impl SummaryTable {
    /// The table of a single seed.
    pub fn single(rows: Vec<EvalRow>) -> Result<SummaryTable, ReportError> {
        aggregate_seeds(&[rows])
    }

    fn cells(&self) -> Vec<[String; 8]> {
        self.rows
            .iter()
            .map(|r| {
                [
                    r.arm.clone(),
                    r.stage.clone(),
                    r.seeds.to_string(),
                    r.n.render(0),
                    r.accuracy.render(3),
                    r.format_valid_rate.render(3),
                    r.perception_error_rate.render(3),
                    r.reasoning_error_rate.render(3),
                ]
            })
            .collect()
    }

    fn caption(&self) -> String {
        if self.seeds == 1 {
            "1 seed; rates are fractions of the evaluation set.".to_string()
        } else {
            format!(
                "{} seeds; cells are mean ± sample std (n − 1) over the seeds that have the row; \
                 rates are fractions of the evaluation set.",
                self.seeds
            )
        }
    }

    /// GitHub-flavoured Markdown: a header row, numeric columns right-aligned, and a caption
    /// line giving the seed count.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("| {} |\n", HEADERS.join(" | ")));
        out.push_str("|---|---|--:|--:|--:|--:|--:|--:|\n");
        for row in self.cells() {
            let escaped: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            out.push_str(&format!("| {} |\n", escaped.join(" | ")));
        }
        out.push('\n');
        out.push_str(&self.caption());
        out.push('\n');
        out
    }

    /// Fixed-width text for a terminal: columns padded to their widest cell (counted in
    /// characters, so `±` takes one column), text left-aligned, numbers right-aligned.
    pub fn to_terminal(&self) -> String {
        let cells = self.cells();
        let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            let parts: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, &w))| {
                    let pad = " ".repeat(w - c.chars().count());
                    if i < 2 {
                        format!("{c}{pad}")
                    } else {
                        format!("{pad}{c}")
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let header: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
        let mut out = line(&header);
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        out.push_str(&self.caption());
        out.push('\n');
        out
    }

    /// Writes the Markdown table to `path` atomically.
    pub fn write_markdown(&self, path: &Path) -> Result<(), ReportError> {
        super::atomic_write(path, self.to_markdown().as_bytes())
    }
}
