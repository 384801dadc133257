//! `prism generate` end to end (the built binary) against transformers' `generate()` on the tiny
//! dense fixture: tests/fixtures/qwen3_vl/reference.safetensors (`dense.single.*`), written by
//! tests/fixtures/gen_qwen3_vl.py. The reference prompt is the `single` case of reference.json:
//! one user turn, the image `image_a_64x96.png`, then "Describe this image.", no system turn.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prism::models::processor::Processor;
use prism::models::weights::Checkpoint;
use tch::{Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl")
}

fn model_dir() -> PathBuf {
    fixtures().join("tiny-qwen3-vl")
}

/// The `single` case's image and prompt, read from reference.json (not hard-coded).
fn single_case() -> (PathBuf, String, Option<String>) {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let messages = v["cases"]["single"]["messages"][0].as_array().unwrap();
    let mut system = None;
    let mut image = None;
    let mut prompt = None;
    for m in messages {
        match m["role"].as_str().unwrap() {
            "system" => system = Some(m["content"].as_str().unwrap().to_string()),
            "user" => {
                for part in m["content"].as_array().unwrap() {
                    match part["type"].as_str().unwrap() {
                        "image" => image = Some(part["image"].as_str().unwrap().to_string()),
                        "text" => prompt = Some(part["text"].as_str().unwrap().to_string()),
                        other => panic!("unexpected part {other}"),
                    }
                }
            }
            other => panic!("unexpected role {other}"),
        }
    }
    (
        fixtures().join("images").join(image.unwrap()),
        prompt.unwrap(),
        system,
    )
}

