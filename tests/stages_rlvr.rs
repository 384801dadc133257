//! The RLVR stage on the tiny synthetic task: the Qwen3-VL engines (rollouts, behaviour
//! log-probs against a teacher-forced recompute, learner steps, snapshot/restore with the
//! optimizer), the advantage wiring against `prism::algo`, real clipping with mini-batches, the
//! defined behaviour of degenerate batches, exact resume, config presets, and a reward trend
//! from an SFT'd tiny policy.

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use prism::actors::ActorsConfig;
use prism::actors::engine::{LearnerEngine, PolicyEngine, RewardEngine};
use prism::actors::messages::{
    PromptItem, RewardOutcome, Rollout, SamplingParams, ScoredSample, StageKind, TrainBatch,
};
use prism::algo::advantage::{
    GroupNorm, Groups, MultiRewardOptions, MultiRewardScores, group_normalize,
    prism_multi_reward_advantage,
};
use prism::config::{RlAlgorithm, RlvrConfig, RunConfig, SftConfig};
use prism::models::Qwen3Vl;
use prism::models::processor::Processor;
use prism::stages::prompts::PromptStore;
use prism::stages::rl::learner::{batch_advantages, batch_rewards, length_mask};
use prism::stages::rl::{
    QwenLearner, QwenPolicy, RlOptions, SynthReward, read_trainer_state, run_rlvr,
};
use prism::stages::sft::run_sft;
use prism::stages::{StageContext, StageError};
use tch::{Device, Kind, Tensor};

/// Synthetic data and a tiny random policy, built once per test binary.
type Setup = common::TinySetup;

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[data.synth]
train = 64
eval = 4
seed = 7
difficulties = [1]
perception_error_rate = 0.0
reasoning_error_rate = 0.0
[policy.tiny]
image_max_pixels = 4096
[[stages]]
kind = "sft"
"#;
        common::tiny_setup(text, "init")
    })
}

fn ctx(run: &str, name: &str) -> StageContext {
    let s = setup();
    StageContext::new(s.root.join(run), name, &s.data, 3)
}

fn store(policy: &Path, limit: usize) -> (Arc<PromptStore>, Vec<PromptItem>) {
    let processor = Processor::from_dir(policy).unwrap();
    let rl = setup().data.rl_train.clone().unwrap();
    let store = PromptStore::load(&processor, &rl, Some(limit)).unwrap();
    let (items, too_long) = store.items(&processor, 1, 4096).unwrap();
    assert!(too_long.is_empty());
    (Arc::new(store), items)
}

/// GRPO options of a small test run.
fn options(f: impl FnOnce(&mut RlvrConfig)) -> RlOptions {
    let mut cfg = RlvrConfig {
        steps: 4,
        prompts_per_step: 2,
        samples_per_prompt: 4,
        max_new_tokens: 16,
        lr: 1e-3,
        save_every: 0,
        ..RlvrConfig::default()
    };
    f(&mut cfg);
    cfg.validate(&|k| k.to_string(), true).unwrap();
    RlOptions::from_rlvr(&cfg, 11).unwrap()
}

fn policy_engine(items_limit: usize) -> (QwenPolicy, Vec<PromptItem>) {
    let init = &setup().init;
    let (st, items) = store(init, items_limit);
    (
        QwenPolicy::load(init, st, prism::actors::DeviceSpec::Cpu, Kind::Float).unwrap(),
        items,
    )
}

fn learner(opts: RlOptions) -> QwenLearner {
    let init = &setup().init;
    let (st, _) = store(init, 8);
    QwenLearner::load(
        init,
        init,
        None,
        st,
        opts,
        prism::actors::DeviceSpec::Cpu,
        Kind::Float,
        0,
    )
    .unwrap()
}

fn sampling(seed: u64, max_new_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens,
        seed,
        ..SamplingParams::default()
    }
}

/// Rollouts of `prompts` scored with hand-set rewards (`acc[i]`, `fmt[i]` per sample).
fn scored(
    prompts: &[PromptItem],
    rollouts: &[Rollout],
    acc: &[f32],
    fmt: &[f32],
    kind: StageKind,
    group_size: usize,
) -> TrainBatch {
    let samples = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| ScoredSample {
            prompt: prompts
                .iter()
                .find(|p| p.uid == r.prompt_uid)
                .unwrap()
                .clone(),
            rollout: r.clone(),
            reward: RewardOutcome {
                format_score: fmt[i],
                caption: None,
                reasoning: None,
                accuracy: Some(acc[i]),
            },
            caption_score: None,
            reasoning_score: None,
            perception_version: None,
            reasoning_version: None,
            teacher_source: None,
        })
        .collect();
    TrainBatch {
        step: 0,
        kind,
        group_size,
        samples,
    }
}

