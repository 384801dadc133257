//! Parity of the Rust Qwen3-VL / Qwen3-VL-MoE / value model with transformers 5.24 (fp32, eager).
//!
//! Reference data: tests/fixtures/qwen3_vl/reference.safetensors, written by
//! tests/fixtures/gen_qwen3_vl.py from the tiny checkpoints next to it (dense tied hub-style,
//! MoE untied hub-style sharded, MoE + `score` value head in transformers-5 layout).

use std::path::{Path, PathBuf};

use prism::models::rope::{RopeTokens, get_rope_index};
use prism::models::weights::Checkpoint;
use prism::models::{
    AttnImpl, GenerationConfig, KvCache, ModelInputs, Qwen3Vl, Sampling, StopReason, Trace,
    generation, values_at_last_token,
};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
/// bf16 rust vs bf16 transformers (observed: bit-identical; one bf16 ulp at 8..16 is 0.0625).
const BF16_TOL: f64 = 0.02;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl")
}

struct Reference(Checkpoint);

impl Reference {
    fn open() -> Self {
        Reference(Checkpoint::open(&fixtures().join("reference.safetensors")).expect("reference"))
    }
    fn get(&self, name: &str) -> Tensor {
        self.0
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn inputs(&self, case: &str) -> ModelInputs {
        let mut i = ModelInputs::text(
            self.get(&format!("{case}.input_ids")),
            self.get(&format!("{case}.attention_mask")),
        );
        if self.has(&format!("{case}.pixel_values")) {
            i = i.with_images(
                self.get(&format!("{case}.pixel_values")),
                self.get(&format!("{case}.image_grid_thw")),
            );
        }
        i
    }
}

fn model(which: &str) -> Qwen3Vl {
    let dir = match which {
        "dense" => "tiny-qwen3-vl",
        "moe" => "tiny-qwen3-vl-moe",
        "value" => "tiny-qwen3-vl-moe-value",
        _ => unreachable!(),
    };
    Qwen3Vl::load(&fixtures().join(dir), Device::Cpu, Kind::Float).expect("load fixture model")
}

/// Max |a - b| over the rows where `mask [B, S]` is 1 (a, b: `[B, S, ...]`).
fn max_diff_valid(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let d = (a - b).abs().to_kind(Kind::Float);
    let d = if d.dim() > 2 {
        d.flatten(2, -1).amax([2].as_slice(), false)
    } else {
        d
    };
    let d = d * mask.to_kind(Kind::Float);
    f64::try_from(d.max()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    f64::try_from((a - b).abs().max()).unwrap()
}

fn trace_get<'a>(trace: &'a Trace, name: &str) -> &'a Tensor {
    &trace
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no trace {name}"))
        .1
}

const CASES: [&str; 3] = ["single", "batch_left_pad", "text_only"];

#[test]
fn positions_and_rope_deltas_match() {
    let r = Reference::open();
    let tokens = RopeTokens {
        image_token_id: 412,
        video_token_id: 413,
        spatial_merge_size: 2,
    };
    for case in CASES {
        let i = r.inputs(case);
        let (pos, deltas) = get_rope_index(
            &i.input_ids,
            &i.attention_mask,
            i.image_grid_thw.as_ref(),
            None,
            tokens,
        )
        .unwrap();
        assert!(
            pos.equal(&r.get(&format!("{case}.position_ids"))),
            "{case}: positions differ"
        );
        let want =
            Vec::<i64>::try_from(r.get(&format!("{case}.rope_deltas")).flatten(0, -1)).unwrap();
        assert_eq!(deltas, want, "{case}: rope deltas");
    }
}

#[test]
fn logits_match_dense_and_moe() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    for which in ["dense", "moe"] {
        let mut m = model(which);
        for imp in [AttnImpl::Sdpa, AttnImpl::Eager] {
            m.set_attn_impl(imp);
            for case in CASES {
                let i = r.inputs(case);
                let logits = m.forward(&i, None).unwrap();
                let want = r.get(&format!("{which}.{case}.logits"));
                let finite = bool::try_from(logits.isfinite().all()).unwrap();
                assert!(finite, "pad rows must stay finite");
                let d = max_diff_valid(&logits, &want, &i.attention_mask);
                println!("{which}.{case} {imp:?}: max |Δlogits| = {d:.3e}");
                assert!(d < TOL, "{which}.{case} {imp:?}: max |Δlogits| = {d}");
            }
        }
    }
}

