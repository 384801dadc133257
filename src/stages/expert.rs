//! The Qwen3-VL experts: the perception and reasoning discriminators of PRISM as a
//! [`ScorerEngine`] ([`QwenScorer`]), the options they train with ([`ExpertOptions`]), the
//! factory the alignment stage hands to the runtime ([`scorer_factory`]) and the tiny experts of
//! the embedded default ([`build_tiny_expert`]).
//!
//! **What an expert scores.** An item is a segment (caption or reasoning) of a response to a
//! prompt. The expert rebuilds the prompt's context from its uid (a [`PromptContexts`] source:
//! the RL [`PromptStore`], or the warm-up pairs) with *its own* processor, which may differ from
//! the policy's, and appends the assistant turn holding only the segment:
//!
//! ```text
//! <|im_start|>system … <|im_end|> <|im_start|>user <image…> question <|im_end|>
//! <|im_start|>assistant\n  SEGMENT  <|im_end|>
//!                                    ^ the score is the value head here (last valid token)
//! ```
//!
//! The context is `apply_chat_template(system + user, add_generation_prompt = true)`; the
//! segment is the item's *text*, trimmed and stripped of trailing `<|im_end|>` / `<|endoftext|>`,
//! tokenised by the expert's tokenizer, then one `<|im_end|>` token. Teacher and student
//! segments go through this one code path, so they end with the same token (the original scored
//! teacher segments at a pad token and student ones at `</caption>` or `<|im_end|>`,
//! PRISM_ALGORITHM.md §11.5), and nothing is truncated (the original cut teacher segments at 512
//! tokens, §11.4): a sequence longer than [`ExpertOptions::max_tokens`] (default: the model's
//! `max_position_embeddings`) is an error naming the prompt uid. The segment carries its own
//! tags (`<caption>…</caption>`, `<think>…</think>\n<answer>…</answer>`), as both the policy's
//! split segments and the teacher's columns do. A segment's `tokens` (the policy's ids) are not
//! used: the expert's tokenizer may differ, and the text is what both sides share.
//!
//! **Training.** One Bradley–Terry step per call: scores `s = v[last valid token]` after the
//! per-token clean-up of §3.3 (non-finite → 0, clamp to ±`score_clip`), loss
//! `mean(−log σ(s_T − s_S)) + l2_coef·(mean s_T² + mean s_S²)/2 (+ lb_coef · router
//! load-balancing loss for a MoE)`, accuracy `mean [s_T > s_S]` of the same forward (before the
//! update), grad-norm clipping, our AdamW. A non-finite loss or gradient norm skips the step
//! (gradients zeroed) and reports the loss as NaN. Optional dropout on the final hidden states
//! (the original head's `Dropout(0.1)`) is active in training only.
//!
//! Shapes: token batches `[B, S]` right-padded (a causal model never lets a valid token see a
//! pad), hidden `[B, S, D]`, values `[B, S]`, scores `[B]`; a training micro-batch is
//! `[chosen; rejected]`, `2m` rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::prompts::PromptStore;
use super::sft::{IGNORE_INDEX, SftExample, collate_examples, copy_processor_files};
use super::{Result, StageError};
use crate::actors::config::DeviceSpec;
use crate::actors::engine::{EngineResult, ScorerEngine, ScorerFactory};
use crate::actors::messages::{BtPair, DiscStats, ScoreItem, WeightsSnapshot};
use crate::actors::weights::{load_into_tensors, snapshot_from_tensors};
use crate::algo::adamw::{AdamW, AdamWConfig, clip_grad_norm};
use crate::algo::discriminator::{last_valid_token_scores, load_balancing_loss, pairwise_bt_loss};
use crate::algo::numerics::is_finite;
use crate::config::PadSide;
use crate::models::chat_template::ChatMessage;
use crate::models::processor::{EncodedPrompt, Processor};
use crate::models::tokenizer::{ENDOFTEXT, IM_END};
use crate::models::upcycle::{UpcycleOptions, upcycle};
use crate::models::{Heads, Qwen3Vl, ValueHeadConfig};

/// Prefix of the optimizer state's tensors in an expert's [`WeightsSnapshot`].
pub const OPTIM_PREFIX: &str = "optim/";

