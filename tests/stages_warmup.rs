//! The Qwen3-VL experts and the warm-up stage on the tiny synthetic task: scores are the value
//! head at the last valid token of context + segment, teacher and student segments are built
//! the same way, nothing is truncated at 512 tokens, a Bradley–Terry step lowers the loss,
//! snapshots carry the optimizer, the MoE path trains, non-finite steps are skipped, and the
//! warm-up stage writes its experts and raises held-out accuracy above chance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prism::actors::ScorerEngine;
use prism::actors::config::DeviceSpec;
use prism::actors::messages::{BtPair, ScoreItem, Segment};
use prism::config::{ExpertLayout, RunConfig};
use prism::data::ReadOptions;
use prism::data::warmup::{self, WarmupPair};
use prism::models::{ModelInputs, Qwen3Vl};
use prism::stages::expert::{
    ExpertOptions, PromptContexts, QwenScorer, TinyExpertOptions, build_tiny_expert, expert_dirs,
    scorer_factory,
};
use prism::stages::prompts::PromptStore;
use prism::stages::warmup::{WarmupPrompts, caption_pair, reasoning_pair, run_warmup};
use prism::stages::{StageContext, StageError};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

mod common;

/// Synthetic data, a tiny policy and a dense and a MoE tiny expert, built once per binary.
struct Setup {
    tiny: common::TinySetup,
    policy: PathBuf,
    dense: PathBuf,
    moe: PathBuf,
    pairs: Vec<WarmupPair>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[data.synth]
train = 64
eval = 0
seed = 11
difficulties = [1, 2]
perception_error_rate = 0.3
reasoning_error_rate = 0.3
[policy.tiny]
[[stages]]
kind = "sft"
"#;
        let tiny = common::tiny_setup(text, "policy");
        let (root, policy) = (tiny.root.clone(), tiny.init.clone());
        let dense = build_tiny_expert(
            &policy,
            &root.join("dense"),
            &TinyExpertOptions::default(),
            1,
        )
        .unwrap();
        let moe_opts = TinyExpertOptions {
            num_experts: 4,
            top_k: 2,
            ..TinyExpertOptions::default()
        };
        let moe = build_tiny_expert(&policy, &root.join("moe"), &moe_opts, 1).unwrap();
        let pairs = warmup::read(tiny.data.warmup.as_ref().unwrap(), ReadOptions::default())
            .unwrap()
            .records;
        Setup {
            tiny,
            policy,
            dense,
            moe,
            pairs,
        }
    })
}

fn contexts() -> Arc<WarmupPrompts> {
    let s = setup();
    Arc::new(WarmupPrompts::from_pairs(&s.pairs, s.tiny.data.warmup.as_ref().unwrap()).unwrap())
}

fn scorer(dir: &Path, opts: &ExpertOptions) -> QwenScorer {
    QwenScorer::load(dir, Device::Cpu, Kind::Float, opts, contexts()).unwrap()
}

fn seg(text: &str) -> Segment {
    Segment {
        tokens: Vec::new(),
        text: text.to_string(),
    }
}

fn item(uid: u64, text: &str) -> ScoreItem {
    ScoreItem {
        prompt_uid: uid,
        segment: seg(text),
    }
}

/// Value head at the last token of `context ⊕ segment ⊕ <|im_end|>`, one sequence, no batching.
fn direct_score(s: &QwenScorer, uid: u64, text: &str) -> f32 {
    let ctxs = contexts();
    let c = ctxs.context(uid).unwrap();
    let proc = s.processor();
    let enc = proc.encode_chat(c.messages, c.images, true, 0).unwrap();
    let mut ids: Vec<i64> = enc.input_ids.iter().map(|&i| i64::from(i)).collect();
    let body = prism::stages::expert::normalize_segment(text);
    ids.extend(
        proc.tokenizer
            .encode(body)
            .unwrap()
            .into_iter()
            .map(i64::from),
    );
    ids.push(i64::from(proc.tokenizer.token_to_id("<|im_end|>").unwrap()));
    let n = ids.len() as i64;
    let mut inputs = ModelInputs::text(
        Tensor::from_slice(&ids).view([1, n]),
        Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
    );
    let img = &enc.images[0];
    let pixels = Tensor::from_slice(&img.pixel_values).view([img.num_patches() as i64, -1]);
    let [t, h, w] = img.grid_thw;
    let grid = Tensor::from_slice(&[i64::from(t), i64::from(h), i64::from(w)]).view([1, 3]);
    inputs = inputs.with_images(pixels, grid);
    let _g = tch::no_grad_guard();
    let v = s.model().values(&inputs).unwrap();
    v.double_value(&[0, n - 1]) as f32
}

