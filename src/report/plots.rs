//! PNG charts of a run, drawn with plotters into an RGB buffer and encoded with `image`:
//!
//! - one line chart per [`MetricGroup`] of the metrics log (losses, rewards, discriminator
//!   caption/CoT accuracy), x = step, one line per stage × arm (× metric when the group has
//!   several);
//! - a grouped bar chart of evaluation accuracy by stage for every arm, with ± std whiskers when
//!   the table aggregates several seeds.
//!
//! Text uses the bundled DejaVu Sans (registered once with plotters), so charts render the same
//! on machines without system fonts. Files are written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics_log::{MetricRecord, keys};
use super::table::SummaryTable;
use super::{ReportError, atomic_write};

/// Font family name under which the bundled font is registered with plotters.
const FONT: &str = "prism-sans";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Default chart size in pixels.
pub const SIZE: (u32, u32) = (960, 600);

/// Line colours (colour-blind-friendly, dark enough on white).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(80, 80, 80),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn register_font() -> Result<(), ReportError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Input(
            "the bundled font assets/DejaVuSans.ttf does not parse".into(),
        ))
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y) points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Metrics drawn together in one chart, written to `<name>.png`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricGroup {
    /// File stem.
    pub name: String,
    pub title: String,
    pub y_label: String,
    /// Metric keys of the log.
    pub metrics: Vec<String>,
}

impl MetricGroup {
    pub fn new(name: &str, title: &str, y_label: &str, metrics: &[&str]) -> Self {
        MetricGroup {
            name: name.into(),
            title: title.into(),
            y_label: y_label.into(),
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
        }
    }

    /// Losses, rewards and discriminator accuracy: the charts of a PRISM run.
    pub fn defaults() -> Vec<MetricGroup> {
        vec![
            MetricGroup::new(
                "losses",
                "Training losses",
                "loss",
                &[keys::LOSS, keys::POLICY_LOSS, keys::DISC_LOSS, keys::KL],
            ),
            MetricGroup::new(
                "rewards",
                "Rewards",
                "mean reward",
                &[
                    keys::REWARD_MEAN,
                    keys::REWARD_PERCEPTION,
                    keys::REWARD_REASONING,
                ],
            ),
            MetricGroup::new(
                "discriminator",
                "Discriminator accuracy (caption / CoT)",
                "accuracy",
                &[keys::CAP_ACC, keys::COT_ACC],
            ),
        ]
    }
}

/// Smallest chart the layout (caption, label areas, margins) fits in.
pub const MIN_SIZE: (u32, u32) = (240, 180);

fn check_size(path: &Path, size: (u32, u32)) -> Result<(), ReportError> {
    if size.0 < MIN_SIZE.0 || size.1 < MIN_SIZE.1 || size.0 > 8192 || size.1 > 8192 {
        return Err(ReportError::Input(format!(
            "chart {}: size {}x{} is outside {}x{} to 8192x8192",
            path.display(),
            size.0,
            size.1,
            MIN_SIZE.0,
            MIN_SIZE.1
        )));
    }
    Ok(())
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The series of one group: one per (stage, arm, metric) present in the log, in order of first
/// appearance, x = step.
pub fn group_series(records: &[MetricRecord], group: &MetricGroup) -> Vec<Series> {
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut points: BTreeMap<(String, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        for m in &group.metrics {
            let Some(&v) = r.metrics.get(m) else { continue };
            let key = (r.stage.clone(), r.arm.clone(), m.clone());
            points
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push((r.step as f64, v));
        }
    }
    let several = group.metrics.len() > 1;
    order
        .into_iter()
        .map(|key| {
            let label = if several {
                format!("{}/{} {}", key.0, key.1, key.2)
            } else {
                format!("{}/{}", key.0, key.1)
            };
            let points = points.remove(&key).unwrap_or_default();
            Series { label, points }
        })
        .collect()
}

/// Writes one PNG per group that has data to `<out_dir>/<group.name>.png`; returns the paths.
pub fn plot_run(
    records: &[MetricRecord],
    out_dir: &Path,
    groups: &[MetricGroup],
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out_dir).map_err(|e| ReportError::io(out_dir, e))?;
    let mut written = Vec::new();
    for g in groups {
        let series = group_series(records, g);
        if series.iter().all(|s| finite(&s.points).next().is_none()) {
            continue;
        }
        let path = out_dir.join(format!("{}.png", g.name));
        line_chart(&path, &g.title, "step", &g.y_label, &series, SIZE)?;
        written.push(path);
    }
    Ok(written)
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// `lo..hi` widened by 5 % (or by 1 around a constant) so lines do not sit on the frame.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

/// A titled line chart with axis labels and a legend, written as PNG to `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<(), ReportError> {
    register_font()?;
    check_size(path, size)?;
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| finite(&s.points)).collect();
    if all.is_empty() {
        return Err(ReportError::Input(format!(
            "chart {title:?} ({}) has no finite points",
            path.display()
        )));
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        all.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x0, x1) = fold(|p| p.0);
    let (y0, y1) = fold(|p| p.1);
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { padded(x0, x1) };
    let (y0, y1) = padded(y0, y1);

    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        let integer_x = all.iter().all(|p| p.0.fract() == 0.0);
        let x_fmt = move |x: &f64| {
            if integer_x {
                format!("{x:.0}")
            } else {
                format!("{x}")
            }
        };
        chart
            .configure_mesh()
            .x_label_formatter(&x_fmt)
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = finite(&s.points).collect();
            if pts.is_empty() {
                continue;
            }
            let style = color(i).stroke_width(2);
            let c = color(i);
            if pts.len() == 1 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(|e| plot_err(path, e))?
            } else {
                chart
                    .draw_series(LineSeries::new(pts, style))
                    .map_err(|e| plot_err(path, e))?
            }
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
        chart
            .configure_series_labels()
            .position(legend_corner(&all, (x0, x1), (y0, y1)))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &buf, size)
}

