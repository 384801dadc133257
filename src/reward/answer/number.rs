//! Numbers: a small expression evaluator (decimals, thousands separators, fractions, roots,
//! powers, π), number words, percent signs, units, and numeric comparison with tolerance.
//! Recursion is capped at [`MAX_DEPTH`] and no input is parsed twice, so time is linear.

use std::sync::LazyLock;

use regex::Regex;

use super::{MAX_DEPTH, REL_TOL, ZERO_TOL, py_trim};

/// Whether the comma at byte `i` of `s` is a thousands separator: a digit before, exactly three
/// digits after, then a non-digit or the end.
pub(super) fn is_thousands_comma(s: &[u8], i: usize) -> bool {
    i > 0
        && s[i - 1].is_ascii_digit()
        && s.len() >= i + 4
        && s[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        && s.get(i + 4).is_none_or(|b| !b.is_ascii_digit())
}

/// A number with its optional percent sign and unit.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Quantity {
    value: f64,
    percent: bool,
    unit: Option<String>,
    /// Canonical digits (`-1234`) when the number was written as a plain integer (or number
    /// word): two such integers compare exactly, not within tolerance, so `1000001` ≠ `1000000`
    /// and integers past 2^53 still compare digit by digit.
    integer: Option<String>,
}

/// Canonical digits of a plain integer literal (optional sign, digits, thousands commas).
fn integer_key(lit: &str) -> Option<String> {
    let (neg, body) = match lit.strip_prefix(['-', '−']) {
        Some(b) => (true, b),
        None => (false, lit.strip_prefix('+').unwrap_or(lit)),
    };
    let body = py_trim(body);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || b == b',') {
        return None;
    }
    let digits: String = body.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    Some(match (neg, digits.is_empty()) {
        (_, true) => "0".to_string(),
        (true, false) => format!("-{digits}"),
        (false, false) => digits.to_string(),
    })
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
pub(super) fn parse_quantity(s: &str) -> Option<Quantity> {
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
            return finish_quantity(v, &owned, unit, Some(format!("{v:.0}")));
        }
    };
    finish_quantity(value, &t[end..], unit, integer_key(py_trim(&t[..end])))
}

fn finish_quantity(
    value: f64,
    rest: &str,
    mut unit: Option<String>,
    integer: Option<String>,
) -> Option<Quantity> {
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
        integer,
    })
}

fn close(p: f64, g: f64) -> bool {
    if g == 0.0 {
        p.abs() <= ZERO_TOL
    } else {
        (p - g).abs() <= REL_TOL * g.abs()
    }
}

pub(super) fn quantities_match(p: &Quantity, g: &Quantity) -> bool {
    if let (Some(pu), Some(gu)) = (&p.unit, &g.unit)
        && pu != gu
    {
        return false;
    }
    // The direct reading: exact for two plain integers, else within tolerance.
    let direct = match (&p.integer, &g.integer) {
        (Some(pi), Some(gi)) => pi == gi,
        _ => close(p.value, g.value),
    };
    match (p.percent, g.percent) {
        (true, false) => direct || close(p.value / 100.0, g.value),
        (false, true) => direct || close(p.value, g.value / 100.0),
        _ => direct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
