//! The learner's engine ([`QwenLearner`]): one training step of a Qwen3-VL policy on a batch of
//! scored rollouts.
//!
//! Per step (PRISM_ALGORITHM.md §5.1, §6):
//! 1. per-rollout rewards: RLVR `0.8·acc + 0.2·format` (+ DAPO overlong penalty), placed on the
//!    last response token; alignment: the experts' caption / reasoning scores, format, accuracy;
//! 2. advantages per uid group: GRPO outcome advantage ([`grpo_outcome_advantage`]) or PRISM's
//!    multi-reward advantage ([`prism_multi_reward_advantage`]);
//! 3. DAPO dynamic sampling (optional): groups whose accuracy does not vary are dropped; if none
//!    is left the step is skipped (no update) and counted in `dynamic_sampling_skipped`. The
//!    coordinator already refills each step with varying groups
//!    ([`crate::actors::coordinator`], "Dynamic sampling"), so this drops something only when
//!    its rounds ran out with none kept;
//! 4. the kept rollouts are split into `mini_batches` mini-batches, each one AdamW update: a
//!    forward of prompt + response (images included) per micro-batch of `micro_batch_size`
//!    rollouts, the configured policy loss against the rollouts' *behaviour* log-probs (so from
//!    the second mini-batch on the ratio differs from 1 and clipping is real) normalised over the
//!    whole mini-batch ([`GlobalBatch`]), optional KL to the frozen input policy, backward
//!    (accumulated), grad-norm clip, one AdamW update;
//! 5. a non-finite loss or gradient norm skips the rest of the step (counted); after
//!    `max_bad_steps_in_row` such steps in a row the step fails with an error.
//!
//! Snapshots carry the weights (checkpoint keys), the AdamW state under `optimizer/` and the skip
//! counters under `learner/`; generators load only the weights. Shapes: `[B, T]` per response
//! token (T = longest response of the mini-batch), hidden `[B, S, D]`, logits `[B, T, V]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::RlOptions;
use super::policy::{PromptInputs, load_policy, suppressed_tokens};
use crate::actors::config::DeviceSpec;
use crate::actors::engine::{EngineResult, LearnerEngine};
use crate::actors::messages::{ScoredSample, StageKind, StepStats, TrainBatch, WeightsSnapshot};
use crate::actors::weights::{load_into_tensors, snapshot_from_tensors};
use crate::algo::adamw::{AdamW, clip_grad_norm};
use crate::algo::advantage::{
    GroupNorm, Groups, MultiRewardScores, dynamic_sampling_filter, grpo_outcome_advantage,
    outcome_to_token_rewards, overlong_penalty, prism_multi_reward_advantage,
};
use crate::algo::numerics::is_finite;
use crate::algo::policy_loss::{
    GlobalBatch, KlPenalty, PolicyBatch, entropy_from_logits, policy_loss, token_log_probs,
};
use crate::models::Qwen3Vl;
use crate::models::generate_cli::model_inputs;
use crate::models::processor::{PaddingSide, Processor};
use crate::report::metrics_log::keys;
use crate::reward::score::{ACC_WEIGHT, FORMAT_WEIGHT};
use crate::stages::prompts::PromptStore;

/// Prefix of the AdamW state in a learner snapshot.
pub const OPTIMIZER_PREFIX: &str = "optimizer/";
/// Snapshot key of the consecutive non-finite steps.
pub const BAD_IN_ROW_KEY: &str = "learner/bad_in_row";
/// Snapshot key of all skipped steps (non-finite and empty after the DAPO filter).
pub const SKIPPED_KEY: &str = "learner/skipped_total";

/// Logit given to suppressed tokens (finite, so entropy stays defined).
const SUPPRESSED_LOGIT: f64 = -1e9;

/// Per-rollout reward facts of a batch, host side.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRewards {
    /// The scalar reward (RLVR: score + overlong penalty; alignment: mean expert score).
    pub score: Vec<f32>,
    pub accuracy: Vec<f32>,
    pub format: Vec<f32>,
    pub caption: Vec<f32>,
    pub reasoning: Vec<f32>,
    /// Response lengths (EOS included).
    pub lengths: Vec<i64>,
}

