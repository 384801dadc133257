//! `prism run configs/sft-tiny.toml` end to end from the binary, into a temp run directory.

use std::path::Path;
use std::process::{Command, Output};

use prism::algo::adamw::{AdamW, AdamWConfig};
use prism::models::Qwen3Vl;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// `prism run configs/sft-tiny.toml --out <out> --set <s>…` from the crate root, quietly.
fn prism_run(out: &Path, sets: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prism"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "configs/sft-tiny.toml", "--out"])
        .arg(out)
        .env("RUST_LOG", "warn");
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}

#[test]
fn prism_run_sft_tiny_writes_a_loadable_checkpoint_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // the shipped config, shortened so the test stays light
    let res = prism_run(&out, &["stages.0.steps=6", "stages.0.eval_every=3"]);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "prism run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        stdout.contains("stage sft (sft): 6 steps (0 skipped)"),
        "{stdout}"
    );

    let resolved = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("steps = 6"), "{resolved}");
    assert!(out.join("data/sft_teacher.jsonl").exists());
    assert!(out.join("init/config.json").exists());

    let ckpt = out.join("sft/final");
    let model = Qwen3Vl::load(&ckpt, Device::Cpu, Kind::Float).unwrap();
    prism::models::processor::Processor::from_dir(&ckpt).unwrap();
    // the optimizer state restores into an AdamW over the checkpoint's parameters
    let state = Tensor::read_safetensors(ckpt.join("optimizer.safetensors")).unwrap();
    let mut opt = AdamW::with_default_groups(
        AdamWConfig::default(),
        model.named_parameters().into_iter().collect(),
    )
    .unwrap();
    opt.load_state_tensors(&state).unwrap();
    assert_eq!(opt.step_count(), 6);

    let lines: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "eval at step 0 + 6 steps");
    assert!(lines[6]["metrics"]["eval_loss"].as_f64().is_some());
    assert_eq!(lines[6]["step"], 6);
    assert_eq!(lines[6]["stage"], "sft");
    assert!(out.join("sft/DONE.json").is_file());
}

#[test]
fn prism_run_rejects_an_unknown_stage_kind_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let res = prism_run(tmp.path(), &["stages.0.kind=dpo"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("sft-tiny.toml") && err.contains("dpo"),
        "{err}"
    );
    // nothing was written for a rejected config
    assert!(!tmp.path().join("config.resolved.toml").exists());
}

#[test]
fn prism_run_names_a_missing_cuda_device() {
    if tch::Cuda::device_count() > 7 {
        return; // the machine really has a cuda:7
    }
    let tmp = tempfile::tempdir().unwrap();
    let res = prism_run(tmp.path(), &["run.device=cuda:7"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("run.device") && err.contains("cuda:7"),
        "{err}"
    );
}