/// A copy of the model's weights (parameters share storage with the model).
fn weights(m: &Qwen3Vl) -> Vec<(String, Tensor)> {
    m.named_parameters()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect()
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((n1, x), (n2, y))| {
            assert_eq!(n1, n2);
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn extra(stats: &prism::actors::messages::StepStats, key: &str) -> f64 {
    stats
        .extra
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no metric {key} in {:?}", stats.extra))
        .1
}

#[test]
fn rollouts_have_shapes_seeds_and_logprobs_of_a_teacher_forced_recompute() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 3, &sampling(5, 12)).unwrap();
    assert_eq!(rs.len(), 6);
    let stop: Vec<i64> = Processor::from_dir(&setup().init)
        .unwrap()
        .tokenizer
        .stop_ids()
        .iter()
        .map(|&i| i64::from(i))
        .collect();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.prompt_uid, prompts[i / 3].uid, "prompt-major order");
        assert_eq!(r.sample_index as usize, i % 3);
        assert_eq!(r.behaviour_logprobs.len(), r.response_ids.len());
        assert!(!r.response_ids.is_empty() && r.response_ids.len() <= 13);
        // a response ends at its first stop token (kept) or at the length limit
        let stops = r.response_ids.iter().filter(|t| stop.contains(t)).count();
        assert!(stops == 0 || (stops == 1 && stop.contains(r.response_ids.last().unwrap())));
        assert!(stops == 1 || r.response_ids.len() == 12);
        assert!(
            r.behaviour_logprobs
                .iter()
                .all(|l| l.is_finite() && *l <= 0.0)
        );
    }
    assert_ne!(
        rs[0].response_ids, rs[1].response_ids,
        "samples of a group differ"
    );
    // same (seed, uid, index) → same sample, whatever the batch it is generated in
    let alone = pol.generate(&prompts[1..], 3, &sampling(5, 12)).unwrap();
    for (x, y) in alone.iter().zip(&rs[3..]) {
        assert_eq!(
            (x.prompt_uid, x.sample_index),
            (y.prompt_uid, y.sample_index)
        );
        assert_eq!(x.response_ids, y.response_ids);
        // padding changes the last ulp of a log-prob, never the sample
        for (a, b) in x.behaviour_logprobs.iter().zip(&y.behaviour_logprobs) {
            assert!((a - b).abs() < 1e-5);
        }
    }
    let other_seed = pol.generate(&prompts[1..], 3, &sampling(6, 12)).unwrap();
    assert_ne!(other_seed[0].response_ids, alone[0].response_ids);

    // the learner's recompute (prompt + response in one forward, images included)
    let mut l = learner(options(|_| {}));
    let batch = scored(prompts, &rs, &[0.0; 6], &[0.0; 6], StageKind::Rlvr, 3);
    let refs: Vec<&ScoredSample> = batch.samples.iter().collect();
    let (logp, mask, _) = l.response_logprobs(None, &refs).unwrap();
    let mut worst = 0.0f32;
    for (i, r) in rs.iter().enumerate() {
        for (j, &b) in r.behaviour_logprobs.iter().enumerate() {
            assert_eq!(mask.double_value(&[i as i64, j as i64]), 1.0);
            let d = (logp.double_value(&[i as i64, j as i64]) as f32 - b).abs();
            worst = worst.max(d);
        }
        for j in r.response_ids.len() as i64..mask.size()[1] {
            assert_eq!(mask.double_value(&[i as i64, j]), 0.0);
        }
    }
    assert!(worst < 1e-4, "behaviour vs recomputed log-prob: {worst}");
}

