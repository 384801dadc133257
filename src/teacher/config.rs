//! The teacher client's configuration: endpoint, model, limits, retry policy, prices and cache.
//! Read from TOML (`prism teacher --config …`); every field is documented and unknown fields are
//! an error. The API key itself is never part of the config, only the name of the environment
//! variable that holds it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::TeacherError;

/// Exponential backoff with full jitter: retry `k` (0-based) waits a uniform random time in
/// `[0, min(max_secs, initial_secs · multiplier^k)]`, unless the server named a `Retry-After`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Upper bound of the first retry's wait, seconds.
    pub initial_secs: f64,
    /// Growth of the bound per retry.
    pub multiplier: f64,
    /// Cap of the bound, seconds; also the cap applied to a server's `Retry-After`.
    pub max_secs: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_secs: 1.0,
            multiplier: 2.0,
            max_secs: 60.0,
        }
    }
}

/// What becomes of a prompt whose teacher answer never becomes format-valid (or that the
/// teacher refuses on its own, HTTP 400/413/422) when demonstrations are asked in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Report the prompt (log and `prism_teacher_skipped_total{reason}`) and go on without its
    /// demonstration: its Bradley–Terry pairs are left out of that step.
    #[default]
    Skip,
    /// Fail the teacher-client (the supervisor restarts it; the restart budget ends the run).
    Fail,
}

impl OnInvalid {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInvalid::Skip => "skip",
            OnInvalid::Fail => "fail",
        }
    }
}

/// One OpenAI-compatible Chat Completions teacher (Gemini's OpenAI endpoint, vLLM, SGLang).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Endpoint root; `/chat/completions` is appended (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// Model name sent in every request; part of the cache key.
    pub model: String,
    /// Name of the environment variable holding the API key (sent as `Authorization: Bearer`).
    /// Absent for servers without authentication. The key is never logged or written.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Requests started in any `rate_window_secs` window, 60 s by default (0: unlimited).
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Tokens (input estimate + `max_tokens`, corrected by the reported usage) in any
    /// `rate_window_secs` window (0: unlimited).
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// Length of the window the two rate limits are counted over, seconds. Providers count per
    /// minute: leave it at 60 (tests shorten it).
    #[serde(default = "default_window")]
    pub rate_window_secs: f64,
    /// Whole-request timeout, seconds (connect, send, wait and read the body).
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Retries of one request after 429, 5xx, timeouts, dropped connections or an unparsable
    /// body; the request fails after `1 + max_retries` attempts.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Wait between retries.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Times a well-formed reply that breaks the three-block format is answered with a
    /// correction and asked again; after that the prompt is reported as failed.
    #[serde(default = "default_reasks")]
    pub max_reasks: u32,
    /// `skip` (default) or `fail`: what a prompt that never gets a valid answer does to the
    /// alignment step (see [`OnInvalid`]).
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// `max_tokens` of each request.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature of each request.
    #[serde(default)]
    pub temperature: f32,
    /// Price of 1000 input (prompt) tokens, USD.
    #[serde(default)]
    pub price_per_1k_input: f64,
    /// Price of 1000 output (completion) tokens, USD.
    #[serde(default)]
    pub price_per_1k_output: f64,
    /// The append-only answer cache (JSONL). Relative paths resolve against the config file's
    /// folder when read with [`TeacherConfig::load`].
    pub cache_path: PathBuf,
    /// Input tokens assumed per image when reserving the token budget before a request.
    #[serde(default = "default_image_tokens")]
    pub image_token_estimate: u64,
}

fn default_concurrency() -> usize {
    8
}
fn default_window() -> f64 {
    60.0
}
fn default_timeout() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    6
}
fn default_reasks() -> u32 {
    2
}
fn default_max_tokens() -> u32 {
    2048
}
fn default_image_tokens() -> u64 {
    1024
}

impl TeacherConfig {
    /// A config with the defaults above for `base_url`, `model` and `cache_path`.
    pub fn new(base_url: &str, model: &str, cache_path: impl Into<PathBuf>) -> TeacherConfig {
        TeacherConfig {
            base_url: base_url.to_string(),
            model: model.to_string(),
            api_key_env: None,
            max_concurrency: default_concurrency(),
            requests_per_minute: 0,
            tokens_per_minute: 0,
            rate_window_secs: default_window(),
            timeout_secs: default_timeout(),
            max_retries: default_retries(),
            backoff: BackoffConfig::default(),
            max_reasks: default_reasks(),
            on_invalid: OnInvalid::Skip,
            max_tokens: default_max_tokens(),
            temperature: 0.0,
            price_per_1k_input: 0.0,
            price_per_1k_output: 0.0,
            cache_path: cache_path.into(),
            image_token_estimate: default_image_tokens(),
        }
    }

