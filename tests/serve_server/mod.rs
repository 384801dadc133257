//! Starts a real `prism serve` process (the built binary) on the tiny fixture checkpoint for the
//! serve tests: port 0, the bound address read from its one stdout line; SIGTERM on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine as _;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl")
}

pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-qwen3-vl")
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// `data:image/png;base64,…` of a fixture image.
pub fn data_url(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A free local port (bound and released; racy but fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct ServeProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl ServeProcess {
    /// `prism serve --model <tiny> --addr 127.0.0.1:0 <args>` with `envs`; waits until it
    /// listens.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prism"));
        cmd.arg("serve")
            .arg("--model")
            .arg(tiny_model())
            .args(["--addr", "127.0.0.1:0", "--device", "cpu", "--threads", "1"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start prism serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(180))
            .expect("prism serve did not print its address");
        let base = line
            .strip_prefix("prism serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        ServeProcess {
            child: Some(child),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM (what a graceful shutdown answers to).
    pub fn terminate(&self) {
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
    }

    /// SIGTERM, then waits for the exit (at most 60 s, then SIGKILL).
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        let mut child = self.child.take().unwrap();
        for _ in 0..600 {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("prism serve did not stop within 60 s of SIGTERM");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
