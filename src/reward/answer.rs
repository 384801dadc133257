//! Answer extraction and matching for the verifiable reward.
//!
//! Owns: pulling the graded answer out of a response (`<answer>…</answer>`, `\boxed{…}`),
//! normalising it, and deciding whether it matches a ground-truth answer. Pure string code: no
//! tensors, no I/O, no panics on any input, and time linear in the input (expression nesting is
//! capped at [`MAX_DEPTH`]; inputs over [`MAX_MATCH_CHARS`] chars never match).
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
//!    sign in front and a percent sign or a unit after it. Values match within relative
//!    tolerance 1e-6 (absolute 1e-9 when the truth is 0); non-finite values never match.
//!    **Percent:** if only one side has `%`, either reading is accepted (`50%` = `50` = `0.5`);
//!    if both do, the numbers compare directly. **Units:** a trailing unit (a known unit symbol
//!    or up to three words, normalised: plural → singular, `metres` = `m`, `degrees` = `°`,
//!    `cm^2` = `cm²` = `square cm`, `dollars` = `$`) is stripped from both sides. If both sides
//!    have one they must be equal (no conversion: `5 cm` ≠ `50 mm`); if one side has none, the
//!    numbers decide (`5` = `5 cm`).
//! 6. Otherwise no match.
//!
//! A ground truth given as a list of equivalent answers matches if any element does.

use std::sync::LazyLock;

use regex::Regex;

use super::format::{is_py_space, parse_format};

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
// Cleaning
// ---------------------------------------------------------------------------------------------

/// LaTeX commands whose braced argument is kept as plain text.
const TEXT_COMMANDS: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "mathrm",
    "mathbf",
    "mathit",
    "mbox",
    "operatorname",
    "boxed",
    "fbox",
];

/// LaTeX commands dropped entirely.
const DROPPED_COMMANDS: &[&str] = &["displaystyle", "textstyle", "limits", "!", ","];

/// Rewrites LaTeX markup into plain text (see the module doc). Linear; braces are matched by
/// scanning and unmatched ones are left alone.
fn delatex(s: &str, depth: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next().unwrap_or('\0');
        if c == '^' {
            // ^\circ, ^{\circ}
            let rest = &s[i + 1..];
            let r = rest.trim_start();
            if let Some(after) = r.strip_prefix("\\circ") {
                out.push('°');
                i = s.len() - after.len();
                continue;
            }
            if let Some(after) = r.strip_prefix('{') {
                let a = after.trim_start();
                if let Some(a2) = a.strip_prefix("\\circ") {
                    let a3 = a2.trim_start();
                    if let Some(a4) = a3.strip_prefix('}') {
                        out.push('°');
                        i = s.len() - a4.len();
                        continue;
                    }
                }
            }
            out.push('^');
            i += 1;
            continue;
        }
        if c == '~' {
            out.push(' ');
            i += 1;
            continue;
        }
        if c != '\\' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        // A command: letters, or one non-letter symbol.
        let name_start = i + 1;
        let mut j = name_start;
        while j < s.len() && bytes[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j == name_start {
            // Symbol command: \, \; \! \% \$ \{ \} \  \\ ...
            let Some(sym) = s[name_start..].chars().next() else {
                out.push('\\');
                i += 1;
                continue;
            };
            i = name_start + sym.len_utf8();
            match sym {
                ',' | ';' | ':' | ' ' | '!' => out.push(' '),
                '%' => out.push('%'),
                '$' => out.push('\u{E000}'), // literal dollar, restored after math-$ removal
                '\\' => out.push(' '),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
            continue;
        }
        let name = &s[name_start..j];
        i = j;
        if TEXT_COMMANDS.contains(&name) {
            let rest = &s[i..];
            let r = rest.trim_start();
            if let Some(inner) = braced(r) {
                if depth < MAX_DEPTH {
                    out.push_str(&delatex(inner, depth + 1));
                } else {
                    out.push_str(inner);
                }
                i = s.len() - r.len() + inner.len() + 2;
            }
            continue;
        }
        if DROPPED_COMMANDS.contains(&name) {
            continue;
        }
        match name {
            "left" | "right" => {
                // Only as a delimiter prefix; `\left.` / `\right.` are invisible delimiters.
                let r = &s[i..];
                let rt = r.trim_start();
                if let Some(after) = rt.strip_prefix('.') {
                    i = s.len() - after.len();
                } else {
                    i = s.len() - rt.len();
                }
            }
            "dfrac" | "tfrac" | "cfrac" => out.push_str("\\frac"),
            "quad" | "qquad" => out.push(' '),
            "circ" | "degree" => out.push('°'),
            "cdot" | "times" | "ast" => out.push('*'),
            "div" => out.push('/'),
            "pi" => out.push('π'),
            "infty" => out.push('∞'),
            "le" | "leq" => out.push('≤'),
            "ge" | "geq" => out.push('≥'),
            "ne" | "neq" => out.push('≠'),
            "lbrace" => out.push('{'),
            "rbrace" => out.push('}'),
            "percent" => out.push('%'),
            other => {
                out.push('\\');
                out.push_str(other);
            }
        }
    }
    out
}

/// Removes one pair of wrapping math delimiters, repeatedly.
fn strip_math_delimiters(mut s: &str) -> &str {
    loop {
        let t = py_trim(s);
        let mut changed = false;
        for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if t.len() > open.len() + close.len() && t.starts_with(open) && t.ends_with(close) {
                s = &t[open.len()..t.len() - close.len()];
                changed = true;
                break;
            }
        }
        if !changed {
            return t;
        }
    }
}

