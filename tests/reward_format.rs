//! The PRISM format rule against two references nobody in this crate's src wrote the logic of:
//! CPython's `re` (fixtures from tests/fixtures/gen_reward_format.py) and a straightforward
//! backtracking matcher for the §1.2 pattern written below. Plus the token-level split against
//! the brute-force definition of PRISM_ALGORITHM.md §3.1.

use std::fs;
use std::ops::Range;
use std::path::PathBuf;

use prism::reward::format::{
    TokenSplit, fallback_caption_end, is_format_valid, is_py_space, parse_format, split_text,
    split_tokens_by_decode, split_tokens_by_offsets, token_ends_from_pieces,
};
use proptest::prelude::*;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reward")
        .join(name)
}

/// Byte range → char-index range (Python reports char indices).
fn char_span(s: &str, r: &Range<usize>) -> [usize; 2] {
    [s[..r.start].chars().count(), s[..r.end].chars().count()]
}

// ------------------------------------------------------------------------------------------
// A backtracking matcher for exactly
//   ^\s*(<caption>.*?</caption>)\s*(<think>.*?</think>\s*<answer>.*?</answer>)\s*$  (DOTALL)
// written the way a backtracking engine runs it: greedy `\s*` tries longest first, lazy `.*?`
// shortest first, `$` matches at the end or before a final "\n".
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Node {
    Ws,
    Lit(&'static str),
    Lazy,
    Open(usize),
    Close(usize),
    Dollar,
}

const PATTERN: &[Node] = &[
    Node::Ws,
    Node::Open(0),
    Node::Lit("<caption>"),
    Node::Lazy,
    Node::Lit("</caption>"),
    Node::Close(0),
    Node::Ws,
    Node::Open(1),
    Node::Lit("<think>"),
    Node::Lazy,
    Node::Lit("</think>"),
    Node::Ws,
    Node::Lit("<answer>"),
    Node::Lazy,
    Node::Lit("</answer>"),
    Node::Close(1),
    Node::Ws,
    Node::Dollar,
];

/// Python's `\s` on str, spelled out independently of the crate (the fixture checks it too).
fn reference_space(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0d
            | 0x1c..=0x20
            | 0x85
            | 0xa0
            | 0x1680
            | 0x2000..=0x200a
            | 0x2028
            | 0x2029
            | 0x202f
            | 0x205f
            | 0x3000
    )
}

fn bt(chars: &[char], node: usize, pos: usize, caps: &mut [[usize; 2]; 2]) -> bool {
    let Some(&n) = PATTERN.get(node) else {
        return true;
    };
    match n {
        Node::Ws => {
            let mut end = pos;
            while end < chars.len() && reference_space(chars[end]) {
                end += 1;
            }
            (pos..=end).rev().any(|p| bt(chars, node + 1, p, caps))
        }
        Node::Lit(lit) => {
            let lc: Vec<char> = lit.chars().collect();
            chars.len() >= pos + lc.len()
                && chars[pos..pos + lc.len()] == lc[..]
                && bt(chars, node + 1, pos + lc.len(), caps)
        }
        Node::Lazy => (pos..=chars.len()).any(|p| bt(chars, node + 1, p, caps)),
        Node::Open(g) => {
            let old = caps[g][0];
            caps[g][0] = pos;
            bt(chars, node + 1, pos, caps) || {
                caps[g][0] = old;
                false
            }
        }
        Node::Close(g) => {
            let old = caps[g][1];
            caps[g][1] = pos;
            bt(chars, node + 1, pos, caps) || {
                caps[g][1] = old;
                false
            }
        }
        Node::Dollar => {
            (pos == chars.len() || (pos + 1 == chars.len() && chars[pos] == '\n'))
                && bt(chars, node + 1, pos, caps)
        }
    }
}

/// `(valid, caption span, cot span)` in char indices, by backtracking.
fn reference_match(s: &str) -> Option<[[usize; 2]; 2]> {
    let chars: Vec<char> = s.chars().collect();
    let mut caps = [[0; 2]; 2];
    bt(&chars, 0, 0, &mut caps).then_some(caps)
}

fn crate_match(s: &str) -> Option<[[usize; 2]; 2]> {
    parse_format(s).map(|sp| [char_span(s, &sp.caption), char_span(s, &sp.cot)])
}

