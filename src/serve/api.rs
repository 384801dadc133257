//! The OpenAI Chat Completions wire format of `prism serve`: request parsing and validation
//! (every refusal an [`ApiError`] naming the offending field as `param`), the response and
//! stream-chunk bodies, and the OpenAI-style error body `{"error": {message, type, param,
//! code}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use image::RgbImage;
use serde_json::{Value, json};

use crate::models::chat_template::{ChatMessage, ContentPart};
use crate::models::generation::Sampling;
use crate::models::image_processor::ImageProcessor;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// A refused request: HTTP status and the OpenAI error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `server_error`.
    pub kind: &'static str,
    /// The request field at fault (`messages[1].content[0].image_url`), if any.
    pub param: Option<String>,
    /// A short machine-readable code (`context_length_exceeded`, `invalid_json`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>, code: &'static str) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: Some(code),
        }
    }

    /// 401 `authentication_error`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{asked}` does not exist; this server serves `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 413 for a body over `--max-body-bytes`.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body is larger than the limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 500 `server_error` (generation failed; the message names what).
    pub fn server(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// 503 while the server shuts down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Server-side limits a request is checked against.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest `n`.
    pub max_n: usize,
    /// Most images in one request (all messages together).
    pub max_images: usize,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
}

/// A validated chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model the client named, if any.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Decoded images, in order of appearance.
    pub images: Vec<RgbImage>,
    pub sampling: Sampling,
    pub max_tokens: usize,
    pub n: usize,
    pub stop: Vec<String>,
    /// Base seed: choice `i` samples with `seed + i` (random when the client gives none).
    pub seed: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage`: a final chunk with the usage.
    pub include_usage: bool,
}

/// Parses and validates a request body. Images are decoded with `images` (size limits and RGB
/// conversion as for training data).
pub fn parse_request(
    body: &[u8],
    limits: &RequestLimits,
    images: &ImageProcessor,
) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("the request body is not valid JSON: {e}"),
            None,
            "invalid_json",
        )
    })?;
    let Value::Object(obj) = &v else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
            "invalid_json",
        ));
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(wrong_type("model", "a string")),
    };
    let (messages, decoded) = parse_messages(obj.get("messages"), limits, images)?;

    let temperature = opt_number(obj, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("`temperature` must be between 0 and 2, got {temperature}"),
            Some("temperature"),
            "invalid_value",
        ));
    }
    let top_p = opt_number(obj, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("`top_p` must be in (0, 1], got {top_p}"),
            Some("top_p"),
            "invalid_value",
        ));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_k: 0,
            top_p,
        }
    };
    let max_tokens = match (
        opt_count(obj, "max_completion_tokens")?,
        opt_count(obj, "max_tokens")?,
    ) {
        (Some(m), _) => (m, "max_completion_tokens"),
        (None, Some(m)) => (m, "max_tokens"),
        (None, None) => (limits.default_max_tokens as u64, "max_tokens"),
    };
    if max_tokens.0 == 0 {
        return Err(ApiError::invalid(
            format!("`{}` must be at least 1", max_tokens.1),
            Some(max_tokens.1),
            "invalid_value",
        ));
    }
    let n = opt_count(obj, "n")?.unwrap_or(1);
    if n == 0 || n > limits.max_n as u64 {
        return Err(ApiError::invalid(
            format!("`n` must be between 1 and {}, got {n}", limits.max_n),
            Some("n"),
            "invalid_value",
        ));
    }
    let stop = parse_stop(obj.get("stop"))?;
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(x)) => match (x.as_u64(), x.as_i64()) {
            (Some(u), _) => Some(u),
            // Negative seeds are valid for OpenAI; any fixed mapping keeps them reproducible.
            (None, Some(i)) => Some(i as u64),
            _ => return Err(wrong_type("seed", "an integer")),
        },
        Some(_) => return Err(wrong_type("seed", "an integer")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(wrong_type("stream", "a boolean")),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(wrong_type("stream_options.include_usage", "a boolean")),
        },
        Some(_) => return Err(wrong_type("stream_options", "an object")),
    };
    Ok(ChatRequest {
        model,
        messages,
        images: decoded,
        sampling,
        max_tokens: usize::try_from(max_tokens.0).unwrap_or(usize::MAX),
        n: n as usize,
        stop,
        seed,
        stream,
        include_usage,
    })
}

fn wrong_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        format!("`{param}` must be {expected}"),
        Some(param),
        "invalid_type",
    )
}

fn opt_number(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => Ok(x.as_f64()),
        Some(_) => Err(wrong_type(key, "a number")),
    }
}

fn opt_count(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a non-negative integer")),
        Some(_) => Err(wrong_type(key, "a non-negative integer")),
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stop = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong_type(&format!("stop[{i}]"), "a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("stop", "a string or a list of strings")),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
            Some("stop"),
            "invalid_value",
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop sequences must not be empty",
            Some("stop"),
            "invalid_value",
        ));
    }
    Ok(stop)
}

fn parse_messages(
    v: Option<&Value>,
    limits: &RequestLimits,
    decoder: &ImageProcessor,
) -> Result<(Vec<ChatMessage>, Vec<RgbImage>), ApiError> {
    let Some(Value::Array(items)) = v else {
        return Err(match v {
            None => ApiError::invalid(
                "`messages` is required",
                Some("messages"),
                "missing_required_parameter",
            ),
            Some(_) => wrong_type("messages", "a list of messages"),
        });
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            Some("messages"),
            "invalid_value",
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    let mut images = Vec::new();
    for (i, m) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(wrong_type(&at, "an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(_) => return Err(wrong_type(&format!("{at}.role"), "a string")),
            None => {
                return Err(ApiError::invalid(
                    format!("`{at}.role` is required"),
                    Some(&format!("{at}.role")),
                    "missing_required_parameter",
                ));
            }
        };
        // OpenAI's `developer` role is the system role of newer models.
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!(
                        "unknown role {other:?} in `{at}.role`; expected system, developer, \
                         user or assistant"
                    ),
                    Some(&format!("{at}.role")),
                    "invalid_value",
                ));
            }
        };
        let param = format!("{at}.content");
        let msg = match m.get("content") {
            Some(Value::String(s)) => ChatMessage::text(role, s.clone()),
            Some(Value::Null) | None if role == "assistant" => ChatMessage::text(role, ""),
            Some(Value::Array(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    let pat = format!("{param}[{j}]");
                    out.push(parse_part(p, &pat, role, &mut images, limits, decoder)?);
                }
                ChatMessage::parts(role, out)
            }
            None => {
                return Err(ApiError::invalid(
                    format!("`{param}` is required"),
                    Some(&param),
                    "missing_required_parameter",
                ));
            }
            Some(_) => return Err(wrong_type(&param, "a string or a list of content parts")),
        };
        messages.push(msg);
    }
    Ok((messages, images))
}

fn parse_part(
    p: &Value,
    at: &str,
    role: &str,
    images: &mut Vec<RgbImage>,
    limits: &RequestLimits,
    decoder: &ImageProcessor,
) -> Result<ContentPart, ApiError> {
    let Value::Object(p) = p else {
        return Err(wrong_type(at, "an object"));
    };
    match p.get("type").and_then(Value::as_str) {
        Some("text") => match p.get("text") {
            Some(Value::String(t)) => Ok(ContentPart::Text { text: t.clone() }),
            _ => Err(wrong_type(&format!("{at}.text"), "a string")),
        },
        Some("image_url") => {
            if role != "user" {
                return Err(ApiError::invalid(
                    format!(
                        "images are accepted in user messages only (`{at}` is in a {role} message)"
                    ),
                    Some(at),
                    "invalid_value",
                ));
            }
            let url = match p.get("image_url") {
                Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                Some(Value::String(s)) => Some(s.as_str()),
                _ => None,
            }
            .ok_or_else(|| wrong_type(&format!("{at}.image_url"), "an object with a `url`"))?;
            if images.len() >= limits.max_images {
                return Err(ApiError::invalid(
                    format!("too many images: at most {} per request", limits.max_images),
                    Some(at),
                    "too_many_images",
                ));
            }
            let param = format!("{at}.image_url.url");
            let bytes = data_url_bytes(url, &param)?;
            let img = decoder.decode(&bytes, &param).map_err(|e| {
                ApiError::invalid(format!("`{param}`: {e}"), Some(&param), "invalid_image")
            })?;
            images.push(img);
            Ok(ContentPart::Image { image: None })
        }
        Some(other) => Err(ApiError::invalid(
            format!(
                "unsupported content part type {other:?} in `{at}`; expected text or image_url"
            ),
            Some(&format!("{at}.type")),
            "invalid_value",
        )),
        None => Err(wrong_type(&format!("{at}.type"), "a string")),
    }
}

/// The bytes of a `data:<mime>;base64,<payload>` URL. Remote URLs are refused: the server
/// never fetches anything.
pub fn data_url_bytes(url: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::invalid(
            format!(
                "`{param}`: remote image URLs are not fetched by this server; send the image \
                 inline as a data:image/...;base64 URL"
            ),
            Some(param),
            "unsupported_image_url",
        ));
    }
    let bad = |why: &str| {
        ApiError::invalid(
            format!("`{param}`: {why}; expected data:image/<type>;base64,<data>"),
            Some(param),
            "invalid_image_url",
        )
    };
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| bad("not a data: URL"))?;
    let (header, payload) = rest
        .split_once(',')
        .ok_or_else(|| bad("no ',' after the media type"))?;
    if !header.ends_with(";base64") {
        return Err(bad("only base64 data URLs are accepted"));
    }
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| bad(&format!("invalid base64 ({e})")))
}

/// Why a choice ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One finished choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub text: String,
    pub finish_reason: FinishReason,
    pub completion_tokens: usize,
}

/// The body of a non-streamed answer.
pub fn completion_body(
    id: &str,
    created: u64,
    model: &str,
    choices: &[Choice],
    prompt_tokens: usize,
) -> Value {
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices.iter().enumerate().map(|(i, c)| json!({
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": null,
            "finish_reason": c.finish_reason.as_str(),
        })).collect::<Vec<_>>(),
        "usage": usage(prompt_tokens, completion),
    })
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// What every chunk of one streamed answer shares.
#[derive(Debug, Clone)]
pub struct StreamIds {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// `stream_options.include_usage`: every chunk then has `"usage": null`, and a last chunk
    /// without choices carries the usage.
    pub include_usage: bool,
}

/// The `data:` payload of one chunk of choice `index`: a `delta` (`{"role": …}` first, then
/// `{"content": …}`), or `{}` with the finish reason last.
pub fn stream_chunk(ids: &StreamIds, index: usize, delta: Value, finish: Option<&str>) -> String {
    let mut c = json!({
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if ids.include_usage {
        c["usage"] = Value::Null;
    }
    c.to_string()
}

/// The usage chunk that ends a stream with `include_usage` (before `[DONE]`).
pub fn usage_chunk(ids: &StreamIds, prompt_tokens: usize, choices: &[Choice]) -> String {
    let completion: usize = choices.iter().map(|c| c.completion_tokens).sum();
    json!({
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "choices": [],
        "usage": usage(prompt_tokens, completion),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::image_processor::ImageProcessorConfig;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_n: 4,
            max_images: 1,
            default_max_tokens: 16,
        }
    }

    fn decoder() -> ImageProcessor {
        ImageProcessor::new(ImageProcessorConfig::default())
    }

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_request(v.to_string().as_bytes(), &limits(), &decoder())
    }

    fn png_url() -> String {
        let img = RgbImage::from_pixel(4, 4, image::Rgb([9, 8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(out.into_inner())
        )
    }

    #[test]
    fn defaults_and_fields() {
        let r = parse(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(r.n, 1);
        assert_eq!(r.max_tokens, 16);
        assert!(matches!(r.sampling, Sampling::Sample { temperature, .. } if temperature == 1.0));
        assert!(!r.stream && r.stop.is_empty() && r.seed.is_none());
        let r = parse(json!({
            "model": "m", "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": png_url()}}]},
            ],
            "temperature": 0, "max_tokens": 5, "max_completion_tokens": 7, "n": 3, "stop": "x",
            "seed": -1, "stream": true, "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(r.sampling, Sampling::Greedy);
        assert_eq!((r.max_tokens, r.n), (7, 3));
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert_eq!(r.seed, Some(u64::MAX));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.images.len(), 1);
        assert_eq!(r.images[0].dimensions(), (4, 4));
        assert_eq!(r.messages[1].num_images(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"messages": []}), "messages", "invalid_value"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
                "invalid_type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "messages[0].content[0].image_url.url",
                "unsupported_image_url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}),
                "messages[0].content[0].image_url.url",
                "invalid_image_url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}),
                "messages[0].content[0].image_url.url",
                "invalid_image",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url()}}, {"type": "image_url", "image_url": {"url": png_url()}}]}]}),
                "messages[0].content[1]",
                "too_many_images",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 5}),
                "n",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
                "n",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                "temperature",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
                "top_p",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
                "max_tokens",
                "invalid_type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": [1]}),
                "stop[0]",
                "invalid_type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
                "invalid_type",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": png_url()}}]}]}),
                "messages[0].content[0]",
                "invalid_value",
            ),
        ];
        for (body, param, code) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert_eq!(e.code, Some(code), "{body}: {e:?}");
            let b = e.body();
            assert_eq!(b["error"]["type"], "invalid_request_error");
            assert!(b["error"]["message"].as_str().unwrap().len() > 5);
        }
        let e = parse_request(b"{\"messages\": [", &limits(), &decoder()).unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
        assert!(e.message.contains("line 1"), "{}", e.message);
        let e = parse_request(b"[1]", &limits(), &decoder()).unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
    }

    #[test]
    fn stream_chunks_have_the_openai_shape() {
        let ids = StreamIds {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            include_usage: true,
        };
        let c: Value =
            serde_json::from_str(&stream_chunk(&ids, 1, json!({"content": "ab"}), None)).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["index"], 1);
        assert_eq!(c["choices"][0]["delta"]["content"], "ab");
        assert!(c["choices"][0]["finish_reason"].is_null());
        assert!(c.get("usage").is_some_and(Value::is_null));
        let choices = vec![Choice {
            text: "ab".into(),
            finish_reason: FinishReason::Length,
            completion_tokens: 2,
        }];
        let u: Value = serde_json::from_str(&usage_chunk(&ids, 3, &choices)).unwrap();
        assert_eq!(u["usage"]["total_tokens"], 5);
        assert_eq!(u["choices"].as_array().unwrap().len(), 0);
        let plain = StreamIds {
            include_usage: false,
            ..ids
        };
        let c: Value =
            serde_json::from_str(&stream_chunk(&plain, 0, json!({}), Some("stop"))).unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert!(c.get("usage").is_none());
    }
}
