//! Behaviour of src/algo/ beyond the golden vectors: "fast vs simple" equivalence of the
//! vectorised group statistics, edge cases (padding with NaN, empty masks, singleton and
//! all-invalid groups), option validation, typed errors on bad tensors, and the optimizer's
//! low-precision and checkpoint paths.

use prism::algo::AlgoError;
use prism::algo::adamw::{self, AdamW, AdamWConfig, LrSchedule};
use prism::algo::advantage::{
    self, GroupNorm, Groups, MultiRewardMode, MultiRewardOptions, MultiRewardScores, OverlongBuffer,
};
use prism::algo::discriminator::{self, BtOptions, SegmentScores};
use prism::algo::numerics;
use prism::algo::policy_loss::{
    self, Aggregation, Clip, GlobalBatch, KlEstimator, KlPenalty, PolicyBatch, PolicyLoss,
    RatioLevel,
};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// The obvious loop: for each rollout, collect its group's members and normalise.
fn group_normalize_loop(x: &[f64], ids: &[i64], eps: f64, scale: bool) -> Vec<f64> {
    x.iter()
        .zip(ids)
        .map(|(xi, id)| {
            let members: Vec<f64> = x
                .iter()
                .zip(ids)
                .filter(|(_, j)| *j == id)
                .map(|(v, _)| *v)
                .collect();
            let n = members.len() as f64;
            let (mean, std) = if members.len() == 1 {
                (0.0, 1.0)
            } else {
                let mean = members.iter().sum::<f64>() / n;
                let var = members.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                (mean, var.sqrt())
            };
            if scale {
                (xi - mean) / (std + eps)
            } else {
                xi - mean
            }
        })
        .collect()
}

#[test]
fn vectorised_group_normalisation_equals_the_loop() {
    tch::manual_seed(11);
    for trial in 0..20 {
        let b = 1 + trial * 3;
        let ids = Tensor::randint(1 + trial / 2, [b], (Kind::Int64, CPU)) * 7 - 3;
        let x = Tensor::randn([b], (Kind::Double, CPU));
        let groups = Groups::from_ids(&ids).unwrap();
        let ids_v = Vec::<i64>::try_from(&ids).unwrap();
        for scale in [true, false] {
            let opts = GroupNorm {
                eps: 1e-6,
                scale_by_std: scale,
            };
            let fast = to_vec(&advantage::group_normalize(&x, &groups, opts).unwrap());
            let slow = group_normalize_loop(&to_vec(&x), &ids_v, 1e-6, scale);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() < 1e-10, "trial {trial}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn contiguous_groups_equal_groups_from_interleaved_ids() {
    let a = Groups::contiguous(3, 4, CPU).unwrap();
    let ids = Tensor::from_slice(&[5i64, 5, 5, 5, 8, 8, 8, 8, 9, 9, 9, 9]);
    let b = Groups::from_ids(&ids).unwrap();
    assert_eq!(a.num_groups(), b.num_groups());
    let x = Tensor::randn([12], (Kind::Float, CPU));
    let ga = advantage::group_normalize(&x, &a, GroupNorm::default()).unwrap();
    let gb = advantage::group_normalize(&x, &b, GroupNorm::default()).unwrap();
    assert_eq!(to_vec(&ga), to_vec(&gb));
}

#[test]
fn string_uids_group_like_integer_ids() {
    let uids = ["b7", "a1", "b7", "zz", "a1", "b7"];
    let by_label = Groups::from_labels(&uids, CPU).unwrap();
    assert_eq!(by_label.num_groups(), 3);
    assert_eq!(
        Vec::<i64>::try_from(by_label.index()).unwrap(),
        vec![0, 1, 0, 2, 1, 0]
    );
    assert_eq!(to_vec(by_label.counts()), vec![3.0, 2.0, 1.0]);
    let by_id = Groups::from_ids(&Tensor::from_slice(&[7i64, 1, 7, 9, 1, 7])).unwrap();
    let x = Tensor::randn([6], (Kind::Float, CPU));
    let a = advantage::group_normalize(&x, &by_label, GroupNorm::default()).unwrap();
    let b = advantage::group_normalize(&x, &by_id, GroupNorm::default()).unwrap();
    assert_eq!(to_vec(&a), to_vec(&b));
}

#[test]
fn multi_reward_invalid_rollouts_rank_below_every_valid_one_and_pay_the_penalty() {
    // one group of 4: two valid (scores 2 and 5), two invalid (scores were zeroed)
    let groups = Groups::contiguous(1, 4, CPU).unwrap();
    let cap = Tensor::from_slice(&[2.0f32, 0.0, 5.0, 0.0]);
    let cot = Tensor::from_slice(&[1.0f32, 0.0, 3.0, 0.0]);
    let fmt = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]);
    let mask = Tensor::ones([4, 2], (Kind::Float, CPU));
    let scores = MultiRewardScores {
        caption: &cap,
        cot: &cot,
        format: Some(&fmt),
        acc: None,
    };
    let out = advantage::prism_multi_reward_advantage(
        scores,
        &mask,
        &groups,
        &MultiRewardOptions::paper(),
    )
    .unwrap();
    let a = to_vec(&out.per_sequence);
    let align = to_vec(&out.align);
    assert_eq!(to_vec(&out.invalid), vec![0.0, 1.0, 0.0, 1.0]);
    // invalid members were re-scored to (min valid) − 1 = 1 (cap) and 0 (cot): equal to each other
    assert!((align[1] - align[3]).abs() < 1e-6);
    assert!(align[1] < align[0] && align[0] < align[2]);
    assert!(
        (a[1] - (align[1] - 1.5)).abs() < 1e-6,
        "mode 1 subtracts p_fmt = 1.5"
    );
    assert!((a[0] - align[0]).abs() < 1e-6);
}

