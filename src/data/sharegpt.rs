//! LLaMA-Factory ShareGPT multimodal JSONL: one conversation per line, with image paths relative
//! to the JSONL file's folder.
//!
//! Written form: `{"messages":[{"role":"system"|"user"|"assistant","content":"…"}],
//! "images":["images/x.png"]}`, with one `<image>` placeholder per image in the user turns.
//! Also read: `{"conversations":[{"from":"system"|"human"|"gpt","value":"…"}],"images":[…]}`.
//!
//! A record is valid when it has at least one user and one assistant turn, the last turn is a
//! non-empty assistant turn (the target), the number of `<image>` placeholders equals the number
//! of images, and every image exists and has a readable header.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DataError, Loaded, Location, ReadOptions};
use super::io;

/// The image placeholder in user turns.
pub const IMAGE_TOKEN: &str = "<image>";

/// Who speaks a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One conversation and its images (paths as written in the file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShareGptRecord {
    pub messages: Vec<Message>,
    pub images: Vec<String>,
}

impl ShareGptRecord {
    /// A system + user + assistant conversation with one image.
    pub fn single_turn(system: &str, user: &str, assistant: &str, image: &str) -> Self {
        ShareGptRecord {
            messages: vec![
                Message {
                    role: Role::System,
                    content: system.to_string(),
                },
                Message {
                    role: Role::User,
                    content: user.to_string(),
                },
                Message {
                    role: Role::Assistant,
                    content: assistant.to_string(),
                },
            ],
            images: vec![image.to_string()],
        }
    }

    /// The final assistant turn (the training target).
    pub fn target(&self) -> Option<&str> {
        self.messages
            .last()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }
}

/// The on-disk shapes accepted on read.
#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    messages: Option<Vec<RawMessage>>,
    #[serde(default)]
    conversations: Option<Vec<RawTurn>>,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct RawTurn {
    from: String,
    value: String,
}

fn role_of(name: &str) -> Option<Role> {
    match name {
        "system" => Some(Role::System),
        "user" | "human" => Some(Role::User),
        "assistant" | "gpt" => Some(Role::Assistant),
        _ => None,
    }
}

/// Parses and validates one line; `Err` carries the reason.
fn parse_line(path: &Path, text: &str) -> Result<ShareGptRecord, String> {
    let raw: RawRecord = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let turns: Vec<(String, String, &str)> = match (raw.messages, raw.conversations) {
        (Some(m), None) => m
            .into_iter()
            .map(|m| (m.role, m.content, "messages"))
            .collect(),
        (None, Some(c)) => c
            .into_iter()
            .map(|t| (t.from, t.value, "conversations"))
            .collect(),
        (Some(_), Some(_)) => {
            return Err("has both `messages` and `conversations`; expected one".into());
        }
        (None, None) => return Err("missing field `messages` (or `conversations`)".into()),
    };
    let mut messages = Vec::with_capacity(turns.len());
    for (i, (role, content, field)) in turns.into_iter().enumerate() {
        let role = role_of(&role).ok_or_else(|| format!("{field}[{i}]: unknown role {role:?}"))?;
        messages.push(Message { role, content });
    }
    let record = ShareGptRecord {
        messages,
        images: raw.images,
    };
    validate(&record)?;
    for (i, image) in record.images.iter().enumerate() {
        io::check_image_file(&io::resolve(path, image)).map_err(|e| format!("images[{i}]: {e}"))?;
    }
    Ok(record)
}

/// Structural checks (no file access).
fn validate(r: &ShareGptRecord) -> Result<(), String> {
    if !r.messages.iter().any(|m| m.role == Role::User) {
        return Err("no user turn".into());
    }
    match r.messages.last() {
        Some(m) if m.role == Role::Assistant => {
            if m.content.trim().is_empty() {
                return Err(format!(
                    "messages[{}]: the assistant answer is empty",
                    r.messages.len() - 1
                ));
            }
        }
        _ => return Err("the last turn is not an assistant turn".into()),
    }
    let placeholders: usize = r
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.matches(IMAGE_TOKEN).count())
        .sum();
    if placeholders != r.images.len() {
        return Err(format!(
            "{placeholders} {IMAGE_TOKEN} placeholders but {} images",
            r.images.len()
        ));
    }
    Ok(())
}

/// Reads a ShareGPT JSONL file. Image paths are checked relative to the file's folder.
pub fn read(path: &Path, opts: ReadOptions) -> Result<Loaded<ShareGptRecord>, DataError> {
    let mut out = Loaded::new();
    io::for_each_line(path, |n, line| {
        let outcome = line.and_then(|text| parse_line(path, text));
        out.push(opts, path, Location::Line(n), outcome)
    })?;
    Ok(out)
}

/// Writes records as ShareGPT JSONL (the `messages` form), atomically. Fails, naming the record,
/// if one is structurally invalid (image files are not checked on write).
pub fn write(path: &Path, records: &[ShareGptRecord]) -> Result<(), DataError> {
    for (i, r) in records.iter().enumerate() {
        validate(r).map_err(|m| DataError::record(path, Location::Line(i + 1), m))?;
    }
    io::write_jsonl(path, records)
}
