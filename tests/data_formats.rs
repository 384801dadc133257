//! Round trips of the three dataset formats, and bad input: every error names the file and the
//! line or row; `skip_bad` skips and counts.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;

use prism::data::rl_parquet::{self, ImageRef, RlRecord};
use prism::data::sharegpt::{self, Message, Role, ShareGptRecord};
use prism::data::warmup::{self, WarmupPair};
use prism::data::{DataError, Location, ReadOptions};

const SKIP: ReadOptions = ReadOptions { skip_bad: true };
const STRICT: ReadOptions = ReadOptions { skip_bad: false };

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn with_image(dir: &Path) {
    fs::create_dir_all(dir.join("img")).unwrap();
    fs::write(dir.join("img/a.png"), png()).unwrap();
    fs::write(dir.join("img/broken.png"), b"not a png at all").unwrap();
}

fn expect_record_error(err: DataError, file: &Path, at: Location, needle: &str) {
    let text = err.to_string();
    match err {
        DataError::Record { path, at: got, .. } => {
            assert_eq!(path, file, "{text}");
            assert_eq!(got, at, "{text}");
        }
        other => panic!("expected a record error, got {other:?}"),
    }
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains(needle), "{text} lacks {needle:?}");
}

// ---------------------------------------------------------------- ShareGPT

fn sharegpt_record() -> ShareGptRecord {
    ShareGptRecord::single_turn(
        "sys",
        "<image>\nHow many?",
        "<caption>x</caption><think>y</think><answer>3</answer>",
        "img/a.png",
    )
}

#[test]
fn sharegpt_round_trip_and_conversations_variant() {
    let dir = tempfile::tempdir().unwrap();
    with_image(dir.path());
    let path = dir.path().join("sft.jsonl");
    let mut two = sharegpt_record();
    two.messages.remove(0);
    let records = vec![sharegpt_record(), two];
    sharegpt::write(&path, &records).unwrap();
    let back = sharegpt::read(&path, STRICT).unwrap();
    assert_eq!(back.records, records);
    assert!(back.skipped.is_empty());
    // The written form is the `messages` form.
    let first = fs::read_to_string(&path).unwrap();
    assert!(
        first.starts_with("{\"messages\":[{\"role\":\"system\""),
        "{first}"
    );

    let conv = dir.path().join("conv.jsonl");
    fs::write(
        &conv,
        "{\"conversations\":[{\"from\":\"human\",\"value\":\"<image>q\"},{\"from\":\"gpt\",\"value\":\"a\"}],\"images\":[\"img/a.png\"]}\n\n",
    )
    .unwrap();
    let back = sharegpt::read(&conv, STRICT).unwrap();
    assert_eq!(
        back.records[0].messages,
        vec![
            Message {
                role: Role::User,
                content: "<image>q".into()
            },
            Message {
                role: Role::Assistant,
                content: "a".into()
            }
        ]
    );
}

#[test]
fn sharegpt_bad_lines_name_file_and_line_and_skip_bad_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    with_image(dir.path());
    let path = dir.path().join("bad.jsonl");
    let good = serde_json::to_string(&sharegpt_record()).unwrap();
    let lines = [
        good.clone(),                                 // 1 ok
        "{\"messages\": [".to_string(),               // 2 malformed
        good.replace("img/a.png", "img/missing.png"), // 3 missing image
        good.replace("img/a.png", "img/broken.png"),  // 4 unreadable image
        good.replace("<answer>3</answer>", "")
            .replace("<caption>x</caption><think>y</think>", " "), // 5 empty answer
        good.replace("<image>\\n", ""),               // 6 placeholder count
        good.replace("\"assistant\"", "\"robot\""),   // 7 unknown role
        good.clone(),                                 // 8 ok
    ];
    fs::write(&path, lines.join("\n")).unwrap();

    let err = sharegpt::read(&path, STRICT).unwrap_err();
    expect_record_error(err, &path, Location::Line(2), "malformed JSON");

    let loaded = sharegpt::read(&path, SKIP).unwrap();
    assert_eq!(loaded.records.len(), 2);
    let at: Vec<Location> = loaded.skipped.iter().map(|s| s.at).collect();
    assert_eq!(at, (2..=7).map(Location::Line).collect::<Vec<_>>());
    let reasons: Vec<&str> = loaded.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(reasons[1].contains("missing.png"), "{reasons:?}");
    assert!(reasons[2].contains("unreadable"), "{reasons:?}");
    assert!(reasons[3].contains("empty"), "{reasons:?}");
    assert!(reasons[4].contains("placeholders"), "{reasons:?}");
    assert!(reasons[5].contains("robot"), "{reasons:?}");
    assert!(loaded.skipped[0].to_string().contains("bad.jsonl: line 2"));

    let missing = sharegpt::read(&dir.path().join("nope.jsonl"), SKIP).unwrap_err();
    assert!(matches!(missing, DataError::Io { .. }));
    assert!(missing.to_string().contains("nope.jsonl"));
}

