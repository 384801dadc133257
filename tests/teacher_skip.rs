//! Teacher answers that never become valid (`on_invalid`): with `skip` the prompt is reported
//! and left without a demonstration while the batch (and an alignment stage on the toy engines)
//! goes on; with `fail` the batch fails naming the prompt, and the stage ends on the restart
//! budget instead of looping. Against the fault-injecting server of tests/teacher_server.

mod common;
mod teacher_server;

use std::sync::Arc;

use prism::actors::engine::{DemoOutcome, TeacherBackend, TeacherFactory};
use prism::actors::messages::{PromptItem, StageKind};
use prism::actors::run_stage;
use prism::actors::toy::{self, ToyOptions};
use prism::teacher::{HttpTeacher, OnInvalid, TeacherClient, TeacherConfig};
use teacher_server::{Behaviour, TestServer, valid_answer};
use tokio_util::sync::CancellationToken;

const WRONG: &str = "I think the answer is 4.";

fn prompt(uid: u64, text: &str) -> PromptItem {
    PromptItem {
        uid,
        prompt_ids: vec![uid as i64 + 3],
        text: text.into(),
        image_hash: None,
        answer: None,
    }
}

fn client(server: &TestServer, dir: &std::path::Path, policy: OnInvalid) -> TeacherClient {
    let mut cfg = TeacherConfig::new(&server.base_url(), "m", dir.join("cache.jsonl"));
    cfg.timeout_secs = 5.0;
    cfg.max_reasks = 1;
    cfg.max_retries = 1;
    cfg.backoff.initial_secs = 0.0;
    cfg.backoff.max_secs = 0.0;
    cfg.on_invalid = policy;
    TeacherClient::with_api_key(cfg, None).unwrap()
}

#[test]
fn batch_skips_prompts_that_never_become_valid_and_fails_on_request() {
    let server = TestServer::start();
    server.always("bad", Behaviour::Content(WRONG.into()));
    server.always("refused", Behaviour::Status(400));
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, dir.path(), OnInvalid::Skip);
    let mut backend = HttpTeacher::new(c.clone(), HttpTeacher::text_only()).unwrap();
    let prompts = [
        prompt(0, "good"),
        prompt(1, "bad"),
        prompt(2, "refused"),
        prompt(3, "also good"),
    ];
    let out = backend.demonstrate_batch(&prompts).unwrap();
    assert_eq!(out.len(), 4);
    match &out[0] {
        DemoOutcome::Demo(d) => {
            assert_eq!(d.prompt_uid, 0);
            assert_eq!(
                format!("{}\n{}", d.caption.text, d.reasoning.text),
                valid_answer("good")
            );
        }
        other => panic!("prompt 0: {other:?}"),
    }
    match &out[1] {
        DemoOutcome::Skipped {
            prompt_uid,
            reason,
            message,
        } => {
            assert_eq!(*prompt_uid, 1);
            assert_eq!(reason, "invalid_answer");
            assert!(message.contains(WRONG), "{message}");
        }
        other => panic!("prompt 1: {other:?}"),
    }
    match &out[2] {
        DemoOutcome::Skipped { reason, .. } => assert_eq!(reason, "rejected"),
        other => panic!("prompt 2: {other:?}"),
    }
    assert!(matches!(&out[3], DemoOutcome::Demo(d) if d.prompt_uid == 3));
    // One ask and one re-ask of the bad prompt, one refused call, nothing retried.
    assert_eq!(server.calls_for("bad").len(), 2);
    assert_eq!(server.calls_for("refused").len(), 1);
    let stats = c.stats();
    assert_eq!(stats.failures.get("invalid_answer"), Some(&1));
    assert_eq!(stats.failures.get("rejected"), Some(&1));

    // Asked again (a later step): the invalid answer is served from the cache, not paid again.
    let again = backend.demonstrate_batch(&prompts[1..2]).unwrap();
    assert!(matches!(&again[0], DemoOutcome::Skipped { reason, .. } if reason == "invalid_answer"));
    assert_eq!(server.calls_for("bad").len(), 2);

    // `fail`: the batch is an error naming the prompt.
    let dir2 = tempfile::tempdir().unwrap();
    let mut strict = HttpTeacher::new(
        client(&server, dir2.path(), OnInvalid::Fail),
        HttpTeacher::text_only(),
    )
    .unwrap();
    let err = strict
        .demonstrate_batch(&prompts[..2])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prompt 1") && err.contains("never became format-valid"),
        "{err}"
    );
}

#[test]
fn errors_that_concern_every_prompt_are_never_skipped() {
    let server = TestServer::start();
    server.always("x", Behaviour::Status(401));
    let dir = tempfile::tempdir().unwrap();
    let mut backend = HttpTeacher::new(
        client(&server, dir.path(), OnInvalid::Skip),
        HttpTeacher::text_only(),
    )
    .unwrap();
    let err = backend
        .demonstrate_batch(&[prompt(5, "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 5") && err.contains("401"), "{err}");
    // An image prompt without an image lookup is a set-up error, not a skip.
    let mut with_image = prompt(6, "y");
    with_image.image_hash = Some("abc".into());
    assert!(backend.demonstrate_batch(&[with_image]).is_err());
}

fn http_engines(client: &TeacherClient) -> prism::actors::engine::Engines {
    let (mut engines, _probe) = toy::engines(ToyOptions::default());
    let c = client.clone();
    let factory: TeacherFactory = Arc::new(move |_d| {
        Ok(
            Box::new(HttpTeacher::new(c.clone(), HttpTeacher::text_only())?)
                as Box<dyn TeacherBackend>,
        )
    });
    engines.teacher = Some(factory);
    engines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alignment_goes_on_without_the_skipped_prompts() {
    let server = TestServer::start();
    // Toy prompts are "prompt {uid}"; two of the six used never get a valid answer.
    server.always("prompt 1", Behaviour::Content(WRONG.into()));
    server.always("prompt 4", Behaviour::Content(WRONG.into()));
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, dir.path(), OnInvalid::Skip);
    let report = run_stage(
        &common::config(1, 0),
        common::spec(StageKind::Align, 3, 2, 2),
        http_engines(&c),
        Arc::new(toy::prompts(8, 1)),
        common::recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.steps_done, 3);
    assert_eq!(report.processed.len(), 6, "{:?}", report.processed);
    assert!(
        report.restarts.values().all(|&n| n == 0),
        "no actor restarted: {:?}",
        report.restarts
    );
    // Both bad prompts were reported once (ask + re-ask each); the others were demonstrated.
    let stats = c.stats();
    assert_eq!(stats.failures.get("invalid_answer"), Some(&2), "{stats:?}");
    assert_eq!(stats.answered, 4);
    assert_eq!(server.calls_for("prompt 1").len(), 2);
    assert_eq!(server.calls_for("prompt 4").len(), 2);
    // The experts were still trained on the demonstrated prompts' pairs.
    assert!(report.steps.iter().any(|s| s.perception.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_ends_the_stage_on_the_restart_budget() {
    let server = TestServer::start();
    server.always("prompt 0", Behaviour::Content(WRONG.into()));
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server, dir.path(), OnInvalid::Fail);
    let mut cfg = common::config(1, 0);
    cfg.supervision.max_failures = 2;
    let err = run_stage(
        &cfg,
        common::spec(StageKind::Align, 2, 2, 2),
        http_engines(&c),
        Arc::new(toy::prompts(4, 1)),
        common::recorder(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("teacher-client"), "{err}");
    // The invalid answer was cached: restarts did not pay for it again.
    assert_eq!(server.calls_for("prompt 0").len(), 2);
}