/// Training and scoring options of an expert (`[stages.expert]` of a warm-up stage; the
/// alignment stage's expert table). `Default`: PRISM's optimizer (§4.1: lr 1e-5, AdamW
/// weight decay 0.01, torch betas, grad clip 1.0) with the alignment stage's score clip (10)
/// and L2 coefficient (0.001), no dropout; the tiny configs raise the LR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpertOptions {
    /// AdamW learning rate (PRISM: 1e-5 warm-up, 1e-6 alignment).
    pub lr: f64,
    /// Decoupled weight decay (PRISM 0.01).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Grad-norm clip (PRISM 1.0).
    pub grad_clip: f64,
    /// Per-token and per-score clamp ±`score_clip` (PRISM alignment 10.0); `None`: no clamp.
    pub score_clip: Option<f64>,
    /// Coefficient of the L2 score regulariser (mean of the squared teacher and student
    /// scores; PRISM alignment 0.001).
    pub l2_coef: f64,
    /// Coefficient of the MoE router load-balancing loss; `None`: the checkpoint's
    /// `router_aux_loss_coef` (PRISM 0.01). Ignored for a dense expert.
    pub lb_coef: Option<f64>,
    /// Dropout on the final hidden states before the value head, training only (PRISM's head:
    /// 0.1; 0 keeps the tiny demo deterministic).
    pub dropout: f64,
    /// Longest context + segment in tokens; `None`: the model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
    /// Pairs per forward when training (`2·micro_batch_pairs` rows), and half the rows per
    /// forward when scoring.
    pub micro_batch_pairs: usize,
    /// Parameter dtype of an expert loaded by [`scorer_factory`]: `float32` or `bfloat16`.
    pub dtype: String,
    /// Encoded prompt contexts kept per expert (images are preprocessed once per prompt).
    pub context_cache: usize,
}

impl Default for ExpertOptions {
    fn default() -> Self {
        ExpertOptions {
            lr: 1e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            grad_clip: 1.0,
            score_clip: Some(10.0),
            l2_coef: 0.001,
            lb_coef: None,
            dropout: 0.0,
            max_tokens: None,
            micro_batch_pairs: 8,
            dtype: "float32".into(),
            context_cache: 1024,
        }
    }
}

impl ExpertOptions {
    /// Checks every field; the error names it.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr: must be finite and > 0, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay: must be finite and >= 0, got {}",
                self.weight_decay
            ));
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{name}: must be in [0, 1), got {v}"));
            }
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            return Err(format!(
                "grad_clip: must be finite and > 0, got {}",
                self.grad_clip
            ));
        }
        if let Some(c) = self.score_clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!("score_clip: must be finite and > 0, got {c}"));
        }
        for (name, v) in [("l2_coef", Some(self.l2_coef)), ("lb_coef", self.lb_coef)] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!("{name}: must be finite and >= 0, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout: must be in [0, 1), got {}", self.dropout));
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens: must be at least 1 when set".into());
        }
        if self.micro_batch_pairs == 0 {
            return Err("micro_batch_pairs: must be at least 1".into());
        }
        self.kind()?;
        self.adamw()
            .validate()
            .map_err(|e| format!("optimizer: {e}"))
    }

    /// The AdamW settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        }
    }

    /// The parameter dtype named by `dtype`.
    pub fn kind(&self) -> std::result::Result<Kind, String> {
        match self.dtype.as_str() {
            "float32" => Ok(Kind::Float),
            "bfloat16" => Ok(Kind::BFloat16),
            other => Err(format!(
                "dtype: expected \"float32\" or \"bfloat16\", got {other:?}"
            )),
        }
    }
}

/// The chat context of one prompt: system and user turns and the user turn's images.
#[derive(Debug, Clone, Copy)]
pub struct PromptContext<'a> {
    /// Identifies the prompt's context for caching (uids of different passes over the same row
    /// share it).
    pub key: u64,
    pub messages: &'a [ChatMessage],
    pub images: &'a [RgbImage],
}

/// Where an expert finds the context of a prompt uid.
pub trait PromptContexts: Send + Sync {
    /// The context of prompt `uid`, `None` when the uid is unknown.
    fn context(&self, uid: u64) -> Option<PromptContext<'_>>;
}