#[test]
fn learner_step_changes_weights_and_snapshot_restore_keeps_the_optimizer() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 4, &sampling(1, 10)).unwrap();
    let acc = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let fmt = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    let batch = scored(prompts, &rs, &acc, &fmt, StageKind::Rlvr, 4);
    let mut a = learner(options(|_| {}));
    let w0 = weights(a.model());
    let stats = a.step(&batch).unwrap();
    assert!(stats.loss.is_finite() && stats.tokens > 0);
    assert_eq!(extra(&stats, "updates"), 1.0);
    assert!(extra(&stats, "grad_norm") > 0.0);
    assert!(
        max_abs_diff(&w0, &weights(a.model())) > 1e-6,
        "a step moves the weights"
    );
    assert_eq!(a.optimizer_steps(), 1);

    // a restarted learner restores weights and AdamW moments: the next steps agree exactly
    let snap = a.snapshot(1).unwrap();
    assert!(
        snap.tensors
            .iter()
            .any(|t| t.name.starts_with("optimizer/exp_avg/"))
    );
    let mut b = learner(options(|_| {}));
    b.restore(&snap).unwrap();
    assert_eq!(b.optimizer_steps(), 1);
    assert_eq!(b.snapshot(1).unwrap(), snap);
    let mut c = learner(options(|_| {}));
    c.restore(&snap).unwrap();
    for e in [&mut a, &mut b] {
        e.step(&batch).unwrap();
    }
    assert_eq!(max_abs_diff(&weights(a.model()), &weights(b.model())), 0.0);
    // weights without moments would take a different second step
    let fresh_moments: Vec<_> = snap
        .tensors
        .iter()
        .filter(|t| !t.name.starts_with("optimizer/") || t.name == "optimizer/adamw.step")
        .cloned()
        .collect();
    assert!(fresh_moments.len() < snap.tensors.len());
    let broken = prism::actors::messages::WeightsSnapshot {
        version: 1,
        tensors: fresh_moments,
    };
    assert!(
        c.restore(&broken)
            .unwrap_err()
            .to_string()
            .contains("optimizer/"),
        "a snapshot without the optimizer state is refused, naming it"
    );

    // the generator loads a learner snapshot (extra optimizer entries ignored)
    pol.load_weights(&snap).unwrap();
}

#[test]
fn grouped_advantages_are_the_ones_of_prism_algo() {
    // hand-made batch: two groups (uids 7 and 9) of three, in interleaved order
    let item = |uid: u64| PromptItem {
        uid,
        prompt_ids: vec![1, 2, 3],
        text: String::new(),
        image_hash: None,
        answer: Some("1".into()),
    };
    let prompts = [item(7), item(9)];
    let uids = [7u64, 9, 7, 9, 7, 9];
    let lens = [3usize, 1, 2, 4, 2, 3];
    let rollouts: Vec<Rollout> = uids
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (&uid, n))| Rollout {
            prompt_uid: uid,
            sample_index: i as u32,
            response_ids: vec![5; n],
            behaviour_logprobs: vec![-1.0; n],
            policy_version: 0,
            generator: String::new(),
        })
        .collect();
    let acc = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let fmt = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    let opts = options(|_| {});
    let batch = scored(&prompts, &rollouts, &acc, &fmt, StageKind::Rlvr, 3);
    let rewards = batch_rewards(&batch, &opts).unwrap();
    let expect_scores: Vec<f32> = acc
        .iter()
        .zip(fmt)
        .map(|(a, f)| (0.8 * f64::from(*a) + 0.2 * f64::from(f)) as f32)
        .collect();
    assert_eq!(rewards.score, expect_scores);
    let adv = batch_advantages(&batch, &rewards, &opts).unwrap();
    let groups = Groups::from_labels(&uids, Device::Cpu).unwrap();
    let gn = group_normalize(
        &Tensor::from_slice(&expect_scores),
        &groups,
        GroupNorm::default(),
    )
    .unwrap();
    let mask = length_mask(&lens.map(|l| l as i64)).unwrap();
    let want = gn.unsqueeze(-1) * &mask;
    assert!(
        (&adv - &want).abs().max().double_value(&[]) < 1e-6,
        "{adv} vs {want}"
    );
    // by hand: group 7 (samples 0, 2, 4) scores [1, 0.2, 0.8], mean 2/3, unbiased std
    let m = 2.0f64 / 3.0;
    let sd = (((1.0 - m).powi(2) + (0.2 - m).powi(2) + (0.8 - m).powi(2)) / 2.0).sqrt();
    let a0 = (1.0 - m) / (sd + 1e-6);
    assert!((adv.double_value(&[0, 0]) - a0).abs() < 1e-5);

    // DAPO overlong shaping: −max(0, L − (max − buffer))/buffer added to the score
    let dapo = options(|c| {
        c.algorithm = RlAlgorithm::Dapo;
        c.max_new_tokens = 6;
        c.overlong_buffer_len = 4;
        c.warmup_steps = Some(0);
    });
    let shaped = batch_rewards(&batch, &dapo).unwrap();
    let want: Vec<f32> = expect_scores
        .iter()
        .zip(lens)
        .map(|(s, l)| s - (l as f32 - 2.0).max(0.0) / 4.0)
        .collect();
    for (a, b) in shaped.score.iter().zip(&want) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {want:?}", shaped.score);
    }

    // alignment: PRISM's multi-reward advantage of the experts' scores
    let mut batch = scored(&prompts, &rollouts, &acc, &fmt, StageKind::Align, 3);
    let cap = [0.3f32, -1.0, 0.8, 0.1, 0.0, 0.5];
    let cot = [0.2f32, 0.4, -0.3, 0.9, 0.7, 0.0];
    for (i, s) in batch.samples.iter_mut().enumerate() {
        s.caption_score = Some(cap[i]);
        s.reasoning_score = Some(cot[i]);
    }
    let rewards = batch_rewards(&batch, &opts).unwrap();
    let adv = batch_advantages(&batch, &rewards, &opts).unwrap();
    let (c, t, f, a) = (
        Tensor::from_slice(&cap),
        Tensor::from_slice(&cot),
        Tensor::from_slice(&fmt),
        Tensor::from_slice(&acc),
    );
    let want = prism_multi_reward_advantage(
        MultiRewardScores {
            caption: &c,
            cot: &t,
            format: Some(&f),
            acc: Some(&a),
        },
        &mask,
        &groups,
        &MultiRewardOptions::paper(),
    )
    .unwrap()
    .token_level;
    assert!((&adv - &want).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn mini_batches_make_the_ratio_differ_from_one() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 4, &sampling(2, 10)).unwrap();
    let acc = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let fmt = [1.0; 8];
    let batch = scored(prompts, &rs, &acc, &fmt, StageKind::Rlvr, 4);
    let mut one = learner(options(|_| {}));
    let s1 = one.step(&batch).unwrap();
    assert!(
        extra(&s1, "ppo_kl").abs() < 1e-6,
        "one update is on-policy: ratio 1"
    );
    assert_eq!(extra(&s1, "pg_clipfrac"), 0.0);
    let mut two = learner(options(|c| {
        c.mini_batches = 2;
        c.lr = 1e-2;
    }));
    let s2 = two.step(&batch).unwrap();
    assert_eq!(extra(&s2, "updates"), 2.0);
    assert_eq!(two.optimizer_steps(), 2);
    // the second mini-batch is scored by the once-updated policy against the behaviour
    // log-probs: its ratio is off 1 (and with lr 1e-2 some tokens get clipped)
    assert!(extra(&s2, "ppo_kl").abs() > 1e-4, "{:?}", s2.extra);
    assert!(extra(&s2, "pg_clipfrac") > 0.0, "{:?}", s2.extra);
}

