//! The results table: golden Markdown and terminal text, and the multi-seed mean ± sample std
//! against numbers worked out by hand.

use prism::report::table::rows_from_log;
use prism::report::{EvalRow, MeanStd, MetricRecord, SummaryTable, aggregate_seeds};

fn row(arm: &str, stage: &str, n: u64, acc: f64, fv: f64, pe: f64, re: f64) -> EvalRow {
    EvalRow {
        arm: arm.into(),
        stage: stage.into(),
        n,
        accuracy: acc,
        format_valid_rate: fv,
        perception_error_rate: pe,
        reasoning_error_rate: re,
    }
}

#[test]
fn single_seed_markdown_matches_golden() {
    let t = SummaryTable::single(vec![
        row("prism", "sft", 200, 0.41, 0.9, 0.3, 0.29),
        row("prism", "align", 200, 0.5556, 0.955, 0.2, 0.2446),
        row("baseline", "rlvr", 200, 0.48, 1.0, 0.26, 0.26),
    ])
    .unwrap();
    let golden = "\
| arm | stage | seeds | n | accuracy | format-valid | perception err | reasoning err |
|---|---|--:|--:|--:|--:|--:|--:|
| prism | sft | 1 | 200 | 0.410 | 0.900 | 0.300 | 0.290 |
| prism | align | 1 | 200 | 0.556 | 0.955 | 0.200 | 0.245 |
| baseline | rlvr | 1 | 200 | 0.480 | 1.000 | 0.260 | 0.260 |

1 seed; rates are fractions of the evaluation set.
";
    assert_eq!(t.to_markdown(), golden);
}

#[test]
fn three_seed_mean_and_sample_std_by_hand() {
    // accuracy of prism/rlvr over seeds: 0.5, 0.6, 0.7 -> mean 0.6,
    // sample var = (0.01 + 0 + 0.01) / 2 = 0.01 -> std 0.1 (population std would be 0.0816).
    // format-valid: 0.9, 0.9, 0.9 -> 0.9 ± 0. n: 100, 100, 130 -> 110 ± 17.32.
    // baseline/rlvr appears in seeds 0 and 1 only: accuracy 0.4, 0.5 -> 0.45 ± 0.0707.
    let seeds = vec![
        vec![
            row("prism", "rlvr", 100, 0.5, 0.9, 0.2, 0.3),
            row("baseline", "rlvr", 100, 0.4, 0.8, 0.3, 0.3),
        ],
        vec![
            row("prism", "rlvr", 100, 0.6, 0.9, 0.1, 0.3),
            row("baseline", "rlvr", 100, 0.5, 0.8, 0.2, 0.3),
        ],
        vec![row("prism", "rlvr", 130, 0.7, 0.9, 0.0, 0.3)],
    ];
    let t = aggregate_seeds(&seeds).unwrap();
    assert_eq!(t.seeds, 3);
    let p = &t.rows[0];
    assert_eq!(
        (p.arm.as_str(), p.stage.as_str(), p.seeds),
        ("prism", "rlvr", 3)
    );
    assert!((p.accuracy.mean - 0.6).abs() < 1e-12);
    assert!((p.accuracy.std.unwrap() - 0.1).abs() < 1e-12);
    assert!((p.perception_error_rate.mean - 0.1).abs() < 1e-12);
    assert!((p.perception_error_rate.std.unwrap() - 0.1).abs() < 1e-12);
    assert!(p.format_valid_rate.std.unwrap().abs() < 1e-12);
    assert!((p.n.mean - 110.0).abs() < 1e-12);
    assert!((p.n.std.unwrap() - 300f64.sqrt()).abs() < 1e-9);
    let b = &t.rows[1];
    assert_eq!(b.seeds, 2);
    assert!((b.accuracy.mean - 0.45).abs() < 1e-12);
    assert!((b.accuracy.std.unwrap() - 0.005f64.sqrt()).abs() < 1e-12);

    let md = t.to_markdown();
    assert!(
        md.contains("| prism | rlvr | 3 | 110 ± 17 | 0.600 ± 0.100 | 0.900 ± 0.000 | 0.100 ± 0.100 | 0.300 ± 0.000 |"),
        "{md}"
    );
    assert!(
        md.contains("| baseline | rlvr | 2 | 100 ± 0 | 0.450 ± 0.071 |"),
        "{md}"
    );
    assert!(
        md.contains("3 seeds; cells are mean ± sample std (n − 1)"),
        "{md}"
    );
}

