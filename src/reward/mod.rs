//! The verifiable reward: format validity, caption/reasoning split, answer matching.
//!
//! Owns everything that turns a decoded response into reward facts, and nothing that needs a
//! model: this module never imports tch, never touches devices or actors, and never panics on
//! user strings.
//!
//! - [`format`](mod@format): the PRISM format rule (PRISM_ALGORITHM.md §1.2, exact Python `re.match`
//!   semantics without a regex engine), the caption / reasoning split on text and on token ids
//!   (§3.1), and the invalid-response fallback split (§1.3).
//! - [`answer`]: answer extraction (`<answer>`, `\boxed{}`) and the matching rules (numbers,
//!   fractions, percentages, LaTeX, units, multiple choice, yes/no, multi-part), listed in its
//!   module doc.
//! - [`score`]: `score = 0.8·accuracy + 0.2·format`, zero when the format is invalid (§7.1).
//! - [`cli`]: `prism score`, JSONL in, JSONL out.

pub mod answer;
pub mod cli;
pub mod format;
pub mod score;

pub use answer::{answers_match, extract_answer, matches_any};
pub use format::{
    FormatSpans, TextSplit, TokenSplit, fallback_caption_end, is_format_valid, parse_format,
    split_text, split_tokens_by_decode, split_tokens_by_offsets,
};
pub use score::{GroundTruth, RewardOutput, accuracy_ungated, compute_score};
