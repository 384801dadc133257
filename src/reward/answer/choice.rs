//! Multiple-choice letters: when a ground truth is a choice, and which letter a prediction names.

use std::sync::LazyLock;

use regex::Regex;

use super::py_trim;

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
pub(super) fn gt_choice(g: &str) -> Option<(char, Option<&str>)> {
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
