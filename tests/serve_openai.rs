//! `prism serve` end to end: a real server process on the tiny fixture checkpoint, spoken to
//! over HTTP with reqwest. Greedy answers equal `prism generate` (text and image prompts);
//! concurrent requests are batched (seen in the batch-size metric) and answer exactly as one
//! by one; `n`, seeds, stop strings, `max_tokens`, streaming; every kind of bad input is a 4xx
//! with an OpenAI error body; the API key is enforced; SIGTERM answers in-flight requests and
//! exits cleanly.

mod serve_server;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use serve_server::{ServeProcess, data_url, free_port, image, tiny_model};

const KEY: &str = "sk-prism-test-0123456789";
const KEY_ENV: &str = "PRISM_TEST_SERVE_KEY";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post_raw(s: &ServeProcess, key: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut rb = http()
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(s: &ServeProcess, body: &Value) -> (u16, Value) {
    let (status, text) = post_raw(s, Some(KEY), body.to_string().into_bytes()).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

async fn ok(s: &ServeProcess, body: &Value) -> Value {
    let (status, v) = post(s, body).await;
    assert_eq!(status, 200, "{body} -> {v}");
    v
}

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `prism generate --json` text for a prompt (optionally after one image).
fn generate(prompt: &str, img: Option<&Path>, max_new: usize) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prism"));
    cmd.arg("generate")
        .arg("--model")
        .arg(tiny_model())
        .args(["--prompt", prompt, "--json", "--max-new-tokens"])
        .arg(max_new.to_string())
        .env("RUST_LOG", "warn");
    if let Some(p) = img {
        cmd.arg("--image").arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

fn greedy(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": "tiny-qwen3-vl",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

fn assert_error(status: u16, v: &Value, want_status: u16, code: &str, param: Option<&str>) {
    assert_eq!(status, want_status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    assert_eq!(e["code"], code, "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

/// Sum and count of the batch-rows histogram from the Prometheus endpoint.
async fn batch_rows(metrics: &str) -> (f64, f64) {
    let text = http()
        .get(metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let find = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        find("prism_serve_batch_rows_sum"),
        find("prism_serve_batch_rows_count"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_completions_end_to_end() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let s = ServeProcess::start(
        &[
            "--api-key-env",
            KEY_ENV,
            "--max-batch",
            "8",
            "--max-wait-ms",
            "400",
            "--max-n",
            "4",
            "--max-images",
            "1",
            "--max-body-bytes",
            "200000",
            "--metrics-addr",
            &metrics_addr,
        ],
        &[(KEY_ENV, KEY)],
    );

    // Health needs no key; the model list does.
    let h = http().get(s.url("/health")).send().await.unwrap();
    assert_eq!(h.status().as_u16(), 200);
    let m = http().get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(m.status().as_u16(), 401);
    let m: Value = http()
        .get(s.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["data"][0]["id"], "tiny-qwen3-vl");

    // 1. Greedy equals `prism generate` on the same prompt, text only and with an image.
    let v = ok(&s, &greedy("Describe this image.", 16)).await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny-qwen3-vl");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(content(&v, 0), generate("Describe this image.", None, 16));
    let img = image("image_a_64x96.png");
    let with_image = json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(&img)}},
            {"type": "text", "text": "Describe this image."},
        ]}],
        "temperature": 0,
        "max_completion_tokens": 12,
    });
    let vi = ok(&s, &with_image).await;
    assert_eq!(
        content(&vi, 0),
        generate("Describe this image.", Some(&img), 12)
    );
    assert!(
        vi["usage"]["prompt_tokens"].as_u64().unwrap()
            > v["usage"]["prompt_tokens"].as_u64().unwrap(),
        "image tokens count in the prompt"
    );

    // 2. Concurrent requests are batched and answer as one by one.
    let prompts = [
        "Describe this image.",
        "What is 2+2?",
        "hi",
        "Name three colours.",
        "Count the squares, then answer.",
        "Why?",
    ];
    let bodies: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| greedy(p, 4 + 3 * i))
        .collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(ok(&s, b).await);
    }
    let (sum0, count0) = batch_rows(&format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(sum0, count0, "one row per batch so far");
    let together = futures::future::join_all(bodies.iter().map(|b| ok(&s, b))).await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(content(a, 0), content(t, 0), "prompt {i}");
        assert_eq!(
            a["choices"][0]["finish_reason"], t["choices"][0]["finish_reason"],
            "prompt {i}"
        );
        assert_eq!(a["usage"], t["usage"], "prompt {i}");
    }
    let (sum1, count1) = batch_rows(&format!("http://{metrics_addr}/metrics")).await;
    assert!(
        count1 - count0 < prompts.len() as f64 && sum1 - sum0 == prompts.len() as f64,
        "the concurrent requests shared batches: {} rows in {} batches",
        sum1 - sum0,
        count1 - count0
    );

    // 3. n > 1 with a seed: reproducible, choice i samples with seed + i.
    let sampled = |n: u64, seed: u64| {
        json!({
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "temperature": 1.0, "top_p": 0.95, "n": n, "seed": seed, "max_tokens": 10,
        })
    };
    let a = ok(&s, &sampled(3, 7)).await;
    let b = ok(&s, &sampled(3, 7)).await;
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(a["choices"][i]["index"], i as u64);
        assert_eq!(content(&a, i), content(&b, i));
    }
    let texts: std::collections::BTreeSet<String> = (0..3).map(|i| content(&a, i)).collect();
    assert!(texts.len() > 1, "three samples all equal: {texts:?}");
    let single = ok(&s, &sampled(1, 8)).await;
    assert_eq!(content(&single, 0), content(&a, 1));
    let all_length = (0..3).all(|i| a["choices"][i]["finish_reason"] == "length");
    let completion = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion <= 30 && (!all_length || completion == 30), "{a}");

    // 4. Stop strings cut the text before their first occurrence.
    let full = content(&ok(&s, &greedy("Describe this image.", 20)).await, 0);
    let chars: Vec<char> = full.chars().collect();
    let (k, stop) = (2..chars.len() - 2)
        .map(|k| (k, chars[k..k + 2].iter().collect::<String>()))
        .find(|(k, st)| {
            full.find(st.as_str()) == Some(chars[..*k].iter().collect::<String>().len())
        })
        .expect("a two-character stop string");
    let before: String = chars[..k].iter().collect();
    let mut body = greedy("Describe this image.", 20);
    body["stop"] = json!(["never-appears", stop]);
    let v = ok(&s, &body).await;
    assert_eq!(content(&v, 0), before);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    body["stop"] = json!(stop);
    assert_eq!(content(&ok(&s, &body).await, 0), before);

    // 5. max_tokens reached: finish_reason length.
    let v = ok(&s, &greedy("Describe this image.", 3)).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"], p + 3);

    // 6. Streaming: chunks concatenate to the non-streamed text, then [DONE].
    let mut body = greedy("Describe this image.", 16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, text) = post_raw(&s, Some(KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let payloads: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, generate("Describe this image.", None, 16));
    assert!(chunks.len() > 4, "one chunk per token: {}", chunks.len());
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length")
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 16);

    // Streaming with n = 2 and a stop string: each index's deltas rebuild its choice.
    let mut body = greedy("Describe this image.", 20);
    body["n"] = json!(2);
    body["stop"] = json!(stop);
    let plain = ok(&s, &body).await;
    body["stream"] = json!(true);
    let (status, text) = post_raw(&s, Some(KEY), body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{text}");
    for i in 0..2u64 {
        let chunks: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|p| *p != "[DONE]")
            .map(|p| serde_json::from_str::<Value>(p).unwrap())
            .filter(|c| c["choices"][0]["index"] == i)
            .collect();
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, content(&plain, i as usize));
        assert_eq!(streamed, before);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
    }

    // 7. Bad input: 4xx with an OpenAI error body, and the server keeps serving.
    // A chunked body (no Content-Length) over the limit is cut off too.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..50).map(|_| Ok(vec![b' '; 10_000])).collect();
    let r = http()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_error(st, &v, 413, "request_too_large", None);
    let user = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
    let (st, v) = {
        let (st, t) = post_raw(&s, Some(KEY), b"{\"messages\": [".to_vec()).await;
        (st, serde_json::from_str::<Value>(&t).unwrap())
    };
    assert_error(st, &v, 400, "invalid_json", None);
    let (st, v) = post(
        &s,
        &json!({"messages": [{"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_error(st, &v, 400, "invalid_value", Some("messages[0].role"));
    let (st, v) = post(&s, &user(json!(42))).await;
    assert_error(st, &v, 400, "invalid_type", Some("messages[0].content"));
    let (st, v) = post(
        &s,
        &user(json!([{"type": "input_audio", "input_audio": {}}])),
    )
    .await;
    assert_error(
        st,
        &v,
        400,
        "invalid_value",
        Some("messages[0].content[0].type"),
    );
    let two = json!([
        {"type": "image_url", "image_url": {"url": data_url(&img)}},
        {"type": "image_url", "image_url": {"url": data_url(&img)}},
        {"type": "text", "text": "compare"},
    ]);
    let (st, v) = post(&s, &user(two)).await;
    assert_error(
        st,
        &v,
        400,
        "too_many_images",
        Some("messages[0].content[1]"),
    );
    let remote = json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]);
    let (st, v) = post(&s, &user(remote)).await;
    assert_error(
        st,
        &v,
        400,
        "unsupported_image_url",
        Some("messages[0].content[0].image_url.url"),
    );
    let (st, v) = post(&s, &user(json!("abc ".repeat(3000)))).await;
    assert_error(st, &v, 400, "context_length_exceeded", Some("messages"));
    let (st, text) = post_raw(
        &s,
        Some(KEY),
        user(json!("x".repeat(250_000))).to_string().into_bytes(),
    )
    .await;
    assert_error(
        st,
        &serde_json::from_str(&text).unwrap(),
        413,
        "request_too_large",
        None,
    );
    let mut too_many = greedy("hi", 2);
    too_many["n"] = json!(5);
    let (st, v) = post(&s, &too_many).await;
    assert_error(st, &v, 400, "invalid_value", Some("n"));
    let mut other_model = greedy("hi", 2);
    other_model["model"] = json!("gpt-4o");
    let (st, v) = post(&s, &other_model).await;
    assert_error(st, &v, 404, "model_not_found", Some("model"));

    // 8. Without the key, or with a wrong one: 401.
    for key in [None, Some("sk-wrong")] {
        let (st, text) = post_raw(&s, key, greedy("hi", 2).to_string().into_bytes()).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_error(st, &v, 401, "invalid_api_key", None);
        assert_eq!(v["error"]["type"], "authentication_error");
    }

    // Still serving after all that; SIGTERM exits cleanly.
    ok(&s, &greedy("hi", 2)).await;
    assert!(s.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_requests_in_flight_then_exits() {
    let s = ServeProcess::start(&[], &[]);
    let url = s.url("/v1/chat/completions");
    let body = json!({
        "messages": [{"role": "user", "content": "Describe this image."}],
        "temperature": 0,
        "max_tokens": 120,
    });
    let req = tokio::spawn(async move { http().post(url).json(&body).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.terminate();
    let resp = req.await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 120);
    assert!(s.stop().success());
}
