//! No panic, bounded time: the reward on arbitrary and adversarial strings.

use std::time::{Duration, Instant};

use prism::reward::{GroundTruth, answers_match, compute_score, extract_answer, parse_format};
use proptest::prelude::*;

/// Generous per-call budget for a debug build on a shared machine; a quadratic or exponential
/// path on these sizes would take far longer.
const BUDGET: Duration = Duration::from_secs(2);

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    let took = start.elapsed();
    assert!(took < BUDGET, "{what} took {took:?}");
    v
}

fn wrap(answer: &str) -> String {
    format!("<caption>c</caption><think>t</think><answer>{answer}</answer>")
}

const PIECES: &[&str] = &[
    "<caption>",
    "</caption>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "\\frac",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "\\boxed{",
    "\\text{",
    "\\left(",
    "\\right)",
    "\\sqrt",
    "^",
    "1e999999",
    "9",
    ",",
    ";",
    "%",
    "$",
    "\\",
    "(1)",
    "(2)",
    "B",
    "(B)",
    "answer is",
    " ",
    "\n",
    "é",
    "😀",
    "\u{1c}",
    "-",
    "/",
    "e",
    ".",
    "°",
    "^\\circ",
    "three",
    "yes",
    "cm",
    "\\{",
    "\\}",
    "=",
    "x",
];

fn adversarial() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..200).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), g in any::<String>()) {
        let out = compute_score(&s, &GroundTruth::One(g.clone()));
        prop_assert!(out.score == 0.0 || out.score == 0.2 || out.score == 1.0);
        let _ = answers_match(&s, &g);
        let _ = extract_answer(&s);
    }

    #[test]
    fn adversarial_strings_never_panic(s in adversarial(), g in adversarial()) {
        let out = timed("compute_score", || compute_score(&s, &GroundTruth::One(g.clone())));
        prop_assert!(out.score == 0.0 || out.score == 0.2 || out.score == 1.0);
        let wrapped = wrap(&s);
        let out = timed("compute_score(wrapped)", || compute_score(&wrapped, &GroundTruth::One(g.clone())));
        prop_assert_eq!(out.format, 1.0);
        timed("answers_match", || answers_match(&s, &g));
        timed("answers_match(self)", || answers_match(&s, &s));
    }
}

#[test]
fn deep_nesting_and_huge_inputs() {
    let n = 100_000;
    let cases: Vec<String> = vec![
        "(".repeat(n),
        ")".repeat(n),
        "{".repeat(n),
        "}".repeat(n),
        "\\frac{".repeat(n / 6),
        "\\sqrt{".repeat(n / 6),
        "\\boxed{".repeat(n / 7),
        "\\text{".repeat(n / 6),
        format!("{}1{}", "(".repeat(n / 2), ")".repeat(n / 2)),
        format!("{}1{}", "{".repeat(n / 2), "}".repeat(n / 2)),
        format!("{}1{}", "\\frac{1}{".repeat(n / 10), "}".repeat(n / 10)),
        format!("{}1{}", "1\\frac{1}{".repeat(n / 10), "}".repeat(n / 10)),
        format!("{}1", "2^".repeat(n / 2)),
        "9".repeat(n),
        format!("1e{}", "9".repeat(n)),
        "1e999999".to_string(),
        "-".repeat(n),
        "$".repeat(n),
        ",".repeat(n),
        "1,".repeat(n / 2),
        "(1)".repeat(n / 3),
        "é😀\u{1c}".repeat(n / 3),
        "<caption>".repeat(n / 9),
        "</caption><think>".repeat(n / 17),
        format!("<caption>{}", "</caption> <think></think> ".repeat(n / 30)),
        format!(
            "<caption>a</caption><think>{}</think><answer>1</answer>",
            "</think>\n".repeat(n / 9)
        ),
        format!(
            "<caption>a</caption><think>b</think><answer>{}</answer>",
            "</answer>".repeat(n / 9)
        ),
        format!(
            "<caption>a</caption><think>b</think><answer>{}</answer>",
            "(".repeat(1000)
        ),
        format!(
            "<caption>a</caption><think>b</think><answer>{}</answer>",
            "{1,".repeat(300)
        ),
    ];
    for s in &cases {
        let label = format!(
            "input of {} bytes starting {:?}",
            s.len(),
            &s.chars().take(12).collect::<String>()
        );
        timed(&label, || compute_score(s, &GroundTruth::from("1")));
        timed(&label, || parse_format(s));
        timed(&label, || extract_answer(s));
        timed(&label, || answers_match(s, "1"));
        // Truncated to the matching limit so the matcher's own worst case is exercised.
        let short: String = s.chars().take(4000).collect();
        timed(&label, || answers_match(&short, &short));
        timed(&label, || answers_match("1", &short));
        timed(&label, || {
            compute_score(
                &wrap(&short.chars().take(1000).collect::<String>()),
                &GroundTruth::from(short.as_str()),
            )
        });
    }
}

