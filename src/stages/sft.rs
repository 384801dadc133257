//! The SFT stage: supervised fine-tuning of a Qwen3-VL policy on ShareGPT multimodal JSONL.
//!
//! Owns turning a conversation into `(input_ids, labels)` with loss on the assistant replies
//! only (each reply's tokens plus its closing `<|im_end|>`; nothing from system/user turns or
//! template headers), batching with either padding side, the token-mean cross-entropy (fp32),
//! and the training loop: our AdamW ([`crate::algo::adamw`]) with decay / no-decay groups, cosine
//! schedule with warm-up ratio, gradient accumulation, grad-norm clipping, an optional frozen
//! vision tower, periodic eval loss, skipping of non-finite steps, and the output checkpoint
//! (HF layout + processor files + trainer state) in `run_dir/<name>/final`.
//!
//! Checkpoints (`checkpoint-<step>` every `save_every` steps, the newest `keep_checkpoints`
//! kept, and `final`) go through [`super::checkpoint::write_checkpoint_dir`], so a folder under
//! its own name is always complete. Per-step metrics are appended to the run's
//! `run_dir/metrics.jsonl` ([`crate::report::MetricsLog`], stage = the stage name, arm =
//! [`super::resume::DEFAULT_ARM`]); a resumed stage first drops its records after the
//! checkpoint's step, so every step is logged exactly once. SFT draws no random numbers besides
//! the data order, which [`epoch_order`] rebuilds from the seed and the epoch: the trainer state
//! needs no RNG state.
//!
//! Shapes: `input_ids`, `labels`, `attention_mask` `[B, S]`; logits `[B, S, V]`; the loss
//! compares logits at `t` with labels at `t + 1`. Label value [`IGNORE_INDEX`] = no loss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tch::{Device, Kind, Reduction, Tensor};

use super::checkpoint::{self, write_checkpoint_dir};
use super::{Result, SkipStreak, StageContext, StageError, StageSummary, resume};
use crate::algo::adamw::{AdamW, LrSchedule, clip_grad_norm};
use crate::algo::numerics::is_finite;
use crate::config::{PadSide, SftConfig};
use crate::data::error::ReadOptions;
use crate::data::sharegpt::{self, Role, ShareGptRecord};
use crate::models::chat_template::{ChatMessage, split_vision_placeholders};
use crate::models::image_processor::ProcessedImage;
use crate::models::processor::{EncodedPrompt, PaddingSide, Processor};
use crate::models::tokenizer::{IM_END, IMAGE_PAD};
use crate::models::{ModelInputs, Qwen3Vl};

/// Label of positions that carry no loss (torch's `ignore_index` default).
pub const IGNORE_INDEX: i64 = -100;

/// Prefix of the vision tower's parameter names.
pub const VISION_PREFIX: &str = "model.visual.";

/// Files copied from the input checkpoint next to the trained weights.
pub const PROCESSOR_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// One conversation tokenised for training.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Token ids with image tokens expanded.
    pub input_ids: Vec<u32>,
    /// Same length; the token id where it is trained on, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// Its images, in order.
    pub images: Vec<ProcessedImage>,
}