#[test]
fn micro_batches_accumulate_the_same_gradient() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 4, &sampling(6, 10)).unwrap();
    let acc = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let fmt = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    for algorithm in [RlAlgorithm::Grpo, RlAlgorithm::Gspo] {
        let batch = scored(prompts, &rs, &acc, &fmt, StageKind::Rlvr, 4);
        let opts = |micro: usize| {
            options(|c| {
                c.algorithm = algorithm;
                c.warmup_ratio = Some(0.0);
                c.micro_batch_size = micro;
            })
        };
        let whole = learner(opts(0)).step(&batch).unwrap();
        let split = learner(opts(3)).step(&batch).unwrap();
        for key in ["loss", "grad_norm", "entropy", "ppo_kl", "policy_loss"] {
            let (a, b) = (extra(&whole, key), extra(&split, key));
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                "{algorithm:?} {key}: {a} vs {b}"
            );
        }
        assert_eq!(extra(&whole, "tokens"), extra(&split, "tokens"));
    }
}

#[test]
fn kl_to_the_input_policy_and_gspo_train() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 4, &sampling(4, 10)).unwrap();
    let acc = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let batch = scored(prompts, &rs, &acc, &[1.0; 8], StageKind::Rlvr, 4);
    // KL (k3) to the frozen input policy: 0 before the policy moves, > 0 after
    let mut k = learner(options(|c| {
        c.kl_coef = 0.5;
        c.lr = 1e-2;
    }));
    let s1 = k.step(&batch).unwrap();
    assert!(extra(&s1, "kl").abs() < 1e-6, "{:?}", s1.extra);
    let s2 = k.step(&batch).unwrap();
    assert!(extra(&s2, "kl") > 1e-6, "{:?}", s2.extra);
    // GSPO: sequence ratio, seq-mean-token-mean; trains and moves the weights
    let mut g = learner(options(|c| {
        c.algorithm = RlAlgorithm::Gspo;
        c.warmup_ratio = Some(0.0);
    }));
    let w0 = weights(g.model());
    let s = g.step(&batch).unwrap();
    assert!(s.loss.is_finite() && extra(&s, "grad_norm") > 0.0);
    assert!(max_abs_diff(&w0, &weights(g.model())) > 1e-6);
}

