//! The data that travels between actors: plain serde types (token ids, log-probs, versions,
//! uids), never tensors, so they could cross a process boundary later without redesign.
//! Weights travel as a versioned [`WeightsSnapshot`] of named CPU buffers.

use serde::{Deserialize, Serialize};

/// One prompt of the dataset. `uid` is unique within an epoch; it identifies the group of the
/// prompt's samples and is what exactly-once processing is counted by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptItem {
    pub uid: u64,
    /// Tokenised prompt (chat template applied, image placeholders expanded).
    pub prompt_ids: Vec<i64>,
    /// The prompt's text (for teachers that work on text).
    pub text: String,
    /// Content hash of the prompt's images, if any (the pixels stay with the data layer).
    pub image_hash: Option<String>,
    /// Ground-truth answer for verifiable rewards.
    pub answer: Option<String>,
}

/// Sampling settings of one generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// `-1` for no top-k truncation.
    pub top_k: i64,
    pub max_new_tokens: usize,
    /// Base seed; engines derive per-sample seeds from it, the prompt uid and the sample index.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            max_new_tokens: 64,
            seed: 0,
        }
    }
}

/// One sampled response with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub prompt_uid: u64,
    /// Index of this sample within its prompt's group, `0..n`.
    pub sample_index: u32,
    /// Sampled tokens, including the first EOS if one was produced.
    pub response_ids: Vec<i64>,
    /// Log-probability of each sampled token under the behaviour policy, `[len(response_ids)]`.
    pub behaviour_logprobs: Vec<f32>,
    /// Policy version that produced the sample.
    pub policy_version: u64,
    /// Actor that produced the sample.
    pub generator: String,
}

/// A span of a response or demonstration: its tokens and text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub tokens: Vec<i64>,
    pub text: String,
}

/// One segment to score, with the prompt it answers: an expert scores *prompt + segment*
/// (the perception expert sees the prompt's image), so the engine rebuilds the context from
/// `prompt_uid`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreItem {
    pub prompt_uid: u64,
    pub segment: Segment,
}

/// The teacher's demonstration for a prompt (text only: no teacher logits are ever needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demo {
    pub prompt_uid: u64,
    pub caption: Segment,
    pub reasoning: Segment,
    /// Which teacher produced it (model name, dataset column, oracle version).
    pub source: String,
}

/// What the reward actor finds in one rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardOutcome {
    /// 1.0 when the response has the required format, else 0.0.
    pub format_score: f32,
    /// The caption segment (present when the format is valid).
    pub caption: Option<Segment>,
    /// The reasoning segment (present when the format is valid).
    pub reasoning: Option<Segment>,
    /// Verifiable accuracy reward, when the prompt has a ground truth.
    pub accuracy: Option<f32>,
}

/// One rollout with everything the learner needs and where each number came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    pub prompt: PromptItem,
    pub rollout: Rollout,
    pub reward: RewardOutcome,
    /// Perception-expert score of the caption (alignment only).
    pub caption_score: Option<f32>,
    /// Reasoning-expert score of the reasoning (alignment only).
    pub reasoning_score: Option<f32>,
    /// Expert versions that produced the scores (provenance).
    pub perception_version: Option<u64>,
    pub reasoning_version: Option<u64>,
    /// Source of the teacher demonstration the experts were trained against this step.
    pub teacher_source: Option<String>,
}

/// Which step flow a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// PRISM alignment: experts score caption and reasoning and train against the teacher.
    Align,
    /// RLVR: rule-based verifiable reward only.
    Rlvr,
}

impl StageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageKind::Align => "align",
            StageKind::Rlvr => "rlvr",
        }
    }
}

/// One learner step's batch: `prompts × samples_per_prompt` samples, groups contiguous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainBatch {
    /// Step index within the stage, from 0.
    pub step: u64,
    pub kind: StageKind,
    pub group_size: usize,
    pub samples: Vec<ScoredSample>,
}

/// What one learner step reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Policy version after the step.
    pub version: u64,
    pub loss: f32,
    /// Response tokens trained on.
    pub tokens: u64,
    /// Mean advantage magnitude or any other engine-specific scalar, by name.
    pub extra: Vec<(String, f64)>,
}

/// One Bradley–Terry pair: the teacher's segment should score above the student's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BtPair {
    pub prompt_uid: u64,
    pub chosen: Segment,
    pub rejected: Segment,
}

/// What one expert update reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscStats {
    pub loss: f32,
    /// Fraction of pairs where the chosen segment scored higher (before the update).
    pub accuracy: f32,
    /// Expert version after the update.
    pub version: u64,
}

/// Element type of a [`NamedBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
}

impl DType {
    pub fn size(&self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }
}

/// One named tensor as little-endian bytes on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedBuffer {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: DType,
    pub data: Vec<u8>,
}

/// Model weights at one version. Shared read-only (`Arc`) by every actor that loads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsSnapshot {
    pub version: u64,
    pub tensors: Vec<NamedBuffer>,
}

impl WeightsSnapshot {
    /// Total payload bytes.
    pub fn nbytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }
}

/// What DAPO dynamic sampling did for one step: the generation rounds it took, the groups it
/// kept (trained), dropped (accuracy constant over the group) and trimmed (varying, but past
/// the step's target), whether it fell short of the target, and the accuracy over everything
/// generated (the step's reward metrics are over the kept samples only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingStats {
    pub gen_batches: u32,
    pub kept_groups: usize,
    pub dropped_groups: usize,
    pub surplus_groups: usize,
    /// The round limit or the end of the prompts came first: fewer kept groups than the
    /// target (none: the step is skipped by a filtering learner).
    pub short: bool,
    /// Rollouts generated over all rounds.
    pub generated: usize,
    /// Mean accuracy (0 when a sample has none) over all generated rollouts.
    pub gen_accuracy: f64,
}