static ANSWER_PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:the\s+)?(?:correct\s+|final\s+)*answer\s*(?:is\s*:?|:)\s*")
        .expect("static regex")
});

/// The cleaned form of an answer (see the module doc); both sides go through it.
pub fn clean(raw: &str) -> String {
    let mut s = py_trim(raw);
    if let Some(b) = extract_boxed(s) {
        s = b;
    }
    let s = strip_math_delimiters(s);
    let mut s = delatex(s, 0);
    // Math-mode `$` pairs inside the text ("$5$ cm"); a lone `$` is currency.
    if s.matches('$').count().is_multiple_of(2) {
        s.retain(|c| c != '$');
    }
    let s = s
        .replace('\u{E000}', "$")
        .replace("**", "")
        .replace("{,}", ",");
    // Collapse whitespace.
    let mut out = String::with_capacity(s.len());
    for w in s.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    let stripped = ANSWER_PHRASE.replace(&out, "");
    let mut out = stripped.into_owned();
    if out.ends_with('.') {
        out.pop();
        let len = out.trim_end().len();
        out.truncate(len);
    }
    out
}

/// Canonical text for loose string equality (rule 2).
fn canon_text(s: &str) -> String {
    let lower = s.to_lowercase();
    let mut t: String = lower
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | '`' | '“' | '”' | '‘' | '’'))
        .collect();
    for article in ["the ", "a ", "an "] {
        if t.starts_with(article) && t.len() > article.len() {
            t.drain(..article.len());
            break;
        }
    }
    while t.ends_with(['.', '!', '?']) {
        t.pop();
    }
    // Whitespace only between two alphanumerics; braces around one char dropped.
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_py_space(c) {
            let prev = out.chars().next_back();
            let next = chars[i..].iter().find(|c| !is_py_space(**c));
            if let (Some(p), Some(n)) = (prev, next)
                && p.is_alphanumeric()
                && n.is_alphanumeric()
            {
                out.push(' ');
            }
            while i < chars.len() && is_py_space(chars[i]) {
                i += 1;
            }
            continue;
        }
        if c == '{' && i + 2 < chars.len() && chars[i + 2] == '}' && chars[i + 1].is_alphanumeric()
        {
            out.push(chars[i + 1]);
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Multiple choice
// ---------------------------------------------------------------------------------------------

static CHOICE_ALONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[(\[]\s*([A-Ja-j])\s*[)\]]|([A-Ja-j])\s*[.:)]?)$").expect("static regex")
});
static CHOICE_LEAD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\(([A-J])\)|([A-J])[):])\s+\S|^([A-J])\.\s+[-+(\[{0-9]").expect("static regex")
});
static CHOICE_LEAD_ANY: LazyLock<Regex> = LazyLock::new(|| {
    // The last group is the option text; the letter groups come first (see `first_letter`).
    Regex::new(r"(?s)^(?:\(([A-J])\)|([A-J])[.):])\s+(\S.*)$").expect("static regex")
});
static CHOICE_PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i:\b(?:answer|option|choice)\s*(?:is\s*:?|:)?\s*)(?:[(\[]\s*([A-Ja-j])\s*[)\]]|([A-J]))(?:$|[^A-Za-z0-9])")
        .expect("static regex")
});
static CHOICE_BRACKETED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\(([A-J])\)").expect("static regex"));

