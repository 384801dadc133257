//! The reward actor's engine ([`SynthReward`]): decodes a rollout with the policy tokenizer
//! (special tokens skipped), checks the PRISM format, splits a valid response into its caption
//! and reasoning [`Segment`]s (text and the response's tokens, PRISM_ALGORITHM.md §3.1), and
//! grades the answer against the prompt's ground truth ([`compute_score`]).

use std::path::Path;

use crate::actors::engine::{EngineResult, RewardEngine};
use crate::actors::messages::{PromptItem, RewardOutcome, Rollout, Segment};
use crate::models::processor::Processor;
use crate::models::tokenizer::QwenTokenizer;
use crate::reward::{GroundTruth, compute_score, split_tokens_by_decode};

/// Format check, segment split and verifiable accuracy of a rollout.
pub struct SynthReward {
    tokenizer: QwenTokenizer,
}

impl SynthReward {
    /// Uses the tokenizer of the policy checkpoint `dir`.
    pub fn load(dir: &Path) -> EngineResult<Self> {
        let p = Processor::from_dir(dir)
            .map_err(|e| format!("reward tokenizer {}: {e}", dir.display()))?;
        Ok(SynthReward {
            tokenizer: p.tokenizer,
        })
    }

    pub fn new(tokenizer: QwenTokenizer) -> Self {
        SynthReward { tokenizer }
    }

    /// `decode(ids, skip_special_tokens = true)`; ids the tokenizer does not know (padding rows
    /// of the embedding) have no text.
    fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let vocab = self.tokenizer.vocab_size();
        let ids: Vec<u32> = ids
            .iter()
            .filter_map(|&t| u32::try_from(t).ok().filter(|&t| (t as usize) < vocab))
            .collect();
        self.tokenizer.decode(&ids, true).map_err(|e| e.to_string())
    }
}

impl RewardEngine for SynthReward {
    fn evaluate(&mut self, prompt: &PromptItem, rollout: &Rollout) -> EngineResult<RewardOutcome> {
        let ids = &rollout.response_ids;
        let text = self
            .decode(ids)
            .map_err(|e| format!("rollout of prompt {}: {e}", prompt.uid))?;
        let truth = prompt.answer.as_ref().map(|a| GroundTruth::One(a.clone()));
        let score = truth.as_ref().map(|g| compute_score(&text, g));
        let split = split_tokens_by_decode(ids, |p| self.decode(p))
            .map_err(|e| format!("rollout of prompt {}: {e}", prompt.uid))?;
        if !split.format_valid {
            return Ok(RewardOutcome {
                format_score: 0.0,
                caption: None,
                reasoning: None,
                accuracy: score.map(|s| s.acc as f32),
            });
        }
        let segment = |r: std::ops::Range<usize>| -> Result<Segment, String> {
            let tokens = ids[r.start.min(ids.len())..r.end.min(ids.len())].to_vec();
            Ok(Segment {
                text: self.decode(&tokens)?,
                tokens,
            })
        };
        Ok(RewardOutcome {
            format_score: 1.0,
            caption: Some(segment(split.caption.clone())?),
            reasoning: Some(segment(split.cot.clone())?),
            accuracy: score.map(|s| s.acc as f32),
        })
    }
}
