//! The data layer's error type and the skip-bad bookkeeping shared by every reader.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file a record sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 0-based row of a parquet file.
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Errors of the data layer. Every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file (or image) could not be opened, read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One record is bad: malformed JSON, a missing field, an empty answer, a missing image.
    #[error("{}: {at}: {message}", path.display())]
    Record {
        path: PathBuf,
        at: Location,
        message: String,
    },
    /// A parquet column is missing or has the wrong type.
    #[error("{}: column `{column}`: {message}", path.display())]
    Column {
        path: PathBuf,
        column: String,
        message: String,
    },
    /// The file is not valid parquet (or could not be encoded as parquet).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// Synthetic-data configuration is invalid.
    #[error("invalid synth configuration: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn record(path: &Path, at: Location, message: impl Into<String>) -> DataError {
        DataError::Record {
            path: path.to_path_buf(),
            at,
            message: message.into(),
        }
    }

    pub(crate) fn format(path: &Path, message: impl fmt::Display) -> DataError {
        DataError::Format {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

/// Options shared by the readers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Skip bad records (and report them in [`Loaded::skipped`]) instead of failing on the first.
    pub skip_bad: bool,
}

/// A record that was skipped under `skip_bad`, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub at: Location,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.at, self.reason)
    }
}

/// The result of a read: good records, and the bad ones skipped under `skip_bad`.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<T> {
    pub records: Vec<T>,
    pub skipped: Vec<Skipped>,
}

impl<T> Loaded<T> {
    /// Applies the skip-bad policy to one record's outcome: keeps good records; for a bad one,
    /// fails unless `opts.skip_bad`, in which case it is recorded and logged.
    pub(crate) fn push(
        &mut self,
        opts: ReadOptions,
        path: &Path,
        at: Location,
        outcome: Result<T, String>,
    ) -> Result<(), DataError> {
        match outcome {
            Ok(r) => self.records.push(r),
            Err(reason) if opts.skip_bad => {
                tracing::warn!("skipping bad record {}: {at}: {reason}", path.display());
                self.skipped.push(Skipped {
                    path: path.to_path_buf(),
                    at,
                    reason,
                });
            }
            Err(reason) => return Err(DataError::record(path, at, reason)),
        }
        Ok(())
    }

    pub(crate) fn new() -> Loaded<T> {
        Loaded {
            records: Vec::new(),
            skipped: Vec::new(),
        }
    }
}
