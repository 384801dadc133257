//! `prism run` SIGKILLed at random moments (and on purpose while a checkpoint is being written),
//! then `prism run --resume` until it completes: no checkpoint folder is ever incomplete, every
//! step is logged exactly once, and the final weights, optimizer state, metrics and evaluation
//! equal those of an uninterrupted run with the same seed on CPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use prism::report::read_metrics;
use prism::stages::StageSummary;
use prism::stages::checkpoint::{
    OLD_SUFFIX, PARTIAL_SUFFIX, PAUSE_ENV, TRAINER_STATE, checkpoint_step, validate_checkpoint,
};
use prism::stages::resume::DONE_FILE;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tch::Tensor;

const CONFIG: &str = r#"
[run]
seed = 5
threads = 1
metrics_addr = "none"

[data.synth]
train = 8
eval = 2
seed = 3
perception_error_rate = 0.0
reasoning_error_rate = 0.0

[policy.tiny]
num_hidden_layers = 1

[[stages]]
kind = "sft"
name = "sft"
steps = 20
batch_size = 2
lr = 1e-3
warmup_ratio = 0.1
max_length = 1024
save_every = 1
keep_checkpoints = 2
eval_every = 4

[[stages]]
kind = "eval"
name = "eval"
limit = 2
batch_size = 2
max_new_tokens = 8
"#;

/// Milliseconds each checkpoint write pauses before its rename (widens the window for kills).
const PAUSE_MS: u64 = 120;

fn start(config: &Path, args: &[&std::ffi::OsStr]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .arg("run")
        .arg(config)
        .args(args)
        .env(PAUSE_ENV, PAUSE_MS.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prism run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha(path: &Path) -> String {
    prism::data::io::sha256_file(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a checkpoint write (`*.partial`) begun after `since` is in progress right now
/// (older ones are leftovers of an earlier kill, which the next start removes).
fn partial_exists(stage_dir: &Path, since: SystemTime) -> bool {
    std::fs::read_dir(stage_dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX)
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
        })
    })
}

/// Where a start of `prism run` is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after the start.
    At(Duration),
    /// While a checkpoint folder begun by this start is being written.
    InCheckpoint,
    /// This many milliseconds after a new checkpoint completed.
    AfterCheckpoint(u64),
}

fn newest_step(stage_dir: &Path) -> Option<u64> {
    prism::stages::checkpoint::newest_complete(stage_dir)
        .unwrap()
        .map(|(s, _)| s)
}

/// Every folder under its own name is a whole checkpoint of the run's model; markers parse;
/// the metrics log reads (a torn last line is allowed until the next start cuts it).
fn check_invariants(run: &Path) {
    let stage_dir = run.join("sft");
    let init = run.join("init");
    if let Ok(rd) = std::fs::read_dir(&stage_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            if name == "final" || checkpoint_step(&name).is_some() {
                validate_checkpoint(&path, &init)
                    .unwrap_or_else(|err| panic!("{} is not a whole checkpoint: {err}", name));
                for f in ["model.safetensors", "optimizer.safetensors"] {
                    Tensor::read_safetensors(path.join(f))
                        .unwrap_or_else(|err| panic!("{name}/{f}: {err}"));
                }
            } else {
                assert!(
                    name.ends_with(PARTIAL_SUFFIX)
                        || name.ends_with(OLD_SUFFIX)
                        || name == DONE_FILE,
                    "unexpected entry {name} in the stage folder"
                );
            }
        }
    }
    for stage in ["sft", "eval"] {
        let done = run.join(stage).join(DONE_FILE);
        if done.exists() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&done).unwrap()).unwrap();
            assert!(v["summary"]["output"].is_string(), "{v}");
        }
    }
    let log = run.join("metrics.jsonl");
    if log.exists() {
        read_metrics(&log).unwrap();
    }
}

/// The SFT records of a run: step → metrics without the timing ones.
fn sft_records(run: &Path) -> Vec<(u64, BTreeMap<String, Option<f64>>)> {
    let recs = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(recs.torn_tail.is_none(), "a finished run has no torn line");
    recs.records
        .into_iter()
        // the SFT training steps (the eval stage's row for the SFT checkpoint is also labelled
        // `sft`, and carries the evaluation rates instead of a loss)
        .filter(|r| r.stage == "sft" && !r.metrics.contains_key("accuracy"))
        .map(|r| {
            let m = r
                .metrics
                .into_iter()
                .filter(|(k, _)| k != "tokens_per_s")
                .map(|(k, v)| (k, v.is_finite().then_some(v)))
                .collect();
            (r.step, m)
        })
        .collect()
}

fn summaries(run: &Path) -> Vec<StageSummary> {
    ["sft", "eval"]
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(run.join(s).join(DONE_FILE)).unwrap(),
            )
            .unwrap();
            let mut summary: StageSummary = serde_json::from_value(v["summary"].clone()).unwrap();
            summary.seconds = 0.0;
            // outputs name each run's own folder
            summary.output = summary
                .output
                .strip_prefix(run)
                .map(Path::to_path_buf)
                .unwrap_or(summary.output);
            summary
        })
        .collect()
}