#[test]
fn multi_reward_all_invalid_group_gets_equal_scores_hence_zero_alignment() {
    let groups = Groups::contiguous(2, 3, CPU).unwrap();
    let cap = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0]);
    let fmt = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let mask = Tensor::ones([6, 1], (Kind::Float, CPU));
    let scores = MultiRewardScores {
        caption: &cap,
        cot: &cap,
        format: Some(&fmt),
        acc: None,
    };
    let out = advantage::prism_multi_reward_advantage(
        scores,
        &mask,
        &groups,
        &MultiRewardOptions::paper(),
    )
    .unwrap();
    let a = to_vec(&out.per_sequence);
    for v in &a[..3] {
        assert_eq!(*v, -1.5, "re-scored to −1 each: GN = 0, minus the penalty");
    }
}

#[test]
fn multi_reward_mode_flags_follow_the_original_priority() {
    use MultiRewardMode as M;
    assert_eq!(M::from_flags(false, false, false, false, false), M::Align);
    assert_eq!(
        M::from_flags(true, false, false, false, false),
        M::AccGating
    );
    assert_eq!(
        M::from_flags(true, true, false, false, false),
        M::GatedAlign
    );
    assert_eq!(M::from_flags(true, true, true, false, false), M::Rlvr);
    assert_eq!(M::from_flags(true, true, true, true, false), M::RlvrV2);
    assert_eq!(M::from_flags(true, true, true, true, true), M::SignAlign);
}

#[test]
fn dynamic_sampling_keeps_singletons_and_drops_constant_groups() {
    let ids = Tensor::from_slice(&[1i64, 1, 2, 3, 3]);
    let metric = Tensor::from_slice(&[0.5f32, 0.5, 1.0, 0.0, 1.0]);
    let groups = Groups::from_ids(&ids).unwrap();
    let f = advantage::dynamic_sampling_filter(&groups, &metric).unwrap();
    assert_eq!(Vec::<i64>::try_from(&f.kept).unwrap(), vec![2, 3, 4]);
    assert_eq!(
        Vec::<bool>::try_from(&f.group_kept).unwrap(),
        vec![false, true, true]
    );
}

#[test]
fn overlong_penalty_is_zero_up_to_the_expected_length_and_minus_factor_at_the_limit() {
    let cfg = OverlongBuffer::dapo(8192);
    let l = Tensor::from_slice(&[1i64, 4096, 6144, 8192]);
    let p = to_vec(&advantage::overlong_penalty(&l, &cfg).unwrap());
    assert_eq!(p, vec![0.0, 0.0, -0.5, -1.0]);
    let bad = OverlongBuffer {
        buffer_length: 0,
        ..cfg
    };
    assert!(matches!(
        advantage::overlong_penalty(&l, &bad),
        Err(AlgoError::Config {
            field: "buffer_length",
            ..
        })
    ));
}

// ------------------------------------------------------------------------------------------

fn batch_tensors(seed: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let old = -Tensor::rand([4, 6], (Kind::Float, CPU)) * 2.0;
    let logp = &old + Tensor::randn([4, 6], (Kind::Float, CPU)) * 0.3;
    let lens = Tensor::from_slice(&[6i64, 4, 1, 0]);
    let mask = Tensor::arange(6, (Kind::Int64, CPU))
        .unsqueeze(0)
        .lt_tensor(&lens.unsqueeze(1))
        .to_kind(Kind::Float);
    let adv = Tensor::randn([4, 1], (Kind::Float, CPU)) * &mask;
    (old, logp, adv, mask)
}

