//! The HTTP teacher against a local fault-injecting server (loopback only, every test bounded in
//! time): every prompt ends with a valid demonstration or a reported failure, nothing answered
//! is paid for twice (also after a restart and a torn cache line), and the concurrency and rate
//! limits hold.

mod teacher_server;

use std::time::{Duration, Instant};

use base64::Engine as _;
use prism::actors::engine::TeacherBackend;
use prism::actors::messages::PromptItem;
use prism::data::synth::SYSTEM_INSTRUCTION;
use prism::reward::format::is_format_valid;
use prism::teacher::{
    ApiKey, HttpTeacher, TeacherClient, TeacherConfig, TeacherError, TeacherRequest,
};
use teacher_server::{Behaviour, COMPLETION_TOKENS, PROMPT_TOKENS, TestServer, valid_answer};

/// A config for the test server with fast retries and a short timeout.
fn config(server: &TestServer, cache: &std::path::Path) -> TeacherConfig {
    let mut cfg = TeacherConfig::new(&server.base_url(), "test-model", cache);
    cfg.timeout_secs = 1.0;
    cfg.max_retries = 4;
    cfg.backoff.initial_secs = 0.01;
    cfg.backoff.multiplier = 2.0;
    cfg.backoff.max_secs = 0.5;
    cfg.max_reasks = 2;
    cfg.max_tokens = 64;
    cfg.price_per_1k_input = 1.0;
    cfg.price_per_1k_output = 2.0;
    cfg
}

fn req(text: &str) -> TeacherRequest {
    TeacherRequest {
        label: text.to_string(),
        text: text.to_string(),
        images: Vec::new(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn ask_all(
    client: &TeacherClient,
    prompts: &[&str],
) -> Vec<Result<prism::teacher::Answer, TeacherError>> {
    let futs = prompts.iter().map(|p| {
        let c = client.clone();
        let r = req(p);
        async move { c.ask(&r).await }
    });
    futures::future::join_all(futs).await
}

const WRONG: &str = "The answer is 4.";

#[test]
fn faults_end_valid_or_reported_and_restart_pays_nothing_twice() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    server.script("ok", []);
    server.script("slow", [Behaviour::Slow(Duration::from_millis(2500))]);
    server.script("429", [Behaviour::RateLimited(Some("0.3".into()))]);
    server.script("5xx", [Behaviour::Status(500), Behaviour::Status(503)]);
    server.script("malformed", [Behaviour::Malformed]);
    server.script("drop", [Behaviour::Drop]);
    server.script("reask", [Behaviour::Content(WRONG.into())]);
    server.always("never-valid", Behaviour::Content(WRONG.into()));
    server.always("rejected", Behaviour::Status(400));
    server.always("down", Behaviour::Status(502));
    let prompts = [
        "ok",
        "slow",
        "429",
        "5xx",
        "malformed",
        "drop",
        "reask",
        "never-valid",
        "rejected",
        "down",
    ];

    let rt = runtime();
    let started = Instant::now();
    let (results, stats) = rt.block_on(async {
        let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
        let results = ask_all(&client, &prompts).await;
        (results, client.stats())
    });
    assert!(started.elapsed() < Duration::from_secs(20));

    for (p, r) in prompts.iter().zip(&results) {
        match *p {
            "never-valid" => match r {
                Err(TeacherError::InvalidAnswer { asks, last }) => {
                    assert_eq!(*asks, 3, "1 ask + 2 re-asks");
                    assert_eq!(last, WRONG);
                }
                other => panic!("never-valid: {other:?}"),
            },
            "rejected" => assert!(
                matches!(r, Err(TeacherError::Rejected { status: 400, .. })),
                "{r:?}"
            ),
            "down" => assert!(
                matches!(r, Err(TeacherError::RetriesExhausted { attempts: 5, .. })),
                "{r:?}"
            ),
            _ => {
                let a = r.as_ref().unwrap_or_else(|e| panic!("{p}: {e}"));
                assert!(is_format_valid(&a.response), "{p}: {}", a.response);
                assert_eq!(a.response, valid_answer(p));
                assert!(a.caption.starts_with("<caption>") && a.cot.starts_with("<think>"));
                assert!(!a.cached);
            }
        }
    }
    // Calls per prompt: the scripted faults plus one success (re-asks count as calls).
    let expect = [
        ("ok", 1),
        ("slow", 2),
        ("429", 2),
        ("5xx", 3),
        ("malformed", 2),
        ("drop", 2),
        ("reask", 2),
        ("never-valid", 3),
        ("rejected", 1),
        ("down", 5),
    ];
    for (p, n) in expect {
        assert_eq!(server.calls_for(p).len(), n, "calls for {p}");
    }
    // Retry-After was honoured: the second call came at least 0.3 s after the first.
    let c429 = server.calls_for("429");
    assert!(c429[1].at.duration_since(c429[0].at) >= Duration::from_millis(300));
    // The re-ask carries the bad answer and a correction after the original turns.
    let reask = &server.calls_for("reask")[1].body["messages"];
    assert_eq!(reask.as_array().unwrap().len(), 4);
    assert_eq!(reask[2]["role"], "assistant");
    assert_eq!(reask[2]["content"], WRONG);
    assert_eq!(reask[3]["role"], "user");

    assert_eq!(stats.requests as usize, server.total_calls());
    assert_eq!(stats.retries.get("timeout"), Some(&1));
    assert_eq!(stats.retries.get("rate_limited"), Some(&1));
    assert_eq!(stats.retries.get("server_error"), Some(&(2 + 4)));
    assert_eq!(stats.retries.get("malformed"), Some(&1));
    assert_eq!(stats.retries.get("connection"), Some(&1));
    assert_eq!(stats.invalid_answers, 1 + 3);
    assert_eq!(stats.answered, 7);
    assert_eq!(stats.total_failures(), 3);
    // Tokens: every 200 with a parsable body is paid (7 answers + 1 wrong re-asked + 3 wrong).
    let paid = 7 + 1 + 3;
    assert_eq!(stats.input_tokens, paid * PROMPT_TOKENS);
    assert_eq!(stats.output_tokens, paid * COMPLETION_TOKENS);
    let cost =
        (paid * PROMPT_TOKENS) as f64 / 1000.0 + (paid * COMPLETION_TOKENS) as f64 * 2.0 / 1000.0;
    assert!((stats.cost_usd - cost).abs() < 1e-9);

    // Restart: a new client on the same cache pays for nothing already answered (the valid
    // ones and the one given up as invalid); only the calls that never got an answer are
    // asked again.
    let before = server.total_calls();
    let (results2, stats2) = rt.block_on(async {
        let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
        let results = ask_all(&client, &prompts).await;
        (results, client.stats())
    });
    let new_calls: Vec<String> = server.calls()[before..]
        .iter()
        .map(|c| c.prompt.clone())
        .collect();
    assert!(
        new_calls.iter().all(|p| p == "rejected" || p == "down"),
        "paid twice: {new_calls:?}"
    );
    assert_eq!(stats2.cache_hits, 8);
    assert_eq!(stats2.input_tokens, 0);
    for (p, (a, b)) in prompts.iter().zip(results.iter().zip(&results2)) {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.response, b.response, "{p}");
                assert!(b.cached);
                assert_eq!(
                    b.input_tokens, a.input_tokens,
                    "{p}: original usage is kept"
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason(), "{p}"),
            _ => panic!("{p}: {a:?} then {b:?}"),
        }
    }
}

