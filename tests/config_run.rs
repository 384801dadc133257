//! The run config: defaults, unknown keys, `--set` overrides, validation messages naming keys,
//! and the rejection of stage kinds that are not built yet.

use std::path::Path;

use prism::config::{ConfigError, PadSide, RunConfig, SftConfig, StageConfig, apply_override};

const MINIMAL: &str = r#"
[data.synth]
[policy.tiny]
[[stages]]
kind = "sft"
"#;

fn parse(text: &str, sets: &[&str]) -> Result<RunConfig, ConfigError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    RunConfig::from_toml_str(text, Path::new("test.toml"), &sets)
}

fn err(text: &str, sets: &[&str]) -> String {
    parse(text, sets)
        .expect_err("should be rejected")
        .to_string()
}

#[test]
fn minimal_file_gets_the_defaults() {
    let cfg = parse(MINIMAL, &[]).unwrap();
    assert_eq!(cfg.run.device, "cpu");
    assert_eq!(cfg.run.metrics_addr, "127.0.0.1:9464");
    assert_eq!(cfg.metrics_addr(), Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(cfg.data.synth, Some(Default::default()));
    assert_eq!(cfg.policy.tiny, Some(Default::default()));
    assert_eq!(cfg.actors, Default::default());
    assert_eq!(cfg.stages, vec![StageConfig::Sft(SftConfig::default())]);
    assert_eq!(cfg.stage_name(0), "sft");
    assert_eq!(cfg.device(), tch::Device::Cpu);
}

#[test]
fn shipped_tiny_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sft-tiny.toml");
    let cfg = RunConfig::load(&path, &[]).unwrap();
    assert_eq!(cfg.metrics_addr(), None);
    let StageConfig::Sft(s) = &cfg.stages[0] else {
        panic!("not sft")
    };
    assert!(s.steps > 0 && s.eval_every > 0);
}

#[test]
fn unknown_keys_are_named() {
    let e = err(&format!("[run]\nseeed = 3\n{MINIMAL}"), &[]);
    assert!(e.contains("test.toml") && e.contains("seeed"), "{e}");
    let e = err(
        &MINIMAL.replace("kind = \"sft\"", "kind = \"sft\"\nlrr = 1.0"),
        &[],
    );
    assert!(e.contains("lrr"), "{e}");
    let e = err(MINIMAL, &["policy.tiny.hiden_size=3"]);
    assert!(e.contains("hiden_size"), "{e}");
    let e = err(MINIMAL, &["actors.placement.lerner=\"cpu\""]);
    assert!(e.contains("lerner"), "{e}");
}

#[test]
fn set_overrides_reach_nested_keys_and_stage_indices() {
    let cfg = parse(
        MINIMAL,
        &[
            "run.seed=7",
            "run.out_dir=out/x",
            "stages.0.lr=1e-4",
            "stages.0.padding_side=left",
            "stages.0.inject_nan_steps=[2, 3]",
            "data.synth.train=10",
            "run.metrics_addr=none",
        ],
    )
    .unwrap();
    assert_eq!(cfg.run.seed, 7);
    assert_eq!(cfg.run.out_dir, Path::new("out/x"));
    assert_eq!(cfg.data.synth.as_ref().unwrap().train, 10);
    assert_eq!(cfg.metrics_addr(), None);
    let StageConfig::Sft(s) = &cfg.stages[0] else {
        panic!("not sft")
    };
    assert_eq!(s.lr, 1e-4);
    assert_eq!(s.padding_side, PadSide::Left);
    assert_eq!(s.inject_nan_steps, vec![2, 3]);
}

#[test]
fn bad_overrides_say_why() {
    let e = err(MINIMAL, &["stages.3.lr=1"]);
    assert!(e.contains("stages.3") && e.contains("out of range"), "{e}");
    let e = err(MINIMAL, &["run.seed"]);
    assert!(e.contains("key=value"), "{e}");
    let e = err(MINIMAL, &["run.seed.x=1"]);
    assert!(e.contains("run.seed"), "{e}");
    let e = err(MINIMAL, &["stages.x.lr=1"]);
    assert!(e.contains("not an index"), "{e}");
    // type errors surface from deserialisation
    let e = err(MINIMAL, &["run.seed=\"seven\""]);
    assert!(e.contains("seed"), "{e}");
}