fn first_letter(caps: &regex::Captures<'_>) -> Option<char> {
    caps.iter()
        .skip(1)
        .flatten()
        .next()
        .and_then(|m| m.as_str().chars().next())
        .map(|c| c.to_ascii_uppercase())
}

/// If a (cleaned) ground truth is a multiple-choice answer: its letter and option text, if any.
fn gt_choice(g: &str) -> Option<(char, Option<&str>)> {
    if let Some(c) = CHOICE_ALONE.captures(g) {
        let m = c.get(1).or(c.get(2))?;
        // A lone lower-case letter is more likely a variable than a choice.
        if m.as_str().chars().all(|ch| ch.is_ascii_uppercase()) {
            return Some((first_letter(&c)?, None));
        }
        return None;
    }
    let c = CHOICE_LEAD.captures(g)?;
    let letter = first_letter(&c)?;
    let text = CHOICE_LEAD_ANY
        .captures(g)
        .and_then(|c| c.get(3))
        .map(|m| py_trim(m.as_str()));
    Some((letter, text.filter(|t| !t.is_empty())))
}

/// The choice letter a (cleaned) prediction names, if it names exactly one.
///
/// A prediction that also names a different bracketed letter ("(A) or (B)") names none.
pub fn parse_choice(p: &str) -> Option<char> {
    if let Some(c) = CHOICE_ALONE.captures(p) {
        return first_letter(&c);
    }
    let found = CHOICE_LEAD_ANY
        .captures(p)
        .or_else(|| CHOICE_PHRASE.captures(p))
        .and_then(|c| first_letter(&c));
    let mut bracketed = CHOICE_BRACKETED
        .captures_iter(p)
        .filter_map(|c| first_letter(&c));
    match found {
        Some(letter) => bracketed.all(|l| l == letter).then_some(letter),
        None => {
            let first = bracketed.next()?;
            bracketed.all(|l| l == first).then_some(first)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-part splitting
// ---------------------------------------------------------------------------------------------

/// Whether the comma at byte `i` of `s` is a thousands separator: a digit before, exactly three
/// digits after, then a non-digit or the end.
fn is_thousands_comma(s: &[u8], i: usize) -> bool {
    i > 0
        && s[i - 1].is_ascii_digit()
        && s.len() >= i + 4
        && s[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        && s.get(i + 4).is_none_or(|b| !b.is_ascii_digit())
}

/// Splits on a top-level separator (`;` or `,`), bracket depth over `()[]{}`.
fn split_top_level(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ if c == sep && depth == 0 => {
                if sep == b',' && is_thousands_comma(b, i) {
                    continue;
                }
                parts.push(py_trim(&s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(py_trim(&s[start..]));
    parts.retain(|p| !p.is_empty());
    parts
}

static NUMBERED_ITEM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\((\d{1,3})\)").expect("static regex"));

/// The parts of a (cleaned) answer: numbered items, else `;`, else `,` (rule 3).
fn split_parts(s: &str) -> Vec<&str> {
    let t = py_trim(s);
    if t.starts_with("(1)") {
        let mut parts = Vec::new();
        let mut expect = 1u32;
        let mut last: Option<usize> = None;
        for m in NUMBERED_ITEM.find_iter(t) {
            let n: u32 = m.as_str()[1..m.as_str().len() - 1].parse().unwrap_or(0);
            if n == expect {
                if let Some(start) = last {
                    parts.push(t[start..m.start()].trim_matches(|c: char| {
                        is_py_space(c) || matches!(c, ',' | ';' | '，' | '；')
                    }));
                }
                last = Some(m.end());
                expect += 1;
            }
        }
        if let Some(start) = last {
            parts.push(t[start..].trim_matches(|c: char| {
                is_py_space(c) || matches!(c, ',' | ';' | '，' | '；' | '.')
            }));
        }
        parts.retain(|p| !p.is_empty());
        if parts.len() >= 2 {
            return parts;
        }
    }
    for sep in [b';', b','] {
        let parts = split_top_level(t, sep);
        if parts.len() >= 2 {
            return parts;
        }
    }
    vec![t]
}

/// A bracketed group with top-level commas: `(open, close, items)`.
fn as_group(s: &str) -> Option<(char, char, Vec<&str>)> {
    let (open, inner_start) = if s.starts_with("\\{") {
        ('{', 2)
    } else {
        let c = s.chars().next()?;
        if !matches!(c, '(' | '[' | '{') {
            return None;
        }
        (c, 1)
    };
    let (close, inner_end) = if s.ends_with("\\}") {
        ('}', s.len() - 2)
    } else {
        let c = s.chars().last()?;
        if !matches!(c, ')' | ']' | '}') {
            return None;
        }
        (c, s.len() - 1)
    };
    if inner_end < inner_start {
        return None;
    }
    let inner = &s[inner_start..inner_end];
    // The opening bracket must close at the very end: depth of `inner` never drops below 0.
    let mut depth = 0i64;
    for c in inner.bytes() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    let items = split_top_level(inner, b',');
    (items.len() >= 2).then_some((open, close, items))
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// A number with its optional percent sign and unit.
#[derive(Debug, Clone, PartialEq)]
struct Quantity {
    value: f64,
    percent: bool,
    unit: Option<String>,
}

/// Recursive-descent evaluator over a cleaned string (see rule 5). Stops at the first character
/// it cannot use; [`Eval::parse_prefix`] reports how far it got.
struct Eval<'a> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Eval<'a> {
    fn new(src: &'a str) -> Self {
        Eval {
            s: src.as_bytes(),
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos] == b' ' {
            self.pos += 1;
        }
    }

    fn peek_str(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn eat(&mut self, t: &str) -> bool {
        if self.peek_str().starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }

    /// Parses the longest expression prefix; `(value, end)`.
    fn parse_prefix(mut self) -> Option<(f64, usize)> {
        let v = self.expr()?;
        Some((v, self.pos))
    }

    /// Runs `f` one nesting level deeper; `None` past [`MAX_DEPTH`] (bounds stack and time).
    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Option<f64>) -> Option<f64> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn expr(&mut self) -> Option<f64> {
        self.nested(Self::expr_inner)
    }

    fn expr_inner(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            let sign = if self.eat("+") {
                1.0
            } else if self.eat("-") || self.eat("−") {
                -1.0
            } else {
                self.pos = save;
                break;
            };
            self.skip_ws();
            match self.term() {
                Some(t) => v += sign * t,
                None => {
                    self.pos = save;
                    break;
                }
            }
        }
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            let op = if self.eat("*") || self.eat("×") || self.eat("·") {
                Some(true)
            } else if self.eat("/") || self.eat("÷") {
                Some(false)
            } else {
                None
            };
            match op {
                Some(mul) => {
                    self.skip_ws();
                    match self.unary() {
                        Some(r) => v = if mul { v * r } else { v / r },
                        None => {
                            self.pos = save;
                            break;
                        }
                    }
                }
                None => {
                    // Implicit product: 2π, 2\sqrt{3}, 2(3), (1+1)(2).
                    self.pos = save;
                    let starts_atom = self.peek_str().starts_with(['(', '\\', 'π', '√']);
                    if !starts_atom {
                        break;
                    }
                    match self.power() {
                        Some(r) => v *= r,
                        None => {
                            self.pos = save;
                            break;
                        }
                    }
                }
            }
        }
        Some(v)
    }

    fn unary(&mut self) -> Option<f64> {
        self.nested(|me| {
            if me.eat("-") || me.eat("−") {
                me.skip_ws();
                me.unary().map(|v| -v)
            } else if me.eat("+") {
                me.skip_ws();
                me.unary()
            } else {
                me.power()
            }
        })
    }

    fn power(&mut self) -> Option<f64> {
        let base = self.atom()?;
        let save = self.pos;
        self.skip_ws();
        if self.eat("^") {
            self.skip_ws();
            let exp = if self.eat("-") {
                self.atom().map(|v| -v)
            } else {
                self.atom()
            };
            if let Some(e) = exp {
                return Some(base.powf(e));
            }
        }
        self.pos = save;
        Some(base)
    }

    /// A `{…}` group or, as in `\frac12`, a single digit.
    fn group_arg(&mut self) -> Option<f64> {
        self.skip_ws();
        if self.eat("{") {
            let v = self.expr()?;
            self.skip_ws();
            return self.eat("}").then_some(v);
        }
        let d = *self.s.get(self.pos)?;
        if d.is_ascii_digit() {
            self.pos += 1;
            return Some(f64::from(d - b'0'));
        }
        None
    }

    /// `{123}` or a single digit, as a plain non-negative integer (no nested expression).
    fn int_arg(&mut self) -> Option<f64> {
        self.skip_ws();
        let rest = self.peek_str();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}')?;
            let body = inner[..close].trim();
            if body.is_empty() || body.len() > 18 || !body.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            self.pos += close + 2;
            return body.parse::<f64>().ok();
        }
        let d = *self.s.get(self.pos)?;
        if d.is_ascii_digit() {
            self.pos += 1;
            return Some(f64::from(d - b'0'));
        }
        None
    }

    fn atom(&mut self) -> Option<f64> {
        self.nested(Self::atom_inner)
    }

    fn atom_inner(&mut self) -> Option<f64> {
        let c = *self.s.get(self.pos)?;
        if c.is_ascii_digit() || c == b'.' {
            let n = self.number()?;
            // Mixed number: 2\frac{1}{2} = 2.5 (integer immediately followed by \frac).
            let rest = self.peek_str();
            if n.fract() == 0.0 && rest.starts_with("\\frac") {
                let save = self.pos;
                self.pos += "\\frac".len();
                // Integer-literal arguments only, so this look-ahead never re-parses nested
                // expressions (which would make deep inputs exponential).
                if let (Some(a), Some(b)) = (self.int_arg(), self.int_arg())
                    && b > 0.0
                {
                    return Some(n + a / b);
                }
                self.pos = save;
            }
            return Some(n);
        }
        for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
            if self.eat(open) {
                self.skip_ws();
                let v = self.expr()?;
                self.skip_ws();
                return self.eat(close).then_some(v);
            }
        }
        if self.eat("π") {
            return Some(std::f64::consts::PI);
        }
        if self.eat("√") {
            self.skip_ws();
            return self.power().map(f64::sqrt);
        }
        if self.eat("\\frac") {
            let a = self.group_arg()?;
            let b = self.group_arg()?;
            return Some(a / b);
        }
        if self.eat("\\sqrt") {
            self.skip_ws();
            let index = if self.eat("[") {
                let n = self.expr()?;
                if !self.eat("]") {
                    return None;
                }
                n
            } else {
                2.0
            };
            let x = self.group_arg()?;
            return Some(if index == 2.0 {
                x.sqrt()
            } else {
                x.powf(1.0 / index)
            });
        }
        None
    }

    /// Decimal literal with optional thousands commas (`1,234.5`) and exponent (`1e-3`).
    fn number(&mut self) -> Option<f64> {
        let start = self.pos;
        let mut digits = String::new();
        let mut seen_dot = false;
        while self.pos < self.s.len() {
            let b = self.s[self.pos];
            if b.is_ascii_digit() {
                digits.push(b as char);
                self.pos += 1;
            } else if b == b',' && is_thousands_comma(self.s, self.pos) && !seen_dot {
                self.pos += 1;
            } else if b == b'.'
                && !seen_dot
                && self.s.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
            {
                seen_dot = true;
                digits.push('.');
                self.pos += 1;
            } else {
                break;
            }
        }
        if digits.is_empty() || digits == "." {
            self.pos = start;
            return None;
        }
        // Exponent only when attached to the digits and followed by a digit: 1e5, 2.5E-3.
        if matches!(self.s.get(self.pos), Some(b'e' | b'E')) {
            let mut j = self.pos + 1;
            if matches!(self.s.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if self.s.get(j).is_some_and(u8::is_ascii_digit) {
                let exp_start = self.pos;
                while self.s.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                // Not followed by letters (then it was a word, e.g. "2em").
                if !self.s.get(j).is_some_and(u8::is_ascii_alphabetic) {
                    digits.push_str(&self.src[exp_start..j]);
                    self.pos = j;
                }
            }
        }
        digits.parse::<f64>().ok()
    }
}

/// Number words for small counts ("three" = 3, "twenty-one" = 21).
fn number_word(w: &str) -> Option<f64> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    let w = w.to_lowercase();
    let w = w.trim();
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some(i as f64);
    }
    match w {
        "hundred" | "a hundred" | "one hundred" => return Some(100.0),
        "thousand" | "a thousand" | "one thousand" => return Some(1000.0),
        "a dozen" | "dozen" => return Some(12.0),
        _ => {}
    }
    for (k, t) in TENS.iter().enumerate() {
        let base = 20.0 + 10.0 * k as f64;
        if w == *t {
            return Some(base);
        }
        if let Some(rest) = w.strip_prefix(t) {
            let rest = rest.trim_start_matches(['-', ' ']);
            if let Some(u) = UNITS[1..10].iter().position(|u| *u == rest) {
                return Some(base + (u + 1) as f64);
            }
        }
    }
    None
}

/// Known unit spellings → canonical unit.
const UNIT_SYNONYMS: &[(&str, &str)] = &[
    ("m", "m"),
    ("meter", "m"),
    ("metre", "m"),
    ("cm", "cm"),
    ("centimeter", "cm"),
    ("centimetre", "cm"),
    ("mm", "mm"),
    ("millimeter", "mm"),
    ("millimetre", "mm"),
    ("km", "km"),
    ("kilometer", "km"),
    ("kilometre", "km"),
    ("dm", "dm"),
    ("in", "in"),
    ("inch", "in"),
    ("inche", "in"),
    ("ft", "ft"),
    ("foot", "ft"),
    ("feet", "ft"),
    ("yd", "yd"),
    ("yard", "yd"),
    ("mi", "mi"),
    ("mile", "mi"),
    ("g", "g"),
    ("gram", "g"),
    ("kg", "kg"),
    ("kilogram", "kg"),
    ("mg", "mg"),
    ("milligram", "mg"),
    ("lb", "lb"),
    ("pound", "lb"),
    ("oz", "oz"),
    ("ounce", "oz"),
    ("s", "s"),
    ("sec", "s"),
    ("second", "s"),
    ("min", "min"),
    ("minute", "min"),
    ("h", "h"),
    ("hr", "h"),
    ("hour", "h"),
    ("day", "day"),
    ("week", "week"),
    ("month", "month"),
    ("yr", "year"),
    ("year", "year"),
    ("l", "l"),
    ("liter", "l"),
    ("litre", "l"),
    ("ml", "ml"),
    ("milliliter", "ml"),
    ("millilitre", "ml"),
    ("°", "°"),
    ("deg", "°"),
    ("degree", "°"),
    ("°c", "°c"),
    ("celsius", "°c"),
    ("degree celsius", "°c"),
    ("°f", "°f"),
    ("fahrenheit", "°f"),
    ("degree fahrenheit", "°f"),
    ("rad", "rad"),
    ("radian", "rad"),
    ("$", "$"),
    ("dollar", "$"),
    ("usd", "$"),
    ("€", "€"),
    ("euro", "€"),
    ("£", "£"),
    ("¥", "¥"),
    ("yuan", "元"),
    ("元", "元"),
    ("cent", "cent"),
    ("km/h", "km/h"),
    ("kmh", "km/h"),
    ("kph", "km/h"),
    ("mph", "mph"),
    ("m/s", "m/s"),
    ("unit", "unit"),
];

/// Canonical form of a unit string (rule 5): lower case, plural → singular, synonyms.
fn normalize_unit(u: &str) -> String {
    let mut s = u.to_lowercase().replace(['{', '}'], "");
    s = s.replace("^2", "²").replace("^3", "³");
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut power = "";
    let mut rest: Vec<&str> = words.clone();
    if let Some(first) = words.first()
        && words.len() >= 2
    {
        match *first {
            "square" | "sq" | "sq." => {
                power = "²";
                rest.remove(0);
            }
            "cubic" | "cu" => {
                power = "³";
                rest.remove(0);
            }
            _ => {}
        }
    }
    let mut base = rest.join(" ");
    let mut base_power = "";
    for p in ["²", "³"] {
        if let Some(b) = base.strip_suffix(p) {
            base = b.to_string();
            base_power = p;
        }
    }
    let singular = |w: &str| -> String {
        if let Some((_, canon)) = UNIT_SYNONYMS.iter().find(|(k, _)| *k == w) {
            return (*canon).to_string();
        }
        let stem = w
            .strip_suffix("es")
            .filter(|s| s.ends_with("ch") || s.ends_with("sh") || s.ends_with('x'))
            .or_else(|| {
                w.strip_suffix('s')
                    .filter(|s| s.len() >= 2 && !s.ends_with('s'))
            });
        match stem {
            Some(st) => UNIT_SYNONYMS
                .iter()
                .find(|(k, _)| *k == st)
                .map_or_else(|| st.to_string(), |(_, c)| (*c).to_string()),
            None => w.to_string(),
        }
    };
    let canon = singular(&base);
    let p = if power.is_empty() { base_power } else { power };
    format!("{canon}{p}")
}

/// Whether `rest` (after a number) reads as a unit: up to three words of letters, `°`, `/`,
/// `^2`, `²`, `³`, `.`; at least one letter or `°`.
fn looks_like_unit(rest: &str) -> bool {
    let r = py_trim(rest);
    if r.is_empty() || r.chars().count() > 32 || r.split_whitespace().count() > 3 {
        return false;
    }
    let mut prev = ' ';
    let mut has_letter = false;
    for c in r.chars() {
        let ok = c.is_alphabetic()
            || c == ' '
            || matches!(
                c,
                '°' | '/' | '^' | '²' | '³' | '.' | '{' | '}' | '$' | '€' | '£' | '¥'
            )
            || (matches!(c, '2' | '3') && matches!(prev, '^' | '{'));
        if !ok {
            return false;
        }
        has_letter |= c.is_alphabetic() || c == '°';
        prev = c;
    }
    has_letter && !r.starts_with(['/', '^', '.'])
}

static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-zα-ωΑ-Ω](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*").expect("static regex")
});
static SPACED_THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?").expect("static regex"));