impl PromptContexts for PromptStore {
    fn context(&self, uid: u64) -> Option<PromptContext<'_>> {
        self.get(uid).map(|e| PromptContext {
            key: e.row as u64,
            messages: &e.messages,
            images: &e.images,
        })
    }
}

/// The segment text an expert scores: trimmed, without trailing end-of-turn or end-of-text
/// tokens (a student segment decoded with special tokens carries them; a teacher's does not).
pub fn normalize_segment(text: &str) -> &str {
    let mut t = text.trim();
    loop {
        let before = t.len();
        for end in [IM_END, ENDOFTEXT] {
            if let Some(s) = t.strip_suffix(end) {
                t = s.trim_end();
            }
        }
        if t.len() == before {
            return t;
        }
    }
}

/// What one training step did.
#[derive(Debug, Clone, PartialEq)]
pub struct BtReport {
    /// Whole loss (NaN when the step was skipped for a non-finite loss).
    pub loss: f64,
    /// Bradley–Terry part.
    pub bt_loss: f64,
    /// Load-balancing loss before its coefficient (MoE only).
    pub lb_loss: Option<f64>,
    /// Fraction of pairs ranked right, before the update.
    pub accuracy: f64,
    /// Per pair: the chosen segment scored strictly higher (before the update).
    pub correct: Vec<bool>,
    /// Mean chosen and rejected scores (after clean-up).
    pub chosen_mean: f64,
    pub rejected_mean: f64,
    /// Total gradient norm before clipping (NaN when not computed).
    pub grad_norm: f64,
    /// The step was skipped (non-finite loss or gradient norm).
    pub skipped: bool,
    /// Tokens in the step's sequences.
    pub tokens: i64,
}

/// A Qwen3-VL (dense or MoE) with a value head, scoring and training as a PRISM expert.
pub struct QwenScorer {
    model: Qwen3Vl,
    processor: Processor,
    contexts: Arc<dyn PromptContexts>,
    opts: ExpertOptions,
    opt: AdamW,
    params: Vec<Tensor>,
    kind: Kind,
    max_tokens: usize,
    im_end: u32,
    /// `(num_experts, top_k, coef)` of a MoE expert.
    moe: Option<(i64, i64, f64)>,
    cache: HashMap<u64, EncodedPrompt>,
}

impl std::fmt::Debug for QwenScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenScorer")
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("moe", &self.moe)
            .finish()
    }
}

fn invalid(message: String) -> StageError {
    StageError::Invalid {
        stage: "expert".into(),
        message,
    }
}

impl QwenScorer {
    /// Wraps a model that has a value head. Every parameter is trained.
    pub fn new(
        model: Qwen3Vl,
        processor: Processor,
        contexts: Arc<dyn PromptContexts>,
        opts: &ExpertOptions,
    ) -> Result<Self> {
        opts.validate().map_err(invalid)?;
        if model.heads().value_head.is_none() {
            return Err(invalid(
                "the expert checkpoint has no value head (score.weight)".into(),
            ));
        }
        let kind = model.language_model.embed_tokens.kind();
        let limit = model.config.text_config.max_position_embeddings.max(1) as usize;
        let max_tokens = opts.max_tokens.unwrap_or(limit);
        let im_end = processor
            .tokenizer
            .token_to_id(IM_END)
            .ok_or_else(|| invalid(format!("the expert's tokenizer has no {IM_END} token")))?;
        let moe = model.config.text_config.moe.as_ref().map(|m| {
            (
                m.num_experts,
                m.num_experts_per_tok,
                opts.lb_coef.unwrap_or(m.router_aux_loss_coef),
            )
        });
        let named: Vec<(String, Tensor)> = model.named_parameters().into_iter().collect();
        let opt = AdamW::with_default_groups(opts.adamw(), named)?;
        let params = opt.params();
        Ok(QwenScorer {
            model,
            processor,
            contexts,
            opts: opts.clone(),
            opt,
            params,
            kind,
            max_tokens,
            im_end,
            moe,
            cache: HashMap::new(),
        })
    }

