//! SIGTERM during a run: the process stops taking prompts, finishes in-flight steps, calls the
//! checkpoint hook and exits 0. The test re-runs this test binary as a child process (the
//! ignored `signal_child` test), sends it SIGTERM, and checks its exit status and checkpoint.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, spec};
use prism::actors::messages::StageKind;
use prism::actors::toy::{self, ToyOptions};
use prism::actors::{
    CheckpointHook, CheckpointReason, StageCheckpoint, run_stage, shutdown_on_signals,
};

const DIR_ENV: &str = "PRISM_SIGNAL_TEST_DIR";

/// Writes the checkpoint's reason and position to `ckpt.txt`.
struct FileHook(PathBuf);

impl CheckpointHook for FileHook {
    fn checkpoint(&self, c: &StageCheckpoint) -> Result<(), String> {
        let v = c.policy.as_ref().map(|w| w.version).unwrap_or(0);
        let text = format!("{:?} {} {} {}", c.reason, c.steps_done, c.next_cursor, v);
        std::fs::write(self.0.join("ckpt.txt"), text).map_err(|e| e.to_string())
    }
}

#[test]
#[ignore = "child process of sigterm_checkpoints_and_exits_zero"]
fn signal_child() {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("run by the parent test"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(async {
        let token = shutdown_on_signals().unwrap();
        std::fs::write(dir.join("ready"), "").unwrap();
        let (engines, _) = toy::engines(ToyOptions {
            learn_delay: toy::fixed_delay(Duration::from_millis(40)),
            ..ToyOptions::default()
        });
        run_stage(
            &config(1, 1),
            spec(StageKind::Rlvr, 500, 2, 2),
            engines,
            Arc::new(toy::prompts(1000, 1)),
            Arc::new(FileHook(dir.clone())),
            token,
        )
        .await
    });
    let report = report.expect("an interrupted run is not an error");
    assert!(report.interrupted);
    assert!(report.steps_done < 500);
    let code = prism::actors::exit_code(&Ok(report));
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
}

#[test]
fn sigterm_checkpoints_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "signal_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir.path())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it train a few steps, then ask it to stop.
    std::thread::sleep(Duration::from_millis(600));
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "child exit: {status:?}");
    let ckpt = std::fs::read_to_string(dir.path().join("ckpt.txt")).unwrap();
    let parts: Vec<&str> = ckpt.split_whitespace().collect();
    assert_eq!(parts[0], format!("{:?}", CheckpointReason::Interrupted));
    let steps: u64 = parts[1].parse().unwrap();
    let cursor: u64 = parts[2].parse().unwrap();
    let version: u64 = parts[3].parse().unwrap();
    assert!((1..500).contains(&steps), "{ckpt}");
    // Exactly the trained prompts are behind the cursor, and the weights match the steps.
    assert_eq!(cursor, steps * 2);
    assert_eq!(version, steps);
}
