//! The black-box teacher over HTTP: an OpenAI-compatible Chat Completions client (Gemini's
//! OpenAI endpoint, vLLM, SGLang) that turns prompts into format-valid PRISM demonstrations,
//! and `prism teacher`, which collects them for a whole RL parquet offline.
//!
//! # Layout
//!
//! - [`config`]: [`TeacherConfig`] (TOML, `deny_unknown_fields`).
//! - [`client`]: [`TeacherClient`], the async client: images as base64 data URLs, the PRISM
//!   system instruction, concurrency and rate limits, timeouts, retries with jittered backoff
//!   honouring `Retry-After`, format re-asks, token and cost accounting.
//! - [`cache`]: [`AnswerCache`], the append-only fsynced JSONL cache keyed by sha256 of
//!   (model, messages, images): nothing answered is paid for twice, across crashes.
//! - [`limits`]: the sliding-window request and token limiter.
//! - [`backend`]: [`HttpTeacher`], the synchronous [`crate::actors::engine::TeacherBackend`].
//! - [`cli`]: `prism teacher`.
//! - [`error`]: the error type, [`TeacherError`].
//!
//! # Failure policy
//!
//! Transient failures (429, 5xx, 408/409, timeouts, dropped connections, unparsable bodies) are
//! retried up to `max_retries`; other 4xx fail at once. A well-formed answer outside the
//! three-block format is re-asked up to `max_reasks` times; if it never becomes valid the call
//! fails with [`TeacherError::InvalidAnswer`] (cached, so a restart does not pay for it again)
//! and its answer is never used. Every prompt ends with a valid demonstration or an error.
//! In batches ([`HttpTeacher`]'s `demonstrate_batch`, what alignment uses), `on_invalid =
//! "skip"` (the default) turns such a prompt, and one the server refuses on its own
//! (HTTP 400/413/422), into a reported skip instead of an error: alignment goes on without it.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod limits;

pub use backend::{HttpTeacher, ImageLookup};
pub use cache::{AnswerCache, CacheEntry, CacheStatus, request_key};
pub use client::{Answer, ApiKey, TeacherClient, TeacherRequest, TeacherStats};
pub use config::{BackoffConfig, OnInvalid, TeacherConfig};
pub use error::TeacherError;