#[test]
fn degenerate_batches_are_defined_behaviour() {
    let (mut pol, items) = policy_engine(4);
    let prompts = &items[..2];
    let rs = pol.generate(prompts, 4, &sampling(3, 8)).unwrap();

    // all-invalid groups: zero advantages, a finite (zero) loss, no NaN anywhere
    let mut l = learner(options(|_| {}));
    let w0 = weights(l.model());
    let batch = scored(prompts, &rs, &[0.0; 8], &[0.0; 8], StageKind::Rlvr, 4);
    let s = l.step(&batch).unwrap();
    assert_eq!(s.loss, 0.0);
    assert_eq!(extra(&s, "advantage_std"), 0.0);
    assert_eq!(extra(&s, "grad_norm"), 0.0);
    assert!(
        s.extra.iter().all(|(k, v)| v.is_finite() || k == "lr"),
        "{:?}",
        s.extra
    );
    // (weight decay alone still moves the matrices a little: lr·λ)
    assert!(max_abs_diff(&w0, &weights(l.model())) < 1e-3);

    // DAPO dynamic sampling with no group whose accuracy varies: the step is skipped, counted
    let mut d = learner(options(|c| {
        c.algorithm = RlAlgorithm::Dapo;
        c.overlong_buffer_len = 8;
        c.warmup_steps = Some(0);
    }));
    let w0 = weights(d.model());
    let acc = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let batch = scored(prompts, &rs, &acc, &[1.0; 8], StageKind::Rlvr, 4);
    let s = d.step(&batch).unwrap();
    assert_eq!(extra(&s, "dynamic_sampling_skipped"), 1.0);
    assert_eq!(extra(&s, "groups_kept"), 0.0);
    assert_eq!(extra(&s, "updates"), 0.0);
    assert_eq!(d.optimizer_steps(), 0);
    assert_eq!(max_abs_diff(&w0, &weights(d.model())), 0.0);
    // one varying group is kept and trained on
    let acc = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let batch = scored(prompts, &rs, &acc, &[1.0; 8], StageKind::Rlvr, 4);
    let s = d.step(&batch).unwrap();
    assert_eq!(extra(&s, "groups_kept"), 1.0);
    assert_eq!(extra(&s, "skipped_total"), 1.0);

    // an empty batch: skipped and counted, no panic
    let empty = TrainBatch {
        step: 2,
        kind: StageKind::Rlvr,
        group_size: 4,
        samples: vec![],
    };
    let s = d.step(&empty).unwrap();
    assert_eq!(extra(&s, "dynamic_sampling_skipped"), 1.0);
    assert_eq!(extra(&s, "skipped_total"), 2.0);

    // a non-finite loss: skipped and counted; max_bad_steps_in_row in a row is an error
    let mut n = learner(options(|c| {
        c.inject_nan_steps = vec![1, 2];
        c.max_bad_steps_in_row = 2;
    }));
    let w0 = weights(n.model());
    let acc = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let mut batch = scored(prompts, &rs, &acc, &[1.0; 8], StageKind::Rlvr, 4);
    let s = n.step(&batch).unwrap();
    assert!(s.loss.is_nan());
    assert_eq!(extra(&s, "skipped_nonfinite"), 1.0);
    assert_eq!(max_abs_diff(&w0, &weights(n.model())), 0.0);
    batch.step = 1;
    let e = n.step(&batch).unwrap_err().to_string();
    assert!(e.contains("2 non-finite steps in a row"), "{e}");

    // a rollout whose log-probs do not match its tokens is an error naming it
    let mut bad = scored(prompts, &rs, &acc, &[1.0; 8], StageKind::Rlvr, 4);
    bad.samples[3].rollout.behaviour_logprobs.pop();
    let e = learner(options(|_| {})).step(&bad).unwrap_err().to_string();
    assert!(e.contains("rollout 3 of prompt"), "{e}");
}

