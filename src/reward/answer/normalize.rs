//! Cleaning of answers before matching: LaTeX markup to plain text, math delimiters, answer
//! phrases, canonical text for loose string equality, and yes/no reading. Linear time; nested
//! `\text{…}` is followed at most [`MAX_DEPTH`] levels deep.

use std::sync::LazyLock;

use regex::Regex;

use super::{MAX_DEPTH, braced, extract_boxed, is_py_space, py_trim};

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
pub(super) fn canon_text(s: &str) -> String {
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

fn yes_no_word(w: &str) -> Option<bool> {
    match w {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

/// A ground truth that is exactly yes/no/true/false (punctuation ignored).
pub(super) fn gt_yes_no(g: &str) -> Option<bool> {
    let w: String = g
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    yes_no_word(&w)
}

/// The yes/no a prediction starts with ("No, because …" → no).
pub(super) fn pred_yes_no(p: &str) -> Option<bool> {
    let lower = p.to_lowercase();
    let first: String = lower
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    yes_no_word(&first)
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
}
