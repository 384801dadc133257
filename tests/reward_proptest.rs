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
