//! The append-only, crash-safe answer cache: one JSON object per line, fsynced before the answer
//! is handed out, keyed by the sha256 of (model, messages, image hashes). A call answered once is
//! never paid for again, across crashes and restarts.
//!
//! Crash safety: an entry is a single `write` of `json + "\n"` followed by `fdatasync`, so after
//! a crash only the *last* line can be incomplete. On open, a last line that does not parse (a
//! torn write) is cut off the file and its call is asked again; a bad line anywhere else is
//! corruption and an error naming the line. The file is locked (advisory `flock`) while open so
//! two processes never append to it at once.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::TeacherError;

/// How a cached call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    /// The answer is format-valid.
    Valid,
    /// The teacher never produced a valid answer within `max_reasks`; kept so a restart does
    /// not pay for the same failure again. `response` is the last answer.
    Invalid,
}

/// One cached call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// [`request_key`] of the call.
    pub key: String,
    pub model: String,
    pub status: CacheStatus,
    /// The teacher's full answer (the last one for `Invalid`).
    pub response: String,
    /// Total tokens and cost over every ask and retry this call took.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Asks (1 + re-asks) the call took.
    pub asks: u32,
}

/// Cache key of a call: sha256 over the model, every message's role and text, and the sha256
/// of every image, each length-prefixed so no two different calls share a preimage.
pub fn request_key(model: &str, messages: &[(&str, &str)], image_hashes: &[String]) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: u8, s: &[u8]| {
        h.update([tag]);
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    field(b'm', model.as_bytes());
    for (role, text) in messages {
        field(b'r', role.as_bytes());
        field(b't', text.as_bytes());
    }
    for img in image_hashes {
        field(b'i', img.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The open cache: entries in memory, the file open for appending and locked.
#[derive(Debug)]
pub struct AnswerCache {
    path: PathBuf,
    file: Mutex<File>,
    entries: Mutex<HashMap<String, CacheEntry>>,
    /// Bytes of a torn last line cut off at open (0 when the file was clean).
    torn_bytes: u64,
}

impl AnswerCache {
    /// Opens (creating it and its folder if needed) and loads the cache at `path`.
    pub fn open(path: &Path) -> Result<AnswerCache, TeacherError> {
        let err = |message: String| TeacherError::Cache {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("create folder: {e}")))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        file.try_lock_exclusive()
            .map_err(|e| err(format!("already in use by another process ({e})")))?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| err(format!("read: {e}")))?;

        let mut entries = HashMap::new();
        let mut good_len = 0usize;
        let mut torn_bytes = 0u64;
        let mut needs_newline = false;
        let mut start = 0usize;
        let mut line_no = 0usize;
        while start < bytes.len() {
            line_no += 1;
            let (end, terminated) = match bytes[start..].iter().position(|&b| b == b'\n') {
                Some(i) => (start + i, true),
                None => (bytes.len(), false),
            };
            let is_last = if terminated {
                end + 1 >= bytes.len()
            } else {
                true
            };
            let line = &bytes[start..end];
            let next = if terminated { end + 1 } else { end };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                start = next;
                good_len = next;
                continue;
            }
            match serde_json::from_slice::<CacheEntry>(line) {
                Ok(e) => {
                    entries.insert(e.key.clone(), e);
                    good_len = next;
                    needs_newline = !terminated;
                }
                Err(e) if is_last => {
                    tracing::warn!(
                        "teacher cache {}: ignoring torn last line {line_no} ({} bytes): {e}",
                        path.display(),
                        bytes.len() - start
                    );
                    torn_bytes = (bytes.len() - start) as u64;
                }
                Err(e) => {
                    return Err(err(format!("line {line_no} is corrupt: {e}")));
                }
            }
            start = next;
        }
        if torn_bytes > 0 {
            file.set_len(good_len as u64)
                .and_then(|_| file.sync_data())
                .map_err(|e| err(format!("cut torn last line: {e}")))?;
        }
        if needs_newline {
            file.write_all(b"\n")
                .and_then(|_| file.sync_data())
                .map_err(|e| err(format!("append: {e}")))?;
        }
        Ok(AnswerCache {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            entries: Mutex::new(entries),
            torn_bytes,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of a torn last line that [`AnswerCache::open`] cut off (0 if none).
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    /// Entries loaded or appended so far.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for `key`, if cached.
    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Appends `entry` durably (write + fdatasync) and then makes it visible to `get`.
    pub fn append(&self, entry: CacheEntry) -> Result<(), TeacherError> {
        let mut line = serde_json::to_vec(&entry).map_err(|e| TeacherError::Cache {
            path: self.path.clone(),
            message: format!("encode: {e}"),
        })?;
        line.push(b'\n');
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&line)
                .and_then(|_| file.sync_data())
                .map_err(|e| TeacherError::Cache {
                    path: self.path.clone(),
                    message: format!("append: {e}"),
                })?;
        }
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.key.clone(), entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            model: "m".into(),
            status: CacheStatus::Valid,
            response: "<caption>c</caption><think>t</think><answer>4</answer>".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.001,
            asks: 1,
        }
    }

    #[test]
    fn key_separates_fields() {
        let a = request_key("m", &[("user", "ab")], &[]);
        let b = request_key("m", &[("user", "a"), ("b", "")], &[]);
        let c = request_key("m", &[("user", "ab")], &["x".into()]);
        let d = request_key("n", &[("user", "ab")], &[]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a, request_key("m", &[("user", "ab")], &[]));
    }

    #[test]
    fn reopen_sees_appended_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.jsonl");
        {
            let c = AnswerCache::open(&path).unwrap();
            c.append(entry("k1")).unwrap();
            c.append(entry("k2")).unwrap();
        }
        let c = AnswerCache::open(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("k2"), Some(entry("k2")));
        assert_eq!(c.torn_bytes(), 0);
    }

    #[test]
    fn torn_last_line_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.jsonl");
        {
            let c = AnswerCache::open(&path).unwrap();
            c.append(entry("k1")).unwrap();
        }
        // A crash in the middle of the second append.
        let full = serde_json::to_string(&entry("k2")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);
        {
            let c = AnswerCache::open(&path).unwrap();
            assert_eq!(c.len(), 1);
            assert!(c.get("k2").is_none());
            assert_eq!(c.torn_bytes(), (full.len() / 2) as u64);
            c.append(entry("k3")).unwrap();
        }
        let c = AnswerCache::open(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.get("k3").is_some());
        assert_eq!(c.torn_bytes(), 0);
    }

    #[test]
    fn complete_but_unterminated_last_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.jsonl");
        std::fs::write(&path, serde_json::to_string(&entry("k1")).unwrap()).unwrap();
        {
            let c = AnswerCache::open(&path).unwrap();
            assert_eq!(c.len(), 1);
            c.append(entry("k2")).unwrap();
        }
        assert_eq!(AnswerCache::open(&path).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.jsonl");
        let good = serde_json::to_string(&entry("k1")).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let err = AnswerCache::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("cache.jsonl"), "{err}");
    }

    #[test]
    fn second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.jsonl");
        let _first = AnswerCache::open(&path).unwrap();
        let err = AnswerCache::open(&path).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
    }
}
