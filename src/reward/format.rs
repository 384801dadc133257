//! PRISM response-format validity and the caption / reasoning split, on text and on token ids.
//!
//! Owns the single source of truth for "is this response format-valid" (PRISM_ALGORITHM.md §1.2)
//! and for where the caption segment ends (§3.1, with the §1.3 fallback for invalid responses).
//! It never touches tensors, tokenizers or devices: token-level splits take either per-token byte
//! offsets or a caller-supplied decode function.
//!
//! # The rule
//!
//! A response is valid iff Python's `re.match` accepts
//!
//! ```text
//! ^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$    (DOTALL)
//! ```
//!
//! We do not run a regex engine. The pattern is decided by a linear scan, and the capture spans
//! are the ones Python's backtracking engine reports. Why the scan is exact:
//!
//! **Whitespace.** Python's `\s` on `str` is `str.isspace()`: Unicode `White_Space` plus
//! U+001C..U+001F. Rust's [`char::is_whitespace`] is `White_Space` only, so [`is_py_space`] adds
//! those four (checked against every code point in a Python-generated fixture).
//!
//! **Existence (validity).** The pattern has no look-around or back-references, so whether *some*
//! match exists depends only on the language it denotes, not on lazy/greedy choices. `$` (no
//! MULTILINE) matches at the end or before a final `\n`; the `\s*` before it can absorb that `\n`,
//! so the match is always equivalent to one ending at the end of the string. The language is
//!
//! ```text
//! W* "<caption>" Σ* "</caption>" W* "<think>" Σ* "</think>" W* "<answer>" Σ* "</answer>" W*
//! ```
//!
//! with `W` the whitespace class. Every literal starts and ends with a non-space char (`<`, `>`),
//! so the leading `W*` is exactly the maximal whitespace prefix and the trailing `W*` is exactly
//! the maximal whitespace suffix. Let `t` be the text with both removed: `t` must start with
//! `<caption>` and end with `</answer>`, and the middle `m = t[9 .. len-9]` (which exists only if
//! `len(t) >= 18`; otherwise the two literals would overlap and nothing fits between them) must be
//! in `Σ* P1 Σ* P2 Σ*` with `P1 = "</caption>" W* "<think>"`, `P2 = "</think>" W* "<answer>"`.
//! Within an occurrence of `P1` or `P2` the `W*` is again forced to be the maximal whitespace run.
//! `m` is in that language iff some occurrence of `P1` ends at or before the start of some
//! occurrence of `P2`. Taking the `P1` occurrence with the smallest end is optimal (any `P2` after
//! a later end is also after the earliest end). Occurrences of `</caption>` cannot overlap each
//! other or the rest of a `P1` occurrence (the only `<` in `P1` sits at the start of each literal,
//! and whitespace is not `<`), so the first `</caption>` at which `P1` succeeds has the smallest
//! end. Hence: scan `</caption>` occurrences left to right, take the first followed by `W* <think>`,
//! then look for the first `</think>` after it followed by `W* <answer>`. Valid iff both exist.
//!
//! **Captures (what backtracking reports).** The lazy caption `.*?` tries ends left to right and
//! keeps the first `</caption>` for which the rest of the pattern matches. For an earlier
//! `</caption>` where `P1` fails, the rest cannot match; at the first one where `P1` succeeds the
//! rest matches iff any valid parse exists (previous paragraph). So group 1 ends at that first
//! successful `</caption>` (§3.1: "the first `</caption>` that allows a full match"). The lazy
//! think `.*?` likewise stops at the first following `</think>` that is followed by `W* <answer>`
//! (the answer part then always matches, see below). The lazy answer `.*?` must be followed by
//! `</answer> W* $`; only the final `</answer>` of `t` is followed by nothing but whitespace, so
//! the answer body runs to it and group 2 ends at `len(t)`. Group 2 starts after the maximal
//! whitespace run that follows group 1.
//!
//! The integration test `reward_format` compares this against CPython (`gen_reward_format.py`)
//! and against a small backtracking matcher written in the test.
//!
//! # Spans
//!
//! All spans here are byte ranges into the `&str` given (Python reports char indices; the test
//! converts).

use std::ops::Range;

