//! Real streaming and early stops of `prism serve` (a server process on the tiny fixture
//! checkpoint, spoken to over HTTP): streamed deltas concatenate to the non-streamed answer of
//! the same request and seed (n = 1 and 2, with and without stop strings); a stop string halts
//! the row (the server's generated-token counter shows it stopped); a short request batched with
//! a long one stops at its own `max_tokens`; the first delta arrives while the request is still
//! being generated; a client that disconnects (streamed or not) halts its rows.

mod serve_server;

use std::time::Duration;

use serde_json::{Value, json};
use serve_server::{ServeProcess, free_port};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// A server with Prometheus metrics on their own port; returns it with the metrics URL.
fn start(args: &[&str]) -> (ServeProcess, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--metrics-addr", &metrics, "--max-n", "4"];
    all.extend_from_slice(args);
    (
        ServeProcess::start(&all, &[]),
        format!("http://{metrics}/metrics"),
    )
}

/// Value of an unlabelled metric (0 before its first record).
async fn metric(url: &str, name: &str) -> f64 {
    let text = http().get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

const GENERATED: &str = "prism_serve_generated_tokens_total";
const GENERATING: &str = "prism_serve_requests_generating";

async fn plain(s: &ServeProcess, body: &Value) -> Value {
    let r = http()
        .post(s.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body} -> {v}");
    v
}

/// Reads SSE `data:` payloads off a streamed response as they arrive.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(s: &ServeProcess, body: &Value) -> SseReader {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let resp = http()
            .post(s.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next payload, or None at the end of the body.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..at + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk = self.resp.chunk().await.unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining payload; the last must be `[DONE]` (not included).
    async fn rest(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(p) = self.next().await {
            if p == "[DONE]" {
                assert!(self.next().await.is_none(), "payloads after [DONE]");
                return out;
            }
            out.push(serde_json::from_str(&p).unwrap_or_else(|e| panic!("{e}: {p}")));
        }
        panic!("the stream ended without [DONE]: {out:?}");
    }
}

/// The streamed text of choice `i`, its finish reasons and the usage chunk's usage.
fn rebuild(chunks: &[Value], i: u64) -> (String, Vec<String>) {
    let mine: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty()))
        .filter(|c| c["choices"][0]["index"] == i)
        .collect();
    assert_eq!(
        mine[0]["choices"][0]["delta"]["role"], "assistant",
        "role chunk first"
    );
    let text = mine
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = mine
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .map(str::to_string)
        .collect();
    assert!(
        mine.last().unwrap()["choices"][0]["finish_reason"].is_string(),
        "the finish chunk is the choice's last"
    );
    (text, finish)
}

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A two-character stop string whose first occurrence in `text` is at character k ≥ 2, and the
/// text before it.
fn stop_in(text: &str) -> (String, String) {
    let chars: Vec<char> = text.chars().collect();
    (2..chars.len().saturating_sub(2))
        .map(|k| (k, chars[k..k + 2].iter().collect::<String>()))
        .find(|(k, st)| {
            text.find(st.as_str()) == Some(chars[..*k].iter().collect::<String>().len())
        })
        .map(|(k, st)| (st, chars[..k].iter().collect()))
        .unwrap_or_else(|| panic!("no two-character stop string in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_deltas_concatenate_to_the_plain_answer() {
    let (s, _) = start(&[]);
    let sampled = |n: u64| {
        json!({
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "temperature": 1.0, "top_p": 0.9, "n": n, "seed": 11, "max_tokens": 24,
            "stream_options": {"include_usage": true},
        })
    };
    let long = plain(&s, &sampled(1)).await;
    let (stop, before) = stop_in(&content(&long, 0));
    for n in [1u64, 2] {
        for with_stop in [false, true] {
            let mut body = sampled(n);
            if with_stop {
                body["stop"] = json!(["never-appears", stop]);
            }
            let p = plain(&s, &body).await;
            let chunks = SseReader::open(&s, &body).await.rest().await;
            for i in 0..n {
                let (text, finish) = rebuild(&chunks, i);
                let case = format!("n={n} stop={with_stop} choice {i}");
                assert_eq!(text, content(&p, i as usize), "{case}");
                assert_eq!(
                    finish,
                    vec![p["choices"][i as usize]["finish_reason"].as_str().unwrap()],
                    "{case}"
                );
                if with_stop && i == 0 {
                    assert_eq!(text, before, "{case}");
                    assert_eq!(finish, vec!["stop"], "{case}");
                }
            }
            // The finish chunks come after every delta; the usage chunk is last and equals
            // the plain answer's usage.
            let last_delta = chunks
                .iter()
                .rposition(|c| c["choices"][0]["delta"]["content"].is_string())
                .unwrap();
            let first_finish = chunks
                .iter()
                .position(|c| c["choices"][0]["finish_reason"].is_string())
                .unwrap();
            assert!(last_delta < first_finish);
            let usage = chunks.last().unwrap();
            assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
            assert_eq!(usage["usage"], p["usage"], "n={n} stop={with_stop}");
        }
    }
    assert!(s.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stop_at_their_own_limit_and_stop_string() {
    let (s, metrics) = start(&["--max-batch", "8", "--max-wait-ms", "500"]);
    let greedy = |prompt: &str, max_tokens: u64| {
        json!({
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": max_tokens,
        })
    };
    // 1. A stop string halts the row: the model generated only up to the stop string.
    let full = plain(&s, &greedy("Describe this image.", 40)).await;
    assert_eq!(full["usage"]["completion_tokens"], 40, "{full}");
    let (stop, before) = stop_in(&content(&full, 0));
    let mut body = greedy("Describe this image.", 40);
    body["stop"] = json!(stop);
    let g0 = metric(&metrics, GENERATED).await;
    let v = plain(&s, &body).await;
    let generated = metric(&metrics, GENERATED).await - g0;
    assert_eq!(content(&v, 0), before);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let completion = v["usage"]["completion_tokens"].as_f64().unwrap();
    assert!(
        completion <= generated && generated <= completion + stop.len() as f64,
        "the row ran past its stop string: {generated} tokens generated, {completion} kept"
    );
    assert!(generated < 40.0);
    // Streamed, the same early stop.
    let g0 = metric(&metrics, GENERATED).await;
    let chunks = SseReader::open(&s, &body).await.rest().await;
    assert_eq!(rebuild(&chunks, 0).0, before);
    assert_eq!(metric(&metrics, GENERATED).await - g0, generated);

    // 2. A short request batched with a long one stops at its own max_tokens.
    let rows0 = metric(&metrics, "prism_serve_batch_rows_count").await;
    let g0 = metric(&metrics, GENERATED).await;
    let short = greedy("hi", 3);
    let long = greedy("Name three colours.", 30);
    let (a, b) = tokio::join!(plain(&s, &short), plain(&s, &long));
    let generated = metric(&metrics, GENERATED).await - g0;
    assert_eq!(
        metric(&metrics, "prism_serve_batch_rows_count").await - rows0,
        1.0,
        "the two requests shared one batch"
    );
    assert_eq!(a["usage"]["completion_tokens"], 3);
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    let (ca, cb) = (
        a["usage"]["completion_tokens"].as_f64().unwrap(),
        b["usage"]["completion_tokens"].as_f64().unwrap(),
    );
    assert_eq!(
        generated,
        ca + cb,
        "every row generated exactly its own tokens"
    );
    // Each answers as it does alone.
    assert_eq!(content(&plain(&s, &short).await, 0), content(&a, 0));
    assert_eq!(content(&plain(&s, &long).await, 0), content(&b, 0));
    assert!(s.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_arrive_during_generation_and_disconnects_halt_rows() {
    let (s, metrics) = start(&[]);
    let max_tokens = 3000.0;
    let body = json!({
        "messages": [{"role": "user", "content": "Describe this image."}],
        "temperature": 0, "max_tokens": max_tokens as u64,
    });
    // 1. Streamed: the first content delta is read while the server still generates the
    // request; then the client goes away, and the row halts long before max_tokens.
    let g0 = metric(&metrics, GENERATED).await;
    let mut sse = SseReader::open(&s, &body).await;
    loop {
        let p = sse.next().await.expect("a content delta");
        let c: Value = serde_json::from_str(&p).unwrap();
        if c["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            break;
        }
    }
    assert_eq!(
        metric(&metrics, GENERATING).await,
        1.0,
        "a delta arrived only after the generation ended"
    );
    drop(sse);
    wait_idle(&metrics).await;
    let generated = metric(&metrics, GENERATED).await - g0;
    assert!(
        generated < max_tokens,
        "the disconnected stream's row ran to max_tokens"
    );

    // 2. Not streamed: a client that gives up halts its row too.
    let g0 = metric(&metrics, GENERATED).await;
    let url = s.url("/v1/chat/completions");
    let b = body.clone();
    let req = tokio::spawn(async move { http().post(url).json(&b).send().await });
    while metric(&metrics, GENERATING).await < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    req.abort();
    let _ = req.await;
    wait_idle(&metrics).await;
    let generated = metric(&metrics, GENERATED).await - g0;
    assert!(
        generated < max_tokens,
        "the abandoned request's row ran to max_tokens"
    );

    // Still serving.
    let v = plain(
        &s,
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert!(s.stop().success());
}

/// Polls until no request is being generated.
async fn wait_idle(metrics: &str) {
    for _ in 0..3000 {
        if metric(metrics, GENERATING).await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("requests still generating after 60 s");
}