/// `[B, T]` f32 response mask of `lengths` (T ≥ 1).
pub fn length_mask(lengths: &[i64]) -> EngineResult<Tensor> {
    let t = lengths.iter().copied().max().unwrap_or(0).max(1);
    let b = lengths.len() as i64;
    let ar = Tensor::f_arange(t, (Kind::Int64, Device::Cpu))?.f_unsqueeze(0)?;
    let len = Tensor::f_from_slice(lengths)?.f_view([b, 1])?;
    Ok(ar.f_lt_tensor(&len)?.f_to_kind(Kind::Float)?)
}

/// The reward facts of every sample; `overlong` adds DAPO's length penalty to the RLVR score.
pub fn batch_rewards(batch: &TrainBatch, opts: &RlOptions) -> EngineResult<BatchRewards> {
    let s = &batch.samples;
    let lengths: Vec<i64> = s
        .iter()
        .map(|x| x.rollout.response_ids.len() as i64)
        .collect();
    let accuracy: Vec<f32> = s.iter().map(|x| x.reward.accuracy.unwrap_or(0.0)).collect();
    let format: Vec<f32> = s.iter().map(|x| x.reward.format_score).collect();
    let caption: Vec<f32> = s.iter().map(|x| x.caption_score.unwrap_or(0.0)).collect();
    let reasoning: Vec<f32> = s.iter().map(|x| x.reasoning_score.unwrap_or(0.0)).collect();
    let mut score: Vec<f32> = match batch.kind {
        StageKind::Rlvr => accuracy
            .iter()
            .zip(&format)
            .map(|(&a, &f)| (ACC_WEIGHT * f64::from(a) + FORMAT_WEIGHT * f64::from(f)) as f32)
            .collect(),
        StageKind::Align => caption
            .iter()
            .zip(&reasoning)
            .map(|(&c, &r)| 0.5 * (c + r))
            .collect(),
    };
    if let (StageKind::Rlvr, Some(ob)) = (batch.kind, &opts.overlong)
        && !lengths.is_empty()
    {
        let pen = overlong_penalty(&Tensor::f_from_slice(&lengths)?, ob)?;
        for (x, p) in score.iter_mut().zip(Vec::<f32>::try_from(&pen)?) {
            *x += p;
        }
    }
    Ok(BatchRewards {
        score,
        accuracy,
        format,
        caption,
        reasoning,
        lengths,
    })
}

/// Token-level advantages `[B, T]` (T = longest response) of a batch, computed by the stage
/// kind's estimator over the uid groups, on the host in f32.
pub fn batch_advantages(
    batch: &TrainBatch,
    rewards: &BatchRewards,
    opts: &RlOptions,
) -> EngineResult<Tensor> {
    let uids: Vec<u64> = batch.samples.iter().map(|s| s.rollout.prompt_uid).collect();
    let groups = Groups::from_labels(&uids, Device::Cpu)?;
    let mask = length_mask(&rewards.lengths)?;
    let t = |v: &[f32]| Tensor::f_from_slice(v);
    Ok(match batch.kind {
        StageKind::Rlvr => {
            let token_rewards = outcome_to_token_rewards(&t(&rewards.score)?, &mask)?;
            grpo_outcome_advantage(&token_rewards, &mask, &groups, GroupNorm::default())?
        }
        StageKind::Align => {
            let (cap, cot, fmt) = (
                t(&rewards.caption)?,
                t(&rewards.reasoning)?,
                t(&rewards.format)?,
            );
            let acc = t(&rewards.accuracy)?;
            let has_acc = batch.samples.iter().any(|s| s.reward.accuracy.is_some());
            let scores = MultiRewardScores {
                caption: &cap,
                cot: &cot,
                format: Some(&fmt),
                acc: has_acc.then_some(&acc),
            };
            prism_multi_reward_advantage(scores, &mask, &groups, &opts.multi_reward)?.token_level
        }
    })
}

