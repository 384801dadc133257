//! Answer extraction and matching for the verifiable reward.
//!
//! Owns: pulling the graded answer out of a response (`<answer>…</answer>`, `\boxed{…}`),
//! normalising it, and deciding whether it matches a ground-truth answer. Pure string code: no
//! tensors, no I/O, no panics on any input, and time linear in the input (expression nesting is
//! capped at [`MAX_DEPTH`]; inputs over [`MAX_MATCH_CHARS`] chars never match).
//!
//! Layout: this file extracts answers and runs the rules below in order; [`normalize`] cleans
//! LaTeX and text, `choice` reads multiple-choice letters, `parts` splits multi-part answers,
//! `number` evaluates numbers, percent signs and units.
//!
//! # Matching rules (in order)
//!
//! Both sides are first *cleaned*: trimmed; the last `\boxed{…}`/`\fbox{…}` replaced by its
//! content; wrapping `$…$`, `$$…$$`, `\(…\)`, `\[…\]` removed (and `$` pairs inside); `\dfrac`,
//! `\tfrac` → `\frac`; `\text{X}`, `\mathrm{X}`, `\textbf{X}`, `\mathbf{X}`, `\mbox{X}`,
//! `\operatorname{X}` → `X`; `\left`/`\right` dropped only before a delimiter (so `\leftarrow`
//! survives); LaTeX spacing (`\,` `\;` `\!` `\quad` `~`) → space; `\%` → `%`; `\$` → `$`;
//! `^\circ`/`^{\circ}`/`\degree` → `°`; `\cdot`, `\times` → `*`; `\div` → `/`; `\pi` → `π`;
//! markdown `**` removed; a leading "The (final) answer is" / "Answer:" removed; whitespace
//! collapsed; one trailing `.` removed.
//!
//! 1. **Multiple choice.** If the ground truth is a choice (`B`, `(B)`, `B.`, `B)`, `[B]`,
//!    `(B) text`, `B) text`, `B: text`, or `B. text` where text starts with a digit, sign or
//!    bracket; letters A–J, upper case), the prediction's letter is read from `B`, `b`, `(B)`,
//!    `B.`, `B)`, `B:`, `(B) text`, `B. text`, `B: text`, "option B", "choice (B)",
//!    "the answer is B", or a single bracketed `(B)` anywhere. Lower-case letters count only
//!    alone or in brackets (so "the answer is a triangle" is not A). Equal letters match; `AB`
//!    is not `B`. If the ground truth carries option text, a prediction equal to that text
//!    (by the rules below) also matches.
//! 2. **Exact** after cleaning, or equal *canonical text*: lower case, quotes/backticks removed,
//!    a leading article (a/an/the) removed, trailing `.!?` removed, whitespace kept only between
//!    two alphanumerics, braces around a single character removed (`x^{2}` = `x^2`). Periods
//!    between digits are kept, so `3.5` ≠ `35`.
//! 3. **Yes/no.** If the ground truth is yes/no/true/false, the prediction's first word decides
//!    (`yes` = `true`, `no` = `false`; "No, because …" is no). Checked before any splitting.
//! 4. **Multi-part.** Both sides are split into parts on top-level `;`, else top-level `,`
//!    (depth over `()[]{}`), or on numbered items `(1) … (2) …`; `;` and `,` lists are
//!    interchangeable. A comma between a digit and exactly three digits is a thousands
//!    separator, not a split (`1,000` is one number; `3,5` is two parts). Parts are compared
//!    **in order**; the counts must be equal. A bracketed group with top-level commas
//!    (`(3, 4)`, `[0, 1)`, `\{1, 2\}`) compares item by item and its brackets must be the same
//!    on both sides, except `{…}` sets, which compare as unordered multisets (up to
//!    [`MAX_SET_ITEMS`] items). A bare list on one side may match a bracketed group of the same
//!    length on the other (`3, 4` vs `(3, 4)`).
//! 5. **Numbers.** If the ground truth is a quantity, the prediction must be one too:
//!    an arithmetic expression (integers, decimals, `1e-3`, thousands separators, `a/b`,
//!    `\frac{a}{b}`, `\frac12`, mixed numbers `2\frac{1}{2}`, `\sqrt{x}`, `\sqrt[n]{x}`, `√`,
//!    `π`, `+ - * / ^`, brackets, implicit products like `2\sqrt{3}`) or a number word
//!    (zero…ninety-nine, hundred, thousand: "three" = 3), optionally `x =` in front, a currency
//!    sign in front and a percent sign or a unit after it. Two plain integers (digits,
//!    sign, thousands commas, or number words) must be equal digit for digit; other values match
//!    within relative tolerance 1e-6 (absolute 1e-9 when the truth is 0). Non-finite values
//!    never match.
//!    **Percent:** if only one side has `%`, either reading is accepted (`50%` = `50` = `0.5`);
//!    if both do, the numbers compare directly. **Units:** a trailing unit (a known unit symbol
//!    or up to three words, normalised: plural → singular, `metres` = `m`, `degrees` = `°`,
//!    `cm^2` = `cm²` = `square cm`, `dollars` = `$`) is stripped from both sides. If both sides
//!    have one they must be equal (no conversion: `5 cm` ≠ `50 mm`); if one side has none, the
//!    numbers decide (`5` = `5 cm`).
//! 6. Otherwise no match.
//!
//! A ground truth given as a list of equivalent answers matches if any element does.