impl SftExample {
    /// Number of positions with a label.
    pub fn num_labels(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// The record's turns as chat messages; `<image>` placeholders in user turns become image parts.
pub fn chat_messages(rec: &ShareGptRecord) -> Vec<ChatMessage> {
    rec.messages
        .iter()
        .map(|m| match m.role {
            Role::System => ChatMessage::system(m.content.clone()),
            Role::Assistant => ChatMessage::assistant(m.content.clone()),
            Role::User if m.content.contains(sharegpt::IMAGE_TOKEN) => {
                ChatMessage::parts("user", split_vision_placeholders(&m.content))
            }
            Role::User => ChatMessage::user(m.content.clone()),
        })
        .collect()
}

/// Tokenises one conversation with assistant-only labels. Every assistant turn is trained on:
/// its reply and the `<|im_end|>` that closes it. `row` names the record in errors.
///
/// The text is rendered incrementally (`messages[..i]` with the generation prompt, then
/// `messages[..=i]`); each rendering must extend the previous one, else the template is not
/// usable for SFT and this fails. Segments are tokenised separately and concatenated, so the
/// label boundary falls exactly after the assistant header.
pub fn encode_example(
    proc: &Processor,
    rec: &ShareGptRecord,
    images: &[RgbImage],
    row: usize,
) -> std::result::Result<SftExample, String> {
    let msgs = chat_messages(rec);
    // (text, trained?) segments of the full rendering
    let mut segments: Vec<(String, bool)> = Vec::new();
    let mut done = String::new();
    let render = |n: usize, gen_prompt: bool| {
        proc.apply_chat_template(&msgs[..n], gen_prompt)
            .map_err(|e| format!("chat template: {e}"))
    };
    for (i, m) in rec.messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let prompt = render(i, true)?;
        let through = render(i + 1, false)?;
        let Some(context) = prompt.strip_prefix(done.as_str()) else {
            return Err(format!(
                "the chat template's rendering of turns 0..{i} does not extend the previous turns"
            ));
        };
        let Some(reply) = through.strip_prefix(prompt.as_str()) else {
            return Err(format!(
                "the chat template's rendering of assistant turn {i} does not start with its generation prompt"
            ));
        };
        let Some(end) = reply.rfind(IM_END) else {
            return Err(format!(
                "assistant turn {i}: the chat template does not close it with {IM_END}"
            ));
        };
        let end = end + IM_END.len();
        segments.push((context.to_string(), false));
        segments.push((reply[..end].to_string(), true));
        if end < reply.len() {
            segments.push((reply[end..].to_string(), false));
        }
        done = through;
    }
    if segments.is_empty() {
        return Err("no assistant turn to train on".into());
    }
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    let mut out_images = Vec::new();
    let mut next_image = 0usize;
    for (text, trained) in segments.iter().filter(|(t, _)| !t.is_empty()) {
        let n_img = text.matches(IMAGE_PAD).count();
        let Some(imgs) = images.get(next_image..next_image + n_img) else {
            return Err(format!(
                "the conversation has more image placeholders than its {} image(s)",
                images.len()
            ));
        };
        next_image += n_img;
        let enc = proc
            .encode_text(text, imgs, row)
            .map_err(|e| e.to_string())?;
        labels.extend(enc.input_ids.iter().map(|&id| {
            if *trained {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        }));
        input_ids.extend(enc.input_ids);
        out_images.extend(enc.images);
    }
    if next_image != images.len() {
        return Err(format!(
            "{next_image} image placeholder(s) but {} image(s)",
            images.len()
        ));
    }
    Ok(SftExample {
        input_ids,
        labels,
        images: out_images,
    })
}

/// A padded batch as tensors, with labels.
#[derive(Debug)]
pub struct SftBatch {
    pub inputs: ModelInputs,
    /// `[B, S]` i64.
    pub labels: Tensor,
    /// Positions with a loss (after the shift).
    pub num_labels: i64,
    /// Real (non-pad) tokens.
    pub num_tokens: i64,
}

/// Pads examples into one batch on `device`, pixels as `kind`.
pub fn collate_examples(
    proc: &Processor,
    examples: &[SftExample],
    side: PadSide,
    max_length: usize,
    device: Device,
    kind: Kind,
) -> Result<SftBatch> {
    let rows: Vec<EncodedPrompt> = examples
        .iter()
        .map(|e| EncodedPrompt {
            input_ids: e.input_ids.clone(),
            images: e.images.clone(),
        })
        .collect();
    let side = match side {
        PadSide::Right => PaddingSide::Right,
        PadSide::Left => PaddingSide::Left,
    };
    let enc = proc.collate(&rows, side, Some(max_length))?;
    let (b, s) = (enc.batch_size, enc.seq_len);
    let mut labels = vec![IGNORE_INDEX; b * s];
    for (i, e) in examples.iter().enumerate() {
        let start = match side {
            PaddingSide::Right => 0,
            PaddingSide::Left => s - e.labels.len(),
        };
        labels[i * s + start..i * s + start + e.labels.len()].copy_from_slice(&e.labels);
    }
    // a label at position 0 has no preceding logit
    let num_labels = examples
        .iter()
        .map(|e| {
            e.labels
                .iter()
                .skip(1)
                .filter(|&&l| l != IGNORE_INDEX)
                .count() as i64
        })
        .sum();
    let dims = [b as i64, s as i64];
    let input_ids = Tensor::from_slice(&enc.input_ids).view(dims).to(device);
    let attention_mask = Tensor::from_slice(&enc.attention_mask)
        .view(dims)
        .to(device);
    let mut inputs = ModelInputs::text(input_ids, attention_mask);
    if enc.num_patches > 0 {
        let pixels = Tensor::from_slice(&enc.pixel_values)
            .view([enc.num_patches as i64, enc.patch_dim as i64])
            .to_kind(kind)
            .to(device);
        let grid: Vec<i64> = enc.image_grid_thw.iter().flatten().copied().collect();
        let grid = Tensor::from_slice(&grid)
            .view([enc.image_grid_thw.len() as i64, 3])
            .to(device);
        inputs = inputs.with_images(pixels, grid);
    }
    Ok(SftBatch {
        inputs,
        labels: Tensor::from_slice(&labels).view(dims).to(device),
        num_labels,
        num_tokens: enc.lengths.iter().sum::<usize>() as i64,
    })
}

/// Summed (not averaged) next-token cross-entropy over labelled positions, in fp32: logits
/// `[B, S, V]` at `t` against labels `[B, S]` at `t + 1`. Returns a 0-dim f32 tensor.
pub fn summed_token_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, s, v) = logits.size3()?;
    if labels.size() != [b, s] {
        return Err(StageError::Invalid {
            stage: "sft".into(),
            message: format!(
                "labels have shape {:?}, logits {:?}",
                labels.size(),
                [b, s, v]
            ),
        });
    }
    if s < 2 {
        return Ok(Tensor::zeros([], (Kind::Float, logits.device())));
    }
    let logits = logits.f_narrow(1, 0, s - 1)?.f_to_kind(Kind::Float)?;
    let target = labels.f_narrow(1, 1, s - 1)?;
    Ok(logits.f_reshape([-1, v])?.f_cross_entropy_loss::<Tensor>(
        &target.f_reshape([-1])?,
        None,
        Reduction::Sum,
        IGNORE_INDEX,
        0.0,
    )?)
}