/// Indices of the samples DAPO's dynamic sampling keeps (all when it is off).
pub fn kept_samples(
    batch: &TrainBatch,
    rewards: &BatchRewards,
    opts: &RlOptions,
) -> EngineResult<Vec<i64>> {
    if !opts.dynamic_sampling || batch.samples.is_empty() {
        return Ok((0..batch.samples.len() as i64).collect());
    }
    let uids: Vec<u64> = batch.samples.iter().map(|s| s.rollout.prompt_uid).collect();
    let groups = Groups::from_labels(&uids, Device::Cpu)?;
    let f = dynamic_sampling_filter(&groups, &Tensor::f_from_slice(&rewards.accuracy)?)?;
    Ok(Vec::<i64>::try_from(&f.kept)?)
}

/// Statistics of one mini-batch update.
#[derive(Debug, Default, Clone)]
struct MbStats {
    loss: f64,
    pg_loss: f64,
    pg_clipfrac: f64,
    pg_clipfrac_lower: f64,
    ppo_kl: f64,
    kl: f64,
    entropy: f64,
    grad_norm: f64,
    lr: f64,
    tokens: f64,
}

/// The trainer of the policy.
pub struct QwenLearner {
    model: Qwen3Vl,
    /// Frozen input policy, only when `kl_coef > 0`.
    reference: Option<Qwen3Vl>,
    inputs: PromptInputs,
    opt: AdamW,
    params: Vec<Tensor>,
    opts: RlOptions,
    suppress: Tensor,
    /// Steps trained before this run (resume), so `inject_nan_steps` counts stage steps.
    step_offset: u64,
    bad_in_row: u64,
    skipped_total: u64,
}

