//! The async OpenAI-compatible Chat Completions client: builds the request (PRISM system
//! instruction, user text with the images as base64 data URLs in place of their `<image>`
//! placeholders), passes the rate limits and the concurrency gate, retries transient failures
//! with jittered exponential backoff (honouring `Retry-After`), re-asks on answers outside the
//! three-block format, accounts tokens and cost, and writes every finished call to the
//! [`AnswerCache`] before returning it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rand::RngExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::cache::{AnswerCache, CacheEntry, CacheStatus, request_key};
use super::config::TeacherConfig;
use super::error::TeacherError;
use super::limits::RateLimiter;
use crate::data::sharegpt::IMAGE_TOKEN;
use crate::data::synth::SYSTEM_INSTRUCTION;
use crate::reward::format::split_text;
use crate::telemetry;

/// The user turn sent after an answer that breaks the format (our own wording).
pub const REASK_INSTRUCTION: &str = "Your reply did not follow the required format. \
Answer again with exactly three blocks and nothing around them: \
<caption>...</caption>, then <think>...</think>, then <answer>...</answer>.";

/// Longest server body quoted in an error.
const BODY_QUOTE: usize = 300;

/// The API key; its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<ApiKey, TeacherError> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(ApiKey(v.trim().to_string())),
            _ => Err(TeacherError::MissingApiKey(name.to_string())),
        }
    }

    /// A key given directly (tests, embedding programs).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// One prompt to demonstrate.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherRequest {
    /// Names the prompt in errors and reports (a row, an id, a uid); not sent, not hashed.
    pub label: String,
    /// The user turn, with one `<image>` placeholder per image (images without a placeholder
    /// are sent after the text).
    pub text: String,
    /// Encoded image files (PNG, JPEG, GIF or WebP), in placeholder order.
    pub images: Vec<Vec<u8>>,
}

/// A format-valid demonstration.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The full answer text.
    pub response: String,
    /// `<caption>…</caption>`.
    pub caption: String,
    /// `<think>…</think>\s*<answer>…</answer>`.
    pub cot: String,
    /// True when served from the cache (nothing was paid for it in this process).
    pub cached: bool,
    /// Tokens and cost the call took when it was asked (also for cached answers).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Asks the call took (1 + re-asks).
    pub asks: u32,
}

/// Counters of this client since it was built (the same numbers go to the metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeacherStats {
    /// HTTP attempts sent.
    pub requests: u64,
    /// Retries by reason (`rate_limited`, `server_error`, `timeout`, `connection`, `malformed`).
    pub retries: BTreeMap<String, u64>,
    /// Answers outside the format (each one triggers a re-ask or ends in failure).
    pub invalid_answers: u64,
    /// Calls answered by the server in this process, and calls served from the cache.
    pub answered: u64,
    pub cache_hits: u64,
    /// Calls that ended in an error, by [`TeacherError::reason`].
    pub failures: BTreeMap<String, u64>,
    /// Tokens and cost paid in this process (cache hits add nothing).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl TeacherStats {
    pub fn total_retries(&self) -> u64 {
        self.retries.values().sum()
    }
    pub fn total_failures(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// The teacher client. Cheap to clone (shared state): clones share the cache, the limits,
/// the concurrency gate and the counters.
#[derive(Clone)]
pub struct TeacherClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TeacherConfig,
    url: String,
    http: reqwest::Client,
    api_key: Option<ApiKey>,
    cache: AnswerCache,
    limiter: RateLimiter,
    gate: Semaphore,
    stats: Mutex<TeacherStats>,
    /// One lock per key being asked, so concurrent identical prompts are paid once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// After a 429 with `Retry-After`, no attempt of any call starts before this instant.
    cooldown: Mutex<Option<Instant>>,
}

impl fmt::Debug for TeacherClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeacherClient")
            .field("url", &self.inner.url)
            .field("model", &self.inner.cfg.model)
            .field("api_key", &self.inner.api_key)
            .finish()
    }
}

/// What one failed attempt means.
enum AttemptError {
    /// Try again after the backoff (or the server's `Retry-After`).
    Retry {
        reason: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Give up on this call.
    Fatal(TeacherError),
}

/// The text and usage of one successful completion.
struct Completion {
    content: String,
    input_tokens: u64,
    output_tokens: u64,
}

impl TeacherClient {
    /// Builds the client, reading the API key from `cfg.api_key_env` (if set) and opening the
    /// cache.
    pub fn new(cfg: TeacherConfig) -> Result<TeacherClient, TeacherError> {
        let key = match &cfg.api_key_env {
            Some(name) => Some(ApiKey::from_env(name)?),
            None => None,
        };
        TeacherClient::with_api_key(cfg, key)
    }