fn run(
    cfg: &PolicyLoss,
    old: &Tensor,
    logp: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
) -> (f64, Vec<f64>) {
    let lp = logp.copy().set_requires_grad(true);
    let batch = PolicyBatch {
        log_prob: &lp,
        old_log_prob: old,
        advantages: adv,
        response_mask: mask,
        ref_log_prob: None,
        entropy: None,
        global_batch: None,
    };
    let (loss, _) = policy_loss::policy_loss(cfg, batch).unwrap();
    loss.backward();
    (scalar(&loss), to_vec(&lp.grad()))
}

/// Padding positions may hold anything (NaN log-probs of pad tokens): neither the loss nor the
/// gradient may change. verl's GSPO would turn the whole row into NaN here.
#[test]
fn nan_in_padding_changes_neither_loss_nor_gradient() {
    let (old, logp, adv, mask) = batch_tensors(3);
    let pad = mask.eq(0.0);
    let logp_nan = logp.masked_fill(&pad, f64::NAN);
    let old_nan = old.masked_fill(&pad, f64::INFINITY);
    let adv_nan = adv.masked_fill(&pad, f64::NAN);
    for cfg in [PolicyLoss::grpo(), PolicyLoss::dapo(), PolicyLoss::gspo()] {
        let (l1, g1) = run(&cfg, &old, &logp, &adv, &mask);
        let (l2, g2) = run(&cfg, &old_nan, &logp_nan, &adv_nan, &mask);
        assert_eq!(l1, l2, "{cfg:?}");
        assert_eq!(g1, g2, "{cfg:?}");
        let pads = Vec::<bool>::try_from(pad.flatten(0, -1)).unwrap();
        for (g, p) in g2.iter().zip(pads) {
            if p {
                assert_eq!(*g, 0.0);
            }
        }
    }
}

/// verl 0.6's on-policy shortcut (PRISM_ALGORITHM.md §5.5): old = sg(new) makes r ≡ 1, and the
/// token-mean loss reduces to −mean(A) with gradient −A/N per valid token.
#[test]
fn on_policy_ratio_one_reduces_to_reinforce() {
    let (_, logp, adv, mask) = batch_tensors(4);
    let (loss, grad) = run(&PolicyLoss::grpo(), &logp, &logp, &adv, &mask);
    let n = scalar(&mask.sum(Kind::Float));
    let want = -scalar(&(&adv * &mask).sum(Kind::Float)) / n;
    assert!((loss - want).abs() < 1e-6);
    let want_grad = to_vec(&(-&adv * &mask / n));
    for (a, b) in grad.iter().zip(&want_grad) {
        assert!((a - b).abs() < 1e-7);
    }
}

#[test]
fn all_padding_batch_gives_zero_loss_not_nan() {
    let (old, logp, adv, mask) = batch_tensors(5);
    let empty = mask.zeros_like();
    for cfg in [PolicyLoss::grpo(), PolicyLoss::gspo()] {
        let (loss, grad) = run(&cfg, &old, &logp, &adv, &empty);
        assert_eq!(loss, 0.0);
        assert!(grad.iter().all(|g| *g == 0.0));
    }
}

/// Gradient accumulation: with the mini-batch's normalisers, the micro-batch losses sum to the
/// loss of the whole mini-batch in every aggregation mode.
#[test]
fn micro_batch_losses_with_global_normalisers_sum_to_the_mini_batch_loss() {
    tch::manual_seed(9);
    let loss = Tensor::randn([6, 5], (Kind::Double, CPU));
    let lens = Tensor::from_slice(&[5i64, 0, 3, 1, 4, 2]);
    let mask = Tensor::arange(5, (Kind::Int64, CPU))
        .unsqueeze(0)
        .lt_tensor(&lens.unsqueeze(1));
    let (m1, m2) = (mask.narrow(0, 0, 2), mask.narrow(0, 2, 4));
    let (l1, l2) = (loss.narrow(0, 0, 2), loss.narrow(0, 2, 4));
    let global = GlobalBatch::of_masks(&[&m1, &m2]).unwrap();
    assert_eq!((global.num_tokens, global.num_sequences), (15.0, 5.0));
    for mode in [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenSum,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSumNorm { horizon: Some(8.0) },
    ] {
        let whole = scalar(&policy_loss::aggregate(&loss, &mask, mode).unwrap());
        let parts = scalar(&policy_loss::aggregate_with(&l1, &m1, mode, Some(global)).unwrap())
            + scalar(&policy_loss::aggregate_with(&l2, &m2, mode, Some(global)).unwrap());
        assert!(
            (whole - parts).abs() < 1e-12,
            "{mode:?}: {whole} vs {parts}"
        );
    }
}

