//! PNG charts: written, decodable, of the requested size, and not blank; the accuracy chart
//! puts stages in pipeline order across arms.

use std::path::Path;

use prism::report::{
    EvalRow, MetricGroup, MetricRecord, Series, SummaryTable, accuracy_by_stage_chart,
    aggregate_seeds, line_chart, plot_run,
};

/// Decodes the PNG and returns (width, height, variance of luma, number of distinct colours).
fn inspect(path: &Path) -> (u32, u32, f64, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    let luma: Vec<f64> = img
        .pixels()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let var = luma.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / luma.len() as f64;
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    (img.width(), img.height(), var, colours.len())
}

/// Pixels within a small distance of this colour (lines are anti-aliased).
fn count_colour(path: &Path, rgb: [u8; 3]) -> usize {
    let img = image::open(path).unwrap().to_rgb8();
    img.pixels()
        .filter(|p| {
            p.0.iter()
                .zip(rgb)
                .map(|(&a, b)| (a as i32 - b as i32).abs())
                .sum::<i32>()
                < 40
        })
        .count()
}

fn run_records() -> Vec<MetricRecord> {
    let mut out = Vec::new();
    for (a, (arm, stages)) in [
        ("prism", &["sft", "warmup", "align", "rlvr"][..]),
        ("baseline", &["sft", "rlvr"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        for (s, stage) in stages.iter().enumerate() {
            // Each stage × arm gets its own level so the curves do not overlap.
            let level = 0.3 * s as f64 + 0.15 * a as f64;
            for step in 0..40u64 {
                let t = step as f64;
                let mut m = std::collections::BTreeMap::new();
                m.insert("loss".to_string(), 2.0 * (-t / 15.0).exp() + 0.1 + level);
                if *stage == "align" || *stage == "rlvr" {
                    m.insert(
                        "reward_mean".to_string(),
                        1.0 - (-t / 10.0).exp() - level / 3.0,
                    );
                }
                if *stage == "warmup" || *stage == "align" {
                    m.insert(
                        "cap_acc".to_string(),
                        0.5 + 0.4 * (1.0 - (-t / 8.0).exp()) - level / 4.0,
                    );
                    m.insert(
                        "cot_acc".to_string(),
                        0.5 + 0.3 * (1.0 - (-t / 12.0).exp()) - level / 4.0,
                    );
                }
                if step == 7 {
                    m.insert("loss".to_string(), f64::NAN); // skipped, not fatal
                }
                out.push(MetricRecord {
                    stage: stage.to_string(),
                    arm: arm.to_string(),
                    step,
                    wall_time: 0.0,
                    metrics: m,
                });
            }
        }
    }
    out
}

#[test]
fn plot_run_writes_one_nonblank_png_per_group_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut groups = MetricGroup::defaults();
    groups.push(MetricGroup::new(
        "absent",
        "Absent",
        "x",
        &["no_such_metric"],
    ));
    let written = plot_run(&run_records(), dir.path(), &groups).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["losses.png", "rewards.png", "discriminator.png"]);
    for p in &written {
        let (w, h, var, colours) = inspect(p);
        assert_eq!((w, h), prism::report::plots::SIZE);
        assert!(
            var > 100.0,
            "{} looks blank (luma variance {var})",
            p.display()
        );
        assert!(colours > 20, "{} has only {colours} colours", p.display());
    }
    // Lines are drawn in the palette: the first series colour is present in quantity.
    let blue = count_colour(&written[0], [31, 119, 180]);
    if let Some(d) = std::env::var_os("PRISM_PLOT_DUMP") {
        for p in &written {
            std::fs::copy(p, Path::new(&d).join(p.file_name().unwrap())).unwrap();
        }
    }
    assert!(blue > 300, "first series colour covers {blue} pixels");
    // No temporary files are left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn line_chart_of_custom_size_and_constant_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.png");
    let series = [
        Series {
            label: "flat".into(),
            points: vec![(0.0, 0.5), (1.0, 0.5), (2.0, 0.5)],
        },
        Series {
            label: "single point".into(),
            points: vec![(1.0, 0.5)],
        },
    ];
    line_chart(&path, "Flat", "step", "value", &series, (400, 300)).unwrap();
    let (w, h, var, _) = inspect(&path);
    assert_eq!((w, h), (400, 300));
    assert!(var > 50.0);
}

