//! The RL parquet reader against files written by Hugging Face `datasets` and by pyarrow
//! (tests/fixtures/gen_data_hf_parquet.py made them; expected.json holds what they contain).

use std::path::{Path, PathBuf};

use prism::data::rl_parquet::{self, RlRecord};
use prism::data::{DataError, ReadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_rows(path: &Path, records: &[RlRecord]) {
    let exp = expected();
    let rows = exp["rows"].as_array().unwrap();
    assert_eq!(records.len(), rows.len());
    for (r, e) in records.iter().zip(rows) {
        assert_eq!(r.prompt, e["prompt"].as_str().unwrap());
        assert_eq!(r.ground_truth, e["ground_truth"].as_str().unwrap());
        let paths: Vec<Option<String>> = r.images.iter().map(|i| i.path.clone()).collect();
        let want: Vec<Option<String>> = e["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect();
        assert_eq!(paths, want);
        for (i, (sha, size)) in e["image_sha256"]
            .as_array()
            .unwrap()
            .iter()
            .zip(e["image_sizes"].as_array().unwrap())
            .enumerate()
        {
            let bytes = r.image_bytes(i, path).unwrap();
            assert_eq!(prism::data::io::sha256_bytes(&bytes), sha.as_str().unwrap());
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!(u64::from(img.width()), size[0].as_u64().unwrap());
            assert_eq!(u64::from(img.height()), size[1].as_u64().unwrap());
        }
    }
}

#[test]
fn reads_a_hugging_face_image_dataset_parquet() {
    let path = fixture("hf_images.parquet");
    let loaded = rl_parquet::read(&path, ReadOptions::default()).unwrap();
    assert!(loaded.skipped.is_empty());
    check_rows(&path, &loaded.records);
    assert_eq!(loaded.records[0].data_source.as_deref(), Some("mm_gad"));
}

#[test]
fn reads_large_arrow_types_and_int64_difficulty() {
    let path = fixture("large_types.parquet");
    let loaded = rl_parquet::read(&path, ReadOptions::default()).unwrap();
    check_rows(&path, &loaded.records);
    let d: Vec<Option<i32>> = loaded.records.iter().map(|r| r.difficulty).collect();
    assert_eq!(d, vec![Some(1), None, Some(3)]);
}

#[test]
fn rejects_a_pyarrow_file_with_an_integer_answer_column() {
    let path = fixture("wrong_type.parquet");
    let err = rl_parquet::read(&path, ReadOptions { skip_bad: true }).unwrap_err();
    assert!(
        matches!(&err, DataError::Column { column, .. } if column == "ground_truth"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("wrong_type.parquet") && (text.contains("int64") || text.contains("Int64")),
        "{text}"
    );
}
