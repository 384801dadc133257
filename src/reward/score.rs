//! The Stage-3 rule-based reward: `score = 0.8·accuracy + 0.2·format` (PRISM_ALGORITHM.md §7.1).
//!
//! Owns the combination of the format check and the answer match into one [`RewardOutput`].
//! Possible scores are 0 (invalid format), 0.2 (valid, wrong / empty / over-long answer) and 1.
//! It never panics and runs in time linear in the response (answers over
//! [`MAX_ANSWER_CHARS`] chars are not graded).

use serde::{Deserialize, Serialize};

use super::answer::{MAX_ANSWER_CHARS, answers_match, extract_answer};
use super::format::{is_py_space, parse_format};

/// Weight of answer accuracy in the score.
pub const ACC_WEIGHT: f64 = 0.8;
/// Weight of format validity in the score.
pub const FORMAT_WEIGHT: f64 = 0.2;

/// The reward of one response; each field is 0 or 1 except `score`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardOutput {
    /// `ACC_WEIGHT·acc + FORMAT_WEIGHT·format`.
    pub score: f64,
    /// 1 if the graded answer matches the ground truth, else 0 (always 0 when `format` is 0).
    pub acc: f64,
    /// 1 if the response is format-valid, else 0.
    pub format: f64,
}

impl RewardOutput {
    /// The reward of an invalid response: all zeros.
    pub const INVALID: RewardOutput = RewardOutput {
        score: 0.0,
        acc: 0.0,
        format: 0.0,
    };

    /// The reward of a valid response with accuracy `acc` (true → 1).
    pub fn valid(acc: bool) -> Self {
        let acc = if acc { 1.0 } else { 0.0 };
        RewardOutput {
            score: ACC_WEIGHT * acc + FORMAT_WEIGHT,
            acc,
            format: 1.0,
        }
    }
}

/// A ground truth: one answer or a list of equivalent answers (JSON string or array of strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroundTruth {
    /// A single answer.
    One(String),
    /// Equivalent answers; any one matching counts. An empty list never matches.
    Any(Vec<String>),
}

impl GroundTruth {
    /// The answers as a slice.
    pub fn answers(&self) -> &[String] {
        match self {
            GroundTruth::One(s) => std::slice::from_ref(s),
            GroundTruth::Any(v) => v,
        }
    }
}

impl From<&str> for GroundTruth {
    fn from(s: &str) -> Self {
        GroundTruth::One(s.to_string())
    }
}

/// Scores one decoded response (`skip_special_tokens = true`) against its ground truth.
///
/// Invalid format → all zeros. Valid: the graded answer is the answer block's body (see
/// [`super::answer::extract_answer`]), trimmed; empty or ≥ [`MAX_ANSWER_CHARS`] chars → accuracy
/// 0 (as the original); else accuracy is [`answers_match`] against any ground-truth answer.
pub fn compute_score(response: &str, ground_truth: &GroundTruth) -> RewardOutput {
    let Some(spans) = parse_format(response) else {
        return RewardOutput::INVALID;
    };
    let answer = response[spans.answer].trim_matches(is_py_space);
    if answer.is_empty() || answer.chars().nth(MAX_ANSWER_CHARS - 1).is_some() {
        return RewardOutput::valid(false);
    }
    let acc = ground_truth
        .answers()
        .iter()
        .any(|g| answers_match(answer, g));
    RewardOutput::valid(acc)
}

/// Accuracy without format gating, for evaluation (§1.3: evaluation does not gate on format).
///
/// The graded answer is [`extract_answer`]'s (the answer block, else the first
/// `<answer>…</answer>`, else the last `\boxed{…}`), or the whole trimmed response when there is
/// none. Same matching rules and length limit as [`compute_score`].
pub fn accuracy_ungated(response: &str, ground_truth: &GroundTruth) -> bool {
    let answer = extract_answer(response).unwrap_or_else(|| response.trim_matches(is_py_space));
    if answer.is_empty() || answer.chars().nth(MAX_ANSWER_CHARS - 1).is_some() {
        return false;
    }
    ground_truth
        .answers()
        .iter()
        .any(|g| answers_match(answer, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_levels() {
        let gt = GroundTruth::from("5");
        let ok = "<caption>c</caption><think>t</think><answer>5</answer>";
        let wrong = "<caption>c</caption><think>t</think><answer>6</answer>";
        assert_eq!(compute_score(ok, &gt), RewardOutput::valid(true));
        assert_eq!(compute_score(wrong, &gt).score, 0.2);
        assert_eq!(compute_score("5", &gt), RewardOutput::INVALID);
    }

    #[test]
    fn ungated_accuracy_for_eval() {
        let gt = GroundTruth::from("5");
        assert!(accuracy_ungated("5", &gt));
        assert!(accuracy_ungated("<answer>5</answer> and more", &gt));
        assert!(accuracy_ungated("so the result is \\boxed{5}.", &gt));
        assert!(!accuracy_ungated("<answer>6</answer>", &gt));
        assert!(!accuracy_ungated("", &gt));
    }
}