#[test]
fn torn_cache_line_after_a_crash_is_ignored_and_only_that_call_is_asked_again() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    let rt = runtime();
    rt.block_on(async {
        let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
        for p in ["first", "second"] {
            client.ask(&req(p)).await.unwrap();
        }
    });
    // Simulate a crash in the middle of writing the second entry.
    let text = std::fs::read_to_string(&cache).unwrap();
    let first_len = text.find('\n').unwrap() + 1;
    let torn = first_len + (text.len() - first_len) / 2;
    std::fs::write(&cache, &text.as_bytes()[..torn]).unwrap();

    rt.block_on(async {
        let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
        assert!(client.cache().torn_bytes() > 0);
        assert_eq!(client.cache().len(), 1);
        for p in ["first", "second"] {
            let a = client.ask(&req(p)).await.unwrap();
            assert_eq!(a.response, valid_answer(p));
        }
    });
    assert_eq!(server.calls_for("first").len(), 1);
    assert_eq!(server.calls_for("second").len(), 2);
    // The file is whole again: every line parses.
    let text = std::fs::read_to_string(&cache).unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        serde_json::from_str::<prism::teacher::CacheEntry>(line).unwrap();
    }
    assert_eq!(text.lines().count(), 2);
}

#[test]
fn concurrency_limit_is_respected() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, &dir.path().join("cache.jsonl"));
    cfg.max_concurrency = 3;
    cfg.timeout_secs = 5.0;
    let prompts: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    for p in &prompts {
        server.script(p, [Behaviour::Slow(Duration::from_millis(150))]);
    }
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let rt = runtime();
    let results = rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        ask_all(&client, &refs).await
    });
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.max_in_flight(), 3);
}