impl QwenLearner {
    /// Loads the policy of `weights_dir` (and, with a KL term, the frozen reference from
    /// `reference_dir`) for prompts of `store`; restores the AdamW state of `optimizer` (an
    /// `optimizer.safetensors`) when resuming.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        weights_dir: &Path,
        reference_dir: &Path,
        optimizer: Option<&Path>,
        store: Arc<PromptStore>,
        opts: RlOptions,
        device: DeviceSpec,
        kind: Kind,
        step_offset: u64,
    ) -> EngineResult<Self> {
        let processor = Processor::from_dir(weights_dir)
            .map_err(|e| format!("policy processor {}: {e}", weights_dir.display()))?;
        let dev: Device = device.into();
        let model = load_policy(weights_dir, dev, kind)?;
        let reference = if matches!(opts.loss.kl, KlPenalty::None) {
            None
        } else {
            let r = load_policy(reference_dir, dev, kind)?;
            for (_, p) in r.named_parameters() {
                let _ = p.set_requires_grad(false);
            }
            Some(r)
        };
        let mut me = Self::new(model, reference, PromptInputs::new(store, processor), opts)?;
        me.step_offset = step_offset;
        if let Some(path) = optimizer {
            let tensors = Tensor::read_safetensors(path)
                .map_err(|e| format!("optimizer state {}: {e}", path.display()))?;
            me.opt
                .load_state_tensors(&tensors)
                .map_err(|e| format!("optimizer state {}: {e}", path.display()))?;
        }
        Ok(me)
    }

    /// A learner over loaded models.
    pub fn new(
        model: Qwen3Vl,
        reference: Option<Qwen3Vl>,
        inputs: PromptInputs,
        opts: RlOptions,
    ) -> EngineResult<Self> {
        opts.loss.validate()?;
        let trainable: Vec<(String, Tensor)> = model.named_parameters().into_iter().collect();
        let opt = AdamW::with_default_groups(opts.adamw, trainable)?;
        let params = opt.params();
        let suppress = Tensor::f_from_slice(&suppressed_tokens(inputs.processor()))?
            .f_to_device(model.device())?;
        Ok(QwenLearner {
            model,
            reference,
            inputs,
            opt,
            params,
            opts,
            suppress,
            step_offset: 0,
            bad_in_row: 0,
            skipped_total: 0,
        })
    }

    /// The trained model.
    pub fn model(&self) -> &Qwen3Vl {
        &self.model
    }

    /// AdamW updates so far.
    pub fn optimizer_steps(&self) -> i64 {
        self.opt.step_count()
    }

    /// Log-probs `[B, T]` of each sample's response tokens under `model` (prompt + response in
    /// one forward, images included), the response mask `[B, T]` and the logits `[B, T, V]`
    /// (divided by the rollout temperature, placeholder tokens suppressed). On the model's
    /// device.
    pub fn response_logprobs(
        &mut self,
        model_ref: Option<&Qwen3Vl>,
        samples: &[&ScoredSample],
    ) -> EngineResult<(Tensor, Tensor, Tensor)> {
        let model = model_ref.unwrap_or(&self.model);
        let dev = model.device();
        let mut rows = Vec::with_capacity(samples.len());
        let mut starts = Vec::with_capacity(samples.len());
        let mut lengths = Vec::with_capacity(samples.len());
        for s in samples {
            let r = &s.rollout;
            if r.behaviour_logprobs.len() != r.response_ids.len() {
                return Err(format!(
                    "rollout {} of prompt {}: {} behaviour log-probs for {} tokens",
                    r.sample_index,
                    r.prompt_uid,
                    r.behaviour_logprobs.len(),
                    r.response_ids.len()
                )
                .into());
            }
            if s.prompt.prompt_ids.is_empty() {
                return Err(format!("prompt {} has no tokens", s.prompt.uid).into());
            }
            rows.push(self.inputs.encode(&s.prompt, &r.response_ids)?);
            starts.push(s.prompt.prompt_ids.len() as i64);
            lengths.push(r.response_ids.len() as i64);
        }
        let enc = self
            .inputs
            .processor()
            .collate(&rows, PaddingSide::Right, None)?;
        let inputs = model_inputs(&enc, dev)?;
        let b = samples.len() as i64;
        let t = lengths.iter().copied().max().unwrap_or(0).max(1);
        // position of the logit that predicts response token j of row i: P_i − 1 + j
        let mut index = Vec::with_capacity((b * t) as usize);
        let mut labels = Vec::with_capacity((b * t) as usize);
        for (i, s) in samples.iter().enumerate() {
            for j in 0..t {
                let jj = j.min((lengths[i] - 1).max(0));
                index.push(starts[i] - 1 + jj);
                labels.push(s.rollout.response_ids.get(j as usize).copied().unwrap_or(0));
            }
        }
        let index = Tensor::f_from_slice(&index)?
            .f_view([b, t])?
            .f_to_device(dev)?;
        let labels = Tensor::f_from_slice(&labels)?
            .f_view([b, t])?
            .f_to_device(dev)?;
        let mask = length_mask(&lengths)?.f_to_device(dev)?;
        let out = model.forward_hidden(&inputs, None, None)?;
        let d = out.hidden.size()[2];
        // [B, T, D] hidden states at the predicting positions, then the LM head
        let h = out.hidden.f_gather(
            1,
            &index.f_unsqueeze(-1)?.f_expand([b, t, d], false)?,
            false,
        )?;
        let temperature = if self.opts.sampling.temperature > 0.0 {
            f64::from(self.opts.sampling.temperature)
        } else {
            1.0
        };
        let mut logits = model
            .logits(&h)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(temperature)?;
        if self.suppress.numel() > 0 {
            logits = logits.f_index_fill(2, &self.suppress, SUPPRESSED_LOGIT)?;
        }
        let logp = token_log_probs(&logits, &labels)?;
        Ok((logp, mask, logits))
    }

    /// Forward, loss and backward of one micro-batch (gradients accumulate). `global` holds
    /// the normalisers of the whole mini-batch when it is split, so the micro-batch losses sum
    /// to the mini-batch loss. `None` when the loss is not finite (nothing backpropagated).
    fn micro_backward(
        &mut self,
        samples: &[&ScoredSample],
        adv_rows: &Tensor,
        global: Option<GlobalBatch>,
        inject_nan: bool,
    ) -> EngineResult<Option<MbStats>> {
        let (logp, mask, logits) = self.response_logprobs(None, samples)?;
        let dev = logp.device();
        let (b, t) = logp.size2()?;
        let mut old = Vec::with_capacity((b * t) as usize);
        for s in samples {
            let lp = &s.rollout.behaviour_logprobs;
            old.extend((0..t as usize).map(|j| lp.get(j).copied().unwrap_or(0.0)));
        }
        let old = Tensor::f_from_slice(&old)?
            .f_view([b, t])?
            .f_to_device(dev)?;
        let adv = adv_rows.f_narrow(1, 0, t)?.f_to_device(dev)?;
        let entropy = if self.opts.loss.entropy_coef != 0.0 {
            entropy_from_logits(&logits)?
        } else {
            entropy_from_logits(&logits.detach())?
        };
        let ref_logp = match self.reference.take() {
            Some(r) => {
                let res = tch::no_grad(|| self.response_logprobs(Some(&r), samples));
                self.reference = Some(r);
                Some(res?.0)
            }
            None => None,
        };
        let (mut loss, stats) = policy_loss(
            &self.opts.loss,
            PolicyBatch {
                log_prob: &logp,
                old_log_prob: &old,
                advantages: &adv,
                response_mask: &mask,
                ref_log_prob: ref_logp.as_ref(),
                entropy: Some(&entropy),
                global_batch: global,
            },
        )?;
        if inject_nan {
            loss *= f64::NAN;
        }
        let value = loss.f_double_value(&[])?;
        if !value.is_finite() {
            return Ok(None);
        }
        loss.f_backward()?;
        let scalar = |t: &Tensor| t.f_double_value(&[]);
        Ok(Some(MbStats {
            loss: value,
            pg_loss: scalar(&stats.pg_loss)?,
            pg_clipfrac: scalar(&stats.pg_clipfrac)?,
            pg_clipfrac_lower: scalar(&stats.pg_clipfrac_lower)?,
            ppo_kl: scalar(&stats.ppo_kl)?,
            kl: stats.kl.as_ref().map(scalar).transpose()?.unwrap_or(0.0),
            entropy: stats
                .entropy
                .as_ref()
                .map(scalar)
                .transpose()?
                .unwrap_or(0.0),
            grad_norm: 0.0,
            lr: 0.0,
            tokens: mask.f_sum(Kind::Double)?.f_double_value(&[])?,
        }))
    }

    /// One mini-batch update (micro-batches of `micro_batch_size` rollouts, gradients
    /// accumulated, then one clip and one AdamW step); `None` when the loss or the gradient is
    /// not finite (nothing applied).
    fn update(
        &mut self,
        samples: &[&ScoredSample],
        adv_rows: &Tensor,
        inject_nan: bool,
    ) -> EngineResult<Option<MbStats>> {
        let size = match self.opts.micro_batch_size {
            0 => samples.len().max(1),
            n => n,
        };
        // mini-batch normalisers, only when it is split (one chunk aggregates over itself)
        let global = (samples.len() > size).then(|| {
            let lens = samples.iter().map(|s| s.rollout.response_ids.len());
            GlobalBatch {
                num_tokens: lens.clone().sum::<usize>() as f64,
                num_sequences: lens.filter(|&l| l > 0).count() as f64,
            }
        });
        let mut acc = MbStats::default();
        for (k, chunk) in samples.chunks(size).enumerate() {
            let rows = adv_rows.f_narrow(0, (k * size) as i64, chunk.len() as i64)?;
            let Some(s) = self.micro_backward(chunk, &rows, global, inject_nan)? else {
                self.opt.zero_grad();
                return Ok(None);
            };
            // aggregated terms (loss, KL, entropy) are shares of the mini-batch value and add up;
            // the per-token fractions are micro-batch means, weighted by tokens
            let w = s.tokens;
            acc.loss += s.loss;
            acc.pg_loss += s.pg_loss;
            acc.kl += s.kl;
            acc.entropy += s.entropy;
            acc.pg_clipfrac += s.pg_clipfrac * w;
            acc.pg_clipfrac_lower += s.pg_clipfrac_lower * w;
            acc.ppo_kl += s.ppo_kl * w;
            acc.tokens += w;
        }
        let n = acc.tokens.max(1.0);
        acc.pg_clipfrac /= n;
        acc.pg_clipfrac_lower /= n;
        acc.ppo_kl /= n;
        let norm = clip_grad_norm(&self.params, self.opts.max_grad_norm)?;
        if !is_finite(&norm)? {
            self.opt.zero_grad();
            return Ok(None);
        }
        let lr = self.opts.adamw.lr * self.opts.schedule.factor(self.opt.step_count());
        self.opt.step(lr)?;
        self.opt.zero_grad();
        acc.grad_norm = norm.f_double_value(&[])?;
        acc.lr = lr;
        Ok(Some(acc))
    }
}

