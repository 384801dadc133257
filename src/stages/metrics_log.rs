//! A small per-step metrics JSONL writer for the stages (one JSON object per line, flushed
//! after each line so a crashed run keeps its log).
//!
//! Note for the lead: the "report" helper builds a general metrics log in `src/report/`; once it
//! is merged, switch the stages over to it and delete this file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Result, StageError};

/// Appends JSON lines to one file.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Creates (truncates) `path`, making its folder.
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        }
        let f = File::create(path).map_err(|e| StageError::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
        })
    }

    /// Opens `path` for appending (a resumed stage), creating it if needed.
    pub fn append(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| StageError::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
        })
    }

    /// Writes one line. Non-finite numbers become JSON `null` (serde_json's rule).
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(record)
            .map_err(|e| StageError::io(&self.path, std::io::Error::other(e.to_string())))?;
        writeln!(self.out, "{line}").map_err(|e| StageError::io(&self.path, e))?;
        self.out.flush().map_err(|e| StageError::io(&self.path, e))
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