#[test]
fn sharegpt_write_refuses_an_empty_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = sharegpt_record();
    r.messages[2].content = "  ".into();
    let path = dir.path().join("out.jsonl");
    let err = sharegpt::write(&path, &[sharegpt_record(), r]).unwrap_err();
    expect_record_error(err, &path, Location::Line(2), "empty");
    assert!(!path.exists(), "nothing written on error");
}

// ---------------------------------------------------------------- warm-up pairs

fn pair() -> WarmupPair {
    WarmupPair {
        prompt: "How many?".into(),
        image: Some("img/a.png".into()),
        teacher_caption: "<caption>t</caption>".into(),
        student_caption: "<caption>s</caption>".into(),
        teacher_cot: "<think>t</think>\n<answer>1</answer>".into(),
        student_cot: "<think>s</think>\n<answer>2</answer>".into(),
    }
}

#[test]
fn warmup_round_trip_question_alias_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    with_image(dir.path());
    let path = dir.path().join("pairs.jsonl");
    let mut no_image = pair();
    no_image.image = None;
    warmup::write(&path, &[pair(), no_image.clone()]).unwrap();
    assert_eq!(
        warmup::read(&path, STRICT).unwrap().records,
        vec![pair(), no_image]
    );

    let good = serde_json::to_string(&pair()).unwrap();
    let lines = [
        good.replace("\"prompt\"", "\"question\""), // 1 ok, alias
        good.replace("<caption>s</caption>", ""),   // 2 empty student caption
        good.replace(
            ",\"teacher_cot\":\"<think>t</think>\\n<answer>1</answer>\"",
            "",
        ), // 3 missing field
        good.replace("img/a.png", "img/none.png"),  // 4 missing image
    ];
    fs::write(&path, lines.join("\n")).unwrap();
    let err = warmup::read(&path, STRICT).unwrap_err();
    expect_record_error(err, &path, Location::Line(2), "student_caption");
    let loaded = warmup::read(&path, SKIP).unwrap();
    assert_eq!(loaded.records.len(), 1);
    assert_eq!(loaded.records[0].prompt, "How many?");
    let reasons: Vec<String> = loaded.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(loaded.skipped.len(), 3, "{reasons:?}");
    assert!(
        reasons[1].contains("line 3") && reasons[1].contains("teacher_cot"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("line 4") && reasons[2].contains("none.png"),
        "{reasons:?}"
    );
}

// ---------------------------------------------------------------- RL parquet

fn rl_record(answer: &str) -> RlRecord {
    RlRecord {
        prompt: "<image>\nHow many circles are there?".into(),
        images: vec![ImageRef {
            bytes: Some(png()),
            path: Some("img/a.png".into()),
        }],
        ground_truth: answer.into(),
        id: Some("x-1".into()),
        question: Some("How many circles are there?".into()),
        teacher_response: None,
        teacher_caption: Some("<caption>c</caption>".into()),
        teacher_cot: Some("<think>t</think>\n<answer>3</answer>".into()),
        data_source: Some("prism_synth".into()),
        difficulty: Some(2),
        family: None,
        scene: Some("{\"objects\":[]}".into()),
    }
}

#[test]
fn rl_parquet_round_trip_including_path_only_images() {
    let dir = tempfile::tempdir().unwrap();
    with_image(dir.path());
    let path = dir.path().join("rl.parquet");
    let mut by_path = rl_record("4");
    by_path.images[0].bytes = None;
    let mut two_images = rl_record("yes");
    two_images.prompt = "<image><image> compare".into();
    two_images.images.push(ImageRef {
        bytes: Some(png()),
        path: None,
    });
    let records = vec![rl_record("3"), by_path.clone(), two_images];
    rl_parquet::write(&path, &records).unwrap();
    let back = rl_parquet::read(&path, STRICT).unwrap();
    assert_eq!(back.records, records);
    assert_eq!(back.records[1].image_bytes(0, &path).unwrap(), png());
}