#[test]
fn mean_std_of_one_value_has_no_std() {
    assert_eq!(
        MeanStd::of(&[0.25]),
        MeanStd {
            mean: 0.25,
            std: None
        }
    );
    let m = MeanStd::of(&[1.0, 2.0, 3.0, 4.0]);
    // sample var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert!((m.mean - 2.5).abs() < 1e-12);
    assert!((m.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
}

#[test]
fn terminal_table_is_fixed_width_and_aligned() {
    let t = aggregate_seeds(&[
        vec![row("prism", "align", 50, 0.5, 1.0, 0.25, 0.25)],
        vec![row("prism", "align", 50, 0.7, 1.0, 0.15, 0.15)],
    ])
    .unwrap();
    let text = t.to_terminal();
    // Every table line is as wide as the rule under the header (`±` counts as one column).
    let widths: Vec<usize> = text.lines().take(3).map(|l| l.chars().count()).collect();
    assert_eq!(widths, vec![88, 88, 88], "{text}");
    let golden = "\
arm    stage  seeds       n       accuracy   format-valid  perception err  reasoning err
----------------------------------------------------------------------------------------
prism  align      2  50 ± 0  0.600 ± 0.141  1.000 ± 0.000   0.200 ± 0.071  0.200 ± 0.071
2 seeds; cells are mean ± sample std (n − 1) over the seeds that have the row; rates are fractions of the evaluation set.
";
    assert_eq!(text, golden);
}

#[test]
fn bad_inputs_are_errors_naming_the_row() {
    let err = aggregate_seeds(&[vec![row("prism", "sft", 1, 1.5, 1.0, 0.0, 0.0)]]).unwrap_err();
    assert!(
        err.to_string()
            .contains("accuracy of arm \"prism\" stage \"sft\" is 1.5"),
        "{err}"
    );
    let err = aggregate_seeds(&[vec![row("p", "s", 1, f64::NAN, 1.0, 0.0, 0.0)]]).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    let dup = vec![
        row("p", "s", 1, 0.5, 1.0, 0.0, 0.0),
        row("p", "s", 1, 0.5, 1.0, 0.0, 0.0),
    ];
    assert!(
        aggregate_seeds(&[dup])
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert!(aggregate_seeds(&[]).is_err());
}

#[test]
fn markdown_escapes_pipes_in_names() {
    let t = SummaryTable::single(vec![row("a|b", "s", 1, 0.5, 0.5, 0.5, 0.5)]).unwrap();
    assert!(t.to_markdown().contains("| a\\|b | s |"));
}

#[test]
fn rows_from_log_take_the_last_eval_record_per_arm_and_stage() {
    let m = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let eval = |acc: f64| {
        m(&[
            ("accuracy", acc),
            ("format_valid_rate", 1.0),
            ("perception_error_rate", 0.1),
            ("reasoning_error_rate", 0.2),
            ("n", 64.0),
        ])
    };
    let r = |stage: &str, arm: &str, step, metrics| MetricRecord {
        stage: stage.into(),
        arm: arm.into(),
        step,
        wall_time: 0.0,
        metrics,
    };
    let records = vec![
        r("sft", "prism", 1, m(&[("loss", 1.0)])),
        r("sft", "prism", 2, eval(0.3)),
        r("rlvr", "baseline", 2, eval(0.4)),
        r("sft", "prism", 3, eval(0.35)),
    ];
    let rows = rows_from_log(&records);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].arm.as_str(), rows[0].stage.as_str()),
        ("prism", "sft")
    );
    assert_eq!(rows[0].accuracy, 0.35);
    assert_eq!(rows[0].n, 64);
    assert_eq!(rows[1].accuracy, 0.4);
}

#[test]
fn markdown_is_written_atomically_and_concurrent_writers_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.md");
    let t = SummaryTable::single(vec![row("prism", "sft", 10, 0.5, 1.0, 0.0, 0.5)]).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| t.write_markdown(&path).unwrap());
        }
    });
    assert_eq!(std::fs::read_to_string(&path).unwrap(), t.to_markdown());
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "temporary files left behind");
    // A directory that does not exist is named in the error.
    let err = t
        .write_markdown(&dir.path().join("no/such/dir/results.md"))
        .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}
