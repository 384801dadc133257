//! `prism eval` on the synthetic task: a small dataset from `write_dataset`, a demo tokenizer
//! trained on its text and a random tiny Qwen3-VL sized to that tokenizer.
//!
//! - Scoring and classification (no generation): the teacher demonstrations score perfectly;
//!   the public demonstrations, whose injected mistakes are labelled by the data module, give
//!   exactly those labels and hence those rates.
//! - Generation: a random model is evaluated through the library and through the binary; the
//!   counts are consistent and a random model is never format-valid nor accurate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use prism::data::ReadOptions;
use prism::data::rl_parquet::{self, RlRecord};
use prism::data::synth::{
    ErrorLabel, PublicNoise, SYSTEM_INSTRUCTION, SynthConfig, generate_items, public_demo_for,
    write_dataset,
};
use prism::models::image_processor::ImageProcessorConfig;
use prism::models::processor::Processor;
use prism::models::tokenizer_train::{TokenizerTrainOptions, train_demo_tokenizer};
use prism::models::{Heads, Qwen3Vl, Qwen3VlConfig};
use prism::stages::eval::{
    EvalOptions, EvalReport, ItemResult, aggregate, evaluate, render_table, score_response,
};
use tch::{Device, Kind};

const NOISE: PublicNoise = PublicNoise {
    perception_error_rate: 0.3,
    reasoning_error_rate: 0.3,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    cfg: SynthConfig,
    data: PathBuf,
    model: PathBuf,
}

impl Fixture {
    fn train_parquet(&self) -> PathBuf {
        self.data.join("rl_train.parquet")
    }
    fn eval_parquet(&self) -> PathBuf {
        self.data.join("rl_eval.parquet")
    }
}

fn read(path: &Path) -> Vec<RlRecord> {
    rl_parquet::read(path, ReadOptions::default())
        .unwrap()
        .records
}

/// Dataset + tokenizer + random tiny model, built once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let cfg = SynthConfig {
            train: 40,
            eval: 6,
            seed: 11,
            difficulties: vec![1, 2, 3],
            noise: NOISE,
        };
        write_dataset(&data, &cfg).unwrap();

        // A tokenizer covering the task's text.
        let mut corpus = vec![SYSTEM_INSTRUCTION.to_string()];
        for r in read(&data.join("rl_train.parquet")) {
            corpus.push(r.prompt.clone());
            corpus.push(r.teacher_response.clone().unwrap());
        }
        let model = tmp.path().join("model");
        let image_cfg = ImageProcessorConfig {
            min_pixels: 1024,
            max_pixels: 65536,
            ..Default::default()
        };
        let opts = TokenizerTrainOptions {
            vocab_size: 400,
            ..Default::default()
        };
        let tok = train_demo_tokenizer(&corpus, &model, &opts, &image_cfg).unwrap();

        // The tiny fixture's architecture, with the vocabulary and ids of this tokenizer.
        let fixture_dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/tiny-qwen3-vl");
        let mut mc = Qwen3VlConfig::from_dir(&fixture_dir).unwrap();
        let sp = *tok.special();
        mc.text_config.vocab_size = tok.vocab_size() as i64;
        mc.image_token_id = i64::from(sp.image_pad);
        mc.video_token_id = i64::from(sp.video_pad);
        mc.vision_start_token_id = i64::from(sp.vision_start);
        mc.vision_end_token_id = i64::from(sp.vision_end);
        let m = Qwen3Vl::new_random(&mc, &Heads::lm(), Device::Cpu, Kind::Float, 5).unwrap();
        m.save(&model).unwrap();
        Fixture {
            _tmp: tmp,
            cfg,
            data,
            model,
        }
    })
}

fn score_all(records: &[RlRecord], responses: &[String]) -> Vec<ItemResult> {
    records
        .iter()
        .zip(responses)
        .enumerate()
        .map(|(i, (r, resp))| score_response(r, i, resp, 0, false))
        .collect()
}

