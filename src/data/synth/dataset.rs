//! The files of `prism data synth`, and the sample images of docs/samples.
//!
//! Output folder layout:
//!
//! | file | content |
//! |---|---|
//! | `images/{id}.png` | one image per item (train and eval) |
//! | `sft_teacher.jsonl` | ShareGPT, teacher demonstrations of the train items |
//! | `sft_public.jsonl` | ShareGPT, public demonstrations of the train items |
//! | `public_labels.jsonl` | `{id, label, mistake}` for each line of `sft_public.jsonl` |
//! | `rl_train.parquet`, `rl_eval.parquet` | RL prompts with ground truth, teacher segments and scene JSON |
//! | `warmup_pairs.jsonl` | teacher vs public segments of the train items |
//! | `manifest.json` | configuration, counts, measured label counts, SHA-256 of every file |
//!
//! Every file is written atomically; the manifest is written last, so its presence means the
//! folder is complete. Nothing depends on time or on the machine: a seed fixes every byte.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::demo::{ErrorLabel, Mistake, PublicNoise, SYSTEM_INSTRUCTION, user_prompt};
use super::render::{IMAGE_SIZE, render_png};
use super::{Item, generate_items, public_demo_for, teacher_demo_for};
use crate::data::error::DataError;
use crate::data::io;
use crate::data::rl_parquet::{self, ImageRef, RlRecord};
use crate::data::sharegpt::{self, ShareGptRecord};
use crate::data::warmup::{self, WarmupPair};

/// The `data_source` of synthetic RL rows (routes them to the rule-based reward).
pub const DATA_SOURCE: &str = "prism_synth";

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Number of train items.
    pub train: usize,
    /// Number of eval items.
    pub eval: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Difficulty levels to mix, each in 1..=3; each item draws one uniformly.
    pub difficulties: Vec<u8>,
    /// Error rates of the public demonstrations.
    pub noise: PublicNoise,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            train: 1000,
            eval: 200,
            seed: 42,
            difficulties: vec![1, 2, 3],
            noise: PublicNoise::default(),
        }
    }
}

impl SynthConfig {
    /// Checks levels and rates.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.difficulties.is_empty() {
            return Err(DataError::Config("no difficulty level given".into()));
        }
        if let Some(d) = self.difficulties.iter().find(|d| !(1..=3).contains(*d)) {
            return Err(DataError::Config(format!(
                "difficulty {d} is not one of 1, 2, 3"
            )));
        }
        self.noise.validate().map_err(DataError::Config)
    }
}

/// Counts of public demonstrations per error label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    pub none: usize,
    pub perception: usize,
    pub reasoning: usize,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub train: usize,
    pub eval: usize,
    pub difficulties: Vec<u8>,
    pub public_perception_error_rate: f64,
    pub public_reasoning_error_rate: f64,
    pub image_size: u32,
    pub data_source: String,
    /// Records per file.
    pub counts: BTreeMap<String, usize>,
    /// Error labels of the public demonstrations, as generated.
    pub public_labels: LabelCounts,
    /// SHA-256 (hex) of every file written, by path relative to the folder.
    pub sha256: BTreeMap<String, String>,
}

/// One line of `public_labels.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicLabel {
    pub id: String,
    pub label: ErrorLabel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mistake: Option<Mistake>,
}

fn rl_record(item: &Item, png: Vec<u8>) -> Result<RlRecord, DataError> {
    let teacher = teacher_demo_for(item)?;
    let scene = serde_json::to_string(&item.scene)
        .map_err(|e| DataError::Config(format!("scene of {}: {e}", item.id)))?;
    Ok(RlRecord {
        prompt: user_prompt(&item.question_text()),
        images: vec![ImageRef {
            bytes: Some(png),
            path: Some(item.image_path()),
        }],
        ground_truth: item.answer.clone(),
        id: Some(item.id.clone()),
        question: Some(item.question_text()),
        teacher_response: Some(teacher.response()),
        teacher_caption: Some(teacher.caption),
        teacher_cot: Some(teacher.cot),
        data_source: Some(DATA_SOURCE.to_string()),
        difficulty: Some(i32::from(item.difficulty)),
        family: Some(item.question.family().to_string()),
        scene: Some(scene),
    })
}

fn write_image(out: &Path, item: &Item) -> Result<Vec<u8>, DataError> {
    let path = out.join(item.image_path());
    let png = render_png(&item.scene).map_err(|e| DataError::format(&path, e))?;
    io::atomic_write_bytes(&path, &png)?;
    Ok(png)
}

