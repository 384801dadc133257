//! The teacher client's error type. No variant ever carries the API key.

use std::path::PathBuf;

/// Errors of the HTTP teacher, its cache and its config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeacherError {
    /// The config file is unreadable or a field is invalid.
    #[error("teacher config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The environment variable named by `api_key_env` is unset or empty.
    #[error("the teacher API key variable `{0}` (config field `api_key_env`) is unset or empty")]
    MissingApiKey(String),
    /// The cache file cannot be opened, read, locked or appended to, or has a corrupt line.
    #[error("teacher cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
    /// An image could not be encoded for the request (unknown format, unreadable).
    #[error("prompt {prompt}: image {index}: {message}")]
    Image {
        prompt: String,
        index: usize,
        message: String,
    },
    /// The request itself is refused by the server (4xx other than 408/409/429): retrying the
    /// same request cannot help.
    #[error("teacher refused the request with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// Every attempt failed with a retryable error; `last` is the final one.
    #[error("teacher failed after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: String },
    /// The teacher kept answering outside the three-block format.
    #[error("teacher answer never became format-valid after {asks} asks; last answer: {last:?}")]
    InvalidAnswer { asks: u32, last: String },
    /// The HTTP client could not be built (bad base URL, TLS set-up).
    #[error("teacher HTTP client: {0}")]
    Client(String),
    /// Reading the input dataset or writing the output (`prism teacher`).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

impl TeacherError {
    /// A short, label-safe reason (`rejected`, `retries_exhausted`, `invalid_answer`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            TeacherError::Config { .. } => "config",
            TeacherError::MissingApiKey(_) => "missing_api_key",
            TeacherError::Cache { .. } => "cache",
            TeacherError::Image { .. } => "image",
            TeacherError::Rejected { .. } => "rejected",
            TeacherError::RetriesExhausted { .. } => "retries_exhausted",
            TeacherError::InvalidAnswer { .. } => "invalid_answer",
            TeacherError::Client(_) => "client",
            TeacherError::Data(_) => "data",
        }
    }
}