/// A ShareGPT file with its images' folder.
#[derive(Debug)]
struct Dataset {
    path: PathBuf,
    records: Vec<ShareGptRecord>,
}

impl Dataset {
    fn read(path: &Path) -> Result<Self> {
        let loaded = sharegpt::read(path, ReadOptions::default())?;
        if loaded.records.is_empty() {
            return Err(StageError::Record {
                path: path.to_path_buf(),
                record: 0,
                message: "the file holds no conversation".into(),
            });
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            records: loaded.records,
        })
    }

    /// Loads the images of record `i` and encodes it.
    fn example(&self, proc: &Processor, i: usize) -> Result<SftExample> {
        let rec = &self.records[i];
        let base = self.path.parent().unwrap_or(Path::new("."));
        let record_err = |message: String| StageError::Record {
            path: self.path.clone(),
            record: i + 1,
            message,
        };
        let images = rec
            .images
            .iter()
            .map(|p| {
                let file = base.join(p);
                image::open(&file)
                    .map(|im| im.to_rgb8())
                    .map_err(|e| record_err(format!("image {}: {e}", file.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        encode_example(proc, rec, &images, i).map_err(record_err)
    }
}

/// Shuffled record order of `epoch` (Fisher–Yates with a generator seeded by seed and epoch,
/// so a resumed run can rebuild it from the trainer state).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Where the data cursor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Index into the epoch's order of the next record.
    pub position: usize,
}

/// Mean eval loss over `data` (token mean over all labelled positions), no gradients.
fn eval_loss(
    model: &Qwen3Vl,
    proc: &Processor,
    data: &Dataset,
    cfg: &SftConfig,
    kind: Kind,
) -> Result<f64> {
    let _g = tch::no_grad_guard();
    let n = if cfg.eval_max_samples == 0 {
        data.records.len()
    } else {
        cfg.eval_max_samples.min(data.records.len())
    };
    let mut total = 0.0;
    let mut count = 0i64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(cfg.batch_size) {
        let examples = chunk
            .iter()
            .map(|&i| data.example(proc, i))
            .collect::<Result<Vec<_>>>()?;
        let batch = collate_examples(
            proc,
            &examples,
            cfg.padding_side,
            cfg.max_length,
            model.device(),
            kind,
        )?;
        let logits = model.forward(&batch.inputs, None)?;
        total += summed_token_loss(&logits, &batch.labels)?.f_double_value(&[])?;
        count += batch.num_labels;
    }
    Ok(total / count.max(1) as f64)
}

/// Copies the tokenizer / template / processor files of `from` into `to`.
pub fn copy_processor_files(from: &Path, to: &Path) -> Result<()> {
    for f in PROCESSOR_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).map_err(|e| StageError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Trainer state file next to the checkpoint.
pub use super::checkpoint::TRAINER_STATE;
/// AdamW state file next to the checkpoint.
pub const OPTIMIZER_STATE: &str = "optimizer.safetensors";

/// `trainer_state.json`: where a stage stands, enough to resume it exactly (the data order of an
/// epoch is [`epoch_order`]`(n, seed, epoch)`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub stage: String,
    /// The checkpoint the stage started from.
    pub input: PathBuf,
    /// Steps done (skipped ones included).
    pub step: u64,
    /// AdamW updates done.
    pub optimizer_steps: i64,
    pub skipped_steps: u64,
    pub seed: u64,
    pub train_file: PathBuf,
    /// The next record to read.
    pub position: DataPosition,
    pub last_loss: Option<f64>,
    /// The latest eval loss (the one before training included).
    pub eval_loss: Option<f64>,
    /// Losses of the first (up to [`LossWindow::LEN`]) finite steps, for the summary.
    #[serde(default)]
    pub head_losses: Vec<f64>,
    /// Losses of the latest (up to [`LossWindow::LEN`]) finite steps, for the summary.
    #[serde(default)]
    pub tail_losses: Vec<f64>,
    /// The eval loss before training, for the summary.
    #[serde(default)]
    pub first_eval_loss: Option<f64>,
}

/// The first and the latest few finite losses of a stage (what its summary reports), carried
/// through checkpoints so a resumed stage reports what an uninterrupted one would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossWindow {
    pub head: Vec<f64>,
    pub tail: std::collections::VecDeque<f64>,
}

impl LossWindow {
    /// Losses kept at each end.
    pub const LEN: usize = 5;

    /// Adds the loss of the next finite step.
    pub fn push(&mut self, loss: f64) {
        if self.head.len() < Self::LEN {
            self.head.push(loss);
        }
        if self.tail.len() == Self::LEN {
            self.tail.pop_front();
        }
        self.tail.push_back(loss);
    }

    /// Mean of the first losses.
    pub fn first_mean(&self) -> Option<f64> {
        mean(self.head.iter().copied())
    }

    /// Mean of the latest losses.
    pub fn last_mean(&self) -> Option<f64> {
        mean(self.tail.iter().copied())
    }
}

fn mean(xs: impl ExactSizeIterator<Item = f64>) -> Option<f64> {
    let n = xs.len();
    (n > 0).then(|| xs.sum::<f64>() / n as f64)
}

/// Writes weights, processor files (from `processor_dir`), `trainer_state.json` (with the stage
/// options) and `optimizer.safetensors` into `dir` atomically ([`write_checkpoint_dir`]), so a
/// checkpoint folder is always complete.
fn save_checkpoint(
    dir: &Path,
    model: &Qwen3Vl,
    processor_dir: &Path,
    opt: &AdamW,
    state: &TrainerState,
    cfg: &SftConfig,
) -> Result<()> {
    write_checkpoint_dir(dir, |tmp| {
        model.save(tmp)?;
        copy_processor_files(processor_dir, tmp)?;
        Tensor::write_safetensors(&opt.state_tensors(), tmp.join(OPTIMIZER_STATE))?;
        let state_path = tmp.join(TRAINER_STATE);
        let mut value = serde_json::to_value(state)
            .map_err(|e| StageError::io(&state_path, std::io::Error::other(e.to_string())))?;
        value["kind"] = json!("sft");
        value["config"] = json!(cfg);
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| StageError::io(&state_path, std::io::Error::other(e.to_string())))?;
        std::fs::write(&state_path, text).map_err(|e| StageError::io(&state_path, e))
    })
}

/// Reads a checkpoint's trainer state and restores the optimizer from it.
fn load_resume_state(dir: &Path, opt: &mut AdamW, cfg: &SftConfig) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| StageError::Record {
        path: path.clone(),
        record: 1,
        message: format!("not a trainer state: {e}"),
    })?;
    if state.step >= cfg.steps {
        return Err(StageError::Invalid {
            stage: state.stage,
            message: format!(
                "{}: resumes at step {} but the stage has only {} steps",
                path.display(),
                state.step,
                cfg.steps
            ),
        });
    }
    let opt_path = dir.join(OPTIMIZER_STATE);
    let tensors = Tensor::read_safetensors(&opt_path).map_err(|e| StageError::Record {
        path: opt_path.clone(),
        record: 1,
        message: e.to_string(),
    })?;
    opt.load_state_tensors(&tensors)?;
    Ok(state)
}

