//! Multi-part answers: numbered items, top-level `;` / `,` lists (thousands separators kept),
//! and bracketed groups (tuples, intervals, sets).

use std::sync::LazyLock;

use regex::Regex;

use super::number::is_thousands_comma;
use super::{is_py_space, py_trim};

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
pub(super) fn split_parts(s: &str) -> Vec<&str> {
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
pub(super) fn as_group(s: &str) -> Option<(char, char, Vec<&str>)> {
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