#[test]
fn big_sets_stay_bounded() {
    let items: Vec<String> = (0..2000).map(|i| (i % 7).to_string()).collect();
    let set = format!("\\{{{}\\}}", items.join(","));
    let mut rev = items.clone();
    rev.reverse();
    let set_rev = format!("\\{{{}\\}}", rev.join(","));
    timed("big set", || answers_match(&set_rev, &set));
    let small = format!("\\{{{}\\}}", items[..200].join(","));
    let small_rev = format!("\\{{{}\\}}", rev[1800..].join(","));
    timed("set of 200", || answers_match(&small_rev, &small));
}

/// `1234567` → `1,234,567`.
fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn fraction_equals_its_decimal(a in -1_000_000i64..1_000_000, b in 1i64..1000) {
        let frac = format!("\\frac{{{a}}}{{{b}}}");
        let dec = format!("{:.12}", a as f64 / b as f64);
        prop_assert!(answers_match(&dec, &frac), "{dec} vs {frac}");
        prop_assert!(answers_match(&frac, &dec), "{frac} vs {dec}");
        let slash = format!("{a}/{b}");
        prop_assert!(answers_match(&slash, &frac), "{slash} vs {frac}");
        // Off by 1e-4 relative (plus 1e-3 absolute for zero): well outside the 1e-6 tolerance.
        let v = a as f64 / b as f64;
        let off = format!("{:.12}", v + v.abs() * 1e-4 + 1e-3);
        prop_assert!(!answers_match(&off, &frac), "{off} vs {frac}");
    }

    #[test]
    fn integers_with_separators_and_neighbours(n in 0u64..10_000_000_000_000) {
        let plain = n.to_string();
        let grouped = with_commas(n);
        prop_assert!(answers_match(&grouped, &plain), "{grouped} vs {plain}");
        prop_assert!(answers_match(&plain, &grouped), "{plain} vs {grouped}");
        let next = (n + 1).to_string();
        prop_assert!(!answers_match(&next, &plain), "{next} vs {plain}");
        let boxed = format!("$\\boxed{{{grouped}}}$");
        prop_assert!(answers_match(&boxed, &plain), "{boxed} vs {plain}");
    }

    #[test]
    fn choice_spellings(letter in 0u8..8, other in 0u8..8, template in 0usize..9) {
        let l = (b'A' + letter) as char;
        let o = (b'A' + other) as char;
        let spelled = match template {
            0 => format!("{l}"),
            1 => format!("({l})"),
            2 => format!("{l}."),
            3 => format!("{l})"),
            4 => format!("option {l}"),
            5 => format!("The answer is {l}"),
            6 => format!("{l}: the second one"),
            7 => format!("Answer: ({l})"),
            _ => format!("\\boxed{{{l}}}"),
        };
        prop_assert!(answers_match(&spelled, &l.to_string()), "{spelled} vs {l}");
        prop_assert!(answers_match(&spelled, &format!("({l}) 12 cm")), "{spelled} vs ({l}) 12 cm");
        if o != l {
            prop_assert!(!answers_match(&spelled, &o.to_string()), "{spelled} vs {o}");
        }
    }

    #[test]
    fn whitespace_around_blocks_keeps_format(
        ws in prop::collection::vec(
            prop::sample::select(vec!["", " ", "\n", "\t", "\r\n", "\u{1c}", "\u{a0}", "\u{3000}", "\u{2029}"]),
            4,
        ),
        answer in 0u32..1000,
    ) {
        let r = format!(
            "{}<caption>c</caption>{}<think>t</think>{}<answer>{answer}</answer>{}",
            ws[0], ws[1], ws[2], ws[3]
        );
        let out = compute_score(&r, &GroundTruth::One(answer.to_string()));
        prop_assert_eq!(out.score, 1.0, "{:?}", r);
        let bad = format!("{r}.");
        prop_assert_eq!(compute_score(&bad, &GroundTruth::One(answer.to_string())).score, 0.0);
    }
}