#[test]
fn teacher_demonstrations_score_perfectly() {
    let f = fixture();
    for path in [f.train_parquet(), f.eval_parquet()] {
        let records = read(&path);
        let responses: Vec<String> = records
            .iter()
            .map(|r| r.teacher_response.clone().unwrap())
            .collect();
        let items = score_all(&records, &responses);
        let report = aggregate(&items);
        assert_eq!(report.n, records.len());
        assert_eq!(report.n_classified, records.len());
        assert_eq!(report.accuracy, 1.0, "{items:#?}");
        assert_eq!(report.accuracy_ungated, 1.0);
        assert_eq!(report.format_valid_rate, 1.0);
        assert_eq!(report.mean_reward, 1.0);
        assert_eq!(report.perception_error_rate, Some(0.0), "{items:#?}");
        assert_eq!(report.reasoning_error_rate, Some(0.0));
        assert!(!report.by_difficulty.is_empty());
        assert_eq!(
            report.by_difficulty.values().map(|g| g.n).sum::<usize>(),
            report.n
        );
        for g in report.by_difficulty.values() {
            assert_eq!((g.accuracy, g.format_valid_rate), (1.0, 1.0));
            assert_eq!(g.perception_error_rate, Some(0.0));
        }
    }
}

#[test]
fn injected_public_mistakes_give_their_labels_and_rates() {
    let f = fixture();
    let records = read(&f.train_parquet());
    let (train, _) = generate_items(&f.cfg).unwrap();
    assert_eq!(train.len(), records.len());
    let mut responses = Vec::new();
    let mut labels = Vec::new();
    for (item, r) in train.iter().zip(&records) {
        assert_eq!(
            Some(&item.id),
            r.id.as_ref(),
            "parquet rows follow item order"
        );
        let demo = public_demo_for(item, f.cfg.seed, NOISE).unwrap();
        responses.push(demo.response());
        labels.push(demo.label);
    }
    let items = score_all(&records, &responses);
    for ((it, label), resp) in items.iter().zip(&labels).zip(&responses) {
        assert_eq!(it.error, Some(*label), "{resp}\n{:?}", it.problems);
        assert!(it.format_valid, "public demos are well-formed: {resp}");
        match label {
            ErrorLabel::None => assert!(it.correct),
            ErrorLabel::Reasoning => assert!(!it.correct),
            ErrorLabel::Perception => {}
        }
    }
    let n = labels.len() as f64;
    let count = |l: ErrorLabel| labels.iter().filter(|&&x| x == l).count() as f64;
    let report = aggregate(&items);
    assert!(
        count(ErrorLabel::Perception) > 0.0 && count(ErrorLabel::Reasoning) > 0.0,
        "the noise rates must produce both kinds of mistake"
    );
    assert_eq!(
        report.perception_error_rate,
        Some(count(ErrorLabel::Perception) / n)
    );
    assert_eq!(
        report.reasoning_error_rate,
        Some(count(ErrorLabel::Reasoning) / n)
    );
    assert_eq!(report.format_valid_rate, 1.0);
    assert!(report.accuracy <= 1.0 - count(ErrorLabel::Reasoning) / n + 1e-12);

    // A record without a scene is scored but not classified.
    let mut bare = records[0].clone();
    bare.scene = None;
    let it = score_response(&bare, 0, &responses[0], 0, false);
    assert_eq!(it.error, None);
    let r = aggregate(&[it]);
    assert_eq!((r.n, r.n_classified, r.perception_error_rate), (1, 0, None));

    // Malformed responses: not format-valid; no caption means a perception error.
    let it = score_response(&records[0], 0, "just 3", 2, true);
    assert!(!it.format_valid && !it.correct);
    assert_eq!(it.error, Some(ErrorLabel::Perception));
}

fn check_consistent(report: &EvalReport, n: usize, max_new: usize) {
    assert_eq!(report.n, n);
    assert_eq!(report.n_classified, n, "every synth row has a scene");
    for rate in [
        report.accuracy,
        report.accuracy_ungated,
        report.format_valid_rate,
        report.truncated_rate,
        report.perception_error_rate.unwrap(),
        report.reasoning_error_rate.unwrap(),
    ] {
        assert!((0.0..=1.0).contains(&rate), "{report:?}");
    }
    assert!(
        report.perception_error_rate.unwrap() + report.reasoning_error_rate.unwrap() <= 1.0 + 1e-12
    );
    assert!(report.mean_response_tokens <= max_new as f64);
    // A random model writes no well-formed three-block response, so nothing is accurate.
    assert_eq!(report.format_valid_rate, 0.0, "{report:?}");
    assert_eq!(report.accuracy, 0.0);
    assert_eq!(report.mean_reward, 0.0);
}