mod choice;
pub mod normalize;
mod number;
mod parts;

use super::format::{is_py_space, parse_format};

pub use choice::parse_choice;
pub use normalize::clean;

use choice::gt_choice;
use normalize::{canon_text, gt_yes_no, pred_yes_no};
use number::{parse_quantity, quantities_match};
use parts::{as_group, split_parts};

/// Longest graded answer, in chars: a longer answer earns accuracy 0 (as the original, §7.1).
pub const MAX_ANSWER_CHARS: usize = 1024;

/// Inputs to [`answers_match`] longer than this (chars) never match; it bounds the work.
pub const MAX_MATCH_CHARS: usize = 4096;

/// Deepest bracket / `\frac` nesting the expression evaluator follows before giving up.
pub const MAX_DEPTH: usize = 64;

/// Largest set compared as an unordered multiset (quadratic); larger sets compare in order.
pub const MAX_SET_ITEMS: usize = 256;

/// Relative tolerance of numeric equality.
pub const REL_TOL: f64 = 1e-6;

/// Absolute tolerance when the ground truth is exactly zero.
pub const ZERO_TOL: f64 = 1e-9;

fn py_trim(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// The answer a response is graded on.
///
/// For a format-valid response: the body of the `<answer>` block that follows `</think>` (up to
/// the first `</answer>` after it), trimmed. Unlike the original, which takes the first
/// `<answer>…</answer>` anywhere, an `<answer>` quoted inside the think block is not graded.
/// For an invalid response (evaluation path): the first `<answer>…</answer>`, else the last
/// `\boxed{…}`, else `None`.
pub fn extract_answer(response: &str) -> Option<&str> {
    if let Some(spans) = parse_format(response) {
        return Some(py_trim(&response[spans.answer]));
    }
    if let Some(open) = response.find("<answer>") {
        let body = &response[open + "<answer>".len()..];
        if let Some(close) = body.find("</answer>") {
            return Some(py_trim(&body[..close]));
        }
    }
    extract_boxed(response).map(py_trim)
}

/// Content of the last `\boxed{…}` (or `\fbox{…}`) with balanced braces, if any. Linear: the
/// braces are matched once with a stack.
pub fn extract_boxed(text: &str) -> Option<&str> {
    if !text.contains("\\boxed") && !text.contains("\\fbox") {
        return None;
    }
    // close_of[i] = index of the `}` matching the `{` at byte i.
    let bytes = text.as_bytes();
    let mut close_of = vec![usize::MAX; bytes.len()];
    let mut stack = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => stack.push(i),
            b'}' => {
                if let Some(open) = stack.pop() {
                    close_of[open] = i;
                }
            }
            _ => {}
        }
    }
    let mut best: Option<(usize, usize)> = None;
    for pat in ["\\boxed", "\\fbox"] {
        for (i, _) in text.match_indices(pat) {
            let after = i + pat.len();
            let open = after + (text[after..].len() - text[after..].trim_start().len());
            if bytes.get(open) == Some(&b'{')
                && close_of[open] != usize::MAX
                && best.is_none_or(|(start, _)| start < open)
            {
                best = Some((open, close_of[open]));
            }
        }
    }
    best.map(|(open, close)| &text[open + 1..close])
}