#[test]
fn values_match_value_model() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("value");
    assert_eq!(m.heads().value_head.unwrap().name, "score");
    assert!(
        m.logits(&Tensor::zeros([1, 64], (Kind::Float, Device::Cpu)))
            .is_err()
    );
    for case in CASES {
        let i = r.inputs(case);
        let v = m.values(&i).unwrap();
        let want = r.get(&format!("value.{case}.values")).squeeze_dim(-1);
        let d = max_diff_valid(&v, &want, &i.attention_mask);
        println!("value.{case}: max |Δvalues| = {d:.3e}");
        assert!(d < TOL, "value.{case}: {d}");
        if case == "batch_left_pad" {
            let last = values_at_last_token(&v, &i.attention_mask).unwrap();
            let d = max_diff(&last, &r.get("value.batch_left_pad.values_last_token"));
            assert!(d < TOL, "values_last_token: {d}");
        }
    }
}

#[test]
fn intermediates_match() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    for which in ["dense", "moe"] {
        let m = model(which);
        for case in ["single", "text_only"] {
            let i = r.inputs(case);
            let mut trace = Trace::new();
            m.forward_traced(&i, &mut trace).unwrap();
            let mut names: Vec<String> =
                ["inputs_embeds", "layer0", "layer1", "layer2", "final_norm"]
                    .iter()
                    .map(|n| format!("text.{n}"))
                    .collect();
            if case == "single" {
                names.extend(
                    [
                        "patch_embed",
                        "pos_embeds",
                        "block0",
                        "block1",
                        "merger",
                        "deepstack0",
                        "deepstack1",
                    ]
                    .iter()
                    .map(|n| format!("vision.{n}")),
                );
            }
            for n in names {
                let want = r.get(&format!("{which}.{case}.dbg.{n}"));
                let d = max_diff(trace_get(&trace, &n), &want);
                assert!(d < TOL, "{which}.{case}.{n}: {d}");
            }
        }
    }
}

#[test]
fn router_logits_and_expert_choices_match() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    for which in ["moe", "value"] {
        let m = model(which);
        for case in CASES {
            let i = r.inputs(case);
            let out = m.forward_hidden(&i, None, None).unwrap();
            assert_eq!(out.router_logits.len(), 3);
            let valid = i.attention_mask.flatten(0, -1).nonzero().squeeze_dim(-1);
            for (l, got) in out.router_logits.iter().enumerate() {
                let want = r.get(&format!("{which}.{case}.dbg.text.router_logits{l}"));
                let (got, want) = (got.index_select(0, &valid), want.index_select(0, &valid));
                let d = max_diff(&got, &want);
                assert!(d < TOL, "{which}.{case}.router_logits{l}: {d}");
                let top = |t: &Tensor| t.topk(2, -1, true, true).1.sort(-1, false).0;
                assert!(
                    top(&got).equal(&top(&want)),
                    "{which}.{case}: expert choices differ in layer {l}"
                );
            }
        }
    }
}

/// Greedy decoding with the cache reproduces HF's tokens and step logits, and each cached step
/// equals a full recompute of the whole sequence.
#[test]
fn greedy_generation_and_cached_decode_match() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    for which in ["dense", "moe"] {
        let m = model(which);
        for case in ["single", "batch_left_pad"] {
            let i = r.inputs(case);
            let (b, s) = i.input_ids.size2().unwrap();
            let want_ids = r
                .get(&format!("{which}.{case}.greedy_output_ids"))
                .narrow(1, s, 8);
            let want_logits = r.get(&format!("{which}.{case}.gen_logits"));
            // 1. generate()
            let cfg = GenerationConfig {
                max_new_tokens: 8,
                ..GenerationConfig::default()
            };
            let outs = generation::generate(&m, &i, &cfg).unwrap();
            for (row, o) in outs.iter().enumerate() {
                let want = Vec::<i64>::try_from(want_ids.get(row as i64)).unwrap();
                assert_eq!(o.token_ids, want, "{which}.{case} row {row}");
                assert_eq!(o.stop_reason, StopReason::Length);
                assert_eq!(o.logprobs.len(), 8);
            }
            // 2. Manual cached decode vs HF step logits and vs full recompute.
            let mut cache: KvCache = m.new_cache();
            let mut logits = m.forward(&i, Some(&mut cache)).unwrap().select(1, s - 1);
            let mut ids = i.input_ids.shallow_clone();
            let mut mask = i.attention_mask.shallow_clone();
            for step in 0..8 {
                let d = max_diff(&logits, &want_logits.select(1, step));
                assert!(d < TOL, "{which}.{case} step {step}: {d}");
                let next = want_ids.narrow(1, step, 1);
                ids = Tensor::cat(&[&ids, &next], 1);
                mask = Tensor::cat(
                    &[&mask, &Tensor::ones([b, 1], (Kind::Int64, Device::Cpu))],
                    1,
                );
                let step_in = ModelInputs::text(
                    next.shallow_clone(),
                    Tensor::ones([b, 1], (Kind::Int64, Device::Cpu)),
                );
                logits = m.forward(&step_in, Some(&mut cache)).unwrap().select(1, 0);
                let mut full = ModelInputs::text(ids.shallow_clone(), mask.shallow_clone());
                full.pixel_values = i.pixel_values.as_ref().map(Tensor::shallow_clone);
                full.image_grid_thw = i.image_grid_thw.as_ref().map(Tensor::shallow_clone);
                let recompute = m.forward(&full, None).unwrap().select(1, s + step);
                let d = max_diff(&logits, &recompute);
                assert!(
                    d < TOL,
                    "{which}.{case} step {step}: cached vs recompute {d}"
                );
            }
            assert_eq!(cache.len(), s + 8);
        }
    }
}