/// Parses a cleaned answer as a quantity (rule 5), or `None`.
fn parse_quantity(s: &str) -> Option<Quantity> {
    let mut t = py_trim(s);
    if let Some(m) = ASSIGNMENT.find(t) {
        t = &t[m.end()..];
    }
    let mut unit: Option<String> = None;
    for (sym, canon) in [("$", "$"), ("€", "€"), ("£", "£"), ("¥", "¥")] {
        if let Some(r) = t.strip_prefix(sym) {
            t = py_trim(r);
            unit = Some(canon.to_string());
            break;
        }
        // Sign before the currency: -$5.
        if let Some(r) = t.strip_prefix('-').and_then(|r| r.strip_prefix(sym)) {
            return parse_quantity(&format!("-{r}")).map(|q| Quantity {
                unit: Some(canon.to_string()),
                ..q
            });
        }
    }
    let mut owned;
    if let Some(m) = SPACED_THOUSANDS.find(t)
        && m.as_str().contains(' ')
    {
        owned = m.as_str().replace(' ', "");
        owned.push_str(&t[m.end()..]);
        t = &owned;
    }
    let (value, end) = match Eval::new(t).parse_prefix() {
        Some(v) => v,
        None => {
            // Number words: "three", "twenty one apples".
            let lower = t.to_lowercase();
            let words: Vec<&str> = lower.split_whitespace().collect();
            let found = (1..=words.len().min(2))
                .rev()
                .find_map(|n| number_word(&words[..n].join(" ")).map(|v| (v, n)));
            let (v, n) = found?;
            let rest = words[n..].join(" ");
            owned = rest;
            return finish_quantity(v, &owned, unit);
        }
    };
    finish_quantity(value, &t[end..], unit)
}