/// Generates the whole dataset into `out` (created if needed) and returns the manifest it wrote.
pub fn write_dataset(out: &Path, cfg: &SynthConfig) -> Result<Manifest, DataError> {
    cfg.validate()?;
    let (train, eval) = generate_items(cfg)?;
    let mut files: Vec<String> = Vec::new();

    let mut sft_teacher = Vec::with_capacity(train.len());
    let mut sft_public = Vec::with_capacity(train.len());
    let mut labels = Vec::with_capacity(train.len());
    let mut pairs = Vec::with_capacity(train.len());
    let mut rl_train = Vec::with_capacity(train.len());
    let mut counts = LabelCounts::default();
    for item in &train {
        let png = write_image(out, item)?;
        files.push(item.image_path());
        let teacher = teacher_demo_for(item)?;
        let public = public_demo_for(item, cfg.seed, cfg.noise)?;
        let prompt = user_prompt(&item.question_text());
        let image = item.image_path();
        sft_teacher.push(ShareGptRecord::single_turn(
            SYSTEM_INSTRUCTION,
            &prompt,
            &teacher.response(),
            &image,
        ));
        sft_public.push(ShareGptRecord::single_turn(
            SYSTEM_INSTRUCTION,
            &prompt,
            &public.response(),
            &image,
        ));
        match public.label {
            ErrorLabel::None => counts.none += 1,
            ErrorLabel::Perception => counts.perception += 1,
            ErrorLabel::Reasoning => counts.reasoning += 1,
        }
        labels.push(PublicLabel {
            id: item.id.clone(),
            label: public.label,
            mistake: public.mistake.clone(),
        });
        pairs.push(WarmupPair {
            prompt: item.question_text(),
            image: Some(image),
            teacher_caption: teacher.caption.clone(),
            student_caption: public.caption.clone(),
            teacher_cot: teacher.cot.clone(),
            student_cot: public.cot.clone(),
        });
        rl_train.push(rl_record(item, png)?);
    }
    let mut rl_eval = Vec::with_capacity(eval.len());
    for item in &eval {
        let png = write_image(out, item)?;
        files.push(item.image_path());
        rl_eval.push(rl_record(item, png)?);
    }

    sharegpt::write(&out.join("sft_teacher.jsonl"), &sft_teacher)?;
    sharegpt::write(&out.join("sft_public.jsonl"), &sft_public)?;
    io::write_jsonl(&out.join("public_labels.jsonl"), &labels)?;
    warmup::write(&out.join("warmup_pairs.jsonl"), &pairs)?;
    rl_parquet::write(&out.join("rl_train.parquet"), &rl_train)?;
    rl_parquet::write(&out.join("rl_eval.parquet"), &rl_eval)?;
    for f in [
        "sft_teacher.jsonl",
        "sft_public.jsonl",
        "public_labels.jsonl",
        "warmup_pairs.jsonl",
        "rl_train.parquet",
        "rl_eval.parquet",
    ] {
        files.push(f.to_string());
    }

    let mut sha256 = BTreeMap::new();
    for f in &files {
        sha256.insert(f.clone(), io::sha256_file(&out.join(f))?);
    }
    let manifest = Manifest {
        generator: format!("prism {} data synth", env!("CARGO_PKG_VERSION")),
        seed: cfg.seed,
        train: train.len(),
        eval: eval.len(),
        difficulties: cfg.difficulties.clone(),
        public_perception_error_rate: cfg.noise.perception_error_rate,
        public_reasoning_error_rate: cfg.noise.reasoning_error_rate,
        image_size: IMAGE_SIZE,
        data_source: DATA_SOURCE.to_string(),
        counts: BTreeMap::from([
            ("images".to_string(), train.len() + eval.len()),
            ("sft_teacher.jsonl".to_string(), sft_teacher.len()),
            ("sft_public.jsonl".to_string(), sft_public.len()),
            ("public_labels.jsonl".to_string(), labels.len()),
            ("warmup_pairs.jsonl".to_string(), pairs.len()),
            ("rl_train.parquet".to_string(), rl_train.len()),
            ("rl_eval.parquet".to_string(), rl_eval.len()),
        ]),
        public_labels: counts,
        sha256,
    };
    let path = out.join("manifest.json");
    io::atomic_write(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, &manifest).map_err(std::io::Error::other)?;
        std::io::Write::write_all(w, b"\n")
    })?;
    Ok(manifest)
}

/// Writes `count` sample images (cycling through difficulty levels 1, 2, 3) and a README.md that
/// lists each image's question and answer, into `dir`.
pub fn write_samples(dir: &Path, seed: u64, count: usize) -> Result<(), DataError> {
    let mut used = std::collections::HashSet::new();
    let mut readme = String::from(
        "# Sample images of the procedural task\n\n\
         Made by `prism data samples --out docs/samples`; each image is one item of \
         `prism data synth` (160×160 px, 3×3 grid). Questions and ground-truth answers:\n\n\
         | image | level | question | answer |\n|---|---|---|---|\n",
    );
    for i in 0..count {
        let level = [1u8, 2, 3][i % 3];
        let item = super::draw_item(seed, super::Split::Train, i, &[level], &mut used)?;
        let name = format!("sample_{i:02}.png");
        let png = render_png(&item.scene).map_err(|e| DataError::format(&dir.join(&name), e))?;
        io::atomic_write_bytes(&dir.join(&name), &png)?;
        readme.push_str(&format!(
            "| [{name}]({name}) | {} | {} | {} |\n",
            item.difficulty,
            item.question_text().replace('|', "\\|"),
            item.answer
        ));
    }
    io::atomic_write_bytes(&dir.join("README.md"), readme.as_bytes())
}
