//! The SFT stage on the tiny synthetic task: assistant-only labels, loss and eval loss falling,
//! determinism, the frozen vision tower, non-finite step skipping, and the output checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prism::config::{PadSide, SftConfig};
use prism::data::ReadOptions;
use prism::data::sharegpt::{self, Message, Role, ShareGptRecord};
use prism::models::Qwen3Vl;
use prism::models::processor::Processor;
use prism::stages::sft::{
    IGNORE_INDEX, OPTIMIZER_STATE, TRAINER_STATE, VISION_PREFIX, collate_examples, encode_example,
    run_sft, summed_token_loss,
};
use prism::stages::{StageContext, StageError};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Synthetic data and a tiny random policy, built once per test binary.
type Setup = common::TinySetup;

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[data.synth]
train = 16
eval = 4
seed = 7
difficulties = [1]
perception_error_rate = 0.0
reasoning_error_rate = 0.0
[policy.tiny]
[[stages]]
kind = "sft"
"#;
        common::tiny_setup(text, "init")
    })
}

fn ctx(name: &str) -> StageContext {
    let s = setup();
    StageContext::new(s.root.join("runs"), name, &s.data, 3)
}

fn sft(steps: u64) -> SftConfig {
    SftConfig {
        steps,
        batch_size: 4,
        lr: 3e-3,
        warmup_ratio: 0.1,
        max_length: 1024,
        ..Default::default()
    }
}

/// The records of one stage in the run's `metrics.jsonl`, each flattened to
/// `{stage, arm, step, <metric>: value, ...}`.
fn metrics(stage_dir: &Path) -> Vec<Value> {
    let stage = stage_dir.file_name().unwrap().to_str().unwrap();
    let log = stage_dir.parent().unwrap().join("metrics.jsonl");
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["stage"] == stage)
        .map(|mut r| {
            let metrics = r["metrics"].take();
            let obj = r.as_object_mut().unwrap();
            obj.remove("metrics");
            obj.extend(metrics.as_object().unwrap().clone());
            r
        })
        .collect()
}

fn params(dir: &Path) -> BTreeMap<String, Tensor> {
    Qwen3Vl::load(dir, Device::Cpu, Kind::Float)
        .unwrap()
        .named_parameters()
}

fn records() -> (Vec<ShareGptRecord>, PathBuf) {
    let path = setup().data.train.clone();
    let r = sharegpt::read(&path, ReadOptions::default())
        .unwrap()
        .records;
    (r, path)
}