fn params(m: &Qwen3Vl) -> BTreeMap<String, Tensor> {
    m.named_parameters()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    a.iter()
        .map(|(k, t)| (t - &b[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

fn cap_pairs(lines: std::ops::Range<usize>) -> Vec<BtPair> {
    let s = setup();
    lines.map(|i| caption_pair(i as u64, &s.pairs[i])).collect()
}

fn bt_loss(scores: &[(f32, f32)]) -> f64 {
    scores
        .iter()
        .map(|(t, s)| -(1.0 / (1.0 + (-(f64::from(t - s))).exp())).ln())
        .sum::<f64>()
        / scores.len() as f64
}

#[test]
fn scores_are_the_value_head_at_the_last_token_of_context_and_segment() {
    let s = setup();
    let mut e = scorer(&s.dense, &ExpertOptions::default());
    // items of different lengths in one padded batch, both kinds of segment
    let items: Vec<ScoreItem> = (0..5)
        .flat_map(|i| {
            let p = &s.pairs[i];
            [
                item(i as u64, &p.teacher_caption),
                item(i as u64, &p.student_cot),
            ]
        })
        .collect();
    let got = e.score(&items).unwrap();
    assert_eq!(got.len(), items.len());
    for (it, g) in items.iter().zip(&got) {
        let want = direct_score(&e, it.prompt_uid, &it.segment.text);
        assert!(
            (want - g).abs() < 1e-4,
            "prompt {}: batched {g} vs direct {want}",
            it.prompt_uid
        );
    }
    // the context matters: the same segment under another prompt scores differently
    let a = e.score(&[item(0, &s.pairs[0].teacher_caption)]).unwrap()[0];
    let b = e.score(&[item(1, &s.pairs[0].teacher_caption)]).unwrap()[0];
    assert_ne!(a, b);
    // nothing to score is no work (a step whose rollouts are all badly formatted)
    assert!(e.score(&[]).unwrap().is_empty());
    assert!(e.bt_step(&[]).is_err());
    // an unknown uid is an error naming it
    let err = e.score(&[item(9999, "x")]).unwrap_err().to_string();
    assert!(err.contains("9999"), "{err}");
}

#[test]
fn teacher_and_student_segments_with_the_same_text_score_the_same() {
    let s = setup();
    let mut e = scorer(&s.dense, &ExpertOptions::default());
    let text = s.pairs[2].teacher_cot.clone();
    // a teacher column (plain text) and a student segment decoded with its end-of-turn token
    let student = Segment {
        tokens: vec![1, 2, 3],
        text: format!("\n{text}<|im_end|>"),
    };
    let got = e
        .score(&[
            item(2, &text),
            ScoreItem {
                prompt_uid: 2,
                segment: student.clone(),
            },
        ])
        .unwrap();
    assert_eq!(got[0], got[1]);
    let pair = BtPair {
        prompt_uid: 2,
        chosen: seg(&text),
        rejected: student,
    };
    let ps = e.pair_scores(&[pair]).unwrap();
    assert_eq!(ps[0].0, ps[0].1);
}

#[test]
fn long_segments_are_scored_whole_and_a_limit_is_an_error_naming_the_prompt() {
    let s = setup();
    let mut e = scorer(&s.dense, &ExpertOptions::default());
    let body: String = (0..120)
        .map(|i| format!("- object {i} is a small red circle.\n"))
        .collect();
    let long = format!("<caption>\n{body}</caption>");
    let tail = format!("<caption>\n{body}- one more blue square.\n</caption>");
    let n = e.segment_ids(&long).unwrap().len();
    assert!(n > 1000, "the segment has only {n} tokens");
    let got = e.score(&[item(3, &long), item(3, &tail)]).unwrap();
    let want = direct_score(&e, 3, &long);
    assert!((got[0] - want).abs() < 1e-4, "{} vs {want}", got[0]);
    // a change far beyond token 512 changes the score: nothing was cut
    assert_ne!(got[0], got[1]);

    let opts = ExpertOptions {
        max_tokens: Some(600),
        ..ExpertOptions::default()
    };
    let mut short = scorer(&s.dense, &opts);
    let err = short.score(&[item(3, &long)]).unwrap_err().to_string();
    assert!(err.contains("prompt 3") && err.contains("600"), "{err}");
}

#[test]
fn a_bt_step_lowers_the_loss_on_a_fixed_batch_and_reports_accuracy_before_the_update() {
    let s = setup();
    let opts = ExpertOptions {
        lr: 1e-3,
        micro_batch_pairs: 3,
        ..ExpertOptions::default()
    };
    let mut e = scorer(&s.dense, &opts);
    let mut pairs = cap_pairs(0..3);
    pairs.extend((3..6).map(|i| reasoning_pair(i as u64, &s.pairs[i])));
    let before = e.pair_scores(&pairs).unwrap();
    let first = e.bt_step(&pairs).unwrap();
    // reported loss/accuracy are those of the pre-update scores (+ the small L2 term)
    let acc0 = before.iter().filter(|(t, s)| t > s).count() as f32 / before.len() as f32;
    assert_eq!(first.accuracy, acc0);
    assert!((f64::from(first.loss) - bt_loss(&before)).abs() < 1e-3);
    for _ in 0..5 {
        let r = e.bt_step(&pairs).unwrap();
        assert!(r.loss.is_finite());
    }
    let after = e.pair_scores(&pairs).unwrap();
    assert!(
        bt_loss(&after) < bt_loss(&before) - 0.05,
        "loss {} → {}",
        bt_loss(&before),
        bt_loss(&after)
    );
}

#[test]
fn snapshot_and_restore_carry_weights_and_optimizer_moments() {
    let s = setup();
    let opts = ExpertOptions {
        lr: 1e-3,
        ..ExpertOptions::default()
    };
    let pairs = cap_pairs(0..4);
    let mut a = scorer(&s.dense, &opts);
    a.bt_step(&pairs).unwrap();
    let snap = a.snapshot(1).unwrap();
    assert!(snap.tensors.iter().any(|t| t.name.starts_with("optim/")));
    a.bt_step(&pairs).unwrap();
    let want = params(a.model());

    let mut b = scorer(&s.dense, &opts);
    b.restore(&snap).unwrap();
    assert_eq!(b.optimizer().step_count(), 1);
    b.bt_step(&pairs).unwrap();
    let d = max_diff(&want, &params(b.model()));
    assert!(d < 1e-6, "restored expert diverged by {d}");

    // without the moments the same step lands elsewhere
    let mut c = scorer(&s.dense, &opts);
    let weights_only = prism::actors::messages::WeightsSnapshot {
        version: 1,
        tensors: snap.tensors.clone(),
    };
    c.restore(&weights_only).unwrap();
    let fresh = fresh_state(&c);
    c.optimizer_mut().load_state_tensors(&fresh).unwrap();
    c.bt_step(&pairs).unwrap();
    assert!(max_diff(&want, &params(c.model())) > 1e-6);

    // a snapshot of another model is refused, naming a tensor
    let mut m = scorer(&s.moe, &opts);
    let err = m.restore(&snap).unwrap_err().to_string();
    assert!(err.contains("model.") || err.contains("optim/"), "{err}");
}

/// Zeroed optimizer state (step 0) shaped like `s`'s.
fn fresh_state(s: &QwenScorer) -> Vec<(String, Tensor)> {
    s.optimizer()
        .state_tensors()
        .into_iter()
        .map(|(k, t)| (k, t.zeros_like()))
        .collect()
}

#[test]
fn the_moe_expert_trains_with_the_load_balancing_loss_and_saves_loadably() {
    let s = setup();
    let cfg = Qwen3Vl::load(&s.moe, Device::Cpu, Kind::Float)
        .unwrap()
        .config;
    assert!(cfg.is_moe());
    let opts = ExpertOptions {
        lr: 1e-3,
        ..ExpertOptions::default()
    };
    let mut e = scorer(&s.moe, &opts);
    let pairs = cap_pairs(0..4);
    let before = e.pair_scores(&pairs).unwrap();
    let mut lb = Vec::new();
    for _ in 0..4 {
        let r = e.train_step(&pairs, 1e-3).unwrap();
        assert!(!r.skipped);
        lb.push(
            r.lb_loss
                .expect("a MoE expert reports its load-balancing loss"),
        );
    }
    // Switch loss of top-2 of 4 experts: ≥ k (= 2) at perfect balance, ≤ E·k
    assert!(lb.iter().all(|&x| (1.9..=8.0).contains(&x)), "{lb:?}");
    assert!(bt_loss(&e.pair_scores(&pairs).unwrap()) < bt_loss(&before));
    let out = s.tiny.root.join("moe-saved");
    e.save(&out, &s.moe).unwrap();
    let back = Qwen3Vl::load(&out, Device::Cpu, Kind::Float).unwrap();
    assert!(back.config.is_moe() && back.heads().value_head.is_some());
    assert!(out.join("tokenizer.json").is_file());
}

#[test]
fn a_non_finite_step_is_skipped_and_leaves_the_weights() {
    let s = setup();
    let mut e = scorer(&s.dense, &ExpertOptions::default());
    {
        let _g = tch::no_grad_guard();
        let mut w = e.model().named_parameters()["score.weight"].shallow_clone();
        let _ = w.fill_(f64::NAN);
    }
    let before = params(e.model());
    let r = e.train_step(&cap_pairs(0..2), 1e-3).unwrap();
    assert!(r.skipped && r.loss.is_nan(), "{r:?}");
    let after = params(e.model());
    for (k, t) in &before {
        if k != "score.weight" {
            assert!(t.equal(&after[k]), "{k} moved on a skipped step");
        }
    }
    assert_eq!(e.optimizer().step_count(), 0);
}

fn ctx(name: &str, seed: u64) -> StageContext {
    StageContext {
        rl_eval_file: None,
        ..setup().tiny.ctx(&format!("runs-{name}"), name, seed)
    }
}

fn metrics(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric(rec: &Value, key: &str) -> Option<f64> {
    rec["metrics"][key].as_f64()
}

#[test]
fn warmup_raises_held_out_accuracy_well_above_chance_over_seeds() {
    let s = setup();
    let mut finals = Vec::new();
    for seed in [1u64, 2, 3] {
        let c = ctx(&format!("trend-{seed}"), seed);
        let sum = run_warmup(&common::warmup_config(7, 16), &c, &s.policy).unwrap();
        assert_eq!(sum.output, s.policy, "the policy passes through");
        let recs = metrics(&c.run_dir);
        let first = &recs[0];
        let last = recs.last().unwrap();
        let acc = |r: &Value| {
            (
                metric(r, "eval_cap_acc").unwrap(),
                metric(r, "eval_cot_acc").unwrap(),
            )
        };
        let (c0, r0) = acc(first);
        let (c1, r1) = acc(last);
        eprintln!(
            "seed {seed}: held-out caption acc {c0:.3} → {c1:.3}, reasoning {r0:.3} → {r1:.3}"
        );
        finals.push((c1, r1));
        assert!(sum.last_eval_loss.unwrap() < sum.first_eval_loss.unwrap());
    }
    let mean_cap = finals.iter().map(|f| f.0).sum::<f64>() / finals.len() as f64;
    let mean_cot = finals.iter().map(|f| f.1).sum::<f64>() / finals.len() as f64;
    assert!(mean_cap >= 0.8, "mean held-out caption accuracy {mean_cap}");
    assert!(
        mean_cot >= 0.8,
        "mean held-out reasoning accuracy {mean_cot}"
    );
    for (c, r) in finals {
        assert!(c >= 0.65 && r >= 0.65, "a seed stayed near chance: {c} {r}");
    }
}

#[test]
fn warmup_writes_loadable_experts_checkpoints_and_resumes_exactly() {
    let s = setup();
    let mut cfg = common::warmup_config(4, 4);
    cfg.save_every = 2;
    let c = ctx("full", 5);
    let sum = run_warmup(&cfg, &c, &s.policy).unwrap();
    let fin = c.stage_dir().join("final");
    assert_eq!(sum.experts.as_deref(), Some(fin.as_path()));
    for role in ["perception", "reasoning"] {
        let d = fin.join(role);
        let m = Qwen3Vl::load(&d, Device::Cpu, Kind::Float).unwrap();
        assert!(m.heads().value_head.is_some(), "{role} has no value head");
        for f in ["tokenizer.json", "config.json", "optimizer.safetensors"] {
            assert!(d.join(f).is_file(), "{role}/{f} missing");
        }
    }
    assert!(fin.join("trainer_state.json").is_file());
    let (p, r) = expert_dirs(&fin).unwrap();
    assert_eq!((p, r), (fin.join("perception"), fin.join("reasoning")));
    let err = expert_dirs(&c.stage_dir()).unwrap_err().to_string();
    assert!(err.contains("no experts"), "{err}");
    let ck = c.stage_dir().join("checkpoint-2");
    assert!(ck.join("perception").join("model.safetensors").is_file());
    assert!(!c.stage_dir().join("final.partial").exists());
    let recs = metrics(&c.run_dir);
    let steps: Vec<u64> = recs.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4]);
    for r in &recs[1..] {
        for k in [
            "disc_loss",
            "cap_acc",
            "cot_acc",
            "lr",
            "grad_norm_perception",
        ] {
            assert!(metric(r, k).is_some(), "step record without {k}: {r}");
        }
    }

    // resuming at step 2 reproduces the uninterrupted experts
    let mut rcfg = cfg.clone();
    rcfg.resume_from = Some(ck);
    let rc = ctx("resumed", 5);
    run_warmup(&rcfg, &rc, &s.policy).unwrap();
    for role in ["perception", "reasoning"] {
        let a = Qwen3Vl::load(&fin.join(role), Device::Cpu, Kind::Float).unwrap();
        let b = Qwen3Vl::load(
            &rc.stage_dir().join("final").join(role),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let d = max_diff(&params(&a), &params(&b));
        assert!(d < 1e-5, "{role}: resumed run differs by {d}");
    }
}

#[test]
fn a_shared_moe_expert_trains_on_both_kinds_of_pairs() {
    let s = setup();
    let mut cfg = common::warmup_config(2, 4);
    cfg.experts = ExpertLayout::Shared;
    cfg.init.path = Some(s.moe.clone());
    let c = ctx("shared", 1);
    run_warmup(&cfg, &c, &s.policy).unwrap();
    let d = c.stage_dir().join("final").join("shared");
    let m = Qwen3Vl::load(&d, Device::Cpu, Kind::Float).unwrap();
    assert!(m.config.is_moe());
    let (p, r) = expert_dirs(&c.stage_dir().join("final")).unwrap();
    assert!(p == d && r == d);
    let recs = metrics(&c.run_dir);
    let last = recs.last().unwrap();
    for k in ["cap_acc", "cot_acc", "lb_loss_shared", "eval_cap_acc"] {
        assert!(metric(last, k).is_some(), "no {k}: {last}");
    }
}

#[test]
fn bad_warmup_inputs_are_named() {
    let s = setup();
    // held-out set as large as the file
    let mut cfg = common::warmup_config(1, 4);
    cfg.eval_pairs = s.pairs.len();
    let err = run_warmup(&cfg, &ctx("bad-eval", 1), &s.policy).unwrap_err();
    assert!(err.to_string().contains("eval_pairs"), "{err}");
    // a broken line names the file and line
    let good = s.tiny.data.warmup.as_ref().unwrap();
    let bad = good.with_file_name("bad_pairs.jsonl");
    let mut text = std::fs::read_to_string(good).unwrap();
    text.push_str("{\"prompt\": \"q\"}\n");
    std::fs::write(&bad, text).unwrap();
    let mut cfg = common::warmup_config(1, 4);
    cfg.data = Some(bad);
    let err = run_warmup(&cfg, &ctx("bad-line", 1), &s.policy).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bad_pairs.jsonl") && msg.contains(&format!("{}", s.pairs.len() + 1)),
        "{msg}"
    );
    assert!(matches!(err, StageError::Data(_)), "{err:?}");
}

#[test]
fn warmup_config_validation_names_the_key() {
    let base =
        "[run]\nout_dir = \"x\"\n[data.synth]\n[policy.tiny]\n[[stages]]\nkind = \"warmup\"\n";
    let ok = RunConfig::from_toml_str(base, Path::new("w.toml"), &[]).unwrap();
    assert!(matches!(
        ok.stages[0],
        prism::config::StageConfig::Warmup(_)
    ));
    for (set, key) in [
        ("stages.0.steps=0", "stages.0.steps"),
        ("stages.0.expert.lr=-1", "stages.0.expert.lr"),
        ("stages.0.expert.score_clip=0", "stages.0.expert.score_clip"),
        (
            "stages.0.init.tiny.num_experts=0",
            "stages.0.init.tiny.num_experts",
        ),
        ("stages.0.warmup_ratio=2", "stages.0.warmup_ratio"),
        ("stages.0.experts=\"many\"", "dedicated"),
        ("stages.0.expert.bogus=1", "bogus"),
    ] {
        let e = RunConfig::from_toml_str(base, Path::new("w.toml"), &[set.to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
    let no_data = "[run]\nout_dir = \"x\"\n[data]\ntrain = \"t.jsonl\"\n[policy.tiny]\n[[stages]]\nkind = \"warmup\"\n";
    let e = RunConfig::from_toml_str(no_data, Path::new("w.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("stages.0.data"), "{e}");
}

#[test]
fn the_warmup_tiny_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/warmup-tiny.toml");
    let cfg = RunConfig::load(&path, &[]).unwrap();
    assert!(
        cfg.stages
            .iter()
            .any(|s| matches!(s, prism::config::StageConfig::Warmup(_)))
    );
}

#[test]
fn the_factory_scores_rl_prompts_with_the_same_context_as_the_warmup() {
    let s = setup();
    let proc = prism::models::processor::Processor::from_dir(&s.policy).unwrap();
    let rl = s.tiny.data.rl_train.as_ref().unwrap();
    let store = Arc::new(PromptStore::load(&proc, rl, Some(6)).unwrap());
    let factory = scorer_factory(&s.dense, &ExpertOptions::default(), store.clone());
    let mut engine = factory(DeviceSpec::Cpu).unwrap();
    let text = &s.pairs[4].teacher_caption;
    // uid 4 and uid 4 + len (the same row in the next pass) share a context
    let second_pass = 4 + store.len() as u64;
    let got = engine
        .score(&[item(4, text), item(second_pass, text), item(5, text)])
        .unwrap();
    assert_eq!(got[0], got[1]);
    assert_ne!(got[0], got[2]);
    // the warm-up line of the same item builds the same context: the same score
    let mut w = scorer(&s.dense, &ExpertOptions::default());
    let warm = w.score(&[item(4, text)]).unwrap()[0];
    assert!(
        (warm - got[0]).abs() < 1e-6,
        "warm-up {warm} vs alignment {}",
        got[0]
    );
    // a checkpoint without a value head is refused by name
    let err = scorer_factory(&s.policy, &ExpertOptions::default(), store)(DeviceSpec::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("value head"), "{err}");
}

#[test]
fn a_bfloat16_expert_scores_close_to_float32_and_trains() {
    let s = setup();
    let opts = ExpertOptions {
        lr: 1e-3,
        ..ExpertOptions::default()
    };
    let mut f = scorer(&s.dense, &opts);
    let mut b = QwenScorer::load(&s.dense, Device::Cpu, Kind::BFloat16, &opts, contexts()).unwrap();
    let pairs = cap_pairs(0..3);
    let (sf, sb) = (
        f.pair_scores(&pairs).unwrap(),
        b.pair_scores(&pairs).unwrap(),
    );
    for ((a, _), (c, _)) in sf.iter().zip(&sb) {
        assert!((a - c).abs() < 0.05 + 0.02 * a.abs(), "f32 {a} vs bf16 {c}");
    }
    let r = b.train_step(&pairs, 1e-3).unwrap();
    assert!(!r.skipped && r.loss.is_finite(), "{r:?}");
    assert_eq!(
        b.model().named_parameters()["score.weight"].kind(),
        Kind::BFloat16
    );
}
