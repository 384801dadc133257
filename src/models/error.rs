//! The typed error of the model core: configuration, checkpoint I/O, shapes of user inputs.
//!
//! Every variant names what it is about (file, field, tensor), so that a bad checkpoint or a bad
//! input is reported precisely instead of panicking somewhere inside libtorch.

use std::path::PathBuf;

/// Errors returned by `prism::models` (config parsing, safetensors I/O, forward inputs, generation).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// Kept in the message rather than as `source`, so that `{:#}` chains do not repeat it.
        error: std::io::Error,
    },
    /// A configuration field is missing, unknown, of the wrong type, or has an unsupported value.
    #[error("{file}: config field `{field}`: {reason}")]
    Config {
        file: PathBuf,
        field: String,
        reason: String,
    },
    /// A checkpoint file is unreadable or inconsistent (corrupt header, bad index json, bad dtype).
    #[error("{file}: {reason}")]
    Checkpoint { file: PathBuf, reason: String },
    /// The checkpoint's tensors do not match the model (strict loading).
    #[error("{}", format_mismatch(path, missing, unused, wrong))]
    WeightsMismatch {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// Parameters the model needs that no file provides.
        missing: Vec<String>,
        /// Tensors in the files that the model does not use (`name (file)`).
        unused: Vec<String>,
        /// Tensors whose shape or dtype is wrong (`name (file): why`).
        wrong: Vec<String>,
    },
    /// A forward/generation input is malformed (shape, dtype, token counts, lengths).
    #[error("invalid input `{field}`: {reason}")]
    Input { field: String, reason: String },
    /// A libtorch call failed.
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
}

impl From<tch::TchError> for ModelError {
    /// The libtorch message goes into this error's own text (not `source`, which would repeat it
    /// in `{:#}` chains).
    fn from(e: tch::TchError) -> Self {
        ModelError::Torch(e)
    }
}

/// Result alias of the model core.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn input(field: &str, reason: impl Into<String>) -> Self {
        ModelError::Input {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn checkpoint(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            file: file.into(),
            reason: reason.into(),
        }
    }
}

fn format_mismatch(
    path: &std::path::Path,
    missing: &[String],
    unused: &[String],
    wrong: &[String],
) -> String {
    let mut s = format!("{}: checkpoint does not match the model", path.display());
    for (what, list) in [
        ("missing tensors", missing),
        ("unused tensors", unused),
        ("wrong shape/dtype", wrong),
    ] {
        if !list.is_empty() {
            s.push_str(&format!("; {what} ({}): {}", list.len(), list.join(", ")));
        }
    }
    s
}