/// If `s` starts with `{`, the content up to its matching `}`.
fn braced(s: &str) -> Option<&str> {
    if !s.starts_with('{') {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[1..i]);
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------

/// Whether a predicted answer matches one ground-truth answer (rules in the module doc).
pub fn answers_match(pred: &str, gt: &str) -> bool {
    if pred.chars().count() > MAX_MATCH_CHARS || gt.chars().count() > MAX_MATCH_CHARS {
        return false;
    }
    let p = clean(pred);
    let g = clean(gt);
    if p.is_empty() || g.is_empty() {
        return false;
    }
    if p == g {
        return true;
    }
    if let Some((letter, option_text)) = gt_choice(&g) {
        if parse_choice(&p) == Some(letter) {
            return true;
        }
        return option_text.is_some_and(|t| match_value(&p, t, 0));
    }
    match_value(&p, &g, 0)
}

/// Whether `pred` matches any of the equivalent ground-truth answers.
pub fn matches_any<S: AsRef<str>>(pred: &str, gts: &[S]) -> bool {
    gts.iter().any(|g| answers_match(pred, g.as_ref()))
}

/// Rules 2–5 on cleaned strings (multi-part aware). `depth` bounds group recursion.
fn match_value(p: &str, g: &str, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    if p == g || canon_text(p) == canon_text(g) {
        return true;
    }
    // Yes/no first: "No, because …" must not be split into parts.
    if let Some(gy) = gt_yes_no(g) {
        return pred_yes_no(p) == Some(gy);
    }
    let gp = split_parts(g);
    let pp = split_parts(p);
    if gp.len() != pp.len() {
        // A bare list against a bracketed group of the same length: compare items in order.
        if gp.len() == 1
            && let Some((_, _, items)) = as_group(g)
        {
            return items.len() == pp.len()
                && items
                    .iter()
                    .zip(&pp)
                    .all(|(gi, pi)| match_single(pi, gi, depth + 1));
        }
        if pp.len() == 1
            && let Some((_, _, items)) = as_group(p)
        {
            return items.len() == gp.len()
                && items
                    .iter()
                    .zip(&gp)
                    .all(|(pi, gi)| match_single(pi, gi, depth + 1));
        }
        return false;
    }
    if gp.len() == 1 {
        return match_single(p, g, depth + 1);
    }
    gp.iter()
        .zip(&pp)
        .all(|(g, p)| match_single(p, g, depth + 1))
}

/// One part against one part (rules 2, 3 for bracketed groups, 4, 5).
fn match_single(p: &str, g: &str, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    if p == g || canon_text(p) == canon_text(g) {
        return true;
    }
    if let Some((go, gc, gitems)) = as_group(g) {
        let Some((po, pc, pitems)) = as_group(p) else {
            return false;
        };
        if go != po || gc != pc || gitems.len() != pitems.len() {
            return false;
        }
        if go == '{' && gc == '}' && gitems.len() <= MAX_SET_ITEMS {
            // Unordered multiset: greedy assignment is exact for an equivalence relation, and
            // matching is one here up to tolerance edge cases.
            let mut used = vec![false; pitems.len()];
            return gitems.iter().all(|gi| {
                let hit = pitems
                    .iter()
                    .enumerate()
                    .find(|(k, pi)| !used[*k] && match_value(pi, gi, depth + 1));
                match hit {
                    Some((k, _)) => {
                        used[k] = true;
                        true
                    }
                    None => false,
                }
            });
        }
        return gitems
            .iter()
            .zip(&pitems)
            .all(|(gi, pi)| match_value(pi, gi, depth + 1));
    }
    if let Some(gy) = gt_yes_no(g) {
        return pred_yes_no(p) == Some(gy);
    }
    if let Some(gq) = parse_quantity(g) {
        return parse_quantity(p).is_some_and(|pq| quantities_match(&pq, &gq));
    }
    false
}