    /// Loads the checkpoint `dir` (weights with a value head, and its processor files).
    pub fn load(
        dir: &Path,
        device: Device,
        kind: Kind,
        opts: &ExpertOptions,
        contexts: Arc<dyn PromptContexts>,
    ) -> Result<Self> {
        let processor = Processor::from_dir(dir)?;
        let model = Qwen3Vl::load(dir, device, kind)?;
        Self::new(model, processor, contexts, opts)
    }

    pub fn model(&self) -> &Qwen3Vl {
        &self.model
    }

    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.opt
    }

    pub fn options(&self) -> &ExpertOptions {
        &self.opts
    }

    /// The longest sequence this expert scores.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The segment's tokens as the expert sees them: normalised text, then `<|im_end|>`.
    pub fn segment_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self
            .processor
            .tokenizer
            .encode(normalize_segment(text))
            .map_err(|e| invalid(format!("tokenizing a segment: {e}")))?;
        ids.push(self.im_end);
        Ok(ids)
    }

    /// The encoded context (chat template with the generation prompt, image tokens expanded)
    /// of prompt `uid`, cached by the context's key.
    pub fn context_ids(&mut self, uid: u64) -> Result<EncodedPrompt> {
        let ctx = self
            .contexts
            .context(uid)
            .ok_or_else(|| invalid(format!("prompt {uid}: unknown prompt uid")))?;
        if let Some(e) = self.cache.get(&ctx.key) {
            return Ok(e.clone());
        }
        let enc = self
            .processor
            .encode_chat(ctx.messages, ctx.images, true, ctx.key as usize)
            .map_err(|e| invalid(format!("prompt {uid}: {e}")))?;
        if self.cache.len() >= self.opts.context_cache {
            self.cache.clear();
        }
        if self.opts.context_cache > 0 {
            self.cache.insert(ctx.key, enc.clone());
        }
        Ok(enc)
    }

    /// Context + segment of one item, checked against the length limit.
    pub fn encode_item(&mut self, uid: u64, text: &str) -> Result<SftExample> {
        let ctx = self.context_ids(uid)?;
        let seg = self.segment_ids(text)?;
        let n = ctx.input_ids.len() + seg.len();
        if n > self.max_tokens {
            return Err(invalid(format!(
                "prompt {uid}: context ({}) + segment ({}) = {n} tokens, over the expert's limit of {}",
                ctx.input_ids.len(),
                seg.len(),
                self.max_tokens
            )));
        }
        let mut input_ids = ctx.input_ids;
        input_ids.extend(seg);
        Ok(SftExample {
            labels: vec![IGNORE_INDEX; input_ids.len()],
            input_ids,
            images: ctx.images,
        })
    }

    /// Scores `[B]` (f32, gradient-carrying unless under `no_grad`) of encoded items, the
    /// router logits' load-balancing loss (MoE only), and the real token count.
    fn forward_scores(
        &self,
        rows: &[SftExample],
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>, i64)> {
        let batch = collate_examples(
            &self.processor,
            rows,
            PadSide::Right,
            usize::MAX,
            self.model.device(),
            self.kind,
        )?;
        let out = self.model.forward_hidden(&batch.inputs, None, None)?;
        let mut hidden = out.hidden;
        if train && self.opts.dropout > 0.0 {
            hidden = hidden.f_dropout(self.opts.dropout, true)?;
        }
        // [B, S] values → [B] at the last valid token, cleaned and clamped
        let values = self
            .model
            .value_head_forward(&hidden)?
            .f_to_kind(Kind::Float)?;
        let mask = &batch.inputs.attention_mask;
        let scores = last_valid_token_scores(&values, mask, self.opts.score_clip)?;
        let lb = match self.moe {
            Some((e, k, _)) if train => {
                Some(load_balancing_loss(&out.router_logits, e, k, Some(mask))?)
            }
            _ => None,
        };
        Ok((scores, lb, batch.num_tokens))
    }

    /// One score per item, in order (eval mode, no gradients).
    pub fn scores(&mut self, items: &[ScoreItem]) -> Result<Vec<f32>> {
        let _g = tch::no_grad_guard();
        let rows = 2 * self.opts.micro_batch_pairs;
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(rows) {
            let encoded = chunk
                .iter()
                .map(|it| self.encode_item(it.prompt_uid, &it.segment.text))
                .collect::<Result<Vec<_>>>()?;
            let (s, _, _) = self.forward_scores(&encoded, false)?;
            out.extend(Vec::<f32>::try_from(&s)?);
        }
        Ok(out)
    }

    /// Scores of pairs without training: `(chosen, rejected)` per pair (eval mode).
    pub fn pair_scores(&mut self, pairs: &[BtPair]) -> Result<Vec<(f32, f32)>> {
        let items: Vec<ScoreItem> = pairs
            .iter()
            .flat_map(|p| {
                [&p.chosen, &p.rejected].map(|s| ScoreItem {
                    prompt_uid: p.prompt_uid,
                    segment: s.clone(),
                })
            })
            .collect();
        let s = self.scores(&items)?;
        Ok(s.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    /// One Bradley–Terry step at learning rate `lr` (see the module doc).
    pub fn train_step(&mut self, pairs: &[BtPair], lr: f64) -> Result<BtReport> {
        if pairs.is_empty() {
            return Err(invalid("a training step needs at least one pair".into()));
        }
        let total = pairs.len() as f64;
        let mut report = BtReport {
            loss: 0.0,
            bt_loss: 0.0,
            lb_loss: self.moe.map(|_| 0.0),
            accuracy: 0.0,
            correct: Vec::with_capacity(pairs.len()),
            chosen_mean: 0.0,
            rejected_mean: 0.0,
            grad_norm: f64::NAN,
            skipped: false,
            tokens: 0,
        };
        self.opt.zero_grad();
        for chunk in pairs.chunks(self.opts.micro_batch_pairs) {
            let m = chunk.len() as i64;
            let w = chunk.len() as f64 / total;
            let mut rows = Vec::with_capacity(2 * chunk.len());
            for p in chunk {
                rows.push(self.encode_item(p.prompt_uid, &p.chosen.text)?);
            }
            for p in chunk {
                rows.push(self.encode_item(p.prompt_uid, &p.rejected.text)?);
            }
            let (s, lb, tokens) = self.forward_scores(&rows, true)?;
            report.tokens += tokens;
            let chosen = s.f_narrow(0, 0, m)?;
            let rejected = s.f_narrow(0, m, m)?;
            let (bt, _) = pairwise_bt_loss(&chosen, &rejected)?;
            let l2 = (chosen.f_square()?.f_mean(Kind::Float)?
                + rejected.f_square()?.f_mean(Kind::Float)?)
                * 0.5;
            let mut loss = &bt + l2 * self.opts.l2_coef;
            if let (Some(lb), Some((_, _, coef))) = (&lb, self.moe) {
                loss += lb * coef;
                if let Some(x) = report.lb_loss.as_mut() {
                    *x += lb.f_double_value(&[])? * w;
                }
            }
            let (c, r) = (
                Vec::<f32>::try_from(&chosen)?,
                Vec::<f32>::try_from(&rejected)?,
            );
            report.correct.extend(c.iter().zip(&r).map(|(a, b)| a > b));
            report.chosen_mean += c.iter().map(|&x| f64::from(x)).sum::<f64>() / total;
            report.rejected_mean += r.iter().map(|&x| f64::from(x)).sum::<f64>() / total;
            let lv = loss.f_double_value(&[])?;
            report.bt_loss += bt.f_double_value(&[])? * w;
            report.loss += lv * w;
            if !lv.is_finite() {
                report.skipped = true;
                break;
            }
            (loss * w).f_backward()?;
        }
        report.accuracy =
            report.correct.iter().filter(|&&c| c).count() as f64 / report.correct.len() as f64;
        if !report.skipped {
            let norm = clip_grad_norm(&self.params, self.opts.grad_clip)?;
            report.grad_norm = norm.f_double_value(&[])?;
            report.skipped = !is_finite(&norm)?;
        }
        if report.skipped {
            report.loss = f64::NAN;
            tracing::warn!(
                loss = report.loss,
                grad_norm = report.grad_norm,
                "expert: non-finite step skipped"
            );
        } else {
            self.opt.step(lr)?;
        }
        self.opt.zero_grad();
        Ok(report)
    }

    /// Model parameters and optimizer state (under [`OPTIM_PREFIX`]) as named tensors.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.model.named_parameters().into_iter().collect();
        named.extend(
            self.opt
                .state_tensors()
                .into_iter()
                .map(|(k, t)| (format!("{OPTIM_PREFIX}{k}"), t)),
        );
        named
    }

    /// Writes the expert as an HF checkpoint into `dir` (weights, config with the value head,
    /// the expert's processor files copied from `processor_dir`).
    pub fn save(&self, dir: &Path, processor_dir: &Path) -> Result<()> {
        self.model.save(dir)?;
        copy_processor_files(processor_dir, dir)
    }
}