const CAPTION_OPEN: &str = "<caption>";
const CAPTION_CLOSE: &str = "</caption>";
const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const ANSWER_OPEN: &str = "<answer>";
const ANSWER_CLOSE: &str = "</answer>";

/// Python `re`'s `\s` for `str` patterns (`str.isspace()`): Unicode `White_Space` plus the four
/// information separators U+001C..U+001F, which Python counts and Rust does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Byte index of the first non-whitespace char of `s[from..]` (or `s.len()`).
fn skip_space(s: &str, from: usize) -> usize {
    match s[from..].char_indices().find(|&(_, c)| !is_py_space(c)) {
        Some((i, _)) => from + i,
        None => s.len(),
    }
}

/// Where the blocks of a format-valid response lie; all ranges are byte ranges into the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatSpans {
    /// Capture group 1: `<caption>…</caption>` including both tags.
    pub caption: Range<usize>,
    /// Capture group 2: `<think>…</think>\s*<answer>…</answer>`, from `<think>` to the end of the
    /// final `</answer>`.
    pub cot: Range<usize>,
    /// The body of the answer block: after the `<answer>` that follows `</think>` up to the first
    /// `</answer>` after it (not trimmed). This is the answer the reward grades.
    pub answer: Range<usize>,
}

/// Parses `text` against the PRISM format rule; `Some` iff Python's `re.match` would accept it.
///
/// Linear in `text.len()` (each byte is looked at a bounded number of times). See the module doc
/// for why the spans equal Python's capture groups.
pub fn parse_format(text: &str) -> Option<FormatSpans> {
    // 1. Maximal whitespace prefix and suffix.
    let start = skip_space(text, 0);
    let end = text
        .char_indices()
        .rev()
        .find(|&(_, c)| !is_py_space(c))
        .map_or(start, |(i, c)| i + c.len_utf8());
    if end < start + CAPTION_OPEN.len() + ANSWER_CLOSE.len() {
        return None;
    }
    let t = &text[start..end];
    if !t.starts_with(CAPTION_OPEN) || !t.ends_with(ANSWER_CLOSE) {
        return None;
    }
    // 2. The middle between the outer literals (absolute byte positions from here on).
    let m_start = start + CAPTION_OPEN.len();
    let m_end = end - ANSWER_CLOSE.len();
    let middle = &text[m_start..m_end];

    // 3. First `</caption>` followed by W* `<think>` (earliest end of P1).
    let mut p1 = None;
    for (i, _) in middle.match_indices(CAPTION_CLOSE) {
        let close_end = m_start + i + CAPTION_CLOSE.len();
        let think_at = skip_space(&text[..m_end], close_end);
        if text[think_at..m_end].starts_with(THINK_OPEN) {
            p1 = Some((close_end, think_at));
            break;
        }
    }
    let (caption_end, think_at) = p1?;

    // 4. First `</think>` after P1 followed by W* `<answer>` (P2).
    let after_p1 = think_at + THINK_OPEN.len();
    for (i, _) in text[after_p1..m_end].match_indices(THINK_CLOSE) {
        let close_end = after_p1 + i + THINK_CLOSE.len();
        let answer_at = skip_space(&text[..m_end], close_end);
        if text[answer_at..m_end].starts_with(ANSWER_OPEN) {
            let body_start = answer_at + ANSWER_OPEN.len();
            // `</answer>` exists at `m_end`, so a first one at or after `body_start` exists.
            let body_end = text[body_start..end]
                .find(ANSWER_CLOSE)
                .map_or(m_end, |j| body_start + j);
            return Some(FormatSpans {
                caption: start..caption_end,
                cot: think_at..end,
                answer: body_start..body_end,
            });
        }
    }
    None
}

/// True iff `text` is format-valid (PRISM_ALGORITHM.md §1.2).
pub fn is_format_valid(text: &str) -> bool {
    parse_format(text).is_some()
}

/// The caption and reasoning segments of a valid response's text (§3.1 capture groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextSplit<'a> {
    /// `<caption>…</caption>`, tags included.
    pub caption: &'a str,
    /// `<think>…</think>\s*<answer>…</answer>`.
    pub cot: &'a str,
}