/// Upper right unless most points of the right third of the chart lie in its upper half
/// (rising curves), then lower right, so the legend covers as little data as it can.
fn legend_corner(points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let right = x.0 + 0.66 * (x.1 - x.0);
    let mid = 0.5 * (y.0 + y.1);
    let (upper, total) = points
        .iter()
        .filter(|p| p.0 >= right)
        .fold((0usize, 0usize), |(u, t), p| {
            (u + usize::from(p.1 > mid), t + 1)
        });
    if total > 0 && 2 * upper > total {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// Stages in pipeline order merged over arms, and arms in order of first appearance. Each
/// arm's stages keep their relative order, so baseline sft → rlvr and prism sft → warmup →
/// align → rlvr give sft, warmup, align, rlvr: a stage new to the list goes right after the
/// previous stage of the same arm.
pub fn stage_and_arm_order(table: &SummaryTable) -> (Vec<String>, Vec<String>) {
    let mut arms: Vec<String> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut prev_of_arm: BTreeMap<String, String> = BTreeMap::new();
    for r in &table.rows {
        if !arms.contains(&r.arm) {
            arms.push(r.arm.clone());
        }
        if !stages.contains(&r.stage) {
            let at = prev_of_arm
                .get(&r.arm)
                .and_then(|p| stages.iter().position(|s| s == p))
                .map_or(stages.len(), |i| i + 1);
            stages.insert(at, r.stage.clone());
        }
        prev_of_arm.insert(r.arm.clone(), r.stage.clone());
    }
    (stages, arms)
}

/// Grouped bars of evaluation accuracy: x = stage, one bar per arm, ± std whiskers with
/// several seeds. Written as PNG to `path`.
pub fn accuracy_by_stage_chart(
    path: &Path,
    table: &SummaryTable,
    size: (u32, u32),
) -> Result<(), ReportError> {
    register_font()?;
    check_size(path, size)?;
    if table.rows.is_empty() {
        return Err(ReportError::Input(format!(
            "accuracy chart {}: the results table has no rows",
            path.display()
        )));
    }
    let (stages, arms) = stage_and_arm_order(table);
    let n = stages.len() as f64;
    let width = 0.8 / arms.len() as f64;
    let title = if table.seeds > 1 {
        format!("Accuracy by stage (mean ± std over {} seeds)", table.seeds)
    } else {
        "Accuracy by stage".to_string()
    };

    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..1.05)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("stage")
            .y_desc("accuracy")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (a, arm) in arms.iter().enumerate() {
            let c = color(a);
            let bars: Vec<(f64, f64, Option<f64>)> = table
                .rows
                .iter()
                .filter(|r| &r.arm == arm)
                .filter_map(|r| {
                    let s = stages.iter().position(|s| *s == r.stage)? as f64;
                    let x = s - 0.4 + width * (a as f64 + 0.5);
                    Some((x, r.accuracy.mean, r.accuracy.std))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x, m, _)| {
                    Rectangle::new([(x - width * 0.45, 0.0), (x + width * 0.45, m)], c.filled())
                }))
                .map_err(|e| plot_err(path, e))?
                .label(arm.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
            let whiskers = bars.iter().filter_map(|&(x, m, s)| {
                let s = s?;
                let lo = (m - s).max(0.0);
                let hi = m + s;
                let cap = width * 0.15;
                Some([
                    PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1)),
                    PathElement::new(vec![(x - cap, lo), (x + cap, lo)], BLACK.stroke_width(1)),
                    PathElement::new(vec![(x - cap, hi), (x + cap, hi)], BLACK.stroke_width(1)),
                ])
            });
            chart
                .draw_series(whiskers.flatten())
                .map_err(|e| plot_err(path, e))?;
        }
        // Stage names under their group of bars, in pixel coordinates of the root area.
        let style = TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, s) in stages.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64, 0.0));
            root.draw(&Text::new(s.as_str(), (px, py + 8), style.clone()))
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, &buf, size)
}

fn write_png(path: &Path, rgb: &[u8], size: (u32, u32)) -> Result<(), ReportError> {
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(rgb, size.0, size.1, image::ExtendedColorType::Rgb8)
        .map_err(|e| plot_err(path, e))?;
    atomic_write(path, &png)
}
