//! Checkpoint I/O of the model core: config dialects, strict loading errors, sharded load,
//! save → reload round trips, random construction and upcycling.

use std::path::{Path, PathBuf};

use prism::models::upcycle::{UpcycleOptions, upcycle, upcycle_dir};
use prism::models::weights::{Checkpoint, save_tensors};
use prism::models::{Heads, ModelInputs, Qwen3Vl, Qwen3VlConfig, ValueHeadConfig};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn single_inputs() -> ModelInputs {
    let r = Checkpoint::open(&fixtures().join("reference.safetensors")).unwrap();
    ModelInputs::text(
        r.tensor("single.input_ids").unwrap(),
        r.tensor("single.attention_mask").unwrap(),
    )
    .with_images(
        r.tensor("single.pixel_values").unwrap(),
        r.tensor("single.image_grid_thw").unwrap(),
    )
}

#[test]
fn both_config_dialects_parse_to_the_same_dims() {
    let hub = Qwen3VlConfig::from_dir(&fixtures().join("tiny-qwen3-vl-moe")).unwrap();
    let v5 = Qwen3VlConfig::from_dir(&fixtures().join("tiny-qwen3-vl-moe-value")).unwrap();
    assert_eq!(
        hub.text_config.moe,
        v5.text_config.moe.clone().map(|mut m| {
            m.router_aux_loss_coef = hub.text_config.moe.as_ref().unwrap().router_aux_loss_coef;
            m
        })
    );
    assert_eq!(hub.text_config.rope_theta, 5e6);
    assert_eq!(v5.text_config.rope_theta, 5e6);
    assert_eq!(hub.text_config.mrope_section, vec![6, 5, 5]);
    assert_eq!(v5.text_config.mrope_section, vec![6, 5, 5]);
    assert_eq!(v5.text_config.moe.as_ref().unwrap().num_experts, 8);
    assert!(!hub.tie_word_embeddings && !v5.tie_word_embeddings);
    assert_eq!(
        v5.value_head,
        Some(ValueHeadConfig {
            name: "score".into(),
            bias: true
        })
    );
    let dense = Qwen3VlConfig::from_dir(&fixtures().join("tiny-qwen3-vl")).unwrap();
    assert!(dense.tie_word_embeddings && !dense.is_moe());
    assert_eq!(dense.vision_config.deepstack_visual_indexes, vec![0, 1]);
    // to_json → parse is the identity.
    let again = Qwen3VlConfig::from_json(&hub.to_json(), Path::new("x")).unwrap();
    assert_eq!(again, hub);
    let again = Qwen3VlConfig::from_json(&v5.to_json(), Path::new("x")).unwrap();
    assert_eq!(again, v5);
}

