//! The official `openai` Python client against a real `prism serve`: starts the server on the
//! tiny checkpoint with an API key and runs tests/fixtures/openai_client_check.py with the
//! fixture venv's python (`$PRISM_CACHE`, else `$XDG_CACHE_HOME/prism`, else
//! `~/.cache/prism`, then `torch-2.11.0/bin/python`, as scripts/setup-libtorch.sh lays it out;
//! `make test` installs the pinned `openai` package there). Python is the client here, never a
//! reference.

mod serve_server;

use std::path::PathBuf;
use std::process::Command;

use serve_server::{ServeProcess, image};

fn fixture_python() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let cache = match (var("PRISM_CACHE"), var("XDG_CACHE_HOME")) {
        (Some(c), _) => PathBuf::from(c),
        (None, Some(x)) => PathBuf::from(x).join("prism"),
        (None, None) => PathBuf::from(var("HOME").expect("HOME is set")).join(".cache/prism"),
    };
    cache.join("torch-2.11.0/bin/python")
}

#[test]
fn official_openai_client_talks_to_prism_serve() {
    let py = fixture_python();
    assert!(
        py.exists(),
        "{} is missing: run `bash scripts/setup-libtorch.sh` (or `make test`)",
        py.display()
    );
    let has_openai = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .unwrap()
        .success();
    assert!(
        has_openai,
        "the `openai` package is not installed in {}: run `make test`, or `{} -m pip install \
         $(grep '^openai==' tests/fixtures/requirements.txt)`",
        py.display(),
        py.display()
    );
    let key = "sk-prism-python-check";
    let s = ServeProcess::start(
        &[
            "--api-key-env",
            "PRISM_TEST_PY_KEY",
            "--served-model-name",
            "prism-tiny",
            "--max-n",
            "4",
        ],
        &[("PRISM_TEST_PY_KEY", key)],
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openai_client_check.py");
    let out = Command::new(&py)
        .arg(script)
        .args(["--base-url", &s.url("/v1"), "--api-key", key])
        .args(["--model", "prism-tiny", "--image"])
        .arg(image("image_b_50x70.png"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai_client_check.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    // Every group of checks ran.
    for name in [
        "models.list",
        "text.usage",
        "image.prompt_tokens",
        "n.choices",
        "stream.text",
        "stream.usage",
        "error.role.code",
        "error.remote_image.code",
        "error.n.status",
        "error.model.code",
        "error.auth.code",
    ] {
        assert!(stdout.contains(name), "check {name} did not run: {stdout}");
    }
    assert!(s.stop().success());
}
