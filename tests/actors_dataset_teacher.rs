//! The dataset-column teacher: demonstrations from the RL parquet written by `prism data synth`,
//! tokenised whole (no 512-token cut), with clear errors for prompts that lack one.

use std::path::Path;
use std::sync::Arc;

use prism::actors::dataset_teacher::DatasetTeacher;
use prism::actors::engine::TeacherBackend;
use prism::actors::messages::PromptItem;
use prism::data::ReadOptions;
use prism::data::rl_parquet;
use prism::data::synth::SynthConfig;
use prism::models::tokenizer::QwenTokenizer;

fn tokenizer() -> Arc<QwenTokenizer> {
    Arc::new(QwenTokenizer::from_dir("tests/fixtures/qwen3_vl/tiny-qwen3-vl").unwrap())
}

fn prompt(uid: u64) -> PromptItem {
    PromptItem {
        uid,
        prompt_ids: vec![1, 2, 3],
        text: String::new(),
        image_hash: None,
        answer: None,
    }
}

fn synth_records(dir: &Path) -> (Vec<rl_parquet::RlRecord>, std::path::PathBuf) {
    let cfg = SynthConfig {
        train: 6,
        eval: 2,
        seed: 7,
        ..SynthConfig::default()
    };
    prism::data::synth::write_dataset(dir, &cfg).unwrap();
    let file = dir.join("rl_train.parquet");
    let loaded = rl_parquet::read(&file, ReadOptions::default()).unwrap();
    (loaded.records, file)
}

#[test]
fn demonstrations_come_from_the_teacher_columns_untruncated() {
    let dir = tempfile::tempdir().unwrap();
    let (records, file) = synth_records(dir.path());
    let tok = tokenizer();
    let uids: Vec<u64> = (100..100 + records.len() as u64).collect();
    let mut teacher = DatasetTeacher::from_rl_records(&records, &uids, &file, tok.clone()).unwrap();
    assert_eq!(teacher.len(), records.len());
    for (rec, &uid) in records.iter().zip(&uids) {
        let demo = teacher.demonstrate(&prompt(uid)).unwrap();
        assert_eq!(demo.prompt_uid, uid);
        assert_eq!(Some(&demo.caption.text), rec.teacher_caption.as_ref());
        assert_eq!(Some(&demo.reasoning.text), rec.teacher_cot.as_ref());
        assert!(demo.caption.text.starts_with("<caption>"));
        assert!(demo.reasoning.text.contains("<answer>"));
        // Every token is kept and decodes back to the column's text.
        for seg in [&demo.caption, &demo.reasoning] {
            let ids: Vec<u32> = seg.tokens.iter().map(|&t| t as u32).collect();
            assert_eq!(tok.decode(&ids, false).unwrap(), seg.text);
        }
    }
    let err = teacher.demonstrate(&prompt(5)).unwrap_err().to_string();
    assert!(err.contains("prompt uid 5"), "{err}");
}

#[test]
fn a_whole_response_is_split_by_the_format_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (mut records, file) = synth_records(dir.path());
    let rec = &mut records[0];
    let response = format!(
        "{}\n{}",
        rec.teacher_caption.take().unwrap(),
        rec.teacher_cot.take().unwrap()
    );
    rec.teacher_response = Some(response);
    let uids: Vec<u64> = (0..records.len() as u64).collect();
    let mut teacher = DatasetTeacher::from_rl_records(&records, &uids, &file, tokenizer()).unwrap();
    let demo = teacher.demonstrate(&prompt(0)).unwrap();
    assert!(
        demo.caption.text.starts_with("<caption>") && demo.caption.text.ends_with("</caption>")
    );
    assert!(
        demo.reasoning.text.starts_with("<think>") && demo.reasoning.text.ends_with("</answer>")
    );
}

#[test]
fn a_row_without_a_teacher_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut records, file) = synth_records(dir.path());
    records[2].teacher_caption = None;
    records[2].teacher_response = None;
    let uids: Vec<u64> = (0..records.len() as u64).collect();
    let err = DatasetTeacher::from_rl_records(&records, &uids, &file, tokenizer())
        .err()
        .expect("missing teacher must be an error");
    assert!(
        err.contains("row 2") && err.contains("rl_train.parquet"),
        "{err}"
    );

    records[2].teacher_response = Some("just an answer".into());
    let err = DatasetTeacher::from_rl_records(&records, &uids, &file, tokenizer())
        .err()
        .expect("an invalid response must be an error");
    assert!(err.contains("row 2") && err.contains("format"), "{err}");
}