#[test]
fn line_chart_without_finite_points_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.png");
    let series = [Series {
        label: "nan".into(),
        points: vec![(0.0, f64::NAN)],
    }];
    let err = line_chart(&path, "NaN", "step", "v", &series, (400, 300)).unwrap_err();
    assert!(err.to_string().contains("no finite points"), "{err}");
    assert!(!path.exists());
}

fn eval(arm: &str, stage: &str, acc: f64) -> EvalRow {
    EvalRow {
        arm: arm.into(),
        stage: stage.into(),
        n: 100,
        accuracy: acc,
        format_valid_rate: 1.0,
        perception_error_rate: 0.1,
        reasoning_error_rate: 0.1,
    }
}

#[test]
fn accuracy_by_stage_chart_draws_bars_for_both_arms_with_whiskers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accuracy_by_stage.png");
    let seed = |d: f64| {
        vec![
            eval("baseline", "sft", 0.30 + d),
            eval("baseline", "rlvr", 0.42 + d),
            eval("prism", "sft", 0.30 + d),
            eval("prism", "warmup", 0.31 + d),
            eval("prism", "align", 0.45 + d),
            eval("prism", "rlvr", 0.58 + d),
        ]
    };
    let table = aggregate_seeds(&[seed(0.0), seed(0.03), seed(-0.02)]).unwrap();
    accuracy_by_stage_chart(&path, &table, (800, 500)).unwrap();
    let (w, h, var, _) = inspect(&path);
    assert_eq!((w, h), (800, 500));
    assert!(var > 100.0);
    // Both arms' bar colours cover real area: 2 bars of baseline, 4 of prism.
    let blue = count_colour(&path, [31, 119, 180]);
    let red = count_colour(&path, [214, 39, 40]);
    if let Some(d) = std::env::var_os("PRISM_PLOT_DUMP") {
        std::fs::copy(&path, Path::new(&d).join("accuracy_by_stage.png")).unwrap();
    }
    assert!(
        blue > 5_000 && red > 5_000,
        "bar pixels: blue {blue}, red {red}"
    );
    assert!(red > blue, "prism has more (and taller) bars than baseline");
}

#[test]
fn degenerate_sizes_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.png");
    let series = [Series {
        label: "s".into(),
        points: vec![(0.0, 1.0), (1.0, 2.0)],
    }];
    for size in [(0, 0), (10, 10), (100_000, 600)] {
        let err = line_chart(&path, "t", "x", "y", &series, size).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }
    let t = SummaryTable::single(vec![eval("a", "s", 0.5)]).unwrap();
    assert!(accuracy_by_stage_chart(&path, &t, (0, 0)).is_err());
    assert!(!path.exists());
    // The smallest allowed size still draws.
    line_chart(
        &path,
        "t",
        "x",
        "y",
        &series,
        prism::report::plots::MIN_SIZE,
    )
    .unwrap();
}

#[test]
fn accuracy_chart_of_an_empty_table_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = SummaryTable {
        rows: vec![],
        seeds: 1,
    };
    assert!(accuracy_by_stage_chart(&dir.path().join("a.png"), &empty, (400, 300)).is_err());
}

#[test]
fn merged_stage_order_follows_the_pipeline() {
    let t = SummaryTable::single(vec![
        eval("baseline", "sft", 0.3),
        eval("baseline", "rlvr", 0.4),
        eval("prism", "sft", 0.3),
        eval("prism", "warmup", 0.3),
        eval("prism", "align", 0.4),
        eval("prism", "rlvr", 0.5),
    ])
    .unwrap();
    let (stages, arms) = prism::report::plots::stage_and_arm_order(&t);
    assert_eq!(stages, ["sft", "warmup", "align", "rlvr"]);
    assert_eq!(arms, ["baseline", "prism"]);
}

/// Writes the example chart of the README, docs/report_accuracy_by_stage.png (run by hand:
/// `cargo test --test report_plots -- --ignored`).
#[test]
#[ignore]
fn write_docs_example() {
    let seed = |d: f64| {
        vec![
            eval("baseline", "sft", 0.30 + d),
            eval("baseline", "rlvr", 0.42 + d),
            eval("prism", "sft", 0.30 + d),
            eval("prism", "warmup", 0.31 + d),
            eval("prism", "align", 0.45 + d),
            eval("prism", "rlvr", 0.58 + d),
        ]
    };
    let table = aggregate_seeds(&[seed(0.0), seed(0.03), seed(-0.02)]).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report_accuracy_by_stage.png");
    accuracy_by_stage_chart(&path, &table, (800, 500)).unwrap();
}
