//! A scripted, fault-injecting OpenAI-compatible Chat Completions server for the teacher tests:
//! axum on 127.0.0.1:0, on its own runtime thread (so both async and blocking clients can use
//! it). Each prompt (keyed by the text of its first user message) has a queue of behaviours;
//! once the queue is empty it answers with a valid three-block demonstration. Every call is
//! counted and recorded so tests can assert what was paid for.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a valid answer.
    Valid,
    /// 200 with this content (e.g. a wrong-format answer).
    Content(String),
    /// Sleeps, then answers validly.
    Slow(Duration),
    /// 429 with an optional `Retry-After` value.
    RateLimited(Option<String>),
    /// This status with a short error body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 headers, half a body, then the connection is cut.
    Drop,
}

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Call {
    pub prompt: String,
    pub at: Instant,
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct Shared {
    scripts: Mutex<HashMap<String, VecDeque<Behaviour>>>,
    /// Behaviour when a prompt's script is empty and it has no fixed one.
    always: Mutex<HashMap<String, Behaviour>>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub const PROMPT_TOKENS: u64 = 100;
pub const COMPLETION_TOKENS: u64 = 20;

/// The valid answer the server gives for `prompt`.
pub fn valid_answer(prompt: &str) -> String {
    format!(
        "<caption>The image shows: {prompt}</caption>\n<think>Count the objects.</think>\n<answer>{}</answer>",
        prompt.len()
    )
}

impl TestServer {
    pub fn start() -> TestServer {
        let shared = Arc::new(Shared::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new()
                    .route("/v1/chat/completions", post(chat))
                    .with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TestServer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues behaviours for `prompt`'s next requests.
    pub fn script(&self, prompt: &str, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(prompt.to_string())
            .or_default()
            .extend(behaviours);
    }

    /// Every request for `prompt` (after its script) gets `b`.
    pub fn always(&self, prompt: &str, b: Behaviour) {
        self.shared
            .always
            .lock()
            .unwrap()
            .insert(prompt.to_string(), b);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn calls_for(&self, prompt: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.prompt == prompt)
            .collect()
    }

    pub fn total_calls(&self) -> usize {
        self.shared.calls.lock().unwrap().len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The text of the first user message (string content or the text parts).
pub fn first_user_text(body: &Value) -> String {
    let Some(msgs) = body["messages"].as_array() else {
        return String::new();
    };
    for m in msgs {
        if m["role"] == "user" {
            return match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            };
        }
    }
    String::new()
}

struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn completion(content: &str) -> Response {
    let body = json!({
        "id": "test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&s);
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let prompt = first_user_text(&json);
    s.calls.lock().unwrap().push(Call {
        prompt: prompt.clone(),
        at: Instant::now(),
        body: json,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let behaviour = {
        let next = s
            .scripts
            .lock()
            .unwrap()
            .get_mut(&prompt)
            .and_then(|q| q.pop_front());
        next.or_else(|| s.always.lock().unwrap().get(&prompt).cloned())
            .unwrap_or(Behaviour::Valid)
    };
    match behaviour {
        Behaviour::Valid => completion(&valid_answer(&prompt)),
        Behaviour::Content(c) => completion(&c),
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            completion(&valid_answer(&prompt))
        }
        Behaviour::RateLimited(after) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                "{\"error\":{\"message\":\"rate limited\"}}",
            )
                .into_response();
            if let Some(a) = after {
                r.headers_mut()
                    .insert("retry-after", a.parse().expect("header value"));
            }
            r
        }
        Behaviour::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("{{\"error\":{{\"message\":\"status {code}\"}}}}"),
        )
            .into_response(),
        Behaviour::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"choices\": [ this is not json",
        )
            .into_response(),
        Behaviour::Drop => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"choices\":[{\"message\":")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped by the test server",
                )),
            ];
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
    }
}