    /// Builds the client with an explicit key (or none).
    pub fn with_api_key(
        cfg: TeacherConfig,
        api_key: Option<ApiKey>,
    ) -> Result<TeacherClient, TeacherError> {
        // `TeacherConfig::load` has already named the file; a config built in code has none.
        cfg.validate().map_err(|message| TeacherError::Config {
            path: "<config given in code>".into(),
            message,
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs_f64(cfg.timeout_secs.min(30.0)))
            .build()
            .map_err(|e| TeacherError::Client(e.to_string()))?;
        let cache = AnswerCache::open(&cfg.cache_path)?;
        let url = format!("{}/chat/completions", cfg.base_url.trim_end_matches('/'));
        Ok(TeacherClient {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(
                    cfg.requests_per_minute,
                    cfg.tokens_per_minute,
                    Duration::from_secs_f64(cfg.rate_window_secs),
                ),
                gate: Semaphore::new(cfg.max_concurrency),
                url,
                http,
                api_key,
                cache,
                stats: Mutex::new(TeacherStats::default()),
                inflight: Mutex::new(HashMap::new()),
                cooldown: Mutex::new(None),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &TeacherConfig {
        &self.inner.cfg
    }

    pub fn cache(&self) -> &AnswerCache {
        &self.inner.cache
    }

    /// A copy of the counters.
    pub fn stats(&self) -> TeacherStats {
        self.lock_stats().clone()
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, TeacherStats> {
        self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache key of a request (model, system instruction, user text, image hashes).
    pub fn key_of(&self, req: &TeacherRequest) -> String {
        let hashes: Vec<String> = req
            .images
            .iter()
            .map(|b| crate::data::io::sha256_bytes(b))
            .collect();
        request_key(
            &self.inner.cfg.model,
            &[("system", SYSTEM_INSTRUCTION), ("user", &req.text)],
            &hashes,
        )
    }

    /// True when the call for `req` is already in the cache (valid or given up on).
    pub fn is_cached(&self, req: &TeacherRequest) -> bool {
        self.inner.cache.get(&self.key_of(req)).is_some()
    }

    /// Demonstrates one prompt: from the cache, or by asking the teacher (with retries and
    /// re-asks). A call that ends without a valid answer is an error; one that ended in
    /// [`TeacherError::InvalidAnswer`] is cached as such and reported again without paying.
    pub async fn ask(&self, req: &TeacherRequest) -> Result<Answer, TeacherError> {
        let result = self.ask_inner(req).await;
        if let Err(e) = &result {
            *self
                .lock_stats()
                .failures
                .entry(e.reason().to_string())
                .or_default() += 1;
            metrics::counter!(telemetry::TEACHER_FAILURES_TOTAL, "reason" => e.reason())
                .increment(1);
            tracing::warn!("teacher: {}: {e}", req.label);
        }
        result
    }

    async fn ask_inner(&self, req: &TeacherRequest) -> Result<Answer, TeacherError> {
        let key = self.key_of(req);
        let key_lock = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let _held = key_lock.lock().await;
        let result = match self.inner.cache.get(&key) {
            Some(entry) => Ok(self.serve_cached(entry)),
            None => self.ask_teacher(req, &key).await,
        };
        {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Only this task and the map hold it: nobody else waits on this key.
            if Arc::strong_count(&key_lock) == 2 {
                map.remove(&key);
            }
        }
        result?
    }

    /// Serves a cached call.
    fn serve_cached(&self, e: CacheEntry) -> Result<Answer, TeacherError> {
        self.lock_stats().cache_hits += 1;
        metrics::counter!(telemetry::TEACHER_CACHE_HITS_TOTAL, "stage" => "http").increment(1);
        match (e.status, split_text(&e.response)) {
            (CacheStatus::Valid, Some(s)) => Ok(Answer {
                caption: s.caption.to_string(),
                cot: s.cot.to_string(),
                response: e.response.clone(),
                cached: true,
                input_tokens: e.input_tokens,
                output_tokens: e.output_tokens,
                cost_usd: e.cost_usd,
                asks: e.asks,
            }),
            _ => Err(TeacherError::InvalidAnswer {
                asks: e.asks,
                last: e.response,
            }),
        }
    }

    /// Asks the teacher, re-asking on format errors, and caches the outcome.
    async fn ask_teacher(
        &self,
        req: &TeacherRequest,
        key: &str,
    ) -> Result<Result<Answer, TeacherError>, TeacherError> {
        let cfg = &self.inner.cfg;
        metrics::counter!(telemetry::TEACHER_CACHE_MISSES_TOTAL, "stage" => "http").increment(1);
        let mut messages = vec![
            json!({"role": "system", "content": SYSTEM_INSTRUCTION}),
            json!({"role": "user", "content": user_content(req)?}),
        ];
        let image_tokens = cfg.image_token_estimate * req.images.len() as u64;
        let (mut input_tokens, mut output_tokens) = (0u64, 0u64);
        let mut last = String::new();
        let mut asks = 0u32;
        while asks <= cfg.max_reasks {
            asks += 1;
            let c = self.complete(&messages, image_tokens).await?;
            input_tokens += c.input_tokens;
            output_tokens += c.output_tokens;
            if let Some(split) = split_text(&c.content) {
                let cost_usd = cfg.cost(input_tokens, output_tokens);
                let answer = Answer {
                    caption: split.caption.to_string(),
                    cot: split.cot.to_string(),
                    response: c.content.clone(),
                    cached: false,
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    asks,
                };
                self.inner.cache.append(CacheEntry {
                    key: key.to_string(),
                    model: cfg.model.clone(),
                    status: CacheStatus::Valid,
                    response: c.content,
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    asks,
                })?;
                self.lock_stats().answered += 1;
                return Ok(Ok(answer));
            }
            self.lock_stats().invalid_answers += 1;
            metrics::counter!(telemetry::TEACHER_INVALID_ANSWERS_TOTAL).increment(1);
            tracing::debug!("teacher: {}: answer {asks} is not format-valid", req.label);
            messages.push(json!({"role": "assistant", "content": c.content.clone()}));
            messages.push(json!({"role": "user", "content": REASK_INSTRUCTION}));
            last = c.content;
        }
        self.inner.cache.append(CacheEntry {
            key: key.to_string(),
            model: cfg.model.clone(),
            status: CacheStatus::Invalid,
            response: last.clone(),
            input_tokens,
            output_tokens,
            cost_usd: cfg.cost(input_tokens, output_tokens),
            asks,
        })?;
        Ok(Err(TeacherError::InvalidAnswer { asks, last }))
    }

    /// One completion, with retries of transient failures.
    async fn complete(
        &self,
        messages: &[Value],
        image_tokens: u64,
    ) -> Result<Completion, TeacherError> {
        let cfg = &self.inner.cfg;
        let body = json!({
            "model": cfg.model,
            "messages": messages,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        });
        let text_chars: usize = messages
            .iter()
            .map(|m| match &m["content"] {
                Value::String(s) => s.len(),
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| p["text"].as_str().map_or(0, str::len))
                    .sum(),
                _ => 0,
            })
            .sum();
        let estimate = text_chars as u64 / 4 + image_tokens + u64::from(cfg.max_tokens);
        let mut attempt = 0u32;
        loop {
            self.wait_cooldown().await;
            let ticket = self.inner.limiter.acquire(estimate).await;
            let outcome = {
                let _permit = self
                    .inner
                    .gate
                    .acquire()
                    .await
                    .map_err(|e| TeacherError::Client(e.to_string()))?;
                self.lock_stats().requests += 1;
                metrics::counter!(telemetry::TEACHER_REQUESTS_TOTAL).increment(1);
                let start = Instant::now();
                let r = self.attempt(&body).await;
                metrics::histogram!(telemetry::TEACHER_REQUEST_SECONDS)
                    .record(start.elapsed().as_secs_f64());
                r
            };
            match outcome {
                Ok(c) => {
                    self.inner
                        .limiter
                        .settle(ticket, c.input_tokens + c.output_tokens)
                        .await;
                    let cost = cfg.cost(c.input_tokens, c.output_tokens);
                    {
                        let mut s = self.lock_stats();
                        s.input_tokens += c.input_tokens;
                        s.output_tokens += c.output_tokens;
                        s.cost_usd += cost;
                    }
                    metrics::counter!(telemetry::TEACHER_INPUT_TOKENS_TOTAL)
                        .increment(c.input_tokens);
                    metrics::counter!(telemetry::TEACHER_OUTPUT_TOKENS_TOTAL)
                        .increment(c.output_tokens);
                    metrics::gauge!(telemetry::TEACHER_COST_USD).increment(cost);
                    return Ok(c);
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry {
                    reason,
                    message,
                    retry_after,
                }) => {
                    if attempt >= cfg.max_retries {
                        return Err(TeacherError::RetriesExhausted {
                            attempts: attempt + 1,
                            last: format!("{reason}: {message}"),
                        });
                    }
                    *self
                        .lock_stats()
                        .retries
                        .entry(reason.to_string())
                        .or_default() += 1;
                    metrics::counter!(telemetry::TEACHER_RETRIES_TOTAL, "reason" => reason)
                        .increment(1);
                    let wait = retry_wait(cfg, attempt, retry_after);
                    if reason == "rate_limited" && retry_after.is_some() {
                        // The server said when it will take requests again: hold every call.
                        let until = Instant::now() + wait;
                        let mut c = self
                            .inner
                            .cooldown
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        *c = Some(c.map_or(until, |t| t.max(until)));
                    }
                    tracing::debug!(
                        "teacher: retry {} after {reason} in {:.3}s: {message}",
                        attempt + 1,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Sleeps until the shared cooldown set by a 429's `Retry-After` (if any) has passed.
    async fn wait_cooldown(&self) {
        loop {
            let until = *self
                .inner
                .cooldown
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// One HTTP attempt, classified.
    async fn attempt(&self, body: &Value) -> Result<Completion, AttemptError> {
        let mut rb = self.inner.http.post(&self.inner.url).json(body);
        if let Some(key) = &self.inner.api_key {
            rb = rb.bearer_auth(&key.0);
        }
        let transport = |e: reqwest::Error| {
            let reason = if e.is_timeout() {
                "timeout"
            } else {
                "connection"
            };
            AttemptError::Retry {
                reason,
                // Without the URL: reqwest's Display can include it, and it is logged elsewhere.
                message: e.without_url().to_string(),
                retry_after: None,
            }
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.map_err(transport)?;
        if status.is_success() {
            return parse_completion(&text).map_err(|message| AttemptError::Retry {
                reason: "malformed",
                message,
                retry_after: None,
            });
        }
        let code = status.as_u16();
        let body = quote(&text);
        match code {
            429 => Err(AttemptError::Retry {
                reason: "rate_limited",
                message: format!("HTTP 429: {body}"),
                retry_after,
            }),
            408 | 409 | 500..=599 => Err(AttemptError::Retry {
                reason: "server_error",
                message: format!("HTTP {code}: {body}"),
                retry_after,
            }),
            _ => Err(AttemptError::Fatal(TeacherError::Rejected {
                status: code,
                body,
            })),
        }
    }
}

/// The wait before retry `attempt` (0-based): the server's `Retry-After` (capped at
/// `backoff.max_secs`), else a uniform draw in `[0, min(max, initial · multiplier^attempt)]`.
pub fn retry_wait(cfg: &TeacherConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let b = &cfg.backoff;
    let cap = Duration::from_secs_f64(b.max_secs);
    if let Some(ra) = retry_after {
        return ra.min(cap);
    }
    let bound = (b.initial_secs * b.multiplier.powi(attempt.min(64) as i32)).min(b.max_secs);
    if bound <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rand::rng().random_range(0.0..=bound))
}

/// `Retry-After` as delay-seconds (integer or decimal) or as an IMF-fixdate HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, turned into the delay from now; a past date is zero).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = parse_http_date(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Duration::from_secs_f64(
        (at as f64 - now).clamp(0.0, 86_400.0),
    ))
}

/// Unix seconds of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`); other HTTP-date forms are
/// `None`.
pub fn parse_http_date(v: &str) -> Option<i64> {
    let rest = v.split_once(", ")?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    if f.len() != 5 || f[4] != "GMT" {
        return None;
    }
    let day: i64 = f[0].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == f[1])? as i64 + 1;
    let year: i64 = f[2].parse().ok()?;
    let hms: Vec<i64> = f[3]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (proleptic Gregorian).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// The first characters of a server body, for error messages.
fn quote(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(BODY_QUOTE) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}

/// The answer text and token usage of a Chat Completions response body.
fn parse_completion(text: &str) -> Result<Completion, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("body is not JSON ({e}): {}", quote(text)))?;
    let message = &v["choices"][0]["message"];
    let content = match &message["content"] {
        Value::String(s) => s.clone(),
        // Some servers send content parts.
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => return Err(format!("no choices[0].message.content in {}", quote(text))),
    };
    let usage = |name: &str| v["usage"][name].as_u64().unwrap_or(0);
    Ok(Completion {
        content,
        input_tokens: usage("prompt_tokens"),
        output_tokens: usage("completion_tokens"),
    })
}

/// `data:<mime>;base64,<…>` for an encoded image; the format is sniffed from its bytes.
pub fn data_url(bytes: &[u8]) -> Result<String, String> {
    let mime = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::Gif) => "image/gif",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(other) => return Err(format!("{other:?} images are not sent; use PNG or JPEG")),
        Err(_) => return Err("not a recognised image file".into()),
    };
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The user message's content parts: text pieces with each `<image>` placeholder replaced by
/// the next image; images beyond the placeholders follow the text.
fn user_content(req: &TeacherRequest) -> Result<Value, TeacherError> {
    let mut parts = Vec::new();
    let mut images = req.images.iter().enumerate();
    let push_image = |parts: &mut Vec<Value>, (i, bytes): (usize, &Vec<u8>)| {
        let url = data_url(bytes).map_err(|message| TeacherError::Image {
            prompt: req.label.clone(),
            index: i,
            message,
        })?;
        parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
        Ok::<(), TeacherError>(())
    };
    let pieces: Vec<&str> = req.text.split(IMAGE_TOKEN).collect();
    for (n, piece) in pieces.iter().enumerate() {
        if n > 0
            && let Some(img) = images.next()
        {
            push_image(&mut parts, img)?;
        }
        let piece = piece.trim_matches('\n');
        if !piece.is_empty() {
            parts.push(json!({"type": "text", "text": piece}));
        }
    }
    for img in images {
        push_image(&mut parts, img)?;
    }
    Ok(Value::Array(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn images_replace_placeholders_in_order() {
        let req = TeacherRequest {
            label: "row 0".into(),
            text: "<image>\nWhat is left of <image>?".into(),
            images: vec![png(), png()],
        };
        let parts = user_content(&req).unwrap();
        let kinds: Vec<&str> = parts
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["image_url", "text", "image_url", "text"]);
        assert!(
            parts[0]["image_url"]["url"]
                .as_str()
                .unwrap()
                .starts_with("data:image/png;base64,iVBOR")
        );
        assert_eq!(parts[1]["text"], "What is left of ");
    }

    #[test]
    fn bad_image_names_prompt_and_index() {
        let req = TeacherRequest {
            label: "row 7".into(),
            text: "<image> q".into(),
            images: vec![b"not an image".to_vec()],
        };
        let err = user_content(&req).unwrap_err().to_string();
        assert!(err.contains("row 7") && err.contains("image 0"), "{err}");
    }

    #[test]
    fn retry_after_and_backoff() {
        let mut cfg = TeacherConfig::new("http://x", "m", "c");
        cfg.backoff.initial_secs = 0.5;
        cfg.backoff.multiplier = 2.0;
        cfg.backoff.max_secs = 3.0;
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.25"), Some(Duration::from_millis(250)));
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            retry_wait(&cfg, 0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_wait(&cfg, 0, Some(Duration::from_secs(100))),
            Duration::from_secs(3)
        );
        for attempt in 0..10 {
            let bound = (0.5 * 2f64.powi(attempt as i32)).min(3.0);
            for _ in 0..20 {
                let w = retry_wait(&cfg, attempt, None).as_secs_f64();
                assert!(
                    (0.0..=bound).contains(&w),
                    "attempt {attempt}: {w} > {bound}"
                );
            }
        }
    }

    #[test]
    fn http_dates() {
        // Reference values from `date -u -d … +%s`.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        let later = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        // 30 s from now as an IMF-fixdate: the delay is about 30 s.
        let d = parse_retry_after(&imf(later as i64)).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    /// IMF-fixdate of unix seconds (test helper; weekday is not checked by the parser).
    fn imf(t: i64) -> String {
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        // Civil date from days (inverse of the parser's formula).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            MONTHS[(m - 1) as usize],
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    #[test]
    fn completion_parsing() {
        let c = parse_completion(
            r#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(
            (c.content.as_str(), c.input_tokens, c.output_tokens),
            ("hi", 7, 3)
        );
        assert!(parse_completion("{\"choices\":[]}").is_err());
        assert!(parse_completion("<html>").is_err());
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let k = ApiKey::new("sk-secret-123");
        assert!(!format!("{k:?}").contains("secret"));
    }
}