#[test]
fn config_errors_name_field_and_file() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-qwen3-vl/config.json")).unwrap(),
    )
    .unwrap();
    let f = Path::new("some/config.json");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                v["text_config"]["frobnicate"] = 1.into();
            }),
            "text_config.frobnicate",
        ),
        (
            Box::new(|v| {
                v.as_object_mut()
                    .unwrap()
                    .insert("mystery".into(), 1.into());
            }),
            "`mystery`",
        ),
        (
            Box::new(|v| {
                v["text_config"]
                    .as_object_mut()
                    .unwrap()
                    .remove("hidden_size");
            }),
            "text_config.hidden_size",
        ),
        (
            Box::new(|v| {
                v["vision_config"]["depth"] = "two".into();
            }),
            "vision_config.depth",
        ),
        (
            Box::new(|v| {
                v["text_config"]["rope_scaling"]["mrope_section"] = serde_json::json!([6, 5, 4]);
            }),
            "mrope_section",
        ),
        (
            Box::new(|v| {
                v["model_type"] = "llama".into();
            }),
            "model_type",
        ),
        (
            Box::new(|v| {
                v["text_config"]["sliding_window"] = 128.into();
            }),
            "sliding_window",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("tie_word_embeddings");
                v["text_config"]
                    .as_object_mut()
                    .unwrap()
                    .remove("tie_word_embeddings");
            }),
            "tie_word_embeddings",
        ),
    ];
    for (edit, want) in cases {
        let mut v = base.clone();
        edit(&mut v);
        let e = Qwen3VlConfig::from_json(&v, f).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("some/config.json"),
            "want {want}: {e}"
        );
    }
    // Unknown field through the loader names the file on disk.
    let d = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-qwen3-vl"), d.path());
    let mut v = base.clone();
    v["vision_config"]["window_size"] = 112.into();
    std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
    let e = Qwen3Vl::load(d.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vision_config.window_size") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn loader_errors_name_tensor_and_file() {
    let src = fixtures().join("tiny-qwen3-vl");
    let ck = Checkpoint::open(&src).unwrap();
    let all: Vec<(String, Tensor)> = ck
        .names()
        .map(|n| (n.to_string(), ck.tensor(n).unwrap()))
        .collect();
    let d = tempfile::tempdir().unwrap();
    copy_dir(&src, d.path());
    // Missing tensor + extra tensor + wrong shape, reported together.
    let mut edited: Vec<(String, Tensor)> = all
        .iter()
        .filter(|(n, _)| n != "model.language_model.layers.1.self_attn.k_proj.weight")
        .map(|(n, t)| {
            if n == "model.visual.merger.linear_fc2.bias" {
                (n.clone(), Tensor::zeros([63], (Kind::Float, Device::Cpu)))
            } else {
                (n.clone(), t.shallow_clone())
            }
        })
        .collect();
    edited.push((
        "model.language_model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    save_tensors(d.path(), &edited, u64::MAX).unwrap();
    let e = Qwen3Vl::load(d.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensors (1): model.language_model.layers.1.self_attn.k_proj.weight"),
        "{e}"
    );
    assert!(e.contains("unused tensors (1): model.language_model.layers.9.mlp.up_proj.weight (model.safetensors)"), "{e}");
    assert!(e.contains("model.visual.merger.linear_fc2.bias (model.safetensors): shape [63], model expects [64]"), "{e}");
    // Corrupt (truncated) file.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = Qwen3Vl::load(d.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // Shard listed in the index but absent.
    let d2 = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-qwen3-vl-moe"), d2.path());
    std::fs::remove_file(d2.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = Qwen3Vl::load(d2.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn sharded_hub_checkpoint_and_v5_expert_layout_load() {
    let moe = Checkpoint::open(&fixtures().join("tiny-qwen3-vl-moe")).unwrap();
    assert_eq!(
        moe.meta("model.language_model.layers.0.mlp.experts.gate_up_proj")
            .unwrap()
            .shape,
        vec![8, 64, 48]
    );
    let value = Checkpoint::open(&fixtures().join("tiny-qwen3-vl-moe-value")).unwrap();
    assert_eq!(
        value
            .meta("model.language_model.layers.0.mlp.experts.gate_up_proj")
            .unwrap()
            .shape,
        vec![8, 48, 64]
    );
    let m = Qwen3Vl::load(
        &fixtures().join("tiny-qwen3-vl-moe-value"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let p = m.named_parameters();
    let w = &p["model.language_model.layers.0.mlp.experts.gate_up_proj"];
    assert_eq!(w.size(), vec![8, 64, 48]);
    let file = value
        .tensor("model.language_model.layers.0.mlp.experts.gate_up_proj")
        .unwrap();
    assert!(w.equal(&file.transpose(1, 2)));
}

#[test]
fn save_reload_round_trips_exactly() {
    let _g = tch::no_grad_guard();
    let inputs = single_inputs();
    for (dir, shard) in [
        ("tiny-qwen3-vl", u64::MAX),
        ("tiny-qwen3-vl-moe-value", 300_000),
    ] {
        let m = Qwen3Vl::load(&fixtures().join(dir), Device::Cpu, Kind::Float).unwrap();
        let d = tempfile::tempdir().unwrap();
        m.save_with(d.path(), shard).unwrap();
        if shard != u64::MAX {
            assert!(d.path().join("model.safetensors.index.json").exists());
        }
        let back = Qwen3Vl::load(d.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.heads(), m.heads());
        let (a, b) = (
            m.forward_hidden(&inputs, None, None).unwrap(),
            back.forward_hidden(&inputs, None, None).unwrap(),
        );
        assert!(
            a.hidden.equal(&b.hidden),
            "{dir}: hidden differs after round trip"
        );
        for (n, t) in m.named_parameters() {
            assert!(t.equal(&back.named_parameters()[&n]), "{dir}: {n}");
        }
        // Saved MoE experts are in the hub layout.
        if m.config.is_moe() {
            let ck = Checkpoint::open(d.path()).unwrap();
            assert_eq!(
                ck.meta("model.language_model.layers.0.mlp.experts.down_proj")
                    .unwrap()
                    .shape,
                vec![8, 24, 64]
            );
        }
    }
}

#[test]
fn random_model_runs_and_saves_bf16() {
    let _g = tch::no_grad_guard();
    let cfg = Qwen3VlConfig::from_dir(&fixtures().join("tiny-qwen3-vl")).unwrap();
    let m = Qwen3Vl::new_random(&cfg, &Heads::lm(), Device::Cpu, Kind::BFloat16, 3).unwrap();
    let m2 = Qwen3Vl::new_random(&cfg, &Heads::lm(), Device::Cpu, Kind::BFloat16, 3).unwrap();
    let logits = m.forward(&single_inputs(), None).unwrap();
    assert_eq!(logits.size(), vec![1, 28, 448]);
    assert!(
        logits.equal(&m2.forward(&single_inputs(), None).unwrap()),
        "seeded init is reproducible"
    );
    let d = tempfile::tempdir().unwrap();
    m.save(d.path()).unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(
        ck.meta("model.language_model.norm.weight").unwrap().dtype,
        safetensors::Dtype::BF16
    );
    assert!(
        !ck.contains("lm_head.weight"),
        "tied model writes no lm_head"
    );
    let back = Qwen3Vl::load(d.path(), Device::Cpu, Kind::BFloat16).unwrap();
    assert!(back.forward(&single_inputs(), None).unwrap().equal(&logits));
}

#[test]
fn upcycled_dense_keeps_its_function_and_reloads() {
    let _g = tch::no_grad_guard();
    let dense = Qwen3Vl::load(&fixtures().join("tiny-qwen3-vl"), Device::Cpu, Kind::Float).unwrap();
    let inputs = single_inputs();
    // With zero noise every expert equals the dense MLP and the renormalised top-k weights sum
    // to 1, so the MoE computes the dense function exactly (up to float summation order).
    let opts = UpcycleOptions {
        num_experts: 4,
        top_k: 2,
        noise_std: 0.0,
        seed: 5,
        ..Default::default()
    };
    let (moe, report) = upcycle(&dense, &opts).unwrap();
    assert_eq!(report.upcycled_layers, 3);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let a = dense.forward(&inputs, None).unwrap();
    let b = moe.forward(&inputs, None).unwrap();
    let d = f64::try_from((a - b).abs().max()).unwrap();
    assert!(d < 1e-4, "zero-noise upcycle changed logits by {d}");
    let p = moe.named_parameters();
    let gu = &p["model.language_model.layers.0.mlp.experts.gate_up_proj"];
    assert_eq!(gu.size(), vec![4, 64, 192]);
    let router = &p["model.language_model.layers.0.mlp.gate.weight"];
    let std = f64::try_from(router.std(true)).unwrap();
    assert!((std - 0.02).abs() < 0.004, "router std {std}");
    // Noise: experts differ from each other by about sqrt(2)·σ.
    let (noisy, _) = upcycle(
        &dense,
        &UpcycleOptions {
            noise_std: 0.01,
            ..opts.clone()
        },
    )
    .unwrap();
    let gu = &noisy.named_parameters()["model.language_model.layers.1.mlp.experts.gate_up_proj"];
    let diff = f64::try_from((gu.get(0) - gu.get(1)).std(true)).unwrap();
    assert!(
        (diff - 0.01 * 2f64.sqrt()).abs() < 0.002,
        "expert noise std {diff}"
    );
    // Directory round trip: the written checkpoint loads with its value head.
    let d = tempfile::tempdir().unwrap();
    let r = upcycle_dir(
        &fixtures().join("tiny-qwen3-vl"),
        d.path(),
        Kind::Float,
        &opts,
    )
    .unwrap();
    assert_eq!(r.upcycled_layers, 3);
    assert!(d.path().join("tokenizer.json").exists());
    let back = Qwen3Vl::load(d.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(back.config.model_type, "qwen3_vl_moe");
    assert_eq!(back.heads().value_head, Some(ValueHeadConfig::default()));
    let v = back.values(&inputs).unwrap();
    assert_eq!(v.size(), vec![1, 28]);
    assert!(
        upcycle(&back, &opts).is_err(),
        "a MoE cannot be upcycled again"
    );
}
