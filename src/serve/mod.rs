//! `prism serve`: an OpenAI-compatible HTTP server (axum) over one checkpoint, so a trained
//! model can be queried by any OpenAI client, or act as the black-box teacher of another run.
//!
//! # Endpoints
//!
//! - `POST /v1/chat/completions`: messages with string content or `text` / `image_url` parts
//!   (images as `data:` base64 URLs only; the server fetches nothing), `temperature`, `top_p`,
//!   `max_tokens` / `max_completion_tokens`, `n`, `stop`, `seed`, `stream` (SSE chunks sent as
//!   the tokens are generated, then `data: [DONE]`). Each row stops at its own `max_tokens` or
//!   first stop string; a client that disconnects halts its rows.
//! - `GET /v1/models`, `GET /health` (`/health` needs no key).
//!
//! # Layout
//!
//! - [`api`]: request parsing and validation, response and error bodies.
//! - [`batcher`]: the batcher task and the model's compute thread.
//! - [`stream`]: the live SSE answer of a streamed request.
//! - this file: the CLI arguments, the axum router (auth, body limit, metrics), start-up and
//!   graceful shutdown on SIGINT/SIGTERM (in-flight requests are answered first).

pub mod api;
pub mod batcher;
pub mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::api::{ApiError, Choice, RequestLimits, StreamIds};
use self::batcher::{BatchLimits, GenJob};
use crate::actors::config::DeviceSpec;
use crate::models::generate_cli::load_processor;
use crate::models::processor::Processor;
use crate::teacher::ApiKey;
use crate::telemetry;

/// Errors that stop `prism serve` from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(transparent)]
    Files(#[from] crate::models::generate_cli::GenerateError),
    #[error("loading the model: {0}")]
    Model(#[from] crate::actors::compute::ComputeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error(transparent)]
    ApiKey(#[from] crate::teacher::TeacherError),
}

/// `prism serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Checkpoint directory (config.json, safetensors, tokenizer, chat template, preprocessor).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Model name clients use (default: the checkpoint folder's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Environment variable holding the API key clients must send as `Authorization: Bearer`.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Most rows (requests × n) in one batched generate call.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Longest wait for more requests after the first of a batch, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// `cpu` or `cuda:N` (default: cuda:0 when libtorch sees a GPU, else cpu).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Largest `n` of a request.
    #[arg(long, default_value_t = 8)]
    pub max_n: usize,
    /// Most images in one request.
    #[arg(long, default_value_t = 4)]
    pub max_images: usize,
    /// `max_tokens` of requests that give none.
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// What the handlers share.
pub struct AppState {
    pub model_name: String,
    pub processor: Arc<Processor>,
    pub limits: RequestLimits,
    pub max_prompt: usize,
    pub max_body_bytes: usize,
    api_key: Option<ApiKey>,
    /// The expected `Authorization` header value.
    bearer: Option<String>,
    jobs: mpsc::Sender<GenJob>,
    created: u64,
}

impl AppState {
    /// State over a started batcher (`jobs` is its queue).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model_name: String,
        processor: Arc<Processor>,
        limits: RequestLimits,
        max_prompt: usize,
        max_body_bytes: usize,
        api_key: Option<ApiKey>,
        bearer: Option<String>,
        jobs: mpsc::Sender<GenJob>,
    ) -> AppState {
        AppState {
            model_name,
            processor,
            limits,
            max_prompt,
            max_body_bytes,
            api_key,
            bearer,
            jobs,
            created: unix_now(),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model_name", &self.model_name)
            .field("api_key", &self.api_key)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The router: `/v1/chat/completions`, `/v1/models`, `/health`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint; this server has POST /v1/chat/completions, GET /v1/models \
                  and GET /health"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
    }
    .into_response()
}

async fn health() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.bearer else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing API key: send it as the header `Authorization: Bearer <key>`",
            )
        })?;
    // Compare without an early exit on the first differing byte.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::unauthorized("incorrect API key"))
    }
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_auth(&state, &headers) {
        return e.into_response();
    }
    let body = json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "prism",
        }],
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn chat(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let t0 = Instant::now();
    let response = match chat_inner(&state, request, t0).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!("serve: {}", e.message);
            } else {
                tracing::debug!("serve: refused: {}", e.message);
            }
            e.into_response()
        }
    };
    metrics::counter!(
        telemetry::SERVE_REQUESTS_TOTAL,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    // A stream records its duration when its last event is out.
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        metrics::histogram!(telemetry::SERVE_REQUEST_SECONDS).record(t0.elapsed().as_secs_f64());
    }
    response
}