impl ScorerEngine for QwenScorer {
    fn score(&mut self, items: &[ScoreItem]) -> EngineResult<Vec<f32>> {
        Ok(self.scores(items)?)
    }

    fn bt_step(&mut self, pairs: &[BtPair]) -> EngineResult<DiscStats> {
        let r = self.train_step(pairs, self.opts.lr)?;
        Ok(DiscStats {
            loss: r.loss as f32,
            accuracy: r.accuracy as f32,
            version: 0,
        })
    }

    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot> {
        Ok(snapshot_from_tensors(version, &self.state())?)
    }

    fn restore(&mut self, weights: &WeightsSnapshot) -> EngineResult<()> {
        // the optimizer's state tensors share storage with its live state: copying into them
        // restores the moments; `load_state_tensors` then checks them and sets the step count
        let mut named = self.state();
        load_into_tensors(weights, &mut named)?;
        let optim: Vec<(String, Tensor)> = named
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix(OPTIM_PREFIX).map(|k| (k.to_string(), t)))
            .collect();
        self.opt.load_state_tensors(&optim)?;
        Ok(())
    }
}

/// The factory of an expert engine loaded from the HF checkpoint `dir` (with a value head and
/// processor files), on the actor's device, scoring prompts of `store`.
pub fn scorer_factory(dir: &Path, opts: &ExpertOptions, store: Arc<PromptStore>) -> ScorerFactory {
    let dir = dir.to_path_buf();
    let opts = opts.clone();
    Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn ScorerEngine>> {
            let kind = opts.kind()?;
            let contexts: Arc<dyn PromptContexts> = store.clone();
            let s = QwenScorer::load(&dir, d.into(), kind, &opts, contexts)
                .map_err(|e| format!("expert {}: {e}", dir.display()))?;
            Ok(Box::new(s))
        },
    )
}

