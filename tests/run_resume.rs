//! `prism run --resume`: configuration checks (differing keys named, `--force`), finished
//! stages skipped, the stage in progress continued from its newest checkpoint or restarted, and
//! bad checkpoints (another model, truncated files) refused before any training step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use prism::config::RunConfig;
use prism::stages::StageSummary;
use prism::stages::pipeline::{run_pipeline, run_pipeline_with};
use prism::stages::resume::{DONE_FILE, resume_config};
use tch::Tensor;

const CONFIG: &str = r#"
[run]
seed = 2
threads = 1
metrics_addr = "none"
[data.synth]
train = 6
eval = 0
seed = 4
[policy.tiny]
num_hidden_layers = 1
[[stages]]
kind = "sft"
name = "sft"
steps = 4
batch_size = 2
lr = 1e-3
save_every = 1
keep_checkpoints = 0
"#;

/// One finished run, shared by the tests (each works on its own copy).
struct Base {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    summaries: Vec<StageSummary>,
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let set = vec![format!(
            "run.out_dir={}",
            toml::Value::String(dir.display().to_string())
        )];
        let cfg = RunConfig::from_toml_str(CONFIG, Path::new("resume.toml"), &set).unwrap();
        let summaries = run_pipeline(&cfg).unwrap();
        Base {
            _tmp: tmp,
            dir,
            summaries,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A copy of the finished run with its SFT stage "killed" after checkpoint-3: no final, no
/// marker, and the log as it was.
fn interrupted_copy(tmp: &Path) -> PathBuf {
    let run = tmp.join("run");
    copy_dir(&base().dir, &run);
    std::fs::remove_file(run.join("sft").join(DONE_FILE)).unwrap();
    std::fs::remove_dir_all(run.join("sft/final")).unwrap();
    run
}

fn resume(run: &Path) -> Result<Vec<StageSummary>, String> {
    let (cfg, resuming) = resume_config(run, None, &[], false).map_err(|e| e.to_string())?;
    assert!(resuming);
    run_pipeline_with(&cfg, true).map_err(|e| e.to_string())
}

fn sha(path: &Path) -> String {
    prism::data::io::sha256_file(path).unwrap()
}

fn without_time(mut s: Vec<StageSummary>, root: &Path) -> Vec<StageSummary> {
    for x in &mut s {
        x.seconds = 0.0;
        x.output = x.output.strip_prefix(root).unwrap().to_path_buf();
    }
    s
}

#[test]
fn a_changed_config_is_refused_naming_every_key_unless_forced() {
    let run = &base().dir;
    let e = resume_config(
        run,
        None,
        &[
            "stages.0.lr=0.5".into(),
            "run.seed=9".into(),
            "run.threads=2".into(),
            "stages.0.save_every=2".into(),
        ],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("config.resolved.toml")
            && e.contains("stages.0.lr: 0.001 → 0.5")
            && e.contains("run.seed: 2 → 9")
            && e.contains("2 key(s)")
            && e.contains("--force"),
        "{e}"
    );
    assert!(
        !e.contains("run.threads") && !e.contains("save_every"),
        "{e}"
    );
    let (cfg, resuming) = resume_config(run, None, &["run.seed=9".into()], true).unwrap();
    assert!(resuming);
    assert_eq!(cfg.run.seed, 9);
    assert_eq!(cfg.run.out_dir, *run);

    // the run's own config file given again: no difference
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("same.toml");
    std::fs::write(&file, CONFIG).unwrap();
    resume_config(run, Some(&file), &[], false).unwrap();

    // a folder without a run: an error naming the missing file, or a fresh start with a config
    let empty = tmp.path().join("empty");
    let e = resume_config(&empty, None, &[], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.resolved.toml") && e.contains("no run"),
        "{e}"
    );
    let (cfg, resuming) = resume_config(&empty, Some(&file), &[], false).unwrap();
    assert!(!resuming);
    assert_eq!(cfg.run.out_dir, empty);
}

#[test]
fn a_finished_run_resumes_to_its_summaries_without_training() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_dir(&base().dir, &run);
    let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let final_sha = sha(&run.join("sft/final/model.safetensors"));
    let again = resume(&run).unwrap();
    assert_eq!(
        without_time(again, &run),
        without_time(base().summaries.clone(), &base().dir)
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), log);
    assert_eq!(sha(&run.join("sft/final/model.safetensors")), final_sha);
}