#[test]
fn reward_engine_checks_format_splits_segments_and_grades() {
    let init = &setup().init;
    let processor = Processor::from_dir(init).unwrap();
    let mut r = SynthReward::load(init).unwrap();
    let text = "<caption>two red squares</caption><think>2 + 1 = 3</think><answer>3</answer>";
    let mut ids: Vec<i64> = processor
        .tokenizer
        .encode(text)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    ids.push(i64::from(processor.tokenizer.special().eos));
    let prompt = PromptItem {
        uid: 0,
        prompt_ids: vec![1],
        text: String::new(),
        image_hash: None,
        answer: Some("3".into()),
    };
    let rollout = Rollout {
        prompt_uid: 0,
        sample_index: 0,
        behaviour_logprobs: vec![0.0; ids.len()],
        response_ids: ids.clone(),
        policy_version: 0,
        generator: String::new(),
    };
    let o = r.evaluate(&prompt, &rollout).unwrap();
    assert_eq!(o.format_score, 1.0);
    assert_eq!(o.accuracy, Some(1.0));
    let (cap, cot) = (o.caption.unwrap(), o.reasoning.unwrap());
    assert_eq!(cap.text, "<caption>two red squares</caption>");
    assert!(cot.text.starts_with("<think>") && cot.text.ends_with("</answer>"));
    assert_eq!([cap.tokens.clone(), cot.tokens.clone()].concat(), ids);
    let wrong = PromptItem {
        answer: Some("4".into()),
        ..prompt.clone()
    };
    assert_eq!(r.evaluate(&wrong, &rollout).unwrap().accuracy, Some(0.0));
    let truncated = Rollout {
        response_ids: ids[..ids.len() / 2].to_vec(),
        ..rollout
    };
    let o = r.evaluate(&prompt, &truncated).unwrap();
    assert_eq!(o.format_score, 0.0);
    assert!(o.caption.is_none() && o.reasoning.is_none());
    assert_eq!(o.accuracy, Some(0.0));
}

/// A `[actors]` section for exact reruns: everything in turn, on-policy.
fn sync_actors() -> ActorsConfig {
    ActorsConfig {
        sync: true,
        ..ActorsConfig::default()
    }
}

fn read_weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

#[test]
fn resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
    let init = setup().init.clone();
    let cfg = RlvrConfig {
        name: Some("rl".into()),
        steps: 4,
        prompts_per_step: 2,
        samples_per_prompt: 3,
        max_new_tokens: 10,
        lr: 1e-3,
        limit: Some(8),
        save_every: 2,
        ..RlvrConfig::default()
    };
    let full = ctx("full", "rl");
    let s = run_rlvr(&cfg, &full, &init, &sync_actors()).unwrap();
    assert_eq!(s.steps, 4);
    assert_eq!(s.kind, "rlvr");
    let dir = full.stage_dir();
    assert!(dir.join("checkpoint-2").is_dir() && !dir.join("checkpoint-4").exists());
    assert!(!dir.join("checkpoint-2.partial").exists());
    let st = read_trainer_state(&dir.join("checkpoint-2"), StageKind::Rlvr).unwrap();
    assert_eq!(
        (st.steps_done, st.next_cursor, st.policy_version),
        (2, 4, 2)
    );
    assert_eq!(st.optimizer_steps, 2);
    let fin = read_trainer_state(&s.output, StageKind::Rlvr).unwrap();
    assert_eq!(
        (fin.steps_done, fin.next_cursor, fin.reason.as_str()),
        (4, 8, "Finished")
    );
    // the output loads as a policy and carries the processor files
    Qwen3Vl::load(&s.output, Device::Cpu, Kind::Float).unwrap();
    Processor::from_dir(&s.output).unwrap();
    // one metrics record per step in run_dir/metrics.jsonl
    let log = std::fs::read_to_string(full.run_dir.join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        assert_eq!(r["arm"], "prism");
        for k in [
            "reward_mean",
            "accuracy",
            "format_valid_rate",
            "policy_loss",
            "lr",
        ] {
            assert!(r["metrics"].get(k).is_some(), "{k} missing in {r}");
        }
    }

    let resumed = ctx("resumed", "rl");
    let cfg2 = RlvrConfig {
        resume_from: Some(dir.join("checkpoint-2")),
        ..cfg.clone()
    };
    let s2 = run_rlvr(&cfg2, &resumed, &init, &sync_actors()).unwrap();
    assert_eq!(s2.steps, 4);
    let (a, b) = (read_weights(&s.output), read_weights(&s2.output));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "resumed weights differ");
    let oa = Tensor::read_safetensors(s.output.join("optimizer.safetensors")).unwrap();
    let ob = Tensor::read_safetensors(s2.output.join("optimizer.safetensors")).unwrap();
    let (mut oa, mut ob) = (oa, ob);
    oa.sort_by(|x, y| x.0.cmp(&y.0));
    ob.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        max_abs_diff(&oa, &ob),
        0.0,
        "resumed optimizer state differs"
    );
    let log = std::fs::read_to_string(resumed.run_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![3, 4]);

    // resuming a finished stage, or with another stage kind, is refused
    let e = run_rlvr(
        &RlvrConfig {
            resume_from: Some(s.output.clone()),
            ..cfg.clone()
        },
        &ctx("again", "rl"),
        &init,
        &sync_actors(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("only 4 steps"), "{e}");
    let e = read_trainer_state(&dir.join("checkpoint-2"), StageKind::Align).unwrap_err();
    assert!(matches!(e, StageError::Record { .. }), "{e}");
}