/// Splits a valid response's text into caption and reasoning; `None` when the format is invalid.
pub fn split_text(text: &str) -> Option<TextSplit<'_>> {
    parse_format(text).map(|s| TextSplit {
        caption: &text[s.caption],
        cot: &text[s.cot],
    })
}

/// The §1.3 fallback caption end for an invalid response of `len` valid tokens: `max(1, len/2)`.
pub fn fallback_caption_end(len: usize) -> usize {
    (len / 2).max(1)
}

/// Token ranges of the caption and reasoning segments of one response (§3.1).
///
/// `caption` is always `0..caption_end`. `cot` is `caption_end..len`, or, when that is empty,
/// the one token `caption_end..caption_end + 1`: that index may be `len` (a pad position), so
/// callers holding a padded row of width `R` apply [`TokenSplit::clamp_to_width`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenSplit {
    /// Whether the decoded text passed the format rule.
    pub format_valid: bool,
    /// Caption segment, `0..caption_end`.
    pub caption: Range<usize>,
    /// Reasoning segment (think + answer + trailing whitespace and EOS).
    pub cot: Range<usize>,
}

impl TokenSplit {
    /// Builds the split from a caption end (`None` → invalid → fallback) and the valid length.
    fn from_caption_end(caption_end: Option<usize>, len: usize) -> Self {
        // §3.1 step 5: an impossible boundary (≤ 0) also takes the fallback; we report it as
        // invalid ("valid ⇔ regex match" is the rule, and the boundary cannot be 0 for a match).
        let (format_valid, cap_end) = match caption_end {
            Some(k) if k > 0 => (true, k),
            _ => (false, fallback_caption_end(len)),
        };
        let cot_end = if cap_end < len { len } else { cap_end + 1 };
        TokenSplit {
            format_valid,
            caption: 0..cap_end,
            cot: cap_end..cot_end,
        }
    }

    /// The scoring-path clamps of §3.1 for a padded response row of width `width` (≥ 1):
    /// `cap_end = min(cap_end, R)`, `cot_start = min(cot_start, R−1)`,
    /// `cot_end = min(max(cot_end, cot_start + 1), R)`.
    pub fn clamp_to_width(&self, width: usize) -> TokenSplit {
        let width = width.max(1);
        let cap_end = self.caption.end.min(width);
        let cot_start = self.cot.start.min(width - 1);
        let cot_end = self.cot.end.max(cot_start + 1).min(width);
        TokenSplit {
            format_valid: self.format_valid,
            caption: 0..cap_end,
            cot: cot_start..cot_end,
        }
    }
}

/// Errors of the token-level split when the caller's offsets do not describe the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// `token_ends` must be non-decreasing.
    #[error("token_ends[{index}] = {value} is smaller than the previous end {previous}")]
    Decreasing {
        /// Offending token index.
        index: usize,
        /// Its end offset.
        value: usize,
        /// The end offset before it.
        previous: usize,
    },
    /// The last token end must equal the text length.
    #[error("token ends cover {covered} bytes but the decoded text has {text_len}")]
    LengthMismatch {
        /// Last end offset (0 for no tokens).
        covered: usize,
        /// Byte length of the text.
        text_len: usize,
    },
}

/// Cumulative byte ends from the decoded byte piece of each token: `ends[k]` is the byte length
/// of `decode(ids[..=k])`. Special tokens skipped by the decoder contribute an empty piece.
pub fn token_ends_from_pieces<P: AsRef<[u8]>>(pieces: &[P]) -> Vec<usize> {
    let mut total = 0usize;
    pieces
        .iter()
        .map(|p| {
            total += p.as_ref().len();
            total
        })
        .collect()
}