#[test]
fn random_model_evaluates_with_consistent_counts() {
    let f = fixture();
    let records = read(&f.eval_parquet());
    let model = Qwen3Vl::load(&f.model, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_dir(&f.model).unwrap();
    let opts = EvalOptions {
        batch_size: 2,
        limit: Some(5),
        max_new_tokens: 10,
        ..EvalOptions::default()
    };
    let ev = evaluate(&model, &processor, &records, &f.eval_parquet(), &opts).unwrap();
    check_consistent(&ev.report, 5, 10);
    assert_eq!(ev.items.len(), 5);
    for (i, it) in ev.items.iter().enumerate() {
        assert_eq!(it.row, i);
        assert_eq!(it.id, records[i].id);
        assert!(it.response_tokens <= 10);
        assert_eq!(it.truncated, it.response_tokens == 10);
    }
    assert_eq!(ev.report, aggregate(&ev.items));
    // No caption block in a random response: all perception errors.
    assert_eq!(ev.report.perception_error_rate, Some(1.0));
    let table = render_table(&ev.report);
    assert!(table.contains("format-valid rate") && table.contains("0.0000"));

    // A limit beyond the data evaluates everything; zero records is an error.
    let opts = EvalOptions {
        limit: Some(100),
        max_new_tokens: 2,
        batch_size: 8,
        ..EvalOptions::default()
    };
    let ev = evaluate(&model, &processor, &records, &f.eval_parquet(), &opts).unwrap();
    assert_eq!(ev.report.n, records.len());
    let e = evaluate(&model, &processor, &[], &f.eval_parquet(), &opts).unwrap_err();
    assert!(e.to_string().contains("no records"), "{e}");
}

#[test]
fn cli_writes_table_json_and_responses() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("report.json");
    let responses = tmp.path().join("responses.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "eval",
            "--model",
            f.model.to_str().unwrap(),
            "--data",
            f.eval_parquet().to_str().unwrap(),
            "--limit",
            "3",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "6",
            "--json-out",
            json.to_str().unwrap(),
            "--responses-out",
            responses.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("perception-error rate"), "{stdout}");
    let last: EvalReport = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let file: EvalReport = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(last, file);
    check_consistent(&file, 3, 6);
    let lines: Vec<ItemResult> = std::fs::read_to_string(&responses)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(aggregate(&lines), file);

    // A missing data file is named in the error.
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "eval",
            "--model",
            f.model.to_str().unwrap(),
            "--data",
            tmp.path().join("missing.parquet").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("missing.parquet"), "{err}");
}

#[test]
fn greedy_responses_do_not_depend_on_the_batch_size() {
    // Left padding must not change a row's greedy continuation.
    let f = fixture();
    let records = read(&f.eval_parquet());
    let model = Qwen3Vl::load(&f.model, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_dir(&f.model).unwrap();
    let run = |batch_size| {
        let opts = EvalOptions {
            batch_size,
            limit: Some(4),
            max_new_tokens: 6,
            ..EvalOptions::default()
        };
        evaluate(&model, &processor, &records, &f.eval_parquet(), &opts)
            .unwrap()
            .items
    };
    let one = run(1);
    let four = run(4);
    for (a, b) in one.iter().zip(&four) {
        assert_eq!(a.response, b.response, "row {}", a.row);
        assert_eq!(a.response_tokens, b.response_tokens);
    }
}

#[test]
fn a_bad_image_names_the_file_row_and_id() {
    let f = fixture();
    let mut records = read(&f.eval_parquet());
    records[1].images[0].bytes = Some(b"not an image".to_vec());
    records[1].images[0].path = None;
    let model = Qwen3Vl::load(&f.model, Device::Cpu, Kind::Float).unwrap();
    let processor = Processor::from_dir(&f.model).unwrap();
    let opts = EvalOptions {
        batch_size: 1,
        max_new_tokens: 1,
        ..EvalOptions::default()
    };
    let e = evaluate(&model, &processor, &records, &f.eval_parquet(), &opts)
        .unwrap_err()
        .to_string();
    let id = records[1].id.clone().unwrap();
    assert!(
        e.contains("rl_eval.parquet") && e.contains("row 1") && e.contains(&id),
        "{e}"
    );
    // Bad options are refused before any work.
    let opts = EvalOptions {
        batch_size: 0,
        ..EvalOptions::default()
    };
    let e = evaluate(&model, &processor, &records, &f.eval_parquet(), &opts).unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}