#[test]
fn whitespace_class_equals_python() {
    let text = fs::read_to_string(fixture("python_whitespace.json")).expect("fixture");
    let v: Value = serde_json::from_str(&text).expect("json");
    let expected: Vec<u32> = v["code_points"]
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("u64") as u32)
        .collect();
    let got: Vec<u32> = (0u32..0x110000)
        .filter_map(char::from_u32)
        .filter(|c| is_py_space(*c))
        .map(|c| c as u32)
        .collect();
    assert_eq!(got, expected);
    let reference: Vec<u32> = (0u32..0x110000)
        .filter_map(char::from_u32)
        .filter(|c| reference_space(*c))
        .map(|c| c as u32)
        .collect();
    assert_eq!(reference, expected);
}

#[test]
fn format_matches_cpython_re_on_5000_strings() {
    let text = fs::read_to_string(fixture("format_cases.jsonl")).expect("fixture");
    let mut n_valid = 0;
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).expect("json line");
        let s = rec["text"].as_str().expect("text");
        let valid = rec["valid"].as_bool().expect("valid");
        n += 1;
        let got = parse_format(s);
        assert_eq!(got.is_some(), valid, "line {}: {s:?}", i + 1);
        assert_eq!(is_format_valid(s), valid);
        if let Some(spans) = got {
            n_valid += 1;
            let cap: Vec<usize> = serde_json::from_value(rec["caption"].clone()).expect("caption");
            let cot: Vec<usize> = serde_json::from_value(rec["cot"].clone()).expect("cot");
            assert_eq!(
                char_span(s, &spans.caption).to_vec(),
                cap,
                "line {}: {s:?}",
                i + 1
            );
            assert_eq!(
                char_span(s, &spans.cot).to_vec(),
                cot,
                "line {}: {s:?}",
                i + 1
            );
        }
        // The backtracking reference agrees with CPython too (validates the reference).
        assert_eq!(
            reference_match(s).is_some(),
            valid,
            "reference, line {}",
            i + 1
        );
    }
    assert!(
        n >= 5000 && n_valid > 1000,
        "fixture too small: {n} / {n_valid}"
    );
}

#[test]
fn documented_examples() {
    let ok = "<caption>a</caption><think>b</think><answer>c</answer> junk <answer>d</answer>";
    assert!(is_format_valid(ok));
    let split = split_text(ok).expect("valid");
    assert_eq!(split.caption, "<caption>a</caption>");
    assert_eq!(
        split.cot,
        "<think>b</think><answer>c</answer> junk <answer>d</answer>"
    );
    assert!(is_format_valid(
        " \n<caption>x</caption>\n<think>y</think>\n\n<answer>z</answer>\n"
    ));
    assert!(!is_format_valid(
        "<caption>x</caption>\nok<think>y</think><answer>z</answer>"
    ));
    assert!(!is_format_valid("<think>y</think><answer>z</answer>"));
    // U+001C is whitespace for Python's `\s` (not for Rust's char::is_whitespace).
    assert!(is_format_valid(
        "\u{1c}<caption>x</caption>\u{1f}<think>y</think><answer>z</answer>\u{1d}"
    ));
    // U+200B (zero-width space) is not whitespace for either.
    assert!(!is_format_valid(
        "\u{200b}<caption>x</caption><think>y</think><answer>z</answer>"
    ));
}

const FRAGMENTS: &[&str] = &[
    "<caption>",
    "</caption>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "a",
    " ",
    "\n",
    "\t",
    "\u{1c}",
    "\u{a0}",
    "\u{3000}",
    "<",
    ">",
    "/",
    "é",
    "😀",
    "</",
    "answer>",
];

fn fragment_string() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..16).prop_map(|v| v.concat())
}

