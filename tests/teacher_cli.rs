//! `prism teacher` end to end against the local fault-injecting server: the RL parquet comes
//! back with the teacher columns filled, a prompt that never gets a valid answer is reported
//! and kept empty (or dropped), and a rerun is served entirely from the cache.

mod teacher_server;

use std::path::Path;

use prism::data::ReadOptions;
use prism::data::rl_parquet::{self, ImageRef, RlRecord};
use prism::reward::format::is_format_valid;
use prism::teacher::cli::{TeacherArgs, run};
use teacher_server::{Behaviour, TestServer, valid_answer};

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([seed, 0, 0]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn record(id: &str, question: &str, image: ImageRef) -> RlRecord {
    RlRecord {
        prompt: format!("<image>\n{question}"),
        images: vec![image],
        ground_truth: "3".into(),
        id: Some(id.into()),
        question: Some(question.into()),
        ..RlRecord::default()
    }
}

fn write_config(dir: &Path, server: &TestServer) -> std::path::PathBuf {
    let path = dir.join("teacher.toml");
    let text = format!(
        r#"base_url = "{}"
model = "test-model"
max_concurrency = 2
timeout_secs = 2.0
max_retries = 3
max_reasks = 1
max_tokens = 64
price_per_1k_input = 0.5
price_per_1k_output = 1.5
cache_path = "cache/teacher.jsonl"

[backoff]
initial_secs = 0.01
multiplier = 2.0
max_secs = 0.1
"#,
        server.base_url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn collects_demos_reports_failures_and_resumes_from_cache() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pic.png"), png(1)).unwrap();
    let data = dir.path().join("rl.parquet");
    let records = vec![
        record(
            "a",
            "How many red squares?",
            ImageRef {
                bytes: Some(png(2)),
                path: None,
            },
        ),
        record(
            "b",
            "Which cell holds the circle?",
            ImageRef {
                bytes: None,
                path: Some("pic.png".into()),
            },
        ),
        record(
            "c",
            "What is written on the star?",
            ImageRef {
                bytes: Some(png(3)),
                path: None,
            },
        ),
        record(
            "d",
            "How many objects?",
            ImageRef {
                bytes: Some(png(4)),
                path: None,
            },
        ),
    ];
    rl_parquet::write(&data, &records).unwrap();
    server.script("How many red squares?", [Behaviour::Status(503)]);
    server.script("Which cell holds the circle?", [Behaviour::Drop]);
    server.always(
        "What is written on the star?",
        Behaviour::Content("STAR".into()),
    );
    let config = write_config(dir.path(), &server);
    let out = dir.path().join("out/rl_teacher.parquet");
    let args = TeacherArgs {
        config: config.clone(),
        data: data.clone(),
        out: out.clone(),
        redo: false,
        drop_failed: false,
        skip_bad: false,
        summary: Some(dir.path().join("summary.json")),
    };
    let s = run(&args).unwrap();
    assert_eq!((s.rows, s.answered, s.cached, s.written), (4, 3, 0, 4));
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].row, 2);
    assert_eq!(s.failed[0].id.as_deref(), Some("c"));
    assert_eq!(s.failed[0].reason, "invalid_answer");
    // 3 answers + 2 invalid asks paid; the 503 and the dropped body are not.
    assert_eq!(s.input_tokens, 5 * teacher_server::PROMPT_TOKENS);
    assert!((s.cost_usd - (5.0 * 100.0 * 0.5 + 5.0 * 20.0 * 1.5) / 1000.0).abs() < 1e-9);
    assert!(dir.path().join("cache/teacher.jsonl").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["answered"], 3);

    let back = rl_parquet::read(&out, ReadOptions::default())
        .unwrap()
        .records;
    assert_eq!(back.len(), 4);
    for (r, orig) in back.iter().zip(&records) {
        assert_eq!(r.prompt, orig.prompt);
        assert_eq!(r.images.len(), 1);
        if r.id.as_deref() == Some("c") {
            assert!(r.teacher_response.is_none() && r.teacher_caption.is_none());
            continue;
        }
        let q = orig.question.as_deref().unwrap();
        let resp = r.teacher_response.as_deref().unwrap();
        assert_eq!(resp, valid_answer(q));
        assert!(is_format_valid(resp));
        assert_eq!(
            format!(
                "{}\n{}",
                r.teacher_caption.as_deref().unwrap(),
                r.teacher_cot.as_deref().unwrap()
            ),
            resp
        );
    }

    // Rerun with --redo and --drop-failed: nothing is paid again, the failed row is dropped.
    let calls = server.total_calls();
    let args = TeacherArgs {
        redo: true,
        drop_failed: true,
        summary: None,
        ..args
    };
    let s = run(&args).unwrap();
    assert_eq!(server.total_calls(), calls, "a rerun paid again");
    assert_eq!(
        (s.answered, s.cached, s.failed.len(), s.written),
        (0, 3, 1, 3)
    );
    assert_eq!(s.cost_usd, 0.0);
    let back = rl_parquet::read(&out, ReadOptions::default())
        .unwrap()
        .records;
    assert_eq!(back.len(), 3);
    assert!(back.iter().all(|r| r.teacher_response.is_some()));

    // Without --redo, rows that already have a response are kept without asking.
    let args = TeacherArgs {
        data: out.clone(),
        redo: false,
        ..args
    };
    let s = run(&args).unwrap();
    assert_eq!((s.kept_existing, s.answered, s.cached), (3, 0, 0));
}

#[test]
fn bad_config_and_missing_image_are_clear_errors() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "base_url = \"{}\"\nmodel = \"m\"\ncache_path = \"c.jsonl\"\nmax_concurency = 2\n",
            server.base_url()
        ),
    )
    .unwrap();
    let args = TeacherArgs {
        config: config.clone(),
        data: dir.path().join("none.parquet"),
        out: dir.path().join("out.parquet"),
        redo: false,
        drop_failed: false,
        skip_bad: false,
        summary: None,
    };
    let err = run(&args).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("max_concurency"),
        "{err}"
    );
    // A row whose image file vanished after the parquet was checked: reported, not fatal.
    let good = write_config(dir.path(), &server);
    std::fs::write(dir.path().join("gone.png"), png(5)).unwrap();
    let data = dir.path().join("rl.parquet");
    rl_parquet::write(
        &data,
        &[record(
            "x",
            "Where is it?",
            ImageRef {
                bytes: None,
                path: Some("gone.png".into()),
            },
        )],
    )
    .unwrap();
    let mut records = rl_parquet::read(&data, ReadOptions::default())
        .unwrap()
        .records;
    std::fs::remove_file(dir.path().join("gone.png")).unwrap();
    let cfg = prism::teacher::TeacherConfig::load(&good).unwrap();
    let client = prism::teacher::TeacherClient::new(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(prism::teacher::cli::collect(
        &client,
        &data,
        &mut records,
        false,
        &indicatif::ProgressBar::hidden(),
    ));
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].reason, "image");
    assert!(
        s.failed[0].message.contains("gone.png"),
        "{}",
        s.failed[0].message
    );
    assert_eq!(server.total_calls(), 0);
}

#[test]
fn example_configs_load_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("teacher-") && name.ends_with(".toml") {
            let cfg = prism::teacher::TeacherConfig::load(&path)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                cfg.cache_path.starts_with(&dir),
                "{name}: cache path is relative to the config"
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the Gemini and vLLM examples");
}