/// Fills `dir` through `write(dir.partial)`, then replaces `dir` by it: a reader never sees a
/// half-written folder (a crash leaves only `.partial`, cleared on the next try).
pub fn write_dir_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
    }
    write(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| StageError::io(dir, e))
}

/// The perception and reasoning checkpoints in an experts folder written by the warm-up
/// (`final/` or `checkpoint-<step>/`): `perception/` and `reasoning/`, or one `shared/` model
/// used for both. An error names what is missing.
pub fn expert_dirs(experts: &Path) -> Result<(PathBuf, PathBuf)> {
    let has = |role: &str| experts.join(role).join("config.json").is_file();
    if has("perception") && has("reasoning") {
        Ok((experts.join("perception"), experts.join("reasoning")))
    } else if has("shared") {
        Ok((experts.join("shared"), experts.join("shared")))
    } else {
        Err(invalid(format!(
            "{}: no experts (expected perception/ and reasoning/, or shared/, each with a config.json)",
            experts.display()
        )))
    }
}

/// How the tiny experts of the embedded default are made (`[stages.init]` of a warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyExpertOptions {
    /// Start from the policy's weights (the architecture is always the policy's); `false`:
    /// random weights.
    pub from_policy: bool,
    /// Experts of the upcycled MoE; `1`: a dense expert.
    pub num_experts: i64,
    /// Experts per token of the MoE (PRISM: 2 of 4).
    pub top_k: i64,
    /// Std of the noise added to each expert copy (PRISM 0.01).
    pub noise_std: f64,
    /// Whether the value head `score` has a bias.
    pub value_head_bias: bool,
}

