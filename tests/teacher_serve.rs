//! The HTTP teacher ([`HttpTeacher`]) with `prism serve` as the black-box teacher: a real
//! server process on the tiny checkpoint answers every call (text and image prompts, the
//! re-ask turn included), and since a tiny random model never answers in the three-block
//! format, every prompt ends as a reported skip (`on_invalid = "skip"`), paid for once (the
//! answer cache serves it afterwards), and an alignment stage on the toy engines with this
//! teacher runs to the end without restarts.

mod common;
mod serve_server;

use std::collections::HashMap;
use std::sync::Arc;

use prism::actors::engine::{DemoOutcome, TeacherBackend, TeacherFactory};
use prism::actors::messages::{PromptItem, StageKind};
use prism::actors::run_stage;
use prism::actors::toy::{self, ToyOptions};
use prism::teacher::{
    ApiKey, CacheStatus, HttpTeacher, ImageLookup, OnInvalid, TeacherClient, TeacherConfig,
    TeacherRequest,
};
use serve_server::{ServeProcess, image};
use tokio_util::sync::CancellationToken;

#[test]
fn prism_serve_as_the_teacher() {
    let key = "sk-teacher-serve";
    let s = ServeProcess::start(
        &[
            "--api-key-env",
            "PRISM_TEST_TEACHER_KEY",
            "--max-batch",
            "8",
        ],
        &[("PRISM_TEST_TEACHER_KEY", key)],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TeacherConfig::new(&s.url("/v1"), "tiny-qwen3-vl", dir.path().join("c.jsonl"));
    cfg.max_tokens = 12;
    cfg.max_reasks = 1;
    cfg.max_retries = 0;
    cfg.timeout_secs = 120.0;
    cfg.on_invalid = OnInvalid::Skip;
    let client = TeacherClient::with_api_key(cfg, Some(ApiKey::new(key))).unwrap();

    let png = std::fs::read(image("image_a_64x96.png")).unwrap();
    let pixels: HashMap<String, Vec<Vec<u8>>> = HashMap::from([("img".to_string(), vec![png])]);
    let images: ImageLookup = Arc::new(move |p: &PromptItem| match &p.image_hash {
        None => Ok(Vec::new()),
        Some(h) => pixels
            .get(h)
            .cloned()
            .ok_or_else(|| format!("no image {h}")),
    });
    let prompt = |uid: u64, text: &str, img: Option<&str>| PromptItem {
        uid,
        prompt_ids: vec![uid as i64],
        text: text.into(),
        image_hash: img.map(str::to_string),
        answer: None,
    };
    let prompts = vec![
        prompt(0, "<image>\nHow many shapes are there?", Some("img")),
        prompt(1, "What is 3 + 4?", None),
        prompt(2, "Name the largest planet.", None),
    ];
    let mut backend = HttpTeacher::new(client.clone(), images).unwrap();
    let out = backend.demonstrate_batch(&prompts).unwrap();
    assert_eq!(out.len(), 3);
    for (o, p) in out.iter().zip(&prompts) {
        match o {
            DemoOutcome::Skipped {
                prompt_uid,
                reason,
                message,
            } => {
                assert_eq!(*prompt_uid, p.uid);
                assert_eq!(reason, "invalid_answer");
                assert!(message.contains("after 2 asks"), "{message}");
            }
            // A random model in format would be a miracle, but it would be a valid answer.
            DemoOutcome::Demo(d) => assert_eq!(d.prompt_uid, p.uid),
        }
    }
    let stats = client.stats();
    let skipped = out
        .iter()
        .filter(|o| matches!(o, DemoOutcome::Skipped { .. }))
        .count() as u64;
    assert_eq!(
        stats.failures.get("invalid_answer").copied().unwrap_or(0),
        skipped
    );
    // Every answer came back from the server (2 asks per skipped prompt), none was retried.
    assert_eq!(stats.requests, 2 * skipped + (3 - skipped));
    assert_eq!(stats.total_retries(), 0, "{stats:?}");
    assert!(
        stats.input_tokens > 0 && stats.output_tokens > 0,
        "{stats:?}"
    );
    // Each call is cached under its key (the image prompt's key includes the image's hash).
    for p in &prompts {
        let req = TeacherRequest {
            label: String::new(),
            text: p.text.clone(),
            images: if p.image_hash.is_some() {
                vec![std::fs::read(image("image_a_64x96.png")).unwrap()]
            } else {
                Vec::new()
            },
        };
        let entry = client.cache().get(&client.key_of(&req)).expect("cached");
        if skipped == 3 {
            assert_eq!(entry.status, CacheStatus::Invalid);
        }
        assert_eq!(
            entry.asks,
            if entry.status == CacheStatus::Invalid {
                2
            } else {
                1
            }
        );
    }
    // Asked again: served by the cache, nothing paid.
    let requests = client.stats().requests;
    backend.demonstrate_batch(&prompts).unwrap();
    assert_eq!(client.stats().requests, requests);
    let stats = client.stats();

    // An alignment stage with prism serve as its teacher goes on without the skipped prompts.
    let (mut engines, _probe) = toy::engines(ToyOptions::default());
    let c = client.clone();
    let factory: TeacherFactory = Arc::new(move |_d| {
        Ok(
            Box::new(HttpTeacher::new(c.clone(), HttpTeacher::text_only())?)
                as Box<dyn TeacherBackend>,
        )
    });
    engines.teacher = Some(factory);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(run_stage(
            &common::config(1, 0),
            common::spec(StageKind::Align, 2, 2, 2),
            engines,
            Arc::new(toy::prompts(4, 3)),
            common::recorder(),
            CancellationToken::new(),
        ))
        .unwrap();
    assert_eq!(report.steps_done, 2);
    assert_eq!(report.processed.len(), 4);
    assert!(
        report.restarts.values().all(|&n| n == 0),
        "{:?}",
        report.restarts
    );
    let after = client.stats();
    let stage_outcomes = after.failures.get("invalid_answer").copied().unwrap_or(0)
        - stats.failures.get("invalid_answer").copied().unwrap_or(0)
        + after.answered
        - stats.answered;
    assert_eq!(stage_outcomes, 4, "each stage prompt asked once: {after:?}");
    drop(rt);
    assert!(s.stop().success());
}
