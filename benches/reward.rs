//! Reward throughput: scores a fixed, deterministic set of 100k responses and prints
//! `rewards_per_second=<N>` (plus the mean score, as a checksum of the work done).
//!
//! Run with `cargo bench --bench reward`. `PRISM_BENCH_N` overrides the number of responses.
//! Numbers go to BENCHMARKS.md; nothing here is asserted.

use std::hint::black_box;
use std::time::Instant;

use prism::reward::{GroundTruth, compute_score};

/// A small deterministic generator (SplitMix64), so the set is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// (answer the model writes, ground truth) pairs covering every answer kind.
const PAIRS: &[(&str, &str)] = &[
    ("42", "42"),
    ("41", "42"),
    ("\\frac{1}{2}", "0.5"),
    ("$\\dfrac{3}{4}$", "3/4"),
    ("50%", "0.5"),
    ("1,000", "1000"),
    ("12 cm", "12"),
    ("30^\\circ", "30°"),
    ("(B)", "B"),
    ("The answer is C", "B"),
    ("Yes", "yes"),
    ("3, 5", "3, 5"),
    ("(1, 2)", "(1,2)"),
    ("three", "3"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("x = 7", "7"),
    ("\\boxed{15}", "15"),
    ("a triangle", "triangle"),
    ("$5.00", "5 dollars"),
    ("1.4142136", "\\sqrt{2}"),
];

const CAPTIONS: &[&str] = &[
    "- a bar chart with four bars\n- title: Sales 2024",
    "- a right triangle ABC\n- side lengths 3 and 4 marked",
    "- a photo of apples on a table",
];

const THOUGHTS: &[&str] = &[
    "First read the values from the chart, then add them. 12 + 30 = 42.",
    "By the Pythagorean theorem the hypotenuse is sqrt(9+16) = 5. Then compare with the options.",
    "Count the objects one by one; there are a few hidden behind the basket.",
];

fn build(n: usize) -> Vec<(String, GroundTruth)> {
    let mut rng = SplitMix(0x5052_4953_4d00_0001);
    (0..n)
        .map(|_| {
            let (ans, gt) = PAIRS[(rng.next() % PAIRS.len() as u64) as usize];
            let caption = rng.pick(CAPTIONS);
            let thought = rng.pick(THOUGHTS).repeat(1 + (rng.next() % 8) as usize);
            let response = match rng.next() % 10 {
                // Invalid: text after </answer>, missing caption.
                0 => format!("<caption>{caption}</caption><think>{thought}</think><answer>{ans}</answer> ok"),
                1 => format!("<think>{thought}</think>\n<answer>{ans}</answer>"),
                _ => format!(
                    "<caption>\n{caption}\n</caption>\n<think>\n{thought}\n</think>\n<answer>{ans}</answer>"
                ),
            };
            let gt = if rng.next().is_multiple_of(4) {
                GroundTruth::Any(vec![gt.to_string(), "unused alternative".to_string()])
            } else {
                GroundTruth::One(gt.to_string())
            };
            (response, gt)
        })
        .collect()
}

fn main() {
    let n = std::env::var("PRISM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    let set = build(n);
    // Warm-up: lazily compiled regexes and caches.
    for (r, g) in set.iter().take(100) {
        black_box(compute_score(r, g));
    }
    let start = Instant::now();
    let mut total = 0.0f64;
    for (r, g) in &set {
        total += black_box(compute_score(black_box(r), g)).score;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "responses={n} seconds={secs:.3} mean_score={:.4}",
        total / n.max(1) as f64
    );
    println!("rewards_per_second={:.0}", n as f64 / secs.max(1e-9));
}