#[test]
fn config_presets_and_errors_name_the_key() {
    let base = r#"
[data.synth]
[policy.tiny]
[[stages]]
kind = "rlvr"
"#;
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml_str(base, Path::new("rl.toml"), &sets)
    };
    let cfg = load(&[]).unwrap();
    let prism::config::StageConfig::Rlvr(r) = &cfg.stages[0] else {
        panic!("not rlvr")
    };
    let o = RlOptions::from_rlvr(r, 0).unwrap();
    assert_eq!(cfg.stage_name(0), "rlvr-0");
    assert_eq!((o.adamw.lr, o.adamw.weight_decay), (1e-6, 0.01));
    assert_eq!(o.loss, prism::algo::policy_loss::PolicyLoss::grpo());
    assert!(!o.dynamic_sampling && o.overlong.is_none());
    assert_eq!((o.prompts_per_step, o.samples_per_prompt), (32, 16));

    let cfg = load(&["stages.0.algorithm=dapo"]).unwrap();
    let prism::config::StageConfig::Rlvr(r) = &cfg.stages[0] else {
        panic!()
    };
    let o = RlOptions::from_rlvr(r, 0).unwrap();
    assert_eq!(o.loss, prism::algo::policy_loss::PolicyLoss::dapo());
    assert_eq!(o.adamw.weight_decay, 0.1);
    assert!(o.dynamic_sampling);
    assert_eq!(
        o.overlong,
        Some(prism::algo::advantage::OverlongBuffer::dapo(8192))
    );
    assert_eq!(
        o.schedule,
        prism::algo::adamw::LrSchedule::ConstantWithWarmup { warmup_steps: 10 }
    );

    let cfg = load(&["stages.0.algorithm=gspo"]).unwrap();
    let prism::config::StageConfig::Rlvr(r) = &cfg.stages[0] else {
        panic!()
    };
    let o = RlOptions::from_rlvr(r, 0).unwrap();
    assert_eq!(o.loss, prism::algo::policy_loss::PolicyLoss::gspo());
    assert_eq!(
        o.schedule,
        prism::algo::adamw::LrSchedule::ConstantWithWarmup { warmup_steps: 75 }
    );

    for (set, key) in [
        ("stages.0.mini_batches=0", "stages.0.mini_batches"),
        ("stages.0.top_p=1.5", "stages.0.top_p"),
        ("stages.0.clip_ratio_c=1.1", "stages.0.clip_ratio_c"),
        // (serde names no key inside the tagged stage list, only the bad value)
        ("stages.0.algorithm=gspo2", "gspo2"),
        ("stages.0.bogus=1", "bogus"),
    ] {
        let e = load(&[set]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("rl.toml"), "{set}: {e}");
    }
    let e = load(&["stages.0.algorithm=dapo", "stages.0.max_new_tokens=100"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlong_buffer_len"), "{e}");
    let e = load(&[
        "stages.0.algorithm=gspo",
        "stages.0.loss_agg_mode=token-mean",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("loss_agg_mode"), "{e}");
}

/// The trend test: from an SFT'd tiny policy, GRPO raises the mean reward.
#[test]
fn grpo_from_an_sfted_policy_raises_the_mean_reward() {
    let s = setup();
    let sft = SftConfig {
        name: Some("sft".into()),
        steps: SFT_STEPS,
        batch_size: 8,
        lr: 3e-3,
        warmup_ratio: 0.05,
        max_length: 1024,
        ..SftConfig::default()
    };
    let sft_ctx = ctx("trend", "sft");
    let sfted = run_sft(&sft, &sft_ctx, &s.init).unwrap().output;
    let cfg = RlvrConfig {
        name: Some("rl".into()),
        steps: RL_STEPS,
        prompts_per_step: 4,
        samples_per_prompt: 8,
        temperature: RL_TEMPERATURE,
        max_new_tokens: 128,
        lr: 1e-4,
        passes: 4,
        save_every: 0,
        ..RlvrConfig::default()
    };
    let rl_ctx = ctx("trend", "rl");
    run_rlvr(&cfg, &rl_ctx, &sfted, &ActorsConfig::default()).unwrap();
    let log = std::fs::read_to_string(rl_ctx.run_dir.join("metrics.jsonl")).unwrap();
    let series = |key: &str| -> Vec<f64> {
        // the run's log also holds the SFT stage's records
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["stage"] == "rl")
            .map(|r| r["metrics"][key].as_f64().unwrap())
            .collect()
    };
    let (rewards, valid) = (series("reward_mean"), series("format_valid_rate"));
    assert_eq!(rewards.len(), RL_STEPS as usize);
    // the first steps (the SFT policy and its first updates) against the last ones
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&rewards[..3]), mean(&rewards[rewards.len() - 5..]));
    let (v0, v1) = (mean(&valid[..3]), mean(&valid[valid.len() - 5..]));
    eprintln!(
        "reward mean: first 3 steps {first:.4}, last 5 steps {last:.4}; format-valid rate \
         {v0:.3} -> {v1:.3}\nrewards {rewards:?}\nvalid {valid:?}"
    );
    assert!(
        last > first + TREND_MARGIN,
        "first {first}, last {last}: {rewards:?}"
    );
    assert!(
        v1 > v0 + VALID_MARGIN,
        "format-valid {v0} -> {v1}: {valid:?}"
    );
}