#[test]
fn override_of_a_plain_table() {
    let mut t: toml::Table = toml::from_str("a = 1").unwrap();
    apply_override(&mut t, "b.c=hello world").unwrap();
    apply_override(&mut t, "a=2").unwrap();
    assert_eq!(t["a"].as_integer(), Some(2));
    assert_eq!(t["b"]["c"].as_str(), Some("hello world"));
}

#[test]
fn unknown_stage_kinds_and_misplaced_align_keys_are_named() {
    let e = err(&MINIMAL.replace("\"sft\"", "\"dpo\""), &[]);
    assert!(e.contains("dpo"), "{e}");
    // align keeps its policy options in [stages.policy]
    let text = format!("{MINIMAL}\n[[stages]]\nkind = \"align\"\nsteps = 3\n");
    let e = err(&text, &[]);
    assert!(e.contains("steps"), "{e}");
    let text = format!("{MINIMAL}\n[[stages]]\nkind = \"align\"\n[stages.policy]\nsteps = 0\n");
    let e = err(&text, &[]);
    assert!(e.contains("stages.1.policy.steps"), "{e}");
    let text =
        format!("{MINIMAL}\n[[stages]]\nkind = \"align\"\n[stages.teacher]\nsource = \"http\"\n");
    let e = err(&text, &[]);
    assert!(e.contains("stages.1.teacher.config"), "{e}");
}

#[test]
fn shipped_run_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for sub in [dir.clone(), dir.join("paper")] {
        for entry in std::fs::read_dir(&sub).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // teacher client configs are not run configs
            if path.extension().is_some_and(|e| e == "toml") && !name.starts_with("teacher-") {
                let cfg = RunConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!cfg.stages.is_empty());
                n += 1;
            }
        }
    }
    assert!(n >= 7, "only {n} run configs found");
    // the embedded default compares the two arms from the same SFT checkpoint
    let q = RunConfig::load(&dir.join("quickstart.toml"), &[]).unwrap();
    let arms: std::collections::BTreeSet<String> =
        (0..q.stages.len()).map(|i| q.arm_of(i)).collect();
    assert_eq!(arms.into_iter().collect::<Vec<_>>(), ["baseline", "prism"]);
    let e = RunConfig::load(&dir.join("experiment.toml"), &[]).unwrap();
    assert_eq!(e.seeds().len(), 3);
    assert_eq!(e.stages, q.stages);
}

#[test]
fn validation_names_the_key() {
    for (set, key) in [
        ("stages.0.batch_size=0", "stages.0.batch_size"),
        ("stages.0.steps=0", "stages.0.steps"),
        ("stages.0.warmup_ratio=1.5", "stages.0.warmup_ratio"),
        ("stages.0.max_grad_norm=-1", "stages.0.max_grad_norm"),
        ("stages.0.lr=0", "stages.0.lr"),
        ("run.device=\"tpu\"", "run.device"),
        ("run.dtype=\"fp8\"", "run.dtype"),
        ("run.metrics_addr=\"localhost\"", "run.metrics_addr"),
        ("data.synth.sft_source=\"mixed\"", "data.synth.sft_source"),
        ("data.synth.difficulties=[4]", "data.synth.difficulties"),
        ("policy.tiny.head_dim=12", "policy.tiny.head_dim"),
        ("policy.path=\"some/dir\"", "policy"),
        ("data.train=\"x.jsonl\"", "data"),
        ("actors.queue_capacity=0", "actors.queue_capacity"),
    ] {
        let e = err(MINIMAL, &[set]);
        assert!(e.contains(&format!("`{key}`")), "{set}: {e}");
    }
    let e = err("[policy.tiny]\n[[stages]]\nkind = \"sft\"\n", &[]);
    assert!(e.contains("`data`"), "{e}");
    let e = err("[data.synth]\n[policy.tiny]\n", &[]);
    assert!(e.contains("`stages`"), "{e}");
    let two = format!("{MINIMAL}\n[[stages]]\nkind = \"sft\"\nname = \"sft\"\n");
    let e = err(&two, &["stages.0.name=sft"]);
    assert!(e.contains("used twice"), "{e}");
}