/// Writes a parquet file from raw columns, bypassing our writer's validation.
fn raw_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(*v);
    }
    Arc::new(b.finish())
}

fn images(rows: &[Vec<Option<Vec<u8>>>]) -> ArrayRef {
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let mut l = ListBuilder::new(StructBuilder::new(
        fields,
        vec![
            Box::new(BinaryBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    ));
    for row in rows {
        for b in row {
            let st = l.values();
            st.field_builder::<BinaryBuilder>(0)
                .unwrap()
                .append_option(b.as_deref());
            st.field_builder::<StringBuilder>(1).unwrap().append_null();
            st.append(true);
        }
        l.append(true);
    }
    Arc::new(l.finish())
}

#[test]
fn rl_parquet_bad_rows_name_the_row_and_skip_bad_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    let ok = Some(png());
    raw_parquet(
        &path,
        vec![
            (
                "prompt",
                strings(&[
                    Some("<image>a"),
                    Some("<image>b"),
                    Some("<image>c"),
                    Some("<image>d"),
                    Some("<image>e"),
                ]),
            ),
            (
                "images",
                images(&[
                    vec![ok.clone()],
                    vec![ok.clone()],
                    vec![Some(b"garbage".to_vec())],
                    vec![],
                    vec![ok.clone()],
                ]),
            ),
            (
                "ground_truth",
                strings(&[Some("1"), Some(""), Some("3"), Some("4"), None]),
            ),
        ],
    );
    let err = rl_parquet::read(&path, STRICT).unwrap_err();
    expect_record_error(err, &path, Location::Row(1), "ground_truth");
    let loaded = rl_parquet::read(&path, SKIP).unwrap();
    assert_eq!(loaded.records.len(), 1);
    assert_eq!(loaded.records[0].ground_truth, "1");
    let at: Vec<Location> = loaded.skipped.iter().map(|s| s.at).collect();
    assert_eq!(at, (1..=4).map(Location::Row).collect::<Vec<_>>());
    assert!(
        loaded.skipped[1].reason.contains("unreadable"),
        "{:?}",
        loaded.skipped
    );
    assert!(
        loaded.skipped[2].reason.contains("placeholders"),
        "{:?}",
        loaded.skipped
    );
    assert!(
        loaded.skipped[3].reason.contains("null"),
        "{:?}",
        loaded.skipped
    );
}

#[test]
fn rl_parquet_wrong_column_types_are_file_errors_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.parquet");
    let mut ints = Int32Builder::new();
    ints.append_value(3);
    raw_parquet(
        &path,
        vec![
            ("prompt", strings(&[Some("<image>a")])),
            ("images", images(&[vec![Some(png())]])),
            ("ground_truth", Arc::new(ints.finish())),
        ],
    );
    for opts in [STRICT, SKIP] {
        let err = rl_parquet::read(&path, opts).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, DataError::Column { column, .. } if column == "ground_truth"),
            "{text}"
        );
        assert!(
            text.contains("types.parquet") && text.contains("expected string"),
            "{text}"
        );
    }

    raw_parquet(&path, vec![("prompt", strings(&[Some("a")]))]);
    let err = rl_parquet::read(&path, STRICT).unwrap_err().to_string();
    assert!(err.contains("column `images`: missing"), "{err}");

    fs::write(&path, b"PAR1 but not really").unwrap();
    let err = rl_parquet::read(&path, STRICT).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err}");
}

#[test]
fn rl_parquet_write_refuses_an_empty_answer_and_a_bad_scene() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.parquet");
    let err = rl_parquet::write(&path, &[rl_record("1"), rl_record(" ")]).unwrap_err();
    expect_record_error(err, &path, Location::Row(1), "ground_truth");
    let mut bad_scene = rl_record("1");
    bad_scene.scene = Some("{\"objects\": 3}".into());
    let err = rl_parquet::write(&path, &[bad_scene]).unwrap_err();
    expect_record_error(err, &path, Location::Row(0), "scene");
    assert!(!path.exists());
}
