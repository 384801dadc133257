//! The RL prompt set of an actor stage (`align`, `rlvr`): the rows of an RL parquet with their
//! conversations and decoded images, addressed by prompt uid. The runtime's messages carry token
//! ids and uids only ([`PromptItem`]); every engine that needs the pixels or the text of a
//! prompt (the policy's generator and learner, the experts, which may use another tokenizer)
//! looks its prompt up here.
//!
//! Uids: pass `e` over the data gives row `r` the uid `e · len + r`, so a uid is unique within a
//! stage and [`PromptStore::get`] maps it back to its row.

use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::{Digest, Sha256};

use super::eval::{build_messages, load_record_images};
use super::{Result, StageError};
use crate::actors::messages::PromptItem;
use crate::data::error::ReadOptions;
use crate::data::rl_parquet::{self, RlRecord};
use crate::models::chat_template::ChatMessage;
use crate::models::processor::Processor;

/// One row of the prompt set.
#[derive(Debug, Clone)]
pub struct PromptEntry {
    /// Row in the parquet file.
    pub row: usize,
    pub record: RlRecord,
    /// System instruction, then the user turn with its image parts.
    pub messages: Vec<ChatMessage>,
    /// The decoded images of the user turn, in order.
    pub images: Vec<RgbImage>,
    /// SHA-256 of the encoded image bytes (hex), when the row has images.
    pub image_hash: Option<String>,
}

/// The prompts of one stage, by row.
#[derive(Debug, Clone)]
pub struct PromptStore {
    file: PathBuf,
    entries: Vec<PromptEntry>,
}

/// What [`PromptStore::items`] leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLong {
    pub row: usize,
    pub tokens: usize,
}

impl PromptStore {
    /// Reads the RL parquet `file` (the first `limit` rows when given) and decodes its images.
    pub fn load(processor: &Processor, file: &Path, limit: Option<usize>) -> Result<Self> {
        let loaded = rl_parquet::read(file, ReadOptions::default())?;
        let mut records = loaded.records;
        if let Some(n) = limit {
            records.truncate(n);
        }
        Self::from_records(processor, records, file)
    }

    /// Builds the store from records already read from `file` (named in errors).
    pub fn from_records(
        processor: &Processor,
        records: Vec<RlRecord>,
        file: &Path,
    ) -> Result<Self> {
        if records.is_empty() {
            return Err(StageError::Invalid {
                stage: "data".into(),
                message: format!("{}: no prompts", file.display()),
            });
        }
        let entries = records
            .into_iter()
            .enumerate()
            .map(|(row, record)| {
                let images = load_record_images(processor, &record, row, file).map_err(|e| {
                    StageError::Record {
                        path: file.to_path_buf(),
                        record: row,
                        message: e.to_string(),
                    }
                })?;
                let image_hash = (!record.images.is_empty())
                    .then(|| {
                        let mut h = Sha256::new();
                        for i in 0..record.images.len() {
                            let bytes = record.image_bytes(i, file).map_err(|message| {
                                StageError::Record {
                                    path: file.to_path_buf(),
                                    record: row,
                                    message,
                                }
                            })?;
                            h.update((bytes.len() as u64).to_le_bytes());
                            h.update(&bytes);
                        }
                        Ok::<_, StageError>(hex::encode(h.finalize()))
                    })
                    .transpose()?;
                Ok(PromptEntry {
                    row,
                    messages: build_messages(&record),
                    record,
                    images,
                    image_hash,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PromptStore {
            file: file.to_path_buf(),
            entries,
        })
    }

    /// The parquet file the prompts came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no rows (never true for a loaded store).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All rows in order.
    pub fn entries(&self) -> &[PromptEntry] {
        &self.entries
    }

    /// The row of prompt `uid` (any pass).
    pub fn get(&self, uid: u64) -> Option<&PromptEntry> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries.get((uid % self.entries.len() as u64) as usize)
    }

    /// The runtime's prompt list for `passes` passes over the rows, tokenised with `processor`
    /// (chat template with the generation prompt, image tokens expanded). Rows whose prompt is
    /// longer than `max_prompt_tokens` are left out of every pass and returned, so the caller
    /// reports them (never a silent drop).
    pub fn items(
        &self,
        processor: &Processor,
        passes: usize,
        max_prompt_tokens: usize,
    ) -> Result<(Vec<PromptItem>, Vec<TooLong>)> {
        let mut one_pass = Vec::with_capacity(self.entries.len());
        let mut too_long = Vec::new();
        for e in &self.entries {
            let enc = processor
                .encode_chat(&e.messages, &e.images, true, e.row)
                .map_err(|err| StageError::Record {
                    path: self.file.clone(),
                    record: e.row,
                    message: err.to_string(),
                })?;
            if enc.input_ids.len() > max_prompt_tokens {
                too_long.push(TooLong {
                    row: e.row,
                    tokens: enc.input_ids.len(),
                });
                continue;
            }
            let text = processor
                .apply_chat_template(&e.messages, true)
                .map_err(|err| StageError::Record {
                    path: self.file.clone(),
                    record: e.row,
                    message: err.to_string(),
                })?;
            one_pass.push((e, enc.input_ids, text));
        }
        let n = self.entries.len() as u64;
        let mut items = Vec::with_capacity(one_pass.len() * passes);
        for pass in 0..passes as u64 {
            for (e, ids, text) in &one_pass {
                items.push(PromptItem {
                    uid: pass * n + e.row as u64,
                    prompt_ids: ids.iter().map(|&i| i as i64).collect(),
                    text: text.clone(),
                    image_hash: e.image_hash.clone(),
                    answer: Some(e.record.ground_truth.clone()),
                });
            }
        }
        Ok((items, too_long))
    }
}