#[test]
fn sampling_is_seeded_per_request_and_logprobs_are_behavioural() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("dense");
    let i = r.inputs("batch_left_pad");
    let cfg = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 0.7,
            top_k: 50,
            top_p: 0.9,
        },
        max_new_tokens: 6,
        seed: 1234,
        ..GenerationConfig::default()
    };
    let a = generation::generate(&m, &i, &cfg).unwrap();
    // Disturb the global torch RNG: our sampling must not depend on it.
    tch::manual_seed(99);
    let _ = Tensor::randn([10], (Kind::Float, Device::Cpu));
    let b = generation::generate(&m, &i, &cfg).unwrap();
    assert_eq!(a, b, "same seed, same output");
    let other = generation::generate(
        &m,
        &i,
        &GenerationConfig {
            seed: 4321,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a, other, "another seed should change something");
    // Per-row seeds: row 1 alone (batch of one) samples what it sampled as row 1 of the batch.
    let seeds = GenerationConfig {
        row_seeds: Some(vec![11, 22]),
        ..cfg.clone()
    };
    let both = generation::generate(&m, &i, &seeds).unwrap();
    let row1 = ModelInputs::text(
        i.input_ids.narrow(0, 1, 1),
        i.attention_mask.narrow(0, 1, 1),
    )
    .with_images(
        i.pixel_values.as_ref().unwrap().narrow(0, 24, 16),
        i.image_grid_thw.as_ref().unwrap().narrow(0, 1, 1),
    );
    let alone = GenerationConfig {
        row_seeds: Some(vec![22]),
        ..cfg.clone()
    };
    let one = generation::generate(&m, &row1, &alone).unwrap();
    // Same tokens; log-probs equal up to batched-vs-single float rounding.
    assert_eq!(
        one[0].token_ids, both[1].token_ids,
        "per-row seed: batch-independent"
    );
    for (a, b) in one[0].logprobs.iter().zip(&both[1].logprobs) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let bad = GenerationConfig {
        row_seeds: Some(vec![1]),
        ..cfg.clone()
    };
    assert!(generation::generate(&m, &i, &bad).is_err());
    // Behaviour log-probs: recompute the filtered distribution from a full forward.
    let (_, s) = i.input_ids.size2().unwrap();
    for (row, o) in a.iter().enumerate() {
        assert!(o.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        let row_ids = i.input_ids.get(row as i64).unsqueeze(0);
        let row_mask = i.attention_mask.get(row as i64).unsqueeze(0);
        let generated = Tensor::from_slice(&o.token_ids).unsqueeze(0);
        let n = o.token_ids.len() as i64;
        let ids = Tensor::cat(&[&row_ids, &generated], 1);
        let mask = Tensor::cat(
            &[&row_mask, &Tensor::ones([1, n], (Kind::Int64, Device::Cpu))],
            1,
        );
        let grid = i
            .image_grid_thw
            .as_ref()
            .unwrap()
            .get(row as i64)
            .unsqueeze(0);
        let patches: i64 = Vec::<i64>::try_from(&grid.flatten(0, -1))
            .unwrap()
            .iter()
            .product();
        let offset = if row == 0 { 0 } else { 24 };
        let px = i.pixel_values.as_ref().unwrap().narrow(0, offset, patches);
        let full = ModelInputs::text(ids, mask).with_images(px, grid);
        let logits = m.forward(&full, None).unwrap();
        for (k, (&tok, &lp)) in o.token_ids.iter().zip(&o.logprobs).enumerate() {
            let l = logits.get(0).get(s - 1 + k as i64);
            // Rebuild temperature / top-k / top-p by hand.
            let x = l / 0.7;
            let (sorted, order) = x.sort(-1, true);
            let kept = sorted.narrow(0, 0, 50);
            let p = kept.softmax(-1, Kind::Float);
            let cum = Vec::<f32>::try_from(p.cumsum(0, Kind::Float)).unwrap();
            let pv = Vec::<f32>::try_from(&p).unwrap();
            let keep_n = (0..50).take_while(|&j| cum[j] - pv[j] <= 0.9).count();
            let kept = kept
                .narrow(0, 0, keep_n as i64)
                .log_softmax(-1, Kind::Float);
            let ord = Vec::<i64>::try_from(order.narrow(0, 0, keep_n as i64)).unwrap();
            let pos = ord
                .iter()
                .position(|&t| t == tok)
                .expect("sampled token is in the nucleus");
            let want = f64::try_from(kept.get(pos as i64)).unwrap();
            assert!(
                (want - lp as f64).abs() < 1e-4,
                "row {row} step {k}: {want} vs {lp}"
            );
        }
    }
}

#[test]
fn stop_tokens_and_context_errors() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("dense");
    let i = r.inputs("single");
    let (_, s) = i.input_ids.size2().unwrap();
    let greedy = r.get("dense.single.greedy_output_ids").narrow(1, s, 8);
    let greedy = Vec::<i64>::try_from(greedy.get(0)).unwrap();
    // Stop on the 3rd greedy token: two tokens come back, the stop token is reported.
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        stop_token_ids: vec![greedy[2]],
        ..Default::default()
    };
    let first = greedy.iter().position(|&t| t == greedy[2]).unwrap();
    let o = &generation::generate(&m, &i, &cfg).unwrap()[0];
    assert_eq!(o.token_ids, greedy[..first].to_vec());
    assert!(matches!(o.stop_reason, StopReason::Stop { token_id, .. } if token_id == greedy[2]));
    // Suppressing the first greedy token changes the first output.
    let cfg = GenerationConfig {
        max_new_tokens: 1,
        suppress_token_ids: vec![greedy[0]],
        ..Default::default()
    };
    let o = &generation::generate(&m, &i, &cfg).unwrap()[0];
    assert_ne!(o.token_ids[0], greedy[0]);
    // Prompt longer than the context (4096).
    let long = Tensor::full([1, 5000], 5, (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([1, 5000], (Kind::Int64, Device::Cpu));
    let e = generation::generate(
        &m,
        &ModelInputs::text(long, mask),
        &GenerationConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("context"), "{e}");
    // Right padding is refused for generation.
    let ids = Tensor::from_slice(&[5i64, 6, 0]).view([1, 3]);
    let mask = Tensor::from_slice(&[1i64, 1, 0]).view([1, 3]);
    let e = generation::generate(
        &m,
        &ModelInputs::text(ids, mask),
        &GenerationConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("left padding"), "{e}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("dense");
    let i = r.inputs("single");
    // Out-of-vocabulary id.
    let ids = Tensor::from_slice(&[1i64, 9999]).view([1, 2]);
    let e = m
        .forward(
            &ModelInputs::text(ids, Tensor::ones([1, 2], (Kind::Int64, Device::Cpu))),
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("input_ids"), "{e}");
    // Image tokens without pixels.
    let e = m
        .forward(
            &ModelInputs::text(
                i.input_ids.shallow_clone(),
                i.attention_mask.shallow_clone(),
            ),
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("image_grid_thw"), "{e}");
    // Wrong number of patch rows.
    let px = i.pixel_values.as_ref().unwrap().narrow(0, 0, 20);
    let bad = ModelInputs::text(
        i.input_ids.shallow_clone(),
        i.attention_mask.shallow_clone(),
    )
    .with_images(px, i.image_grid_thw.as_ref().unwrap().shallow_clone());
    let e = m.forward(&bad, None).unwrap_err();
    assert!(e.to_string().contains("pixel_values"), "{e}");
    // Mask shape mismatch.
    let e = m
        .forward(
            &ModelInputs::text(
                i.input_ids.shallow_clone(),
                Tensor::ones([1, 3], (Kind::Int64, Device::Cpu)),
            ),
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("attention_mask"), "{e}");
}

/// bf16 loading: parameters become bf16 and the forward follows transformers' bf16 numerics
/// (reference from tests/fixtures/gen_qwen3_vl_extra.py; HF bf16 itself is 0.2-0.4 away from
/// fp32 on these logits, so the bound below is far tighter than bf16-vs-fp32).
#[test]
fn bf16_load_follows_transformers_bf16() {
    let r = Reference::open();
    let b =
        Checkpoint::open(&fixtures().join("../qwen3_vl_extra/reference_bf16.safetensors")).unwrap();
    let _g = tch::no_grad_guard();
    let i = r.inputs("single");
    for (which, dir) in [
        ("dense", "tiny-qwen3-vl"),
        ("moe", "tiny-qwen3-vl-moe"),
        ("value", "tiny-qwen3-vl-moe-value"),
    ] {
        let mut m = Qwen3Vl::load(&fixtures().join(dir), Device::Cpu, Kind::BFloat16).unwrap();
        m.set_attn_impl(AttnImpl::Eager);
        assert!(
            m.named_parameters()
                .values()
                .all(|t| t.kind() == Kind::BFloat16)
        );
        let (got, want) = if which == "value" {
            (
                m.values(&i).unwrap(),
                b.tensor("value.single.values_bf16").unwrap(),
            )
        } else {
            (
                m.forward(&i, None).unwrap(),
                b.tensor(&format!("{which}.single.logits_bf16")).unwrap(),
            )
        };
        assert_eq!(got.kind(), Kind::BFloat16);
        // Left padding in bf16 with SDPA: fully masked pad rows stay finite (no NaN leaks).
        m.set_attn_impl(AttnImpl::Sdpa);
        let pad = r.inputs("batch_left_pad");
        let out = m.forward_hidden(&pad, None, None).unwrap().hidden;
        let finite = bool::try_from(out.isfinite().all()).unwrap();
        assert!(finite, "{which}: non-finite bf16 hidden");
        let d = max_diff(&got.to_kind(Kind::Float), &want);
        println!("{which}: bf16 rust vs bf16 transformers: {d:.3e}");
        assert!(d < BF16_TOL, "{which}: bf16 max diff {d}");
    }
}

/// Right padding gives the same positions and logits for the real tokens as left padding
/// (positions come from get_rope_index over valid tokens only).
#[test]
fn right_padding_matches_left_padding_on_valid_tokens() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("dense");
    let left = r.inputs("batch_left_pad");
    // The right-padded case has the same images; its pixel values were not stored.
    let right = r.inputs("batch_right_pad").with_images(
        left.pixel_values.as_ref().unwrap().shallow_clone(),
        r.get("batch_right_pad.image_grid_thw"),
    );
    let ll = m.forward(&left, None).unwrap();
    let rl = m.forward(&right, None).unwrap();
    let lo = m.forward_hidden(&left, None, None).unwrap().position_ids;
    let ro = m.forward_hidden(&right, None, None).unwrap().position_ids;
    for row in 0..2 {
        let lv = left.attention_mask.get(row).nonzero().squeeze_dim(-1);
        let rv = right.attention_mask.get(row).nonzero().squeeze_dim(-1);
        let pick = |t: &Tensor, idx: &Tensor| t.get(row).index_select(0, idx);
        assert!(
            pick(&left.input_ids, &lv).equal(&pick(&right.input_ids, &rv)),
            "same tokens"
        );
        let d = max_diff(&pick(&ll, &lv), &pick(&rl, &rv));
        assert!(d < TOL, "row {row}: {d}");
        let lp = lo.select(1, row).index_select(1, &lv);
        let rp = ro.select(1, row).index_select(1, &rv);
        assert!(lp.equal(&rp), "row {row}: positions differ");
    }
}

/// An image followed by a 2-group video (timestamps between the groups): positions, rope
/// deltas and logits match transformers; exercises video merging and the joint deepstack order.
/// Reference: tests/fixtures/gen_qwen3_vl_extra.py.
#[test]
fn image_and_video_match() {
    let v = Checkpoint::open(&fixtures().join("../qwen3_vl_extra/reference_video.safetensors"))
        .unwrap();
    let get = |n: &str| v.tensor(&format!("image_video.{n}")).unwrap();
    let _g = tch::no_grad_guard();
    let mut i = ModelInputs::text(get("input_ids"), get("attention_mask"))
        .with_images(get("pixel_values"), get("image_grid_thw"));
    i.pixel_values_videos = Some(get("pixel_values_videos"));
    i.video_grid_thw = Some(get("video_grid_thw"));
    let tokens = RopeTokens {
        image_token_id: 412,
        video_token_id: 413,
        spatial_merge_size: 2,
    };
    let (pos, deltas) = get_rope_index(
        &i.input_ids,
        &i.attention_mask,
        i.image_grid_thw.as_ref(),
        i.video_grid_thw.as_ref(),
        tokens,
    )
    .unwrap();
    assert!(pos.equal(&get("position_ids")), "positions differ");
    assert_eq!(
        deltas,
        Vec::<i64>::try_from(get("rope_deltas").flatten(0, -1)).unwrap()
    );
    for which in ["dense", "moe"] {
        let logits = model(which).forward(&i, None).unwrap();
        let want = v.tensor(&format!("{which}.image_video.logits")).unwrap();
        let d = max_diff(&logits, &want);
        println!("{which}.image_video: max |Δlogits| = {d:.3e}");
        assert!(d < TOL, "{which}: {d}");
    }
}

/// A batch where one row stops early: the other row's continuation is unaffected (finished rows
/// are dropped from the cache).
#[test]
fn early_stop_of_one_row_leaves_the_other_intact() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("moe");
    let i = r.inputs("batch_left_pad");
    let (_, s) = i.input_ids.size2().unwrap();
    let greedy = r
        .get("moe.batch_left_pad.greedy_output_ids")
        .narrow(1, s, 8);
    let rows: Vec<Vec<i64>> = (0..2)
        .map(|b| Vec::<i64>::try_from(greedy.get(b)).unwrap())
        .collect();
    // Stop token: the first token of row 0 that row 1 does not produce before its own end.
    let stop = *rows[0]
        .iter()
        .find(|t| !rows[1].contains(t))
        .expect("a distinguishing token");
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        stop_token_ids: vec![stop],
        ..Default::default()
    };
    let outs = generation::generate(&m, &i, &cfg).unwrap();
    let cut = rows[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(outs[0].token_ids, rows[0][..cut].to_vec());
    assert!(matches!(outs[0].stop_reason, StopReason::Stop { token_id, .. } if token_id == stop));
    assert_eq!(
        outs[1].token_ids, rows[1],
        "row 1 must continue as without the stop"
    );
    assert_eq!(outs[1].stop_reason, StopReason::Length);
}