fn prism(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run prism")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "prism failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<i64> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn logprobs_of(v: &serde_json::Value) -> Vec<f64> {
    v["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn base_args(image: &Path, prompt: &str, system: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "generate".to_string(),
        "--model".into(),
        model_dir().display().to_string(),
        "--image".into(),
        image.display().to_string(),
        "--prompt".into(),
        prompt.to_string(),
    ];
    if let Some(s) = system {
        a.extend(["--system".to_string(), s.to_string()]);
    }
    a
}

#[test]
fn greedy_tokens_and_logprobs_match_transformers_generate() {
    let (image, prompt, system) = single_case();
    let reference = Checkpoint::open(&fixtures().join("reference.safetensors")).unwrap();
    let s = reference
        .tensor("single.input_ids")
        .unwrap()
        .size2()
        .unwrap()
        .1;
    let full = reference.tensor("dense.single.greedy_output_ids").unwrap(); // (1, S+8)
    let steps = full.size()[1] - s;
    let want = Vec::<i64>::try_from(full.get(0).narrow(0, s, steps)).unwrap();
    // HF step logits (1, steps, V) -> log-softmax at the greedy tokens.
    let logits = reference.tensor("dense.single.gen_logits").unwrap();
    let want_lp = Vec::<f64>::try_from(
        logits
            .get(0)
            .log_softmax(-1, Kind::Double)
            .gather(1, &Tensor::from_slice(&want).view([-1, 1]), false)
            .view([-1]),
    )
    .unwrap();

    let mut args = base_args(&image, &prompt, system.as_deref());
    args.extend([
        "--max-new-tokens".into(),
        steps.to_string(),
        "--json".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = json_of(&prism(&args));
    let ids = ids_of(&v);
    assert_eq!(
        ids, want,
        "greedy tokens differ from transformers generate()"
    );
    let lps = logprobs_of(&v);
    assert_eq!(lps.len(), ids.len());
    for (i, (got, want)) in lps.iter().zip(&want_lp).enumerate() {
        assert!(*got <= 0.0, "logprob {i} = {got} > 0");
        assert!((got - want).abs() < 1e-4, "logprob {i}: {got} vs HF {want}");
    }
    // The text is the decoding of the generated ids, special tokens skipped.
    let processor = Processor::from_dir(model_dir()).unwrap();
    let ids_u32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    assert_eq!(
        v["text"].as_str().unwrap(),
        processor.tokenizer.decode(&ids_u32, true).unwrap()
    );
}

#[test]
fn plain_output_is_the_text_and_stop_tokens_end_generation() {
    let (image, prompt, system) = single_case();
    let mut args = base_args(&image, &prompt, system.as_deref());
    args.extend(["--max-new-tokens".into(), "3".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = prism(&args);
    assert!(out.status.success());
    let mut json_args = args.clone();
    json_args.push("--json");
    let v = json_of(&prism(&json_args));
    assert_eq!(ids_of(&v).len(), 3);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", v["text"].as_str().unwrap())
    );
    // No stop token is ever part of token_ids.
    let processor = Processor::from_dir(model_dir()).unwrap();
    let stops: Vec<i64> = processor
        .tokenizer
        .stop_ids()
        .iter()
        .map(|&i| i64::from(i))
        .collect();
    assert!(ids_of(&v).iter().all(|t| !stops.contains(t)));
}

#[test]
fn sampling_is_seeded_and_reports_valid_logprobs() {
    let (image, prompt, system) = single_case();
    let run = |seed: &str| {
        let mut args = base_args(&image, &prompt, system.as_deref());
        args.extend(
            [
                "--max-new-tokens",
                "6",
                "--temperature",
                "1.5",
                "--top-p",
                "0.95",
                "--seed",
                seed,
                "--json",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        json_of(&prism(&args))
    };
    let a = run("7");
    let b = run("7");
    assert_eq!(ids_of(&a), ids_of(&b), "same seed, same tokens");
    assert_eq!(logprobs_of(&a), logprobs_of(&b));
    let lps = logprobs_of(&a);
    assert_eq!(lps.len(), ids_of(&a).len());
    assert!(lps.iter().all(|&l| l <= 0.0 && l.is_finite()), "{lps:?}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (image, prompt, _) = single_case();
    let tmp = tempfile::tempdir().unwrap();
    let stderr = |out: Output| {
        assert!(!out.status.success(), "expected failure");
        String::from_utf8(out.stderr).unwrap()
    };

    // Missing model files: the directory is named.
    let missing = tmp.path().join("no-model");
    let e = stderr(prism(&[
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "hi",
    ]));
    assert!(e.contains("no-model"), "{e}");

    // An undecodable image: its path is named.
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"definitely not a png").unwrap();
    let mut args = base_args(&bad, &prompt, None);
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = stderr(prism(&args));
    assert!(e.contains("broken.png") && e.contains("decode"), "{e}");

    // A missing image file.
    let gone = tmp.path().join("gone.png");
    let args = base_args(&gone, &prompt, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = stderr(prism(&args));
    assert!(e.contains("gone.png"), "{e}");

    // A prompt longer than the model context (4096 positions).
    let long = "apple banana cherry ".repeat(2000);
    let args = base_args(&image, &long, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = stderr(prism(&args));
    assert!(e.contains("maximum of 4095"), "{e}");

    // Bad sampling flags.
    let mut args = base_args(&image, &prompt, None);
    args.extend([
        "--top-p".into(),
        "0".into(),
        "--temperature".into(),
        "1".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = stderr(prism(&args));
    assert!(e.contains("--top-p"), "{e}");
}

/// More prompts through the binary against tests/fixtures/generate/reference.json (written by
/// tests/fixtures/gen_generate_cli.py): a system turn with two images (one RGBA), text only, a
/// tall image with a longer generation, and a prompt whose greedy continuation hits a stop token
/// of generation_config.json (which must end generation and be left out of `token_ids`).
#[test]
fn cases_with_system_several_images_and_stop_tokens_match_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generate");
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let processor = Processor::from_dir(model_dir()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert!(cases.values().any(|c| c["stopped"].as_bool().unwrap()));
    for (name, case) in cases {
        let system = case["system"].as_str();
        let prompt = case["prompt"].as_str().unwrap();
        let images: Vec<PathBuf> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| fixtures().join("images").join(p.as_str().unwrap()))
            .collect();
        let max_new = case["max_new_tokens"].as_u64().unwrap();
        // The conversation prism builds renders to the same prompt text.
        let messages = prism::models::generate_cli::single_turn(system, images.len(), prompt);
        assert_eq!(
            processor.apply_chat_template(&messages, true).unwrap(),
            case["rendered_prompt"].as_str().unwrap(),
            "{name}"
        );
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            model_dir().display().to_string(),
            "--prompt".into(),
            prompt.to_string(),
            "--max-new-tokens".into(),
            max_new.to_string(),
            "--json".into(),
        ];
        for im in &images {
            args.extend(["--image".to_string(), im.display().to_string()]);
        }
        if let Some(s) = system {
            args.extend(["--system".to_string(), s.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = json_of(&prism(&args));
        let want: Vec<i64> = case["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(ids_of(&v), want, "{name}: tokens");
        let want_lp: Vec<f64> = case["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let lps = logprobs_of(&v);
        assert_eq!(lps.len(), want_lp.len(), "{name}");
        for (i, (g, w)) in lps.iter().zip(&want_lp).enumerate() {
            assert!(
                *g <= 0.0 && (g - w).abs() < 1e-4,
                "{name} step {i}: {g} vs {w}"
            );
        }
        assert_eq!(v["text"], case["text"], "{name}: text");
        if case["stopped"].as_bool().unwrap() {
            assert!((want.len() as u64) < max_new, "{name}");
        }
    }
}