async fn chat_inner(
    state: &Arc<AppState>,
    request: Request,
    t0: Instant,
) -> Result<Response, ApiError> {
    check_auth(state, request.headers())?;
    let limit = state.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;

    // Parsing, image decoding and tokenisation are CPU work: off the async threads.
    let st = state.clone();
    let (req, prompt) = tokio::task::spawn_blocking(move || {
        let req = api::parse_request(&body, &st.limits, &st.processor.image_processor)?;
        if let Some(m) = &req.model
            && m != &st.model_name
        {
            return Err(ApiError::model_not_found(m, &st.model_name));
        }
        let prompt = st
            .processor
            .encode_chat(&req.messages, &req.images, true, 0)
            .map_err(|e| {
                ApiError::invalid(
                    format!("the messages cannot be turned into a prompt: {e}"),
                    Some("messages"),
                    "invalid_prompt",
                )
            })?;
        if prompt.input_ids.len() > st.max_prompt {
            return Err(ApiError::invalid(
                format!(
                    "the prompt is {} tokens (images included) but this model's context \
                     takes at most {} prompt tokens",
                    prompt.input_ids.len(),
                    st.max_prompt
                ),
                Some("messages"),
                "context_length_exceeded",
            ));
        }
        Ok((req, prompt))
    })
    .await
    .map_err(|e| ApiError::server(format!("request preparation failed: {e}")))??;

    let prompt_tokens = prompt.input_ids.len();
    let (tx, rx) = oneshot::channel();
    let (stream_tx, stream_rx) = if req.stream {
        let (t, r) = mpsc::unbounded_channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    // Dropped with this handler (non-streamed) or with the SSE body (streamed): either way the
    // job's rows halt once nobody waits for them.
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let job = GenJob {
        prompt,
        n: req.n,
        sampling: req.sampling,
        max_new_tokens: req.max_tokens,
        seed: req.seed.unwrap_or_else(rand::random),
        stop: req.stop.clone(),
        stream: stream_tx,
        cancel,
        reply: tx,
    };
    state
        .jobs
        .send(job)
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let id = format!(
        "chatcmpl-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    );
    let created = unix_now();
    if let Some(tokens) = stream_rx {
        let events = stream::events(stream::StreamRequest {
            ids: StreamIds {
                id,
                created,
                model: state.model_name.clone(),
                include_usage: req.include_usage,
            },
            n: req.n,
            stop: req.stop,
            prompt_tokens,
            processor: state.processor.clone(),
            tokens,
            reply: rx,
            cancel: guard,
            arrived: t0,
        });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let outputs = rx
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?
        .map_err(ApiError::server)?;
    drop(guard);

    let st = state.clone();
    let stop = req.stop;
    let choices: Vec<Choice> = tokio::task::spawn_blocking(move || {
        outputs
            .into_iter()
            .map(|o| batcher::make_choice(&st.processor, o, &stop))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::server(format!("decoding failed: {e}")))?
    .map_err(ApiError::server)?;
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    metrics::counter!(telemetry::SERVE_PROMPT_TOKENS_TOTAL).increment(prompt_tokens as u64);
    metrics::counter!(telemetry::SERVE_COMPLETION_TOKENS_TOTAL).increment(completion as u64);
    let body = api::completion_body(&id, created, &state.model_name, &choices, prompt_tokens);
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// A token cancelled on the first SIGINT or SIGTERM. Must be called inside a tokio runtime.
fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "serve: stopping; answering in-flight requests first"
        );
        t.cancel();
    });
    Ok(token)
}

fn torch_device(spec: Option<DeviceSpec>) -> Result<tch::Device, ServeError> {
    match spec {
        None => Ok(tch::Device::cuda_if_available()),
        Some(DeviceSpec::Cpu) => Ok(tch::Device::Cpu),
        Some(DeviceSpec::Cuda(i)) => {
            let n = tch::Cuda::device_count();
            if (i as i64) < n {
                Ok(tch::Device::Cuda(i))
            } else {
                Err(ServeError::Flag {
                    flag: "device",
                    reason: format!("cuda:{i} requested but libtorch sees {n} CUDA device(s)"),
                })
            }
        }
    }
}

/// Runs `prism serve` until SIGINT/SIGTERM.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("prism-serve")
        .build()?;
    runtime.block_on(async {
        let shutdown = on_signals()?;
        serve(args, shutdown, |addr| {
            // The one line on stdout: scripts and tests read the address from it.
            println!("prism serve: listening on http://{addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })
        .await
    })
}

/// Loads the model, binds `args.addr`, calls `ready` with the bound address, and serves until
/// `shutdown` is cancelled; then answers the requests in flight and returns.
pub async fn serve(
    args: &ServeArgs,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    for (flag, v) in [
        ("max-batch", args.max_batch),
        ("max-n", args.max_n),
        ("default-max-tokens", args.default_max_tokens),
        ("max-body-bytes", args.max_body_bytes),
    ] {
        if v == 0 {
            return Err(ServeError::Flag {
                flag,
                reason: "must be at least 1".into(),
            });
        }
    }
    if let Some(t) = args.threads {
        if t < 1 {
            return Err(ServeError::Flag {
                flag: "threads",
                reason: format!("must be at least 1, got {t}"),
            });
        }
        tch::set_num_threads(t);
    }
    let api_key = match &args.api_key_env {
        Some(name) => Some(ApiKey::from_env(name)?),
        None => None,
    };
    let bearer = match &args.api_key_env {
        Some(name) => std::env::var(name)
            .ok()
            .map(|k| format!("Bearer {}", k.trim())),
        None => None,
    };
    if let Some(addr) = args.metrics_addr {
        telemetry::install_prometheus(addr)?;
    }
    let device = torch_device(args.device)?;
    let model_name = match &args.served_model_name {
        Some(n) if !n.trim().is_empty() => n.clone(),
        Some(_) => {
            return Err(ServeError::Flag {
                flag: "served-model-name",
                reason: "is empty".into(),
            });
        }
        None => args
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "prism".into()),
    };
    let processor = Arc::new(load_processor(&args.model)?);
    let (compute, max_prompt) =
        batcher::start_model(args.model.clone(), device, processor.clone()).await?;
    tracing::info!(
        "serve: {} loaded on {device:?} as `{model_name}` (prompts up to {max_prompt} tokens)",
        args.model.display()
    );
    let (jobs_tx, jobs_rx) = mpsc::channel::<GenJob>(1024);
    let batcher = tokio::spawn(batcher::run_batcher(
        jobs_rx,
        compute,
        BatchLimits {
            max_batch: args.max_batch,
            max_wait: Duration::from_millis(args.max_wait_ms),
        },
    ));
    let state = Arc::new(AppState::new(
        model_name,
        processor,
        RequestLimits {
            max_n: args.max_n,
            max_images: args.max_images,
            default_max_tokens: args.default_max_tokens,
        },
        max_prompt,
        args.max_body_bytes,
        api_key,
        bearer,
        jobs_tx,
    ));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: args.addr,
            source,
        })?;
    let local = listener.local_addr()?;
    ready(local);
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    // Every handler (and its job sender) is gone: the batcher ends after its last batch.
    let _ = batcher.await;
    tracing::info!("serve: stopped");
    Ok(())
}