/// The §3.1 split from per-token byte offsets: `token_ends[k]` is the byte length of the decoded
/// prefix `decode(ids[..=k])`, so `text[..token_ends[k]]` is that prefix and
/// `token_ends.last() == text.len()`. `text` is the decode of all `L = token_ends.len()` valid
/// tokens (EOS included).
///
/// `cap_end` is the smallest `k` whose prefix contains the caption group. The caption group
/// begins after the leading whitespace and starts with `<`, so its first occurrence in `text` is
/// the group itself: the prefix of `k` tokens contains it iff `token_ends[k-1] >= caption.end`.
/// A token that completes `</caption>` and carries trailing characters (`">\n"`) therefore stays
/// in the caption, as in the original.
pub fn split_tokens_by_offsets(text: &str, token_ends: &[usize]) -> Result<TokenSplit, SplitError> {
    let mut previous = 0;
    for (index, &value) in token_ends.iter().enumerate() {
        if value < previous {
            return Err(SplitError::Decreasing {
                index,
                value,
                previous,
            });
        }
        previous = value;
    }
    let covered = token_ends.last().copied().unwrap_or(0);
    if covered != text.len() {
        return Err(SplitError::LengthMismatch {
            covered,
            text_len: text.len(),
        });
    }
    let len = token_ends.len();
    let cap_end = parse_format(text).and_then(|spans| {
        // First k (1-based count) with token_ends[k-1] >= caption.end; ends are sorted.
        let idx = token_ends.partition_point(|&e| e < spans.caption.end);
        (idx < len).then_some(idx + 1)
    });
    Ok(TokenSplit::from_caption_end(cap_end, len))
}

/// The §3.1 split with a caller-supplied prefix decoder (`decode(ids[..k])` with the same
/// settings as the format check, i.e. `skip_special_tokens = true`).
///
/// The original re-decodes every prefix (O(L²)). Here the smallest `k` whose decode contains the
/// caption group is found by galloping then bisection, O(log L) decodes, and then confirmed
/// minimal by checking `k − 1`. This equals the linear scan when "prefix contains the caption" is
/// monotone in `k`, which holds for byte-level BPE decoders: appending tokens only appends bytes,
/// and a caption group ends in the ASCII `>`, so the decoded text up to it never changes again.
/// (A decoder whose prefix texts are not prefixes of each other would break that; the result is
/// then still a `k` whose prefix contains the caption and whose `k − 1` prefix does not.)
pub fn split_tokens_by_decode<T, E>(
    ids: &[T],
    mut decode: impl FnMut(&[T]) -> Result<String, E>,
) -> Result<TokenSplit, E> {
    let len = ids.len();
    let text = decode(ids)?;
    let Some(spans) = parse_format(&text) else {
        return Ok(TokenSplit::from_caption_end(None, len));
    };
    let caption = &text[spans.caption];
    let mut contains = |k: usize| -> Result<bool, E> { Ok(decode(&ids[..k])?.contains(caption)) };
    // Gallop: find hi with contains(hi); lo is the last k known not to contain it.
    let mut lo = 0usize;
    let mut hi = 1usize.min(len);
    while hi < len && !contains(hi)? {
        lo = hi;
        hi = (hi * 2).min(len);
    }
    if hi == 0 || !contains(hi)? {
        // Cannot happen for a consistent decoder (the full decode contains the caption).
        return Ok(TokenSplit::from_caption_end(None, len));
    }
    // Invariant: !contains(lo) (or lo == 0), contains(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if contains(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(TokenSplit::from_caption_end(Some(hi), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_inside_blocks_are_allowed_by_backtracking() {
        let s = "<caption>a</caption><think>b</think><answer>c</answer> junk <answer>d</answer>";
        let spans = parse_format(s).expect("valid per §1.2");
        assert_eq!(&s[spans.caption.clone()], "<caption>a</caption>");
        assert_eq!(&s[spans.answer], "c");
        assert_eq!(spans.cot.end, s.len());
    }

    #[test]
    fn trailing_text_after_answer_is_invalid() {
        assert!(!is_format_valid(
            "<caption>a</caption><think>b</think><answer>c</answer>."
        ));
    }

    #[test]
    fn fallback_for_invalid() {
        let s = split_tokens_by_offsets("abcd", &[1, 2, 3, 4]).unwrap();
        assert!(!s.format_valid);
        assert_eq!(s.caption, 0..2);
        assert_eq!(s.cot, 2..4);
        let one = split_tokens_by_offsets("a", &[1]).unwrap();
        assert_eq!(one.caption, 0..1);
        assert_eq!(one.cot, 1..2);
        assert_eq!(one.clamp_to_width(1).cot, 0..1);
    }
}