/// The vectorised aggregation against the plain double loop, on random masks (incl. empty rows).
#[test]
fn vectorised_aggregation_equals_the_loop() {
    tch::manual_seed(21);
    for trial in 0..10 {
        let (b, t) = (1 + trial % 4, 1 + trial % 5 * 2);
        let loss = Tensor::randn([b, t], (Kind::Double, CPU));
        let mask = Tensor::rand([b, t], (Kind::Double, CPU)).gt(0.4);
        let l: Vec<Vec<f64>> = (0..b).map(|i| to_vec(&loss.get(i))).collect();
        let m: Vec<Vec<bool>> = (0..b)
            .map(|i| Vec::<bool>::try_from(mask.get(i)).unwrap())
            .collect();
        let (mut tok_sum, mut tok_n) = (0.0, 0.0);
        let (mut seq_sums, mut seq_means) = (Vec::new(), Vec::new());
        for i in 0..b as usize {
            let (mut s, mut n) = (0.0, 0.0);
            for j in 0..t as usize {
                if m[i][j] {
                    s += l[i][j];
                    n += 1.0;
                }
            }
            tok_sum += s;
            tok_n += n;
            if n > 0.0 {
                seq_sums.push(s);
                seq_means.push(s / (n + 1e-8));
            }
        }
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let cases = [
            (
                Aggregation::TokenMean,
                if tok_n > 0.0 { tok_sum / tok_n } else { 0.0 },
            ),
            (Aggregation::SeqMeanTokenSum, mean(&seq_sums)),
            (Aggregation::SeqMeanTokenMean, mean(&seq_means)),
            (
                Aggregation::SeqMeanTokenSumNorm { horizon: None },
                mean(&seq_sums) / t as f64,
            ),
        ];
        for (mode, want) in cases {
            let got = scalar(&policy_loss::aggregate(&loss, &mask, mode).unwrap());
            assert!(
                (got - want).abs() < 1e-12,
                "trial {trial} {mode:?}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn empty_batches_are_handled_without_errors() {
    let ids = Tensor::zeros([0], (Kind::Int64, CPU));
    let groups = Groups::from_ids(&ids).unwrap();
    assert!(groups.is_empty());
    assert_eq!(groups.num_groups(), 0);
    let x = Tensor::zeros([0], (Kind::Float, CPU));
    let gn = advantage::group_normalize(&x, &groups, GroupNorm::default()).unwrap();
    assert_eq!(gn.size(), vec![0]);
    let f = advantage::dynamic_sampling_filter(&groups, &x).unwrap();
    assert_eq!(f.kept.size(), vec![0]);
}

#[test]
fn kl_and_entropy_terms_add_to_the_surrogate() {
    let (old, logp, adv, mask) = batch_tensors(6);
    let refp = &logp + 0.1;
    let ent = Tensor::rand([4, 6], (Kind::Float, CPU));
    let cfg = PolicyLoss {
        kl: KlPenalty::Loss {
            estimator: KlEstimator::K3,
            coef: 0.05,
            straight_through: false,
        },
        entropy_coef: 0.01,
        ..PolicyLoss::grpo()
    };
    let batch = PolicyBatch {
        log_prob: &logp,
        old_log_prob: &old,
        advantages: &adv,
        response_mask: &mask,
        ref_log_prob: Some(&refp),
        entropy: Some(&ent),
        global_batch: None,
    };
    let (total, st) = policy_loss::policy_loss(&cfg, batch).unwrap();
    let kl = st.kl.as_ref().unwrap();
    let h = st.entropy.as_ref().unwrap();
    let want = scalar(&st.pg_loss) + 0.05 * scalar(kl) - 0.01 * scalar(h);
    assert!((scalar(&total) - want).abs() < 1e-7);
    // k3 of a constant shift δ = 0.1: e^δ − δ − 1
    assert!((scalar(kl) - (0.1f64.exp() - 1.1)).abs() < 1e-6);
    // missing inputs are errors, not silent zeros
    let no_ref = PolicyBatch {
        ref_log_prob: None,
        ..batch
    };
    assert!(matches!(
        policy_loss::policy_loss(&cfg, no_ref),
        Err(AlgoError::Config { field: "kl", .. })
    ));
    let no_ent = PolicyBatch {
        entropy: None,
        global_batch: None,
        ..batch
    };
    assert!(matches!(
        policy_loss::policy_loss(&cfg, no_ent),
        Err(AlgoError::Config {
            field: "entropy_coef",
            ..
        })
    ));
}

#[test]
fn presets_validate_and_bad_combinations_are_rejected() {
    for p in [PolicyLoss::grpo(), PolicyLoss::dapo(), PolicyLoss::gspo()] {
        p.validate().unwrap();
    }
    let field = |p: PolicyLoss| match p.validate() {
        Err(AlgoError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let gspo_token_mean = PolicyLoss {
        aggregation: Aggregation::TokenMean,
        ..PolicyLoss::gspo()
    };
    assert_eq!(field(gspo_token_mean), "aggregation");
    let gspo_dual = PolicyLoss {
        dual_clip: Some(3.0),
        ..PolicyLoss::gspo()
    };
    assert_eq!(field(gspo_dual), "dual_clip");
    let dual_too_small = PolicyLoss {
        dual_clip: Some(1.0),
        ..PolicyLoss::grpo()
    };
    assert_eq!(field(dual_too_small), "dual_clip");
    let dual_inside_clip = PolicyLoss {
        dual_clip: Some(1.1),
        ..PolicyLoss::grpo()
    };
    assert_eq!(field(dual_inside_clip), "dual_clip");
    let clip_low = PolicyLoss {
        clip: Clip::Decoupled {
            low: 1.0,
            high: 0.2,
        },
        ..PolicyLoss::grpo()
    };
    assert_eq!(field(clip_low), "clip.low");
    let neg_kl = PolicyLoss {
        kl: KlPenalty::Loss {
            estimator: KlEstimator::K1,
            coef: -1.0,
            straight_through: false,
        },
        ..PolicyLoss::grpo()
    };
    assert_eq!(field(neg_kl), "kl.coef");
    let horizon = PolicyLoss {
        aggregation: Aggregation::SeqMeanTokenSumNorm { horizon: Some(0.0) },
        ..PolicyLoss::grpo()
    };
    assert_eq!(field(horizon), "aggregation.horizon");
    assert_eq!(PolicyLoss::gspo().ratio, RatioLevel::Sequence);
}

#[test]
fn bad_tensors_give_typed_errors_naming_the_tensor() {
    let (old, logp, adv, mask) = batch_tensors(7);
    let short_mask = mask.narrow(1, 0, 5);
    let err =
        policy_loss::ppo_token_loss(&logp, &old, &adv, &short_mask, Clip::Symmetric(0.2), None)
            .unwrap_err();
    assert!(
        matches!(
            err,
            AlgoError::Shape {
                name: "response_mask",
                ..
            }
        ),
        "{err}"
    );
    let int_lp = logp.to_kind(Kind::Int64);
    let err = policy_loss::ppo_token_loss(&int_lp, &old, &adv, &mask, Clip::Symmetric(0.2), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AlgoError::Kind {
                name: "log_prob",
                ..
            }
        ),
        "{err}"
    );
    let err = Groups::from_ids(&Tensor::from_slice(&[0.5f32, 1.0])).unwrap_err();
    assert!(
        matches!(
            err,
            AlgoError::Kind {
                name: "group ids",
                ..
            }
        ),
        "{err}"
    );
    let groups = Groups::contiguous(2, 2, CPU).unwrap();
    let err = advantage::group_normalize(
        &Tensor::zeros([5], (Kind::Float, CPU)),
        &groups,
        GroupNorm::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, AlgoError::Shape { name: "scores", .. }),
        "{err}"
    );
    let logits = Tensor::randn([2, 3, 5], (Kind::Float, CPU));
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
    let err = policy_loss::token_log_probs(&logits, &labels).unwrap_err();
    assert!(
        matches!(
            err,
            AlgoError::Config {
                field: "labels",
                ..
            }
        ),
        "{err}"
    );
    let msg = AlgoError::Shape {
        name: "response_mask",
        expected: "[4, 6]".into(),
        got: vec![4, 5],
    }
    .to_string();
    assert!(
        msg.contains("response_mask") && msg.contains("[4, 5]"),
        "{msg}"
    );
}

// ------------------------------------------------------------------------------------------

#[test]
fn bt_scores_are_clipped_and_no_valid_sample_reports_zero_accuracy_not_a_placeholder() {
    let big = Tensor::from_slice(&[50.0f32, -50.0]);
    let s = discriminator::sanitize_scores(&big, Some(10.0)).unwrap();
    assert_eq!(to_vec(&s), vec![10.0, -10.0]);
    let z = Tensor::zeros([2], (Kind::Float, CPU));
    let scores = SegmentScores {
        student_caption: &z,
        student_cot: &z,
        teacher_caption: &big,
        teacher_cot: &big,
    };
    let none = Tensor::from_slice(&[false, false]);
    let (loss, st) =
        discriminator::bradley_terry_loss(scores, &none, None, &BtOptions::default()).unwrap();
    assert_eq!(scalar(&st.pairwise_active), 0.0);
    assert_eq!(scalar(&st.n_valid), 0.0);
    assert_eq!(scalar(&st.cap_acc), 0.0);
    // fallback: 0.01·(−log σ(mean clipped teacher)) twice, teacher mean = 0 → 0.02·ln 2,
    // plus 0.001·R with R = (0 + 0 + 100 + 100)/4 = 50
    let want = 0.02 * std::f64::consts::LN_2 + 0.001 * 50.0;
    assert!((scalar(&loss) - want).abs() < 1e-6, "{}", scalar(&loss));
    let bad = BtOptions {
        score_clip: Some(0.0),
        ..BtOptions::default()
    };
    assert!(matches!(
        discriminator::bradley_terry_loss(scores, &none, None, &bad),
        Err(AlgoError::Config {
            field: "score_clip",
            ..
        })
    ));
}

/// PRISM_ALGORITHM.md §11.7: the warm-up script guessed the padding side from `mask[0, 0]`; with
/// left padding and a longest first row it read garbage for the other rows. We read the last
/// valid token of every row, whatever its padding.
#[test]
fn last_valid_token_is_found_per_row_for_left_and_right_padding() {
    let values = Tensor::from_slice(&[
        1.0f32,
        2.0,
        3.0,
        4.0, // full row (the longest, first)
        0.0,
        0.0,
        7.0,
        8.0, // left-padded
        9.0,
        10.0,
        0.0,
        0.0, // right-padded
        f32::NAN,
        5.0,
        60.0,
        0.0, // clip binds at the last valid token
        1.0,
        1.0,
        1.0,
        1.0, // no valid token
    ])
    .view([5, 4]);
    let mask = Tensor::from_slice(&[
        1i64, 1, 1, 1, //
        0, 0, 1, 1, //
        1, 1, 0, 0, //
        1, 1, 1, 0, //
        0, 0, 0, 0,
    ])
    .view([5, 4]);
    let s =
        discriminator::last_valid_token_scores(&values.unsqueeze(-1), &mask, Some(10.0)).unwrap();
    assert_eq!(to_vec(&s), vec![4.0, 8.0, 10.0, 10.0, 0.0]);
    // gradient flows only into the picked position
    let v = values.nan_to_num(0.0, 0.0, 0.0).set_requires_grad(true);
    discriminator::last_valid_token_scores(&v, &mask, None)
        .unwrap()
        .sum(Kind::Float)
        .backward();
    let g = to_vec(&v.grad());
    assert_eq!(g.iter().sum::<f64>(), 4.0);
    assert_eq!((g[3], g[7], g[9], g[14]), (1.0, 1.0, 1.0, 1.0));

    let lengths = Tensor::from_slice(&[0i64, 9]);
    let c = discriminator::length_corrected_scores(
        &Tensor::from_slice(&[1.0f32, 1.0]),
        &lengths,
        0.5,
        Some(10.0),
    )
    .unwrap();
    let c = to_vec(&c);
    assert!((c[0] - 1.0).abs() < 1e-7 && (c[1] - (1.0 - 0.5 * 10f64.ln())).abs() < 1e-6);
}

#[test]
fn load_balancing_loss_is_one_for_perfectly_balanced_routing_and_rejects_bad_shapes() {
    // uniform router probabilities: f_e·p_e = (k/E)·(1/E) per expert → E·E·(k/E²) = k... with
    // ties broken by topk; the loss is k·(1/E)·E = k for uniform p regardless of the choice
    let logits = vec![Tensor::zeros([6, 4], (Kind::Float, CPU))];
    let l = discriminator::load_balancing_loss(&logits, 4, 2, None).unwrap();
    assert!((scalar(&l) - 2.0).abs() < 1e-6);
    let am = Tensor::ones([2, 2], (Kind::Int64, CPU));
    assert!(matches!(
        discriminator::load_balancing_loss(&logits, 4, 2, Some(&am)),
        Err(AlgoError::Shape {
            name: "attention_mask",
            ..
        })
    ));
    assert!(matches!(
        discriminator::load_balancing_loss(&logits, 4, 5, None),
        Err(AlgoError::Config { field: "top_k", .. })
    ));
    assert!(discriminator::load_balancing_loss(&[], 4, 2, None).is_err());
}

// ------------------------------------------------------------------------------------------

#[test]
fn bf16_parameters_accumulate_tiny_updates_in_fp32_master_weights() {
    let p = Tensor::ones([8], (Kind::BFloat16, CPU)).set_requires_grad(true);
    let cfg = AdamWConfig {
        lr: 1e-6,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::with_default_groups(cfg, vec![("w".into(), p.shallow_clone())]).unwrap();
    for _ in 0..3000 {
        opt.zero_grad();
        p.sum(Kind::Float).backward();
        opt.step(cfg.lr).unwrap();
    }
    // each step moves the master by ≈ lr (Adam's normalised step); bf16's ulp at 1 is 2^-8
    let state: std::collections::HashMap<String, Tensor> =
        opt.state_tensors().into_iter().collect();
    let master = to_vec(&state["master/w"]);
    // (f32 rounding of 1 − 1e-6 steps accumulates ~1e-8 per step, hence the 1e-4 tolerance)
    assert!(
        (master[0] - (1.0 - 3000.0 * 1e-6)).abs() < 1e-4,
        "{}",
        master[0]
    );
    assert_eq!(state["exp_avg/w"].kind(), Kind::Float);
    // the bf16 copy is the rounded master (1 − 0.003 rounds to 1 − 2^-8 or 1)
    let w = to_vec(&p)[0];
    assert!((w - master[0]).abs() <= 2f64.powi(-8), "{w}");

    // without master weights every step rounds back to 1 in bf16: training silently stalls
    let q = Tensor::ones([8], (Kind::BFloat16, CPU)).set_requires_grad(true);
    let no_master = AdamWConfig {
        master_weights: false,
        ..cfg
    };
    let mut opt =
        AdamW::with_default_groups(no_master, vec![("w".into(), q.shallow_clone())]).unwrap();
    for _ in 0..100 {
        opt.zero_grad();
        q.sum(Kind::Float).backward();
        opt.step(cfg.lr).unwrap();
    }
    assert_eq!(to_vec(&q)[0], 1.0);
}

#[test]
fn optimizer_state_import_rejects_missing_extra_and_misshaped_entries() {
    let p = Tensor::zeros([3, 2], (Kind::Float, CPU)).set_requires_grad(true);
    let opt = AdamW::with_default_groups(
        AdamWConfig::default(),
        vec![("w".into(), p.shallow_clone())],
    )
    .unwrap();
    let good = opt.state_tensors();
    let mut fresh = AdamW::with_default_groups(
        AdamWConfig::default(),
        vec![("w".into(), p.shallow_clone())],
    )
    .unwrap();
    fresh.load_state_tensors(&good).unwrap();

    let missing: Vec<(String, Tensor)> = good
        .iter()
        .filter(|(k, _)| k != "exp_avg_sq/w")
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    let err = fresh.load_state_tensors(&missing).unwrap_err();
    assert!(err.to_string().contains("exp_avg_sq/w"), "{err}");

    let mut extra: Vec<(String, Tensor)> = good
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    extra.push((
        "exp_avg/other".into(),
        Tensor::zeros([1], (Kind::Float, CPU)),
    ));
    let err = fresh.load_state_tensors(&extra).unwrap_err();
    assert!(err.to_string().contains("exp_avg/other"), "{err}");

    let misshaped: Vec<(String, Tensor)> = good
        .iter()
        .map(|(k, v)| {
            let v = if k == "exp_avg/w" {
                Tensor::zeros([2, 3], (Kind::Float, CPU))
            } else {
                v.shallow_clone()
            };
            (k.clone(), v)
        })
        .collect();
    let err = fresh.load_state_tensors(&misshaped).unwrap_err();
    assert!(
        matches!(&err, AlgoError::State { name, .. } if name == "exp_avg/w"),
        "{err}"
    );
}

#[test]
fn parameters_without_gradient_are_untouched_and_weight_decay_is_decoupled() {
    let a = Tensor::ones([2, 2], (Kind::Float, CPU)).set_requires_grad(true);
    let b = Tensor::ones([2, 2], (Kind::Float, CPU)).set_requires_grad(true);
    let cfg = AdamWConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::with_default_groups(
        cfg,
        vec![
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ],
    )
    .unwrap();
    // zero gradient on a: only decay acts (θ·(1 − lr·λ)); no gradient on b: untouched
    (&a * 0.0).sum(Kind::Float).backward();
    opt.step(cfg.lr).unwrap();
    assert!(to_vec(&a).iter().all(|v| (v - 0.95).abs() < 1e-7));
    assert!(to_vec(&b).iter().all(|v| *v == 1.0));
}

#[test]
fn grad_clipping_returns_the_norm_and_flags_non_finite_gradients() {
    let p = Tensor::zeros([4], (Kind::Float, CPU)).set_requires_grad(true);
    (&p * Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]))
        .sum(Kind::Float)
        .backward();
    let n = adamw::clip_grad_norm(std::slice::from_ref(&p), 10.0).unwrap();
    assert!((scalar(&n) - 5.0).abs() < 1e-6);
    assert_eq!(
        to_vec(&p.grad()),
        vec![3.0, 4.0, 0.0, 0.0],
        "below max_norm: unchanged"
    );
    let n = adamw::clip_grad_norm(std::slice::from_ref(&p), 1.0).unwrap();
    assert!((scalar(&n) - 5.0).abs() < 1e-6);
    let g = to_vec(&p.grad());
    assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);

    let q = Tensor::zeros([2], (Kind::Float, CPU)).set_requires_grad(true);
    (&q * Tensor::from_slice(&[f32::NAN, 1.0]))
        .sum(Kind::Float)
        .backward();
    let n = adamw::clip_grad_norm(std::slice::from_ref(&q), 1.0).unwrap();
    assert!(!numerics::is_finite(&n).unwrap());
    let err = numerics::check_finite("grad_norm", &n).unwrap_err();
    assert!(
        matches!(err, AlgoError::NonFinite { nan: 1, inf: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("grad_norm"));
}

#[test]
fn all_finite_combines_tensors_without_syncing_semantics() {
    let ok = Tensor::from_slice(&[1.0f32, 2.0]);
    let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
    assert!(bool::try_from(numerics::all_finite(&[&ok, &ok]).unwrap()).unwrap());
    assert!(!bool::try_from(numerics::all_finite(&[&ok, &bad]).unwrap()).unwrap());
    assert!(bool::try_from(numerics::all_finite(&[]).unwrap()).unwrap());
    numerics::check_finite("ok", &ok).unwrap();
}

#[test]
fn schedules_validate_and_warmup_ratio_rounds_up() {
    let s = LrSchedule::cosine_with_warmup_ratio(0.05, 1500).unwrap();
    assert_eq!(
        s,
        LrSchedule::CosineWithWarmup {
            warmup_steps: 75,
            total_steps: 1500
        }
    );
    assert_eq!(s.factor(0), 0.0);
    assert!((s.factor(75) - 1.0).abs() < 1e-12);
    assert!(s.factor(1500).abs() < 1e-12);
    assert_eq!(LrSchedule::Constant.factor(123), 1.0);
    assert!(LrSchedule::cosine_with_warmup_ratio(1.5, 10).is_err());
    assert!(
        LrSchedule::CosineWithWarmup {
            warmup_steps: 20,
            total_steps: 10
        }
        .validate()
        .is_err()
    );
}

/// Cost on CPU at the alignment stage's sizes (64 rollouts × 6144 tokens; 16-sample groups):
/// `cargo test --test algo_behaviour -- --ignored --nocapture cost`. Prints, asserts nothing
/// beyond finiteness; not part of the normal run.
#[test]
#[ignore]
fn cost_at_alignment_sizes() {
    let (b, t) = (64i64, 6144i64);
    tch::manual_seed(1);
    let old = -Tensor::rand([b, t], (Kind::Float, CPU)) * 3.0;
    let logp = (&old + Tensor::randn([b, t], (Kind::Float, CPU)) * 0.1).set_requires_grad(true);
    let mask = Tensor::ones([b, t], (Kind::Float, CPU));
    let groups = Groups::contiguous(4, 16, CPU).unwrap();
    let cap = Tensor::randn([b], (Kind::Float, CPU));
    let fmt = Tensor::rand([b], (Kind::Float, CPU))
        .gt(0.2)
        .to_kind(Kind::Float);
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let start = std::time::Instant::now();
        let n = 5;
        for _ in 0..n {
            f();
        }
        println!(
            "{name}: {:.3} ms",
            start.elapsed().as_secs_f64() * 1e3 / n as f64
        );
    };
    let mut adv = Tensor::zeros([b, t], (Kind::Float, CPU));
    time("prism_multi_reward_advantage [64 x 6144]", &mut || {
        let s = MultiRewardScores {
            caption: &cap,
            cot: &cap,
            format: Some(&fmt),
            acc: None,
        };
        adv = advantage::prism_multi_reward_advantage(
            s,
            &mask,
            &groups,
            &MultiRewardOptions::paper(),
        )
        .unwrap()
        .token_level;
    });
    for cfg in [PolicyLoss::grpo(), PolicyLoss::gspo()] {
        time(
            &format!("policy_loss {:?} fwd+bwd [64 x 6144]", cfg.ratio),
            &mut || {
                let batch = PolicyBatch {
                    log_prob: &logp,
                    old_log_prob: &old,
                    advantages: &adv,
                    response_mask: &mask,
                    ref_log_prob: None,
                    entropy: None,
                    global_batch: None,
                };
                let (loss, _) = policy_loss::policy_loss(&cfg, batch).unwrap();
                loss.backward();
                assert!(numerics::is_finite(&loss).unwrap());
            },
        );
    }
}