fn image(path: &Path, rec: &ShareGptRecord) -> Vec<image::RgbImage> {
    rec.images
        .iter()
        .map(|p| {
            image::open(path.parent().unwrap().join(p))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

fn labelled(ex: &prism::stages::sft::SftExample) -> Vec<u32> {
    ex.labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect()
}

#[test]
fn labels_are_the_assistant_reply_and_its_im_end() {
    let proc = Processor::from_dir(&setup().init).unwrap();
    let (recs, path) = records();
    for (row, rec) in recs.iter().take(3).enumerate() {
        let ex = encode_example(&proc, rec, &image(&path, rec), row).unwrap();
        assert_eq!(ex.input_ids.len(), ex.labels.len());
        let text = proc.tokenizer.decode(&labelled(&ex), false).unwrap();
        assert_eq!(text, format!("{}<|im_end|>", rec.target().unwrap()));
        // labelled tokens are one contiguous run equal to the inputs there
        let first = ex.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
        let n = ex.num_labels();
        for (i, (&id, &l)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
            if (first..first + n).contains(&i) {
                assert_eq!(l, i64::from(id));
            } else {
                assert_eq!(l, IGNORE_INDEX);
            }
        }
        // everything before is the system + user turns and the assistant header
        let prompt = proc
            .tokenizer
            .decode(&ex.input_ids[..first], false)
            .unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt:?}");
        // one image expanded into its tokens
        assert_eq!(ex.images.len(), 1);
        let pad = proc.tokenizer.special().image_pad;
        let n_pad = ex.input_ids.iter().filter(|&&t| t == pad).count();
        let [t, h, w] = ex.images[0].grid_thw;
        assert_eq!(n_pad as u32, t * h * w / 4);
    }
}

#[test]
fn every_assistant_turn_of_a_multi_turn_conversation_is_labelled() {
    let proc = Processor::from_dir(&setup().init).unwrap();
    let msg = |role, content: &str| Message {
        role,
        content: content.to_string(),
    };
    let rec = ShareGptRecord {
        messages: vec![
            msg(Role::System, "Be brief."),
            msg(Role::User, "How many circles?"),
            msg(Role::Assistant, "Three."),
            msg(Role::User, "And squares?"),
            msg(Role::Assistant, "Two squares."),
        ],
        images: vec![],
    };
    let ex = encode_example(&proc, &rec, &[], 0).unwrap();
    let text = proc.tokenizer.decode(&labelled(&ex), false).unwrap();
    assert_eq!(text, "Three.<|im_end|>Two squares.<|im_end|>");
    // a wrong image count is an error, not a panic
    let e = encode_example(&proc, &rec, &[image::RgbImage::new(32, 32)], 0).unwrap_err();
    assert!(e.contains("image"), "{e}");
}

#[test]
fn left_and_right_padding_give_the_same_loss() {
    let proc = Processor::from_dir(&setup().init).unwrap();
    let (recs, path) = records();
    let ex: Vec<_> = recs
        .iter()
        .take(3)
        .enumerate()
        .map(|(i, r)| encode_example(&proc, r, &image(&path, r), i).unwrap())
        .collect();
    let model = Qwen3Vl::load(&setup().init, Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    let mut losses = Vec::new();
    for side in [PadSide::Right, PadSide::Left] {
        let b = collate_examples(&proc, &ex, side, 1024, Device::Cpu, Kind::Float).unwrap();
        let expected: i64 = ex.iter().map(|e| e.num_labels() as i64).sum();
        assert_eq!(b.num_labels, expected);
        let logits = model.forward(&b.inputs, None).unwrap();
        let l = summed_token_loss(&logits, &b.labels)
            .unwrap()
            .double_value(&[]);
        losses.push(l / b.num_labels as f64);
    }
    assert!((losses[0] - losses[1]).abs() < 1e-4, "{losses:?}");
    // random init: the loss is about ln(vocab)
    let v = proc.tokenizer.vocab_size() as f64;
    assert!((losses[0] - v.ln()).abs() < 1.0, "{losses:?} vs ln {v}");
    // a too-long conversation is an error naming the limit
    let e = collate_examples(&proc, &ex, PadSide::Right, 8, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(e.contains("maximum of 8"), "{e}");
}

#[test]
fn summed_loss_matches_a_hand_computed_cross_entropy() {
    // logits [1, 3, 2]; labels predict positions 1 and 2, position 2 ignored
    let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0]).view([1, 3, 2]);
    let labels = Tensor::from_slice(&[IGNORE_INDEX, 1, IGNORE_INDEX]).view([1, 3]);
    let l = summed_token_loss(&logits, &labels)
        .unwrap()
        .double_value(&[]);
    // position 0 logits (0, 1), target 1: -log(e/(1+e))
    let want = (1.0f64 + 1f64.exp()).ln() - 1.0;
    assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    let bad = Tensor::zeros([1, 2], (Kind::Int64, Device::Cpu));
    assert!(summed_token_loss(&logits, &bad).is_err());
}

#[test]
fn training_loss_and_eval_loss_fall_and_the_checkpoint_is_complete() {
    let c = ctx("fall");
    let cfg = SftConfig {
        eval_every: 10,
        ..sft(30)
    };
    let summary = run_sft(&cfg, &c, &setup().init).unwrap();
    let m = metrics(&c.stage_dir());
    let train: Vec<f64> = m
        .iter()
        .filter_map(|r| r.get("loss").and_then(Value::as_f64))
        .collect();
    assert_eq!(train.len(), 30);
    let first = train[..5].iter().sum::<f64>() / 5.0;
    let last = train[25..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "train loss {first} → {last}");
    let evals: Vec<f64> = m
        .iter()
        .filter_map(|r| r.get("eval_loss").and_then(Value::as_f64))
        .collect();
    assert_eq!(evals.len(), 4, "step 0, 10, 20, 30");
    assert!(evals[3] < 0.8 * evals[0], "eval loss {evals:?}");
    assert_eq!(summary.first_eval_loss, Some(evals[0]));
    assert_eq!(summary.skipped_steps, 0);
    for r in m.iter().skip(1) {
        for k in [
            "stage",
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens",
            "tokens_per_s",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert!(r["grad_norm"].as_f64().unwrap() > 0.0);
    }
    // warm-up from 0, then cosine decay to near 0
    assert_eq!(m[1]["lr"].as_f64(), Some(0.0));
    let peak = m
        .iter()
        .filter_map(|r| r["lr"].as_f64())
        .fold(0.0, f64::max);
    assert!((peak - 3e-3).abs() < 1e-9);
    assert!(m[30]["lr"].as_f64().unwrap() < 1e-4);

    // the output is an HF checkpoint with the processor files and the trainer state
    let out = &summary.output;
    assert_eq!(out, &c.stage_dir().join("final"));
    Processor::from_dir(out).unwrap();
    let trained = params(out);
    let init = params(&setup().init);
    assert_eq!(
        trained.keys().collect::<Vec<_>>(),
        init.keys().collect::<Vec<_>>()
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(TRAINER_STATE)).unwrap()).unwrap();
    assert_eq!(state["step"], 30);
    assert_eq!(state["optimizer_steps"], 30);
    let opt = Tensor::read_safetensors(out.join(OPTIMIZER_STATE)).unwrap();
    let names: Vec<&str> = opt.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"adamw.step"));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("exp_avg/")).count(),
        init.len()
    );
    // the stage can start from its own output
    let again = run_sft(&sft(1), &ctx("again"), out).unwrap();
    assert!(again.output.join("model.safetensors").exists());
}