#[test]
fn request_and_token_rates_are_respected() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(400);

    // Requests: at most 2 in any window.
    let mut cfg = config(&server, &dir.path().join("a.jsonl"));
    cfg.rate_window_secs = window.as_secs_f64();
    cfg.requests_per_minute = 2;
    let prompts: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let rt = runtime();
    let start = Instant::now();
    rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        assert!(ask_all(&client, &refs).await.iter().all(Result::is_ok));
    });
    assert!(start.elapsed() >= window * 2);
    let mut times: Vec<Instant> = server.calls().iter().map(|c| c.at).collect();
    times.sort();
    for i in 2..times.len() {
        // Slack for the time between admission and the server seeing the request (without the
        // limit all six arrive within a few milliseconds).
        assert!(
            times[i].duration_since(times[i - 2]) >= window - Duration::from_millis(100),
            "3 requests within one window"
        );
    }

    // Tokens: each request reserves max_tokens (64) plus a quarter of its text's characters
    // (the system instruction alone is over 100), more than the 150-token budget, so it is
    // admitted only into an empty window; its reported usage (120) then fills the window.
    let mut cfg = config(&server, &dir.path().join("b.jsonl"));
    cfg.rate_window_secs = window.as_secs_f64();
    cfg.tokens_per_minute = 150;
    let prompts: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let start = Instant::now();
    rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        for p in &refs {
            client.ask(&req(p)).await.unwrap();
        }
    });
    // Sequential asks: every next one waits for the previous to leave the window.
    assert!(start.elapsed() >= window * 3, "{:?}", start.elapsed());
}

#[test]
fn api_key_is_sent_as_bearer_and_never_written_or_shown() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    let secret = "sk-test-3f9a7c1e";
    let rt = runtime();
    let debug = rt.block_on(async {
        let client =
            TeacherClient::with_api_key(config(&server, &cache), Some(ApiKey::new(secret)))
                .unwrap();
        client.ask(&req("keyed")).await.unwrap();
        format!("{client:?}")
    });
    assert_eq!(
        server.calls()[0].authorization.as_deref(),
        Some(format!("Bearer {secret}").as_str())
    );
    assert!(!debug.contains(secret), "{debug}");
    assert!(!std::fs::read_to_string(&cache).unwrap().contains(secret));

    // A missing variable is an error naming the variable.
    let mut cfg = config(&server, &dir.path().join("other.jsonl"));
    cfg.api_key_env = Some("PRISM_TEST_TEACHER_KEY_THAT_IS_NOT_SET".into());
    let err = TeacherClient::new(cfg).unwrap_err().to_string();
    assert!(
        err.contains("PRISM_TEST_TEACHER_KEY_THAT_IS_NOT_SET"),
        "{err}"
    );
}

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(3, 2, image::Rgb([seed, 2, 3]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn request_carries_system_instruction_and_images_as_data_urls() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    let image = png(9);
    let rt = runtime();
    rt.block_on(async {
        let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
        let r = TeacherRequest {
            label: "img".into(),
            text: "<image>\nHow many circles?".into(),
            images: vec![image.clone()],
        };
        client.ask(&r).await.unwrap();
        // Same text, other pixels: a different call, not a cache hit.
        let other = TeacherRequest {
            images: vec![png(10)],
            ..r
        };
        assert!(!client.ask(&other).await.unwrap().cached);
    });
    let calls = server.calls();
    assert_eq!(calls.len(), 2);
    let body = &calls[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][0]["content"], SYSTEM_INSTRUCTION);
    let parts = &body["messages"][1]["content"];
    assert_eq!(parts[0]["type"], "image_url");
    let url = parts[0]["image_url"]["url"].as_str().unwrap();
    let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(decoded, image);
    assert_eq!(parts[1]["text"], "How many circles?");
}

#[test]
fn http_teacher_backend_gives_demos_and_reports_invalid_answers() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    server.always("bad", Behaviour::Content(WRONG.into()));
    let client = TeacherClient::with_api_key(config(&server, &cache), None).unwrap();
    let mut backend = HttpTeacher::new(client, HttpTeacher::text_only()).unwrap();
    let prompt = |uid: u64, text: &str| PromptItem {
        uid,
        prompt_ids: vec![1, 2, 3],
        text: text.into(),
        image_hash: None,
        answer: None,
    };
    let demo = backend.demonstrate(&prompt(7, "good")).unwrap();
    assert_eq!(demo.prompt_uid, 7);
    assert_eq!(
        format!("{}\n{}", demo.caption.text, demo.reasoning.text),
        valid_answer("good")
    );
    assert_eq!(demo.source, "http:test-model");
    let err = backend
        .demonstrate(&prompt(8, "bad"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("never became format-valid"), "{err}");
    // Images without a lookup are an error naming the prompt, before anything is sent.
    let mut with_image = prompt(9, "pic");
    with_image.image_hash = Some("abc".into());
    let err = backend.demonstrate(&with_image).unwrap_err().to_string();
    assert!(err.contains("prompt 9"), "{err}");
    assert!(server.calls_for("pic").is_empty());
}