/// Explicit 2-D positions (verl's critic passes the text row) are used on all three axes; for
/// text-only input they coincide with get_rope_index.
#[test]
fn explicit_positions_are_honoured() {
    let r = Reference::open();
    let _g = tch::no_grad_guard();
    let m = model("dense");
    let mut i = r.inputs("text_only");
    let base = m.forward(&i, None).unwrap();
    let s = i.input_ids.size()[1];
    i.position_ids = Some(Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0));
    assert!(m.forward(&i, None).unwrap().equal(&base));
    i.position_ids = Some(Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0) + 5);
    assert!(!m.forward(&i, None).unwrap().equal(&base));
    i.position_ids = Some(Tensor::zeros([2, s], (Kind::Int64, Device::Cpu)));
    assert!(m.forward(&i, None).is_err());
}

/// Training goes through the same forward: gradients reach the vision tower, the routed
/// experts, the router and the value head.
#[test]
fn gradients_reach_every_part() {
    fn assert_send<T: Send>() {}
    assert_send::<Qwen3Vl>();
    let r = Reference::open();
    let m = model("value");
    let i = r.inputs("single");
    let v = m.values(&i).unwrap();
    v.sum(Kind::Float).backward();
    let p = m.named_parameters();
    for name in [
        "score.weight",
        "score.bias",
        "model.visual.patch_embed.proj.weight",
        "model.visual.pos_embed.weight",
        "model.visual.deepstack_merger_list.1.linear_fc2.weight",
        "model.language_model.layers.0.mlp.gate.weight",
        "model.language_model.layers.2.mlp.experts.gate_up_proj",
        "model.language_model.embed_tokens.weight",
    ] {
        let g = p[name].grad();
        assert!(g.defined(), "{name}: no gradient");
        assert!(
            f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0,
            "{name}: zero gradient"
        );
    }
}