fn mean(xs: &[f32]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64
    }
}

impl LearnerEngine for QwenLearner {
    fn step(&mut self, batch: &TrainBatch) -> EngineResult<StepStats> {
        let stage_step = self.step_offset + batch.step + 1;
        let rewards = batch_rewards(batch, &self.opts)?;
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        m.insert(keys::REWARD_MEAN.into(), mean(&rewards.score));
        m.insert(keys::ACCURACY.into(), mean(&rewards.accuracy));
        m.insert(keys::FORMAT_VALID_RATE.into(), mean(&rewards.format));
        let lens: Vec<f32> = rewards.lengths.iter().map(|&l| l as f32).collect();
        m.insert("response_length_mean".into(), mean(&lens));
        m.insert(
            "response_length_max".into(),
            lens.iter().copied().fold(0.0f32, f32::max).into(),
        );
        if batch.kind == StageKind::Align {
            m.insert(keys::REWARD_PERCEPTION.into(), mean(&rewards.caption));
            m.insert(keys::REWARD_REASONING.into(), mean(&rewards.reasoning));
        }
        let kept = kept_samples(batch, &rewards, &self.opts)?;
        let groups_total = {
            let mut u: Vec<u64> = batch.samples.iter().map(|s| s.rollout.prompt_uid).collect();
            u.sort_unstable();
            u.dedup();
            u.len()
        };
        let groups_kept = {
            let mut u: Vec<u64> = kept
                .iter()
                .map(|&i| batch.samples[i as usize].rollout.prompt_uid)
                .collect();
            u.sort_unstable();
            u.dedup();
            u.len()
        };
        m.insert("groups_kept".into(), groups_kept as f64);
        m.insert("groups_total".into(), groups_total as f64);
        let mut skipped_empty = 0.0;
        let mut skipped_bad = 0.0;
        let mut done: Vec<MbStats> = Vec::new();
        if kept.is_empty() {
            // defined behaviour: nothing to learn from (empty batch, or every group's accuracy
            // constant under DAPO dynamic sampling): no update, counted
            skipped_empty = 1.0;
            self.skipped_total += 1;
        } else {
            let adv = batch_advantages(batch, &rewards, &self.opts)?;
            let per_seq: Vec<f32> = {
                let mask = length_mask(&rewards.lengths)?;
                let s = adv.f_sum_dim_intlist(1, false, Kind::Float)?;
                let n = mask
                    .f_sum_dim_intlist(1, false, Kind::Float)?
                    .f_clamp_min(1.0)?;
                Vec::<f32>::try_from(&(s / n))?
            };
            let kept_adv: Vec<f32> = kept.iter().map(|&i| per_seq[i as usize]).collect();
            let am = mean(&kept_adv);
            let var = kept_adv
                .iter()
                .map(|&a| (f64::from(a) - am).powi(2))
                .sum::<f64>()
                / kept_adv.len().max(1) as f64;
            m.insert("advantage_mean".into(), am);
            m.insert("advantage_std".into(), var.sqrt());
            let n_mb = self.opts.mini_batches.clamp(1, kept.len());
            let size = kept.len().div_ceil(n_mb);
            let inject = self.opts.inject_nan_steps.contains(&stage_step);
            for chunk in kept.chunks(size) {
                let samples: Vec<&ScoredSample> =
                    chunk.iter().map(|&i| &batch.samples[i as usize]).collect();
                let idx = Tensor::f_from_slice(chunk)?;
                let rows = adv.f_index_select(0, &idx)?;
                match self.update(&samples, &rows, inject)? {
                    Some(s) => done.push(s),
                    None => {
                        skipped_bad = 1.0;
                        break;
                    }
                }
            }
            if skipped_bad > 0.0 {
                self.bad_in_row += 1;
                self.skipped_total += 1;
                if self.bad_in_row >= self.opts.max_bad_steps_in_row {
                    return Err(format!(
                        "step {stage_step}: {} non-finite steps in a row ({} skipped in all), \
                         stopping",
                        self.bad_in_row, self.skipped_total
                    )
                    .into());
                }
            } else {
                self.bad_in_row = 0;
            }
        }
        let avg = |f: fn(&MbStats) -> f64| {
            if done.is_empty() {
                f64::NAN
            } else {
                done.iter().map(f).sum::<f64>() / done.len() as f64
            }
        };
        let loss = if skipped_bad > 0.0 {
            f64::NAN
        } else {
            avg(|s| s.loss)
        };
        m.insert(keys::LOSS.into(), loss);
        m.insert(keys::POLICY_LOSS.into(), avg(|s| s.pg_loss));
        m.insert("pg_clipfrac".into(), avg(|s| s.pg_clipfrac));
        m.insert("pg_clipfrac_lower".into(), avg(|s| s.pg_clipfrac_lower));
        m.insert("ppo_kl".into(), avg(|s| s.ppo_kl));
        m.insert(keys::KL.into(), avg(|s| s.kl));
        m.insert("entropy".into(), avg(|s| s.entropy));
        m.insert("grad_norm".into(), avg(|s| s.grad_norm));
        m.insert("lr".into(), done.last().map_or(f64::NAN, |s| s.lr));
        m.insert("updates".into(), done.len() as f64);
        m.insert("skipped_nonfinite".into(), skipped_bad);
        m.insert("dynamic_sampling_skipped".into(), skipped_empty);
        m.insert("skipped_total".into(), self.skipped_total as f64);
        let tokens: f64 = done.iter().map(|s| s.tokens).sum();
        m.insert("tokens".into(), tokens);
        Ok(StepStats {
            version: 0,
            loss: loss as f32,
            tokens: tokens as u64,
            extra: m.into_iter().collect(),
        })
    }

    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot> {
        let mut named: Vec<(String, Tensor)> = self.model.named_parameters().into_iter().collect();
        for (k, t) in self.opt.state_tensors() {
            named.push((format!("{OPTIMIZER_PREFIX}{k}"), t));
        }
        named.push((BAD_IN_ROW_KEY.into(), Tensor::from(self.bad_in_row as i64)));
        named.push((SKIPPED_KEY.into(), Tensor::from(self.skipped_total as i64)));
        Ok(snapshot_from_tensors(version, &named)?)
    }