#[test]
fn http_teacher_batches_concurrently_in_order() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, &dir.path().join("cache.jsonl"));
    cfg.max_concurrency = 4;
    cfg.timeout_secs = 5.0;
    let texts: Vec<String> = (0..8).map(|i| format!("batch {i}")).collect();
    for t in texts.iter().filter(|t| *t != "batch 3") {
        server.script(t, [Behaviour::Slow(Duration::from_millis(100))]);
    }
    server.always("batch 3", Behaviour::Status(400));
    let client = TeacherClient::with_api_key(cfg, None).unwrap();
    let backend = HttpTeacher::new(client, HttpTeacher::text_only()).unwrap();
    let prompts: Vec<PromptItem> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| PromptItem {
            uid: i as u64,
            prompt_ids: vec![],
            text: t.clone(),
            image_hash: None,
            answer: None,
        })
        .collect();
    let demos = backend.demos(&prompts);
    assert_eq!(demos.len(), 8);
    for (i, d) in demos.iter().enumerate() {
        if i == 3 {
            assert!(matches!(d, Err(TeacherError::Rejected { status: 400, .. })));
        } else {
            let d = d.as_ref().unwrap();
            assert_eq!(d.prompt_uid, i as u64);
            assert!(d.caption.text.contains(&texts[i]));
        }
    }
    let peak = server.max_in_flight();
    assert!((2..=4).contains(&peak), "peak in flight {peak}");
}

/// A raw TCP server that closes the first `drops` connections without replying, then answers
/// every request with a valid completion (HTTP/1.1, `Connection: close`).
fn closing_server(
    drops: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            // Read the request head and body (it fits in one buffer for these tests).
            let mut buf = vec![0u8; 1 << 16];
            let _ = stream.read(&mut buf);
            if n < drops {
                drop(stream);
                continue;
            }
            let body = serde_json::json!({
                "choices": [{"message": {"role": "assistant", "content": valid_answer("raw")}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6},
            })
            .to_string();
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (addr, seen)
}

#[test]
fn connections_closed_before_a_reply_are_retried_and_refused_ones_reported() {
    let (addr, seen) = closing_server(2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TeacherConfig::new(
        &format!("http://{addr}/v1"),
        "test-model",
        dir.path().join("a.jsonl"),
    );
    cfg.timeout_secs = 2.0;
    cfg.max_retries = 3;
    cfg.backoff.initial_secs = 0.01;
    cfg.backoff.max_secs = 0.05;
    let rt = runtime();
    let stats = rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        let a = client.ask(&req("raw")).await.unwrap();
        assert_eq!(a.response, valid_answer("raw"));
        client.stats()
    });
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(stats.retries.get("connection"), Some(&2));

    // Nothing listening: every attempt is refused, and the call is reported as failed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = TeacherConfig::new(
        &format!("http://127.0.0.1:{port}/v1"),
        "test-model",
        dir.path().join("b.jsonl"),
    );
    cfg.max_retries = 2;
    cfg.backoff.initial_secs = 0.01;
    cfg.backoff.max_secs = 0.05;
    let err = rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        client.ask(&req("nobody")).await.unwrap_err()
    });
    match err {
        TeacherError::RetriesExhausted { attempts, last } => {
            assert_eq!(attempts, 3);
            assert!(last.starts_with("connection"), "{last}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn retry_after_on_one_call_holds_the_other_calls() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, &dir.path().join("cache.jsonl"));
    cfg.max_concurrency = 4;
    server.script("limited", [Behaviour::RateLimited(Some("0.4".into()))]);
    let rt = runtime();
    rt.block_on(async {
        let client = TeacherClient::with_api_key(cfg, None).unwrap();
        let other = async {
            // Starts while the first call waits out its Retry-After.
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.ask(&req("bystander")).await
        };
        let limited = req("limited");
        let (a, b) = tokio::join!(client.ask(&limited), other);
        a.unwrap();
        b.unwrap();
    });
    let first = server.calls_for("limited")[0].at;
    let bystander = server.calls_for("bystander")[0].at;
    assert!(
        bystander.duration_since(first) >= Duration::from_millis(390),
        "a call went out during the server's Retry-After"
    );
}
