//! The procedural visual-reasoning task of the embedded default.
//!
//! # Layout and data flow
//!
//! seed → [`scene`] (objects on a 3×3 grid) → [`render`](mod@render) (160×160 RGB PNG) and [`question`]
//! (a family instance and its solver) → [`Item`] (scene, question, canonical answer) →
//! [`demo`] (teacher and noisy public demonstrations with error labels) → [`dataset`] (the files
//! of `prism data synth`). [`classify`] labels a policy response on an item as a perception
//! error, a reasoning error, or neither.
//!
//! # Determinism
//!
//! Every item draws from its own RNG stream, derived from (seed, split, index) by SHA-256, so a
//! seed fixes every byte written; the public source's mistakes come from a separate stream per
//! item, so changing the error rates never changes scenes or questions. Eval items are drawn
//! first and depend only on (seed, eval count); no scene key ([`Scene::key`]) appears twice in
//! the whole dataset, so train and eval never share a scene.

pub mod classify;
pub mod dataset;
pub mod demo;
pub mod question;
pub mod render;
pub mod scene;

use std::collections::HashSet;

use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use classify::{Verdict, classify_response};
pub use dataset::{Manifest, SynthConfig, write_dataset, write_samples};
pub use demo::{Demo, ErrorLabel, PublicNoise, SYSTEM_INSTRUCTION, public_demo, teacher_demo};
pub use question::{Question, Solution, solve};
pub use render::{IMAGE_SIZE, render, render_png};
pub use scene::Scene;

use crate::data::DataError;

/// Which split an item belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

/// One task item: a scene, a question about it, and the canonical answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// "train-000042" / "eval-000007"; also the image's file stem.
    pub id: String,
    pub split: Split,
    /// 1..=3; equals `question.level()`.
    pub difficulty: u8,
    pub question: Question,
    pub answer: String,
    pub scene: Scene,
}

impl Item {
    /// The question as asked.
    pub fn question_text(&self) -> String {
        self.question.text()
    }

    /// Relative path of the item's image inside a dataset folder.
    pub fn image_path(&self) -> String {
        format!("images/{}.png", self.id)
    }
}

/// A fresh RNG for (seed, purpose, index), independent of every other stream.
pub fn stream(seed: u64, purpose: &str, index: u64) -> StdRng {
    let mut h = Sha256::new();
    h.update(b"prism-synth-v1");
    h.update(seed.to_le_bytes());
    h.update((purpose.len() as u64).to_le_bytes());
    h.update(purpose.as_bytes());
    h.update(index.to_le_bytes());
    StdRng::from_seed(h.finalize().into())
}

/// How many scene/question draws one item may take before generation gives up.
const MAX_DRAWS: usize = 10_000;

/// Draws one item of `split` number `index` whose scene key is not in `used` (and adds it).
pub fn draw_item(
    seed: u64,
    split: Split,
    index: usize,
    difficulties: &[u8],
    used: &mut HashSet<String>,
) -> Result<Item, DataError> {
    if difficulties.is_empty() {
        return Err(DataError::Config("no difficulty level given".into()));
    }
    let mut rng = stream(seed, split.name(), index as u64);
    let difficulty = difficulties[rng.random_range(0..difficulties.len())];
    for _ in 0..MAX_DRAWS {
        let scene = scene::sample_scene(&mut rng, difficulty);
        let key = scene.key();
        if used.contains(&key) {
            continue;
        }
        let Some(q) = question::sample_question(&mut rng, &scene, difficulty) else {
            continue;
        };
        let Some(sol) = solve(&q, &scene, None) else {
            continue;
        };
        used.insert(key);
        return Ok(Item {
            id: format!("{}-{index:06}", split.name()),
            split,
            difficulty,
            question: q,
            answer: sol.answer,
            scene,
        });
    }
    Err(DataError::Config(format!(
        "could not draw a new scene for {} item {index} in {MAX_DRAWS} tries",
        split.name()
    )))
}

/// Generates the eval items (first) and then the train items, with globally unique scenes.
pub fn generate_items(cfg: &SynthConfig) -> Result<(Vec<Item>, Vec<Item>), DataError> {
    cfg.validate()?;
    let mut used = HashSet::new();
    let eval = (0..cfg.eval)
        .map(|i| draw_item(cfg.seed, Split::Eval, i, &cfg.difficulties, &mut used))
        .collect::<Result<Vec<_>, _>>()?;
    let train = (0..cfg.train)
        .map(|i| draw_item(cfg.seed, Split::Train, i, &cfg.difficulties, &mut used))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((train, eval))
}

/// The public demonstration of `item` under `noise` and `seed`, from the item's own stream.
pub fn public_demo_for(item: &Item, seed: u64, noise: PublicNoise) -> Result<Demo, DataError> {
    let index = item
        .id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let mut rng = stream(seed, &format!("public-{}", item.split.name()), index);
    public_demo(&mut rng, &item.question, &item.scene, noise)
        .ok_or_else(|| DataError::Config(format!("question of {} does not fit its scene", item.id)))
}

/// The teacher demonstration of `item`.
pub fn teacher_demo_for(item: &Item) -> Result<Demo, DataError> {
    teacher_demo(&item.question, &item.scene)
        .ok_or_else(|| DataError::Config(format!("question of {} does not fit its scene", item.id)))
}