#[test]
fn several_unnamed_sft_stages_get_distinct_names() {
    let two = format!("{MINIMAL}\n[[stages]]\nkind = \"sft\"\n");
    let cfg = parse(&two, &[]).unwrap();
    assert_eq!(cfg.stage_name(0), "sft-0");
    assert_eq!(cfg.stage_name(1), "sft-1");
}

#[test]
fn resolved_config_round_trips() {
    let cfg = parse(MINIMAL, &["stages.0.lr=2e-4", "run.seed=5"]).unwrap();
    let text = cfg.to_toml().unwrap();
    let back = parse(&text, &[]).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn missing_file_is_named() {
    let e = RunConfig::load(Path::new("no/such/run.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/run.toml"), "{e}");
}

const ARMS: &str = r#"
[run]
seeds = [1, 2]
[data.synth]
[policy.tiny]
[[stages]]
kind = "eval"
[[stages]]
kind = "sft"
name = "sft"
[[stages]]
kind = "eval"
name = "eval-sft"
[[stages]]
kind = "sft"
name = "more"
[[stages]]
kind = "sft"
name = "other"
from = "sft"
arm = "baseline"
[[stages]]
kind = "eval"
name = "eval-other"
label = "final"
"#;

#[test]
fn stage_links_choose_inputs_and_arms() {
    let cfg = parse(ARMS, &[]).unwrap();
    assert_eq!(cfg.seeds(), vec![1, 2]);
    // default chain: the previous stage; `from` jumps back to a named one
    assert_eq!(cfg.input_of(0), None);
    assert_eq!(cfg.input_of(3), Some(2));
    assert_eq!(cfg.input_of(4), Some(1));
    assert_eq!(cfg.input_of(5), Some(4));
    // arms are inherited along the input chain
    assert_eq!(cfg.arm_of(3), "prism");
    assert_eq!(cfg.arm_of(4), "baseline");
    assert_eq!(cfg.arm_of(5), "baseline");
    // eval rows are labelled by what they evaluate unless labelled explicitly
    assert_eq!(cfg.eval_label(0), "init");
    assert_eq!(cfg.eval_label(2), "sft");
    assert_eq!(cfg.eval_label(5), "final");
    // the links survive the resolved config
    let again =
        RunConfig::from_toml_str(&cfg.to_toml().unwrap(), Path::new("r.toml"), &[]).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn bad_stage_links_are_named() {
    let e = err(&ARMS.replace("from = \"sft\"", "from = \"later\""), &[]);
    assert!(e.contains("stages.4.from") && e.contains("later"), "{e}");
    let e = err(&ARMS.replace("from = \"sft\"", "from = \"other\""), &[]);
    assert!(e.contains("stages.4.from"), "{e}");
    let e = err(&ARMS.replace("from = \"sft\"", "from = 3"), &[]);
    assert!(e.contains("stages.4.from"), "{e}");
    let e = err(&ARMS.replace("arm = \"baseline\"", "arm = \"a b\""), &[]);
    assert!(e.contains("stages.4.arm"), "{e}");
    let e = err(&ARMS.replace("seeds = [1, 2]", "seeds = [1, 1]"), &[]);
    assert!(e.contains("run.seeds"), "{e}");
}

/// serde's `kind`-tagged stages lose the field path; the error names the stage and the field.
#[test]
fn a_bad_field_inside_a_stage_is_named_with_its_stage_and_path() {
    let text = format!(
        "{MINIMAL}\n[[stages]]\nkind = \"align\"\n[stages.policy]\nsteps = 2\n[stages.advantage]\nmode = 1\n"
    );
    let e = err(&text, &[]);
    assert!(
        e.contains("stages.1 (kind = \"align\"), `advantage.mode`: invalid type: integer `1`"),
        "{e}"
    );
    let e = err(MINIMAL, &["stages.0.lr=\"fast\""]);
    assert!(
        e.contains("stages.0 (kind = \"sft\"), `lr`: invalid type: string"),
        "{e}"
    );
    let e = err(MINIMAL, &["stages.0.stepz=3"]);
    assert!(
        e.contains("stages.0 (kind = \"sft\"), `stepz`: unknown field `stepz`"),
        "{e}"
    );
}