#[test]
fn same_seed_gives_the_same_final_loss() {
    let a = run_sft(&sft(5), &ctx("det-a"), &setup().init).unwrap();
    let b = run_sft(&sft(5), &ctx("det-b"), &setup().init).unwrap();
    let last = |name: &str| {
        metrics(&ctx(name).stage_dir())
            .last()
            .unwrap()
            .get("loss")
            .and_then(Value::as_f64)
            .unwrap()
    };
    assert_eq!(last("det-a"), last("det-b"));
    assert_eq!(a.last_loss, b.last_loss);
    let (pa, pb) = (params(&a.output), params(&b.output));
    for (k, t) in &pa {
        assert!(t.equal(&pb[k]), "{k} differs between identical runs");
    }
}

#[test]
fn frozen_vision_tower_stays_put_while_the_rest_trains() {
    let cfg = SftConfig {
        freeze_vision: true,
        ..sft(2)
    };
    let s = run_sft(&cfg, &ctx("frozen"), &setup().init).unwrap();
    let (before, after) = (params(&setup().init), params(&s.output));
    let (mut vision, mut text_changed) = (0, 0);
    for (k, t) in &before {
        if k.starts_with(VISION_PREFIX) {
            vision += 1;
            assert!(t.equal(&after[k]), "vision parameter {k} changed");
        } else if !t.equal(&after[k]) {
            text_changed += 1;
        }
    }
    assert!(vision > 0);
    assert!(
        text_changed > 10,
        "only {text_changed} non-vision tensors changed"
    );
    // no optimizer state for the frozen tower
    let opt = Tensor::read_safetensors(s.output.join(OPTIMIZER_STATE)).unwrap();
    assert!(!opt.iter().any(|(n, _)| n.contains(VISION_PREFIX)));
}

