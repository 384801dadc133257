//! The pipeline: data and policy preparation, stages chained (each stage starts from the
//! previous stage's output), the resolved config written to the run directory.

use std::path::Path;

use prism::config::RunConfig;
use prism::stages::pipeline::run_pipeline;
use serde_json::Value;

#[test]
fn two_sft_stages_chain_their_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let text = r#"
[run]
seed = 1
metrics_addr = "none"
[data.synth]
train = 6
eval = 0
[policy.tiny]
num_hidden_layers = 1
[[stages]]
kind = "sft"
name = "first"
steps = 2
batch_size = 2
lr = 1e-3
[[stages]]
kind = "sft"
name = "second"
steps = 1
batch_size = 2
lr = 1e-3
freeze_vision = true
"#;
    let set = vec![format!(
        "run.out_dir={}",
        toml::Value::String(out.display().to_string())
    )];
    let cfg = RunConfig::from_toml_str(text, Path::new("chain.toml"), &set).unwrap();
    let summaries = run_pipeline(&cfg).unwrap();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].output, out.join("first/final"));
    assert_eq!(summaries[1].output, out.join("second/final"));
    assert_eq!(summaries[0].first_eval_loss, None, "no eval data");

    let state = |stage: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(out.join(stage).join("final/trainer_state.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        state("first")["input"].as_str().unwrap(),
        out.join("init").to_str().unwrap()
    );
    assert_eq!(
        state("second")["input"].as_str().unwrap(),
        summaries[0].output.to_str().unwrap()
    );
    // the resolved config parses back to the same configuration
    let resolved = out.join("config.resolved.toml");
    assert_eq!(RunConfig::load(&resolved, &[]).unwrap(), cfg);
    // the init policy's config has the requested depth and the trained tokenizer's vocab
    let init: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("init/config.json")).unwrap())
            .unwrap();
    assert_eq!(init["text_config"]["num_hidden_layers"], 1);
}