    fn restore(&mut self, weights: &WeightsSnapshot) -> EngineResult<()> {
        let mut named: Vec<(String, Tensor)> = self.model.named_parameters().into_iter().collect();
        load_into_tensors(weights, &mut named)?;
        // the live optimizer state tensors share storage with the optimizer: copy into them,
        // then hand them back so the step count (a fresh scalar) is restored too
        let mut state: Vec<(String, Tensor)> = self
            .opt
            .state_tensors()
            .into_iter()
            .map(|(k, t)| (format!("{OPTIMIZER_PREFIX}{k}"), t))
            .collect();
        load_into_tensors(weights, &mut state)?;
        let state: Vec<(String, Tensor)> = state
            .into_iter()
            .map(|(k, t)| (k[OPTIMIZER_PREFIX.len()..].to_string(), t))
            .collect();
        self.opt.load_state_tensors(&state)?;
        let mut counters = vec![
            (BAD_IN_ROW_KEY.to_string(), Tensor::from(0i64)),
            (SKIPPED_KEY.to_string(), Tensor::from(0i64)),
        ];
        load_into_tensors(weights, &mut counters)?;
        self.bad_in_row = counters[0].1.f_int64_value(&[])?.max(0) as u64;
        self.skipped_total = counters[1].1.f_int64_value(&[])?.max(0) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_mask_covers_each_response() {
        let m = length_mask(&[2, 0, 3]).unwrap();
        assert_eq!(m.size(), [3, 3]);
        let v = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
        assert_eq!(v, [1., 1., 0., 0., 0., 0., 1., 1., 1.]);
        // an empty batch or only empty responses still gives one column
        assert_eq!(length_mask(&[0]).unwrap().size(), [1, 1]);
        assert_eq!(length_mask(&[]).unwrap().size(), [0, 1]);
    }
}
