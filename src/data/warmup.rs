//! Discriminator warm-up pairs JSONL: one (teacher, student) pair of caption and reasoning
//! segments per line, for the Bradley–Terry warm-up (PRISM_ALGORITHM.md §4.1, §8.3).
//!
//! Fields: `prompt` (on read, `question` is accepted instead), `image` (optional path, relative
//! to the JSONL file's folder), `teacher_caption`, `student_caption`, `teacher_cot`,
//! `student_cot`. Segments include their tags (`<caption>…</caption>`,
//! `<think>…</think>\n<answer>…</answer>`), like the policy's own segments. A line with an empty
//! prompt or an empty segment is bad (the original skips such "incomplete" lines silently; here
//! it is an error, or a counted skip under `skip_bad`). The legacy whole-response fields are not
//! supported.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DataError, Loaded, Location, ReadOptions};
use super::io;

/// One warm-up pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupPair {
    #[serde(alias = "question")]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub teacher_caption: String,
    pub student_caption: String,
    pub teacher_cot: String,
    pub student_cot: String,
}

fn validate(p: &WarmupPair) -> Result<(), String> {
    for (field, v) in [
        ("prompt", &p.prompt),
        ("teacher_caption", &p.teacher_caption),
        ("student_caption", &p.student_caption),
        ("teacher_cot", &p.teacher_cot),
        ("student_cot", &p.student_cot),
    ] {
        if v.trim().is_empty() {
            return Err(format!("field `{field}` is empty"));
        }
    }
    Ok(())
}

fn parse_line(path: &Path, text: &str) -> Result<WarmupPair, String> {
    let pair: WarmupPair = serde_json::from_str(text).map_err(|e| format!("malformed: {e}"))?;
    validate(&pair)?;
    if let Some(image) = &pair.image {
        io::check_image_file(&io::resolve(path, image)).map_err(|e| format!("image: {e}"))?;
    }
    Ok(pair)
}

/// Reads a warm-up pairs file.
pub fn read(path: &Path, opts: ReadOptions) -> Result<Loaded<WarmupPair>, DataError> {
    let mut out = Loaded::new();
    io::for_each_line(path, |n, line| {
        let outcome = line.and_then(|text| parse_line(path, text));
        out.push(opts, path, Location::Line(n), outcome)
    })?;
    Ok(out)
}

/// Writes pairs atomically; fails, naming the line, on a pair with an empty field.
pub fn write(path: &Path, pairs: &[WarmupPair]) -> Result<(), DataError> {
    for (i, p) in pairs.iter().enumerate() {
        validate(p).map_err(|m| DataError::record(path, Location::Line(i + 1), m))?;
    }
    io::write_jsonl(path, pairs)
}