#[test]
fn the_stage_in_progress_continues_from_its_newest_checkpoint_or_restarts() {
    let want = sha(&base().dir.join("sft/final/model.safetensors"));
    let want_log = std::fs::read(base().dir.join("metrics.jsonl")).unwrap();
    let steps = |run: &Path| -> Vec<u64> {
        prism::report::read_metrics(&run.join("metrics.jsonl"))
            .unwrap()
            .records
            .iter()
            .map(|r| r.step)
            .collect()
    };
    // from checkpoint-3, with a half-written checkpoint-4 and a torn log line left behind
    let tmp = tempfile::tempdir().unwrap();
    let run = interrupted_copy(tmp.path());
    std::fs::create_dir(run.join("sft/checkpoint-4.partial")).unwrap();
    let mut log = want_log.clone();
    log.extend_from_slice(b"{\"stage\":\"sft\",\"arm\":\"pri");
    std::fs::write(run.join("metrics.jsonl"), log).unwrap();
    resume(&run).unwrap();
    assert_eq!(sha(&run.join("sft/final/model.safetensors")), want);
    assert_eq!(steps(&run), [1, 2, 3, 4]);
    assert!(!run.join("sft/checkpoint-4.partial").exists());
    assert!(run.join("sft").join(DONE_FILE).is_file());

    // no checkpoint at all: the stage restarts from scratch to the same result
    let tmp = tempfile::tempdir().unwrap();
    let run = interrupted_copy(tmp.path());
    for k in 1..=3 {
        std::fs::remove_dir_all(run.join(format!("sft/checkpoint-{k}"))).unwrap();
    }
    resume(&run).unwrap();
    assert_eq!(sha(&run.join("sft/final/model.safetensors")), want);
    assert_eq!(steps(&run), [1, 2, 3, 4]);
}

/// Breaks checkpoint-3 of an interrupted copy with `damage`, resumes, and returns the error;
/// checks that nothing was trained (the log is untouched).
fn refused(damage: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let run = interrupted_copy(tmp.path());
    damage(&run.join("sft/checkpoint-3"));
    let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let e = resume(&run).unwrap_err();
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
        log,
        "a step ran before the error: {e}"
    );
    assert!(!run.join("sft/final").exists());
    e
}

fn truncate(path: &Path, keep: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.min(keep)).unwrap();
}