/// SFT steps before RL: the tiny policy then writes the format in roughly a third of its
/// samples at temperature 0.7, so groups have reward variance to learn from.
const SFT_STEPS: u64 = 150;
const RL_STEPS: u64 = 20;
/// Below the paper's 1.0: at 1.0 the 150-step SFT policy is valid in only ~10 % of its samples
/// and 20 steps show no trend (measured: reward 0.031 over the first 5 steps, 0.038 over the
/// last 5).
const RL_TEMPERATURE: f64 = 0.7;
/// The rise of the mean reward asserted (first 3 vs last 5 steps). Measured rises, 4 runs
/// (this test: +0.100, 0.083 → 0.184; with another init seed and RL seeds 3, 1, 2: +0.065,
/// +0.074, +0.099): the margin is half the smallest.
const TREND_MARGIN: f64 = 0.03;
/// The same for the format-valid rate (measured rises +0.28 to +0.31).
const VALID_MARGIN: f64 = 0.1;

#[test]
fn pipeline_runs_an_rlvr_stage_from_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[run]
out_dir = "{}"
metrics_addr = "none"
[data.synth]
train = 8
eval = 0
seed = 1
difficulties = [1]
[policy.tiny]
image_max_pixels = 4096
[actors]
sync = true
[[stages]]
kind = "rlvr"
name = "rl"
arm = "baseline"
steps = 2
prompts_per_step = 2
samples_per_prompt = 2
max_new_tokens = 8
lr = 1e-3
save_every = 0
"#,
        dir.path().join("run").display()
    );
    let cfg = RunConfig::from_toml_str(&text, Path::new("p.toml"), &[]).unwrap();
    let out = prism::stages::pipeline::run_pipeline(&cfg).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].kind.as_str(), out[0].steps), ("rlvr", 2));
    assert_eq!(out[0].output, dir.path().join("run/rl/final"));
    let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter()
            .all(|r| r["stage"] == "rl" && r["arm"] == "baseline")
    );
}

#[test]
fn prompts_over_max_prompt_tokens_are_reported_not_dropped_silently() {
    let init = setup().init.clone();
    let processor = Processor::from_dir(&init).unwrap();
    let rl = setup().data.rl_train.clone().unwrap();
    let st = PromptStore::load(&processor, &rl, Some(8)).unwrap();
    let (items, _) = st.items(&processor, 1, usize::MAX).unwrap();
    let mut lens: Vec<usize> = items.iter().map(|i| i.prompt_ids.len()).collect();
    lens.sort_unstable();
    let (shortest, longest) = (lens[0], lens[lens.len() - 1]);
    assert!(shortest < longest, "the synthetic prompts vary in length");
    let want: Vec<usize> = items
        .iter()
        .filter(|i| i.prompt_ids.len() > shortest)
        .map(|i| i.uid as usize)
        .collect();
    let cfg = RlvrConfig {
        name: Some("rl".into()),
        steps: 1,
        prompts_per_step: 1,
        samples_per_prompt: 2,
        max_new_tokens: 4,
        max_prompt_tokens: shortest,
        limit: Some(8),
        save_every: 0,
        ..RlvrConfig::default()
    };
    let c = ctx("too-long", "rl");
    let s = run_rlvr(&cfg, &c, &init, &sync_actors()).unwrap();
    let state = read_trainer_state(&s.output, StageKind::Rlvr).unwrap();
    assert_eq!(state.prompts_too_long, want);
    // every prompt too long: an error that says so
    let e = run_rlvr(
        &RlvrConfig {
            max_prompt_tokens: shortest - 1,
            ..cfg
        },
        &ctx("too-long-all", "rl"),
        &init,
        &sync_actors(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("longer than max_prompt_tokens"), "{e}");
}