fn finish_quantity(value: f64, rest: &str, mut unit: Option<String>) -> Option<Quantity> {
    if !value.is_finite() {
        return None;
    }
    let mut r = py_trim(rest);
    let mut percent = false;
    if let Some(x) = r.strip_prefix('%') {
        percent = true;
        r = py_trim(x);
    } else if let Some(x) = r
        .strip_prefix("percent")
        .or_else(|| r.strip_prefix("per cent"))
    {
        percent = true;
        r = py_trim(x);
    }
    if !r.is_empty() {
        if !looks_like_unit(r) {
            return None;
        }
        let u = normalize_unit(r);
        if unit.as_ref().is_some_and(|cur| *cur != u) {
            return None;
        }
        unit = Some(u);
    }
    Some(Quantity {
        value,
        percent,
        unit,
    })
}

fn close(p: f64, g: f64) -> bool {
    if g == 0.0 {
        p.abs() <= ZERO_TOL
    } else {
        (p - g).abs() <= REL_TOL * g.abs()
    }
}

fn quantities_match(p: &Quantity, g: &Quantity) -> bool {
    if let (Some(pu), Some(gu)) = (&p.unit, &g.unit)
        && pu != gu
    {
        return false;
    }
    match (p.percent, g.percent) {
        (true, false) => close(p.value, g.value) || close(p.value / 100.0, g.value),
        (false, true) => close(p.value, g.value) || close(p.value, g.value / 100.0),
        _ => close(p.value, g.value),
    }
}