#[test]
fn a_checkpoint_of_another_model_or_a_truncated_file_is_refused_before_any_step() {
    // another architecture in config.json
    let e = refused(|ck| {
        let path = ck.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["text_config"]["hidden_size"] = 128.into();
        std::fs::write(&path, v.to_string()).unwrap();
    });
    assert!(
        e.contains("checkpoint-3/config.json")
            && e.contains("another model")
            && e.contains("text_config.hidden_size = 128 (input: 64)"),
        "{e}"
    );

    // a tensor of another shape
    let e = refused(|ck| {
        let path = ck.join("model.safetensors");
        let mut tensors = Tensor::read_safetensors(&path).unwrap();
        let (_, t) = tensors
            .iter_mut()
            .find(|(n, _)| n.ends_with("q_proj.weight"))
            .unwrap();
        *t = t.narrow(0, 0, 8);
        Tensor::write_safetensors(&tensors, &path).unwrap();
    });
    assert!(e.contains("q_proj.weight") && e.contains("shape"), "{e}");

    // truncated weights, optimizer state and trainer state
    let e = refused(|ck| truncate(&ck.join("model.safetensors"), 1000));
    assert!(e.contains("checkpoint-3/model.safetensors"), "{e}");
    let e = refused(|ck| truncate(&ck.join("optimizer.safetensors"), 1000));
    assert!(e.contains("checkpoint-3/optimizer.safetensors"), "{e}");
    let e = refused(|ck| std::fs::remove_file(ck.join("tokenizer.json")).unwrap());
    assert!(
        e.contains("checkpoint-3") && e.contains("tokenizer.json is missing"),
        "{e}"
    );
    let e = refused(|ck| truncate(&ck.join("trainer_state.json"), 40));
    assert!(
        e.contains("checkpoint-3/trainer_state.json") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn the_cli_resumes_a_finished_run_from_its_folder_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_dir(&base().dir, &run);
    let res = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["run", "--resume"])
        .arg(&run)
        .args(["--metrics-addr", "none"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(stdout.contains("stage sft (sft): 4 steps"), "{stdout}");

    // a differing key is refused by the binary too, naming it
    let res = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["run", "--resume"])
        .arg(&run)
        .args(["--set", "stages.0.batch_size=3"])
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("stages.0.batch_size: 2 → 3") && err.contains("--force"),
        "{err}"
    );
    // --force needs --resume; --out and --resume exclude each other
    for args in [
        vec!["run", "configs/sft-tiny.toml", "--force"],
        vec!["run", "--resume", "x", "--out", "y"],
    ] {
        let res = Command::new(env!("CARGO_BIN_EXE_prism"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!res.status.success(), "{args:?} was accepted");
    }
}

#[test]
fn sigterm_checkpoints_and_stops_and_the_resumed_run_ends_where_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("term.toml");
    let text = CONFIG
        .replace("steps = 4", "steps = 24")
        .replace("save_every = 1", "save_every = 0");
    std::fs::write(&config, &text).unwrap();
    let run = tmp.path().join("term");
    let mut child = Command::new(env!("CARGO_BIN_EXE_prism"))
        .arg("run")
        .arg(&config)
        .arg("--resume")
        .arg(&run)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait for a few steps in the log, then SIGTERM
    let started = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        assert!(started.elapsed().as_secs() < 120, "no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signalling our own child process by its id
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("shutdown signal") && err.contains("--resume"),
        "{err}"
    );
    let (step, ckpt) = prism::stages::checkpoint::newest_complete(&run.join("sft"))
        .unwrap()
        .expect("a checkpoint written on shutdown");
    assert!(err.contains(&format!("after step {step}")), "{err}");
    assert!(step < 24);
    prism::stages::checkpoint::validate_checkpoint(&ckpt, &run.join("init")).unwrap();
    assert!(!run.join("sft").join(DONE_FILE).exists());

    let res = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["run", "--resume"])
        .arg(&run)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    // the same run without interruption, in this process
    let straight = tmp.path().join("straight");
    let set = vec![format!(
        "run.out_dir={}",
        toml::Value::String(straight.display().to_string())
    )];
    let cfg = RunConfig::from_toml_str(&text, Path::new("term.toml"), &set).unwrap();
    run_pipeline(&cfg).unwrap();
    assert_eq!(
        sha(&straight.join("sft/final/model.safetensors")),
        sha(&run.join("sft/final/model.safetensors"))
    );
    let steps: Vec<u64> = prism::report::read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .records
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=24).collect::<Vec<_>>());
}

#[test]
fn a_fresh_run_into_an_old_run_folder_forgets_the_old_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_dir(&base().dir, &run);
    // a checkpoint of the old run that a later resume must not pick up
    copy_dir(
        &run.join("sft/checkpoint-3"),
        &run.join("sft/checkpoint-99"),
    );
    let set = vec![format!(
        "run.out_dir={}",
        toml::Value::String(run.display().to_string())
    )];
    let cfg = RunConfig::from_toml_str(CONFIG, Path::new("resume.toml"), &set).unwrap();
    run_pipeline(&cfg).unwrap();
    assert!(!run.join("sft/checkpoint-99").exists());
    let steps: Vec<u64> = prism::report::read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .records
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4], "the old run's records are gone");
    assert_eq!(
        sha(&run.join("sft/final/model.safetensors")),
        sha(&base().dir.join("sft/final/model.safetensors"))
    );
}