/// Runs SFT from the checkpoint `input`; writes `ctx.stage_dir()/final` (and the periodic
/// checkpoints) and appends its steps to `ctx.run_dir/metrics.jsonl`. With `resume_from`, the
/// checkpoint is validated against `input` ([`checkpoint::validate_checkpoint`]) before
/// anything else is loaded.
pub fn run_sft(cfg: &SftConfig, ctx: &StageContext, input: &Path) -> Result<StageSummary> {
    let started = Instant::now();
    let stage = ctx.name.clone();
    let invalid = |message: String| StageError::Invalid {
        stage: stage.clone(),
        message,
    };
    let train_path = cfg
        .train_file
        .clone()
        .or_else(|| ctx.train_file.clone())
        .ok_or_else(|| invalid("no train file".into()))?;
    let eval_path = cfg.eval_file.clone().or_else(|| ctx.eval_file.clone());
    let train = Dataset::read(&train_path)?;
    let eval = match (&eval_path, cfg.eval_every) {
        (Some(p), e) if e > 0 => Some(Dataset::read(p)?),
        (None, e) if e > 0 => {
            tracing::warn!(stage = %stage, "eval_every = {e} but there is no eval file: no eval loss");
            None
        }
        _ => None,
    };

    if let Some(dir) = &cfg.resume_from {
        checkpoint::validate_checkpoint(dir, input)?;
    }
    // weights (and processor files) come from the resumed checkpoint when there is one; the
    // processor files written with each checkpoint are copied from the input, which stays put
    // (the resumed checkpoint may be pruned while the stage runs)
    let weights_dir = cfg.resume_from.as_deref().unwrap_or(input);
    let proc = Processor::from_dir(weights_dir)?;
    let model = Qwen3Vl::load(weights_dir, ctx.device, ctx.kind)?;
    let mut trainable = Vec::new();
    for (name, p) in model.named_parameters() {
        if cfg.freeze_vision && name.starts_with(VISION_PREFIX) {
            let _ = p.set_requires_grad(false);
        } else {
            trainable.push((name, p));
        }
    }
    if trainable.is_empty() {
        return Err(invalid("no trainable parameter".into()));
    }
    let mut opt = AdamW::with_default_groups(cfg.adamw(), trainable)?;
    let params = opt.params();
    let schedule = LrSchedule::cosine_with_warmup_ratio(cfg.warmup_ratio, cfg.steps as i64)?;
    let resumed = match &cfg.resume_from {
        Some(dir) => Some(load_resume_state(dir, &mut opt, cfg)?),
        None => None,
    };

    let stage_dir = ctx.stage_dir();
    std::fs::create_dir_all(&stage_dir).map_err(|e| StageError::io(&stage_dir, e))?;
    checkpoint::remove_stale(&stage_dir)?;
    // this stage's records after the resumed step (or all of them, on a fresh start) are
    // dropped so every step is logged once
    let log_path = ctx.run_dir.join(crate::report::metrics_log::FILE_NAME);
    resume::retain_metrics(&log_path, &stage, resumed.as_ref().map(|r| r.step))?;
    let mut log = resume::StageLog::open(&ctx.run_dir, &stage, &ctx.arm)?;
    tracing::info!(
        stage = %stage,
        train = %train_path.display(),
        records = train.records.len(),
        params = model.num_parameters(),
        "sft: starting"
    );

    let mut first_eval: Option<f64> = None;
    let mut last_eval: Option<f64> = None;
    if let Some(e) = eval.as_ref().filter(|_| resumed.is_none()) {
        let l = eval_loss(&model, &proc, e, cfg, ctx.kind)?;
        first_eval = Some(l);
        last_eval = Some(l);
        log.write(0, [("eval_loss", l)])?;
    }

    let n = train.records.len();
    let mut losses = LossWindow::default();
    let (first_step, mut pos, skipped) = match resumed {
        Some(r) => {
            losses.head = r.head_losses;
            losses.tail = r.tail_losses.into();
            first_eval = r.first_eval_loss;
            last_eval = r.eval_loss;
            (r.step + 1, r.position, r.skipped_steps)
        }
        None => (
            1,
            DataPosition {
                epoch: 0,
                position: 0,
            },
            0,
        ),
    };
    let mut order = epoch_order(n, ctx.seed, pos.epoch);
    let mut skips = SkipStreak::starting_at(skipped);
    let trainer_state = |step: u64,
                         opt: &AdamW,
                         pos: DataPosition,
                         skipped: u64,
                         losses: &LossWindow,
                         last_eval: Option<f64>| TrainerState {
        stage: stage.clone(),
        input: input.to_path_buf(),
        step,
        optimizer_steps: opt.step_count(),
        skipped_steps: skipped,
        seed: ctx.seed,
        train_file: train_path.clone(),
        position: pos,
        last_loss: losses.tail.back().copied(),
        eval_loss: last_eval,
        head_losses: losses.head.clone(),
        tail_losses: losses.tail.iter().copied().collect(),
        first_eval_loss: first_eval,
    };
    let mut bar = crate::report::progress::global().stage(&stage, cfg.steps);
    bar.set_step(first_step.saturating_sub(1));
    for step in first_step..=cfg.steps {
        let t0 = Instant::now();
        // micro-batches of this step, consuming the data order
        let mut micro: Vec<Vec<SftExample>> = Vec::with_capacity(cfg.grad_accum);
        for _ in 0..cfg.grad_accum {
            let mut ex = Vec::with_capacity(cfg.batch_size);
            for _ in 0..cfg.batch_size {
                if pos.position == n {
                    pos.epoch += 1;
                    pos.position = 0;
                    order = epoch_order(n, ctx.seed, pos.epoch);
                }
                ex.push(train.example(&proc, order[pos.position])?);
                pos.position += 1;
            }
            micro.push(ex);
        }
        let batches = micro
            .iter()
            .map(|ex| {
                collate_examples(
                    &proc,
                    ex,
                    cfg.padding_side,
                    cfg.max_length,
                    ctx.device,
                    ctx.kind,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let num_labels: i64 = batches.iter().map(|b| b.num_labels).sum();
        let num_tokens: i64 = batches.iter().map(|b| b.num_tokens).sum();
        let inject = cfg.inject_nan_steps.contains(&step);

        // forward/backward of each micro-batch; the loss is the token mean over the whole step
        let mut loss = 0.0f64;
        let mut finite = true;
        for b in &batches {
            let logits = model.forward(&b.inputs, None)?;
            let mut l = summed_token_loss(&logits, &b.labels)? / (num_labels.max(1) as f64);
            if inject {
                l *= f64::NAN;
            }
            let v = l.f_double_value(&[])?;
            if !v.is_finite() {
                finite = false;
                loss = v;
                break;
            }
            loss += v;
            l.f_backward()?;
        }
        let mut grad_norm = f64::NAN;
        if finite {
            let norm = clip_grad_norm(&params, cfg.max_grad_norm)?;
            grad_norm = norm.f_double_value(&[])?;
            finite = is_finite(&norm)?;
        }
        let lr = cfg.lr * schedule.factor(step as i64 - 1);
        skips.record(!finite);
        if finite {
            opt.step(lr)?;
            losses.push(loss);
        } else {
            tracing::warn!(stage = %stage, step, loss, grad_norm, "non-finite step skipped");
        }
        opt.zero_grad();
        let secs = t0.elapsed().as_secs_f64();
        metrics::counter!(crate::telemetry::STEPS_TOTAL, "stage" => stage.clone()).increment(1);
        metrics::histogram!(crate::telemetry::STEP_SECONDS, "stage" => stage.clone()).record(secs);
        let mut rec = vec![
            ("loss", loss),
            ("lr", lr),
            ("grad_norm", grad_norm),
            ("tokens", num_tokens as f64),
            ("label_tokens", num_labels as f64),
            ("tokens_per_s", num_tokens as f64 / secs.max(1e-9)),
            ("skipped", f64::from(u8::from(!finite))),
            ("skipped_total", skips.total as f64),
            ("epoch", pos.epoch as f64),
        ];
        if let Some(e) = &eval
            && (step % cfg.eval_every == 0 || step == cfg.steps)
        {
            let l = eval_loss(&model, &proc, e, cfg, ctx.kind)?;
            last_eval = Some(l);
            rec.push(("eval_loss", l));
        }
        log.write(step, rec)?;
        if loss.is_finite() {
            bar.set_metric("loss", loss);
        }
        bar.set_step(step);
        skips.check(&stage, step, cfg.max_bad_steps_in_row)?;
        let periodic = skips.in_row == 0 && cfg.save_every > 0 && step % cfg.save_every == 0;
        // a shutdown signal: checkpoint now (even mid-streak of skipped steps) and stop
        let stopping = resume::shutdown_requested();
        if (periodic || stopping) && step < cfg.steps {
            let state = trainer_state(step, &opt, pos, skips.total, &losses, last_eval);
            // the log reaches the disk before the checkpoint that covers it
            log.sync()?;
            save_checkpoint(
                &stage_dir.join(format!("{}{step}", checkpoint::CHECKPOINT_PREFIX)),
                &model,
                input,
                &opt,
                &state,
                cfg,
            )?;
            checkpoint::prune_keep(&stage_dir, cfg.keep_checkpoints)?;
            if stopping {
                return Err(resume::stopped(
                    &stage,
                    &ctx.run_dir,
                    &format!("after step {step} (checkpoint-{step} written)"),
                ));
            }
        }
    }

    bar.finish();
    let final_dir = stage_dir.join(checkpoint::FINAL_DIR);
    let state = trainer_state(cfg.steps, &opt, pos, skips.total, &losses, last_eval);
    log.sync()?;
    save_checkpoint(&final_dir, &model, input, &opt, &state, cfg)?;

    Ok(StageSummary {
        name: stage,
        kind: "sft".into(),
        output: final_dir,
        experts: None,
        steps: cfg.steps,
        skipped_steps: skips.total,
        first_loss: losses.first_mean(),
        last_loss: losses.last_mean(),
        first_eval_loss: first_eval,
        last_eval_loss: last_eval,
        seconds: started.elapsed().as_secs_f64(),
    })
}