#[test]
fn sigkilled_runs_resume_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kill.toml");
    std::fs::write(&config, CONFIG).unwrap();

    // the reference: one uninterrupted run
    let straight = tmp.path().join("straight");
    let t0 = Instant::now();
    finish(start(&config, &["--out".as_ref(), straight.as_os_str()]));
    let total = t0.elapsed();

    // the killed run: every start is `prism run CONFIG --resume RUN` (the first one finds
    // nothing to resume and starts the run)
    let run: PathBuf = tmp.path().join("killed");
    let resume_args = ["--resume".as_ref(), run.as_os_str()];
    let mut rng = StdRng::seed_from_u64(2026);
    let (mut kills, mut during_checkpoint, mut attempts) = (0, 0, 0);
    let sft_dir = run.join("sft");
    while kills < 12 && attempts < 40 {
        attempts += 1;
        // kill points by progress, so each start advances the run by a step or two whatever
        // the machine's speed: every fourth waits for a checkpoint write in progress; the
        // others land right after a checkpoint completes or at a random early moment (start-up,
        // data, init, the first step, or the eval stage)
        let mut point = if attempts % 4 == 0 {
            KillPoint::InCheckpoint
        } else {
            match rng.random_range(0..2) {
                0 => KillPoint::AfterCheckpoint(rng.random_range(0..40)),
                _ => KillPoint::At(total.mul_f64(rng.random_range(0.02..0.2))),
            }
        };
        let newest_before = newest_step(&sft_dir);
        let since = SystemTime::now();
        let mut child = start(&config, &resume_args);
        let started = Instant::now();
        let mut caught_partial = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if !matches!(point, KillPoint::At(_)) && sft_dir.join(DONE_FILE).exists() {
                // SFT is over: no checkpoint will come, kill during the eval stage instead
                point =
                    KillPoint::At(started.elapsed() + total.mul_f64(rng.random_range(0.0..0.1)));
            }
            match point {
                KillPoint::At(t) if started.elapsed() >= t => break,
                KillPoint::InCheckpoint if partial_exists(&sft_dir, since) => {
                    caught_partial = true;
                    break;
                }
                KillPoint::AfterCheckpoint(ms) if newest_step(&sft_dir) != newest_before => {
                    std::thread::sleep(Duration::from_millis(ms));
                    break;
                }
                _ => {}
            }
            assert!(
                started.elapsed() < total * 4,
                "{point:?} never came; the run seems stuck"
            );
            std::thread::sleep(Duration::from_millis(3));
        }
        if child.try_wait().unwrap().is_some() {
            // it finished (or failed) before the kill
            finish(child);
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if caught_partial {
            during_checkpoint += 1;
        }
        check_invariants(&run);
        eprintln!(
            "kill {kills} ({point:?}) after {:.2}s{}: newest checkpoint {:?}",
            started.elapsed().as_secs_f64(),
            if caught_partial {
                ", in a checkpoint write"
            } else {
                ""
            },
            newest_step(&sft_dir)
        );
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed before the run finished"
    );
    assert!(
        during_checkpoint >= 3,
        "only {during_checkpoint} kills landed in a checkpoint write"
    );
    // resume until it completes
    finish(start(&config, &resume_args));
    check_invariants(&run);

    // same data and init (rebuilt or reused), same weights, optimizer, trainer state
    for f in [
        "data/sft_teacher.jsonl",
        "init/model.safetensors",
        "sft/final/model.safetensors",
        "sft/final/optimizer.safetensors",
    ] {
        assert_eq!(sha(&straight.join(f)), sha(&run.join(f)), "{f} differs");
    }
    let state = |r: &Path| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(r.join("sft/final").join(TRAINER_STATE)).unwrap(),
        )
        .unwrap();
        v["input"] = serde_json::Value::Null;
        v["train_file"] = serde_json::Value::Null;
        v["config"]["resume_from"] = serde_json::Value::Null;
        v
    };
    assert_eq!(state(&straight), state(&run));
    // each step logged exactly once, with the same values
    let (a, b) = (sft_records(&straight), sft_records(&run));
    let steps: Vec<u64> = b.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, (0..=20).collect::<Vec<_>>(), "steps in the log");
    assert_eq!(a, b);
    // the same evaluation and summaries
    assert_eq!(
        std::fs::read(straight.join("eval/report.json")).unwrap(),
        std::fs::read(run.join("eval/report.json")).unwrap()
    );
    assert_eq!(summaries(&straight), summaries(&run));
    // the newest 2 checkpoints are kept, nothing half-written is left
    let left: Vec<String> = std::fs::read_dir(run.join("sft"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-") || n.contains('.'))
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["DONE.json", "checkpoint-18", "checkpoint-19"]);
    eprintln!(
        "uninterrupted run {:.1}s; {kills} kills ({during_checkpoint} in a checkpoint write)",
        total.as_secs_f64()
    );
}