#[test]
fn non_finite_steps_are_skipped_counted_and_bounded() {
    let cfg = SftConfig {
        inject_nan_steps: vec![2, 3],
        ..sft(4)
    };
    let c = ctx("nan");
    let s = run_sft(&cfg, &c, &setup().init).unwrap();
    assert_eq!(s.skipped_steps, 2);
    let m = metrics(&c.stage_dir());
    let skipped: Vec<f64> = m.iter().map(|r| r["skipped"].as_f64().unwrap()).collect();
    assert_eq!(skipped, [0.0, 1.0, 1.0, 0.0]);
    assert_eq!(m[3]["skipped_total"].as_f64(), Some(2.0));
    assert!(m[1]["loss"].is_null(), "NaN is logged as null: {}", m[1]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(s.output.join(TRAINER_STATE)).unwrap())
            .unwrap();
    assert_eq!(state["optimizer_steps"], 2);
    assert_eq!(state["skipped_steps"], 2);
    // the weights stay finite
    for (k, t) in params(&s.output) {
        assert!(prism::algo::numerics::is_finite(&t).unwrap(), "{k}");
    }

    // too many in a row stops the stage with an error
    let cfg = SftConfig {
        inject_nan_steps: vec![1, 2, 3],
        max_bad_steps_in_row: 2,
        ..sft(5)
    };
    match run_sft(&cfg, &ctx("nan-stop"), &setup().init) {
        Err(StageError::NonFinite {
            step,
            in_row,
            total,
            ..
        }) => assert_eq!((step, in_row, total), (2, 2, 2)),
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn a_broken_train_file_is_named() {
    let dir = setup().root.join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.jsonl");
    std::fs::write(&f, "{\"messages\": 3}\n").unwrap();
    let cfg = SftConfig {
        train_file: Some(f.clone()),
        ..sft(1)
    };
    let e = run_sft(&cfg, &ctx("broken"), &setup().init)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.jsonl") && e.contains("line 1"), "{e}");
}

#[test]
fn bfloat16_training_keeps_bf16_weights_and_finite_losses() {
    let mut c = ctx("bf16");
    c.kind = Kind::BFloat16;
    let s = run_sft(&sft(3), &c, &setup().init).unwrap();
    assert_eq!(s.skipped_steps, 0);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(s.output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16", "{cfg}");
    let m = Qwen3Vl::load(&s.output, Device::Cpu, Kind::BFloat16).unwrap();
    assert!(
        m.named_parameters()
            .values()
            .all(|t| t.kind() == Kind::BFloat16)
    );
    // fp32 master copies are part of the optimizer state
    let opt = Tensor::read_safetensors(s.output.join(OPTIMIZER_STATE)).unwrap();
    assert!(opt.iter().any(|(n, _)| n.starts_with("master/")));
    for r in metrics(&c.stage_dir()) {
        assert!(r["loss"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run() {
    // 16 records, batch 4 × accum 2: steps 3-4 read the second epoch's (reshuffled) order
    let base = SftConfig {
        grad_accum: 2,
        save_every: 2,
        ..sft(4)
    };
    let straight = run_sft(&base, &ctx("straight"), &setup().init).unwrap();
    let ckpt = ctx("straight").stage_dir().join("checkpoint-2");
    assert!(ckpt.join(TRAINER_STATE).exists());
    assert!(
        !ctx("straight").stage_dir().join("checkpoint-4").exists(),
        "final only"
    );

    // the resumed stage writes into another folder so the two runs can be compared
    let c = ctx("resumed");
    std::fs::create_dir_all(c.stage_dir()).unwrap();
    let resumed_cfg = SftConfig {
        resume_from: Some(ckpt.clone()),
        ..base.clone()
    };
    let resumed = run_sft(&resumed_cfg, &c, &setup().init).unwrap();
    let (a, b) = (params(&straight.output), params(&resumed.output));
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k} differs after resuming");
    }
    let losses = |name: &str| -> Vec<f64> {
        metrics(&ctx(name).stage_dir())
            .iter()
            .filter_map(|r| r["loss"].as_f64())
            .collect()
    };
    assert_eq!(losses("straight")[2..], losses("resumed")[..]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.output.join(TRAINER_STATE)).unwrap())
            .unwrap();
    assert_eq!(state["optimizer_steps"], 4);
    assert_eq!(state["position"]["epoch"], 1);
    assert_eq!(state["position"]["position"], 16);

    // resuming past the end is an error naming the state file
    let done = SftConfig {
        resume_from: Some(straight.output.clone()),
        ..base
    };
    let e = run_sft(&done, &ctx("done"), &setup().init)
        .unwrap_err()
        .to_string();
    assert!(e.contains(TRAINER_STATE) && e.contains("step 4"), "{e}");
}
