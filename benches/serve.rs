//! Throughput of `prism serve` over HTTP: starts the server (this build's binary) on a
//! checkpoint on CPU, then sends a fixed set of greedy chat completion requests (fixed
//! `max_tokens`) at concurrency 1, 8 and 32 and prints requests/s, generated tokens/s and
//! latency percentiles as a Markdown table. One warm-up round first; nothing is asserted.
//!
//! Model directory: the first command-line argument, else the tiny test fixture. Environment:
//! `PRISM_BENCH_THREADS` (libtorch threads of the server, default 2), `PRISM_BENCH_REQUESTS`
//! (requests per concurrency level, default 64), `PRISM_BENCH_MAX_TOKENS` (default 32),
//! `PRISM_BENCH_MAX_BATCH` (the server's `--max-batch`, default 32), `PRISM_BENCH_MAX_WAIT_MS`
//! (its `--max-wait-ms`, default 5), `PRISM_BENCH_STREAM=1` (requests with `stream: true`; the
//! first-delta column is then the time to the first content delta, otherwise the whole answer).
//!
//! Run: `cargo bench --bench serve [-- DIR]`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const LEVELS: [usize; 3] = [1, 8, 32];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a positive integer")),
        Err(_) => default,
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `prism serve` and returns it with its base URL.
fn start(model: &PathBuf, threads: usize, max_batch: usize, max_wait: usize) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_prism"))
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--addr", "127.0.0.1:0", "--device", "cpu"])
        .args(["--max-wait-ms", &max_wait.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--max-batch", &max_batch.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start prism serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's address");
    let base = line
        .trim()
        .strip_prefix("prism serve: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Server(child), base)
}

/// The fixed prompt set (text only; varied lengths).
fn prompts(n: usize) -> Vec<String> {
    const TOPICS: [&str; 8] = [
        "the colours of the shapes",
        "how many circles there are",
        "which object is largest",
        "the position of the red square",
        "whether the triangles overlap",
        "the sum of the numbers shown",
        "what is left of the blue star",
        "the pattern in the grid",
    ];
    (0..n)
        .map(|i| {
            format!(
                "Question {i}: look at the picture and tell me {}. Think step by step.",
                TOPICS[i % TOPICS.len()]
            )
        })
        .collect()
}

struct Level {
    concurrency: usize,
    requests: usize,
    secs: f64,
    tokens: u64,
    latencies: Vec<f64>,
    first: Vec<f64>,
}

/// Sends one streamed request; returns (seconds to the first content delta, completion tokens).
async fn streamed(client: &reqwest::Client, url: &str, body: &Value) -> (f64, u64) {
    let t = Instant::now();
    let mut resp = client.post(url).json(body).send().await.expect("request");
    let (mut buf, mut first, mut tokens) = (String::new(), None, None);
    while let Some(chunk) = resp.chunk().await.expect("stream") {
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        while let Some(at) = buf.find("\n\n") {
            let event: String = buf.drain(..at + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).expect("JSON chunk");
                let delta = &v["choices"][0]["delta"]["content"];
                if first.is_none() && delta.as_str().is_some_and(|d| !d.is_empty()) {
                    first = Some(t.elapsed().as_secs_f64());
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    tokens = Some(n);
                }
            }
        }
    }
    let total = t.elapsed().as_secs_f64();
    (
        first.unwrap_or(total),
        tokens.expect("a usage chunk in the stream"),
    )
}

async fn run_level(
    url: &str,
    prompts: &[String],
    concurrency: usize,
    max_tokens: usize,
    stream: bool,
) -> Level {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, next) = (client.clone(), next.clone());
        async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= prompts.len() {
                    return out;
                }
                let mut body = json!({
                    "messages": [{"role": "user", "content": prompts[i]}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                });
                let t = Instant::now();
                if stream {
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({"include_usage": true});
                    let (first, tokens) = streamed(&client, url, &body).await;
                    out.push((t.elapsed().as_secs_f64(), first, tokens));
                    continue;
                }
                let v: Value = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("request")
                    .json()
                    .await
                    .expect("JSON answer");
                let tokens = v["usage"]["completion_tokens"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no usage in {v}"));
                let secs = t.elapsed().as_secs_f64();
                out.push((secs, secs, tokens));
            }
        }
    });
    let results: Vec<(f64, f64, u64)> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = results.iter().map(|r| r.0).collect();
    latencies.sort_by(f64::total_cmp);
    let mut first: Vec<f64> = results.iter().map(|r| r.1).collect();
    first.sort_by(f64::total_cmp);
    Level {
        concurrency,
        requests: results.len(),
        secs,
        tokens: results.iter().map(|r| r.2).sum(),
        latencies,
        first,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let model = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/tiny-qwen3-vl")
        });
    let threads = env_usize("PRISM_BENCH_THREADS", 2);
    let n = env_usize("PRISM_BENCH_REQUESTS", 64);
    let max_tokens = env_usize("PRISM_BENCH_MAX_TOKENS", 32);
    let max_batch = env_usize("PRISM_BENCH_MAX_BATCH", 32);
    let max_wait = env_usize("PRISM_BENCH_MAX_WAIT_MS", 5);
    let stream = env_usize("PRISM_BENCH_STREAM", 0) != 0;
    let (_server, base) = start(&model, threads, max_batch, max_wait);
    let url = format!("{base}/v1/chat/completions");
    let prompts = prompts(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Warm-up: the first batches allocate.
    rt.block_on(run_level(&url, &prompts[..8.min(n)], 8, max_tokens, stream));
    println!(
        "prism serve, {} on CPU, {threads} libtorch threads, --max-batch {max_batch}, \
         --max-wait-ms {max_wait}; {n} greedy requests per level, max_tokens {max_tokens}{}",
        model
            .file_name()
            .map_or("model".into(), |f| f.to_string_lossy()),
        if stream { ", streamed" } else { "" },
    );
    println!();
    println!(
        "| concurrency | requests/s | generated tokens/s | p50 latency (ms) | p95 latency (ms) \
         | p50 first delta (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for c in LEVELS {
        let l = rt.block_on(run_level(&url, &prompts, c, max_tokens, stream));
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            l.concurrency,
            l.requests as f64 / l.secs,
            l.tokens as f64 / l.secs,
            pct(&l.latencies, 0.5) * 1e3,
            pct(&l.latencies, 0.95) * 1e3,
            pct(&l.first, 0.5) * 1e3,
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