    /// Reads and validates a TOML config; a relative `cache_path` is taken relative to the
    /// config file's folder.
    pub fn load(path: &Path) -> Result<TeacherConfig, TeacherError> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut cfg: TeacherConfig = toml::from_str(&text).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if cfg.cache_path.is_relative()
            && let Some(dir) = path.parent()
        {
            cfg.cache_path = dir.join(&cfg.cache_path);
        }
        cfg.validate().map_err(|message| TeacherError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Range checks of every field; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "`base_url` must start with http:// or https://, got {:?}",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("`model` is empty".into());
        }
        if let Some(name) = &self.api_key_env
            && (name.is_empty() || name.contains('='))
        {
            return Err(format!(
                "`api_key_env` must name an environment variable, got {name:?}"
            ));
        }
        if self.max_concurrency == 0 {
            return Err("`max_concurrency` must be at least 1".into());
        }
        if !(self.rate_window_secs.is_finite() && self.rate_window_secs > 0.0) {
            return Err(format!(
                "`rate_window_secs` must be positive, got {}",
                self.rate_window_secs
            ));
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return Err(format!(
                "`timeout_secs` must be positive, got {}",
                self.timeout_secs
            ));
        }
        let b = &self.backoff;
        if !(b.initial_secs.is_finite() && b.initial_secs >= 0.0) {
            return Err("`backoff.initial_secs` must be a non-negative number".into());
        }
        if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
            return Err("`backoff.multiplier` must be at least 1".into());
        }
        if !(b.max_secs.is_finite() && b.max_secs >= b.initial_secs) {
            return Err("`backoff.max_secs` must be at least `backoff.initial_secs`".into());
        }
        for (name, v) in [
            ("price_per_1k_input", self.price_per_1k_input),
            ("price_per_1k_output", self.price_per_1k_output),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("`{name}` must be a non-negative number, got {v}"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "`temperature` must be non-negative, got {}",
                self.temperature
            ));
        }
        if self.max_tokens == 0 {
            return Err("`max_tokens` must be at least 1".into());
        }
        if self.cache_path.as_os_str().is_empty() {
            return Err("`cache_path` is empty".into());
        }
        Ok(())
    }

    /// Cost in USD of a call with the given token usage.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        input_tokens as f64 / 1000.0 * self.price_per_1k_input
            + output_tokens as f64 / 1000.0 * self.price_per_1k_output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let text = "base_url = \"http://x/v1\"\nmodel = \"m\"\ncache_path = \"c.jsonl\"\nmax_retires = 3\n";
        let err = toml::from_str::<TeacherConfig>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_retires"), "{err}");
    }

    #[test]
    fn defaults_and_validation() {
        let text = "base_url = \"http://x/v1\"\nmodel = \"m\"\ncache_path = \"c.jsonl\"\n";
        let cfg: TeacherConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.max_concurrency, 8);
        assert_eq!(cfg.backoff, BackoffConfig::default());
        assert_eq!(cfg.on_invalid, OnInvalid::Skip);
        let fail: TeacherConfig =
            toml::from_str(&format!("{text}on_invalid = \"fail\"\n")).unwrap();
        assert_eq!(fail.on_invalid, OnInvalid::Fail);
        let err = toml::from_str::<TeacherConfig>(&format!("{text}on_invalid = \"ignore\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ignore") || err.contains("on_invalid"),
            "{err}"
        );
        assert!(cfg.validate().is_ok());
        let mut bad = cfg.clone();
        bad.max_concurrency = 0;
        assert!(bad.validate().unwrap_err().contains("max_concurrency"));
        let mut bad = cfg.clone();
        bad.base_url = "ftp://x".into();
        assert!(bad.validate().unwrap_err().contains("base_url"));
        let mut bad = cfg;
        bad.backoff.multiplier = 0.5;
        assert!(bad.validate().unwrap_err().contains("multiplier"));
    }

    #[test]
    fn cost_uses_both_prices() {
        let mut cfg = TeacherConfig::new("http://x", "m", "c");
        cfg.price_per_1k_input = 0.5;
        cfg.price_per_1k_output = 2.0;
        assert!((cfg.cost(2000, 500) - 2.0).abs() < 1e-12);
    }
}
