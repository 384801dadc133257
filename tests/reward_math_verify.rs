//! The answer matcher against HuggingFace `math_verify` verdicts on pure-math pairs
//! (tests/fixtures/gen_reward_math_verify.py). Pairs marked `divergence` are where our
//! documented rules deliberately differ; they must still differ, so a change is noticed.

use std::fs;
use std::path::PathBuf;

use prism::reward::answers_match;
use serde_json::Value;

#[test]
fn agrees_with_math_verify() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reward/math_verify_cases.jsonl");
    let text = fs::read_to_string(&path).expect("fixture");
    let mut disagreements = Vec::new();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let rec: Value = serde_json::from_str(line).expect("json");
        let gt = rec["ground_truth"].as_str().expect("ground_truth");
        let pred = rec["prediction"].as_str().expect("prediction");
        let reference = rec["math_verify"].as_bool().expect("math_verify");
        let diverges = rec.get("divergence").is_some();
        let ours = answers_match(pred, gt);
        n += 1;
        if (ours == reference) == diverges {
            disagreements.push(format!(
                "line {}: gt {gt:?} pred {pred:?}: ours {ours}, math_verify {reference}, \
                 documented divergence: {diverges}",
                i + 1
            ));
        }
    }
    assert!(n >= 60, "fixture has only {n} pairs");
    assert!(
        disagreements.is_empty(),
        "{} unexpected results:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