// ---------------------------------------------------------------------------------------------
// Yes / no
// ---------------------------------------------------------------------------------------------

fn yes_no_word(w: &str) -> Option<bool> {
    match w {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

/// A ground truth that is exactly yes/no/true/false (punctuation ignored).
fn gt_yes_no(g: &str) -> Option<bool> {
    let w: String = g
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    yes_no_word(&w)
}

/// The yes/no a prediction starts with ("No, because …" → no).
fn pred_yes_no(p: &str) -> Option<bool> {
    let lower = p.to_lowercase();
    let first: String = lower
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    yes_no_word(&first)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_examples() {
        assert_eq!(clean("$\\dfrac{1}{2}$"), "\\frac{1}{2}");
        assert_eq!(clean("\\boxed{\\text{12 cm}}"), "12 cm");
        assert_eq!(clean("30^{\\circ}"), "30°");
        assert_eq!(clean("The answer is 5."), "5");
        assert_eq!(clean("\\left( 1, 2 \\right)"), "( 1, 2 )");
        assert_eq!(clean("\\leftarrow"), "\\leftarrow");
    }

    #[test]
    fn evaluator() {
        let ev = |s: &str| Eval::new(s).parse_prefix().map(|(v, _)| v);
        assert_eq!(ev("1/2"), Some(0.5));
        assert_eq!(ev("\\frac{3}{4}"), Some(0.75));
        assert_eq!(ev("2\\frac{1}{2}"), Some(2.5));
        assert_eq!(ev("2^{10}"), Some(1024.0));
        assert_eq!(ev("-2^2"), Some(-4.0));
        assert_eq!(ev("1,000"), Some(1000.0));
        assert!((ev("2\\sqrt{3}").unwrap() - 12f64.sqrt()).abs() < 1e-12);
        assert_eq!(ev("\\sqrt[3]{27}"), Some(3.0));
    }

    #[test]
    fn units() {
        assert_eq!(normalize_unit("Meters"), "m");
        assert_eq!(normalize_unit("square centimeters"), "cm²");
        assert_eq!(normalize_unit("cm^{2}"), "cm²");
        assert_eq!(normalize_unit("inches"), "in");
        assert_eq!(normalize_unit("apples"), "apple");
    }
}
