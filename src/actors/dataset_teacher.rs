//! The teacher backend that reads demonstrations from a dataset column: the RL parquet's
//! `teacher_caption` / `teacher_cot` (or a whole `teacher_response`, split by the format rule).
//! This is how the embedded default's synthetic teacher reaches the runtime: `prism data synth`
//! writes its demonstrations into those columns. The HTTP teacher lives in `crate::teacher`.
//!
//! Segments are tokenised with the policy's tokenizer, without special tokens and without any
//! truncation (the original code cut teacher segments at 512 tokens, PRISM_ALGORITHM.md §11.4).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::actors::engine::{EngineResult, TeacherBackend};
use crate::actors::messages::{Demo, PromptItem, Segment};
use crate::data::rl_parquet::RlRecord;
use crate::models::tokenizer::QwenTokenizer;
use crate::reward::format::split_text;

/// Demonstrations by prompt uid, as text; tokenised on demand.
pub struct DatasetTeacher {
    /// `uid → (caption, reasoning)`; the reasoning segment is `<think>…</think> <answer>…</answer>`.
    demos: HashMap<u64, (String, String)>,
    tokenizer: Arc<QwenTokenizer>,
    /// Where the demonstrations came from, for provenance (`file:column`).
    source: String,
}

impl DatasetTeacher {
    /// Reads the teacher columns of `records`; record `i` gets prompt uid `uids[i]`. A record
    /// with `teacher_caption` and `teacher_cot` uses them; otherwise its `teacher_response` is
    /// split by the format rule. A record with neither, or whose response is not format-valid,
    /// is an error naming the file and row: training would otherwise silently lack a teacher.
    pub fn from_rl_records(
        records: &[RlRecord],
        uids: &[u64],
        file: &Path,
        tokenizer: Arc<QwenTokenizer>,
    ) -> Result<DatasetTeacher, String> {
        if records.len() != uids.len() {
            return Err(format!(
                "{}: {} records but {} prompt uids",
                file.display(),
                records.len(),
                uids.len()
            ));
        }
        let mut demos = HashMap::with_capacity(records.len());
        for (row, (rec, &uid)) in records.iter().zip(uids).enumerate() {
            let pair = match (
                &rec.teacher_caption,
                &rec.teacher_cot,
                &rec.teacher_response,
            ) {
                (Some(c), Some(t), _) if !c.trim().is_empty() && !t.trim().is_empty() => {
                    (c.clone(), t.clone())
                }
                (_, _, Some(resp)) => {
                    let split = split_text(resp).ok_or_else(|| {
                        format!(
                            "{} row {row}: teacher_response is not in the \
                             <caption>…</caption><think>…</think><answer>…</answer> format",
                            file.display()
                        )
                    })?;
                    (split.caption.to_string(), split.cot.to_string())
                }
                _ => {
                    return Err(format!(
                        "{} row {row}: no teacher demonstration (teacher_caption and \
                         teacher_cot, or teacher_response, are empty)",
                        file.display()
                    ));
                }
            };
            if demos.insert(uid, pair).is_some() {
                return Err(format!(
                    "{}: prompt uid {uid} appears twice",
                    file.display()
                ));
            }
        }
        Ok(DatasetTeacher {
            demos,
            tokenizer,
            source: format!("{}:teacher columns", file.display()),
        })
    }

    /// Number of prompts with a demonstration.
    pub fn len(&self) -> usize {
        self.demos.len()
    }

    /// Whether no prompt has a demonstration.
    pub fn is_empty(&self) -> bool {
        self.demos.is_empty()
    }

    fn segment(&self, text: &str) -> EngineResult<Segment> {
        let ids = self.tokenizer.encode(text)?;
        Ok(Segment {
            tokens: ids.into_iter().map(i64::from).collect(),
            text: text.to_string(),
        })
    }
}

impl TeacherBackend for DatasetTeacher {
    fn demonstrate(&mut self, prompt: &PromptItem) -> EngineResult<Demo> {
        let (caption, cot) = self.demos.get(&prompt.uid).ok_or_else(|| {
            format!(
                "prompt uid {} has no teacher demonstration in {}",
                prompt.uid, self.source
            )
        })?;
        Ok(Demo {
            prompt_uid: prompt.uid,
            caption: self.segment(caption)?,
            reasoning: self.segment(cot)?,
            source: self.source.clone(),
        })
    }
}