impl Default for TinyExpertOptions {
    fn default() -> Self {
        TinyExpertOptions {
            from_policy: true,
            num_experts: 1,
            top_k: 2,
            noise_std: 0.01,
            value_head_bias: true,
        }
    }
}

impl TinyExpertOptions {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_experts < 1 {
            return Err(format!(
                "num_experts: must be >= 1, got {}",
                self.num_experts
            ));
        }
        if self.num_experts > 1 && !(1..=self.num_experts).contains(&self.top_k) {
            return Err(format!(
                "top_k: must be in 1..={}, got {}",
                self.num_experts, self.top_k
            ));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(format!(
                "noise_std: must be finite and >= 0, got {}",
                self.noise_std
            ));
        }
        Ok(())
    }
}

/// Builds a tiny expert into `out`: the policy's architecture with a value head (`score`,
/// N(0, 0.02²)), the policy's weights (or random ones), upcycled into a top-k MoE when
/// `num_experts > 1` (PRISM's sparse upcycling, [`crate::models::upcycle`]), and the policy's
/// tokenizer and processor files. Written to `out.partial`, then renamed.
pub fn build_tiny_expert(
    policy_dir: &Path,
    out: &Path,
    opts: &TinyExpertOptions,
    seed: u64,
) -> Result<PathBuf> {
    opts.validate().map_err(invalid)?;
    let policy = Qwen3Vl::load(policy_dir, Device::Cpu, Kind::Float)?;
    let value_head = ValueHeadConfig {
        name: "score".into(),
        bias: opts.value_head_bias,
    };
    let base = if opts.from_policy {
        policy
    } else {
        Qwen3Vl::new_random(&policy.config, &Heads::lm(), Device::Cpu, Kind::Float, seed)?
    };
    let expert = if opts.num_experts > 1 {
        let up = UpcycleOptions {
            num_experts: opts.num_experts,
            top_k: opts.top_k,
            noise_std: opts.noise_std,
            seed,
            value_head,
            ..UpcycleOptions::default()
        };
        upcycle(&base, &up)?.0
    } else {
        let heads = Heads {
            lm_head: base.heads().lm_head,
            value_head: Some(value_head),
        };
        let m = Qwen3Vl::new_random(&base.config, &heads, Device::Cpu, Kind::Float, seed)?;
        let src = base.named_parameters();
        let _g = tch::no_grad_guard();
        for (name, mut t) in m.named_parameters() {
            if let Some(s) = src.get(&name) {
                t.f_copy_(s)?;
            }
        }
        m
    };
    write_dir_atomically(out, |tmp| {
        expert.save(tmp)?;
        copy_processor_files(policy_dir, tmp)
    })?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_normalised_the_same_way() {
        assert_eq!(
            normalize_segment("  <caption>a</caption>\n"),
            "<caption>a</caption>"
        );
        assert_eq!(
            normalize_segment("<answer>3</answer><|im_end|>"),
            "<answer>3</answer>"
        );
        assert_eq!(
            normalize_segment("<answer>3</answer>\n<|im_end|><|endoftext|> \n"),
            "<answer>3</answer>"
        );
        assert_eq!(normalize_segment("<|im_end|>"), "");
    }

    #[test]
    fn options_validation_names_the_field() {
        assert!(ExpertOptions::default().validate().is_ok());
        let bad = |f: fn(&mut ExpertOptions)| {
            let mut o = ExpertOptions::default();
            f(&mut o);
            o.validate().unwrap_err()
        };
        assert!(bad(|o| o.lr = 0.0).starts_with("lr"));
        assert!(bad(|o| o.score_clip = Some(-1.0)).starts_with("score_clip"));
        assert!(bad(|o| o.lb_coef = Some(f64::NAN)).starts_with("lb_coef"));
        assert!(bad(|o| o.micro_batch_pairs = 0).starts_with("micro_batch_pairs"));
        assert!(bad(|o| o.dtype = "fp8".into()).starts_with("dtype"));
        assert!(bad(|o| o.dropout = 1.0).starts_with("dropout"));
        let t = TinyExpertOptions {
            num_experts: 4,
            top_k: 5,
            ..TinyExpertOptions::default()
        };
        assert!(t.validate().unwrap_err().starts_with("top_k"));
    }
}