/// Mostly-valid skeletons with random fillers, so the interesting cases are frequent.
fn skeleton_string() -> impl Strategy<Value = String> {
    let filler = fragment_string();
    (
        prop::collection::vec(filler, 7),
        prop::collection::vec(any::<bool>(), 6),
    )
        .prop_map(|(f, keep)| {
            let tags = [
                "<caption>",
                "</caption>",
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
            ];
            let mut s = f[0].clone();
            for (i, tag) in tags.iter().enumerate() {
                if keep[i] || i % 2 == 0 {
                    s.push_str(tag);
                }
                s.push_str(&f[i + 1]);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn format_equals_backtracking_reference(s in fragment_string()) {
        prop_assert_eq!(crate_match(&s), reference_match(&s), "{:?}", s);
    }

    #[test]
    fn skeletons_equal_backtracking_reference(s in skeleton_string()) {
        prop_assert_eq!(crate_match(&s), reference_match(&s), "{:?}", s);
    }
}

// ------------------------------------------------------------------------------------------
// Token-level split
// ------------------------------------------------------------------------------------------

/// Brute force of §3.1: smallest k in 1..=L with caption ⊂ decode(ids[..k]); fallback otherwise.
fn reference_split(pieces: &[Vec<u8>]) -> TokenSplit {
    let decode = |k: usize| String::from_utf8_lossy(&pieces[..k].concat()).into_owned();
    let len = pieces.len();
    let text = decode(len);
    let cap_end =
        split_text(&text).and_then(|sp| (1..=len).find(|&k| decode(k).contains(sp.caption)));
    let (valid, cap_end) = match cap_end {
        Some(k) => (true, k),
        None => (false, fallback_caption_end(len)),
    };
    let cot_end = if cap_end < len { len } else { cap_end + 1 };
    TokenSplit {
        format_valid: valid,
        caption: 0..cap_end,
        cot: cap_end..cot_end,
    }
}

/// Cuts `text` into byte pieces at the given cut points (possibly inside a UTF-8 char, as a
/// byte-level BPE may) and inserts empty pieces (special tokens skipped by the decoder).
fn tokenize(text: &str, cuts: &[usize], specials: &[usize]) -> Vec<Vec<u8>> {
    let b = text.as_bytes();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (b.len() + 1)).collect();
    points.push(0);
    points.push(b.len());
    points.sort_unstable();
    points.dedup();
    let mut pieces: Vec<Vec<u8>> = points.windows(2).map(|w| b[w[0]..w[1]].to_vec()).collect();
    for &s in specials {
        let at = s % (pieces.len() + 1);
        pieces.insert(at, Vec::new());
    }
    pieces
}

fn response_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(
            "<caption>\n- a red 😀 ball\n</caption>\n<think>r</think>\n<answer>3</answer>"
                .to_string()
        ),
        Just("  <caption>é</caption><think>a</think> <answer></answer>\n".to_string()),
        Just(
            "<caption>a</caption><think>b</think><answer>c</answer> junk <answer>d</answer>"
                .to_string()
        ),
        Just("no tags at all, just text".to_string()),
        skeleton_string(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn token_split_equals_bruteforce(
        text in response_text(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        specials in prop::collection::vec(any::<usize>(), 0..3),
    ) {
        let pieces = tokenize(&text, &cuts, &specials);
        let expected = reference_split(&pieces);
        let by_decode = split_tokens_by_decode(&pieces, |ids: &[Vec<u8>]| {
            Ok::<_, std::convert::Infallible>(String::from_utf8_lossy(&ids.concat()).into_owned())
        }).expect("infallible");
        prop_assert_eq!(&by_decode, &expected);
        let ends = token_ends_from_pieces(&pieces);
        let by_offsets = split_tokens_by_offsets(&text, &ends).expect("consistent offsets");
        prop_assert_eq!(&by_offsets, &expected);
    }
}

#[test]
fn caption_token_keeps_trailing_chars() {
    // The token that completes `</caption>` also carries ">\n": it belongs to the caption.
    let pieces: Vec<&[u8]> = vec![
        b"<caption>",
        b"x</caption",
        b">\n",
        b"<think>",
        b"y</think><answer>1</answer>",
        b"",
    ];
    let text: String = pieces
        .iter()
        .map(|p| std::str::from_utf8(p).expect("utf8"))
        .collect();
    let ends = token_ends_from_pieces(&pieces);
    let split = split_tokens_by_offsets(&text, &ends).expect("ok");
    assert!(split.format_valid);
    assert_eq!(split.caption, 0..3);
    assert_eq!(split.cot, 3..6);
}

#[test]
fn invalid_and_degenerate_splits() {
    // Invalid: max(1, L/2).
    let s = split_tokens_by_offsets("abcde", &[1, 2, 3, 4, 5]).expect("ok");
    assert_eq!((s.format_valid, s.caption, s.cot), (false, 0..2, 2..5));
    // Zero tokens: fallback 1, CoT is the one (pad) position after.
    let s = split_tokens_by_offsets("", &[]).expect("ok");
    assert_eq!((s.caption.clone(), s.cot.clone()), (0..1, 1..2));
    let c = s.clamp_to_width(4);
    assert_eq!((c.caption, c.cot), (0..1, 1..2));
    let c = s.clamp_to_width(1);
    assert_eq!((c.caption, c.cot), (0..1, 0..1));
    // Valid response whose caption ends on the last token: CoT is one pad position.
    let text = "<caption>a</caption><think>b</think><answer>c</answer>";
    let s = split_tokens_by_offsets(text, &[text.len()]).expect("ok");
    assert!(s.format_valid);
    assert_eq!((s.caption.clone(), s.cot.clone()), (0..1, 1..2));
    // Bad offsets are errors, not panics.
    assert!(split_tokens_by_offsets("abc", &[2, 1, 3]).is_err());
    assert!(split_tokens_by_offsets("abc", &[1, 2]).is_err());
}
