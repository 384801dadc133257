//! Policy-gradient losses of the PPO family, their aggregation, KL-to-reference estimators and
//! entropy.
//!
//! Named algorithms are presets of orthogonal choices (STYLE habit 6): [`PolicyLoss::grpo`],
//! [`PolicyLoss::dapo`], [`PolicyLoss::gspo`] fill [`RatioLevel`], [`Clip`], an optional dual
//! clip, [`Aggregation`] and [`KlPenalty`]; [`PolicyLoss::validate`] rejects combinations that
//! make no sense (e.g. a sequence-level ratio with a token-level aggregation).
//!
//! Shapes: log-probs, advantages and masks `[B, T]`; logits `[B, T, V]`. Reference semantics:
//! verl 0.9.1 `core_algos.py` (`compute_policy_loss_vanilla`, `compute_policy_loss_gspo`,
//! `agg_loss`, `kl_penalty`, `entropy_from_logits`), matched to ~1e-7 in tests/algo_parity.rs,
//! including gradients with respect to the current log-probs. Two deliberate differences, both
//! only where verl produces NaN:
//! - every `[B, T]` input is zeroed outside the response mask before any arithmetic, so NaN/Inf
//!   in padding (log-probs of pad tokens) can neither reach the loss nor the gradient (verl's GSPO
//!   sums `Δ·mask`, so a NaN pad poisons its whole row);
//! - an aggregation over an all-zero mask returns 0 (verl 0.9.1 divides 0 by 0).
//!
//! No host syncs (except the label range check of [`token_log_probs`]); metrics are returned
//! as 0-dim tensors.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{Result, config_err, expect_device, expect_float, expect_shape, mask_as};

/// verl clamps the token log-ratio to [−20, 20] before `exp` ("for stability",
/// compute_policy_loss_vanilla): e^20 ≈ 4.9e8 still fits f32/bf16 comfortably, and a ratio that
/// far from 1 is clipped by PPO anyway, so the clamp only prevents Inf·0 = NaN.
pub const LOG_RATIO_CLAMP: f64 = 20.0;
/// verl clamps GSPO's token-wise log sequence ratio from above at 10 (e^10 ≈ 2.2e4), the same
/// overflow guard at the sequence level (compute_policy_loss_gspo).
pub const GSPO_LOG_RATIO_MAX: f64 = 10.0;
/// k3's inner log-ratio clamp (±20) and its output clamp (±10), both from verl `kl_penalty`
/// ("for numerical stability"): they bound e^k and the per-token penalty.
pub const K3_LOG_RATIO_CLAMP: f64 = 20.0;
/// See [`K3_LOG_RATIO_CLAMP`].
pub const K3_VALUE_CLAMP: f64 = 10.0;
/// verl's `masked_mean` adds 1e-8 to the mask count (metrics and seq-mean-token-mean).
const MASKED_MEAN_EPS: f64 = 1e-8;

/// Whether the importance ratio is per token (PPO) or per sequence (GSPO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioLevel {
    /// rₜ = π_θ(yₜ)/π_old(yₜ).
    Token,
    /// GSPO (arXiv 2507.18071): sᵢ = exp(mean over valid t of log rₜ), applied to every token of
    /// the sequence with the gradient of the token's own log-prob.
    Sequence,
}

/// The PPO clip range of the ratio.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clip {
    /// clip(r, 1−ε, 1+ε).
    Symmetric(f64),
    /// clip(r, 1−low, 1+high): DAPO's clip-higher (low 0.2, high 0.28).
    Decoupled { low: f64, high: f64 },
}

impl Clip {
    /// (ε_low, ε_high).
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Clip::Symmetric(e) => (e, e),
            Clip::Decoupled { low, high } => (low, high),
        }
    }
}

/// How the per-token loss matrix `[B, T]` becomes a scalar (verl `agg_loss`, dp_size 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Σ L·m / Σ m: every valid token of the micro-batch weighs the same (GRPO, DAPO).
    TokenMean,
    /// Mean over non-empty sequences of Σₜ L·m.
    SeqMeanTokenSum,
    /// Mean over non-empty sequences of (Σₜ L·m)/(Σₜ m + 1e-8) (GSPO).
    SeqMeanTokenMean,
    /// [`Aggregation::SeqMeanTokenSum`] divided by a constant horizon (Dr.GRPO): `None` uses the
    /// padded width T, as verl does; set it to the max response length to keep it constant.
    /// Note: verl ≤ 0.6 computed Σ_{i,t} L·m / T (no division by the number of sequences); verl
    /// 0.9.1, which we follow, takes the sequence mean first.
    SeqMeanTokenSumNorm { horizon: Option<f64> },
}

/// A per-token KL estimator of KL(π_θ ‖ π_ref) (Schulman, "Approximating KL divergence", 2020).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// k1 = log π − log π_ref (verl "kl"/"k1").
    K1,
    /// |log π − log π_ref| (verl "abs").
    Abs,
    /// k2 = ½(log π − log π_ref)² (verl "mse"/"k2").
    K2,
    /// k3 = e^k − k − 1 with k = log π_ref − log π, clamped (verl "low_var_kl"/"k3").
    K3,
}

/// KL regularisation towards a reference policy, added to the loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPenalty {
    /// No KL term (all PRISM stages).
    None,
    /// `coef · agg(estimator(log π, log π_ref))`. `straight_through` is verl's "+" suffix: the
    /// value of `estimator` with the gradient of k2 (unbiased KL gradient).
    Loss {
        estimator: KlEstimator,
        coef: f64,
        straight_through: bool,
    },
}

/// A policy-gradient objective as orthogonal choices. Build with a preset and adjust fields.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLoss {
    /// Token (PPO) or sequence (GSPO) importance ratio.
    pub ratio: RatioLevel,
    /// Clip range of the ratio.
    pub clip: Clip,
    /// Dual-clip constant c > 1 (Ye et al., arXiv 1912.09729): for A < 0 the loss is bounded by
    /// −A·c. `None` disables it. Token ratios only.
    pub dual_clip: Option<f64>,
    /// Loss aggregation.
    pub aggregation: Aggregation,
    /// KL-to-reference term.
    pub kl: KlPenalty,
    /// Coefficient of the entropy bonus (subtracted from the loss); 0 in every PRISM stage.
    pub entropy_coef: f64,
}

impl PolicyLoss {
    /// GRPO as PRISM runs it (Stage 2 and 3): token ratio, clip 0.2/0.2, dual clip 3, token-mean,
    /// no KL, no entropy.
    pub fn grpo() -> Self {
        Self {
            ratio: RatioLevel::Token,
            clip: Clip::Symmetric(0.2),
            dual_clip: Some(3.0),
            aggregation: Aggregation::TokenMean,
            kl: KlPenalty::None,
            entropy_coef: 0.0,
        }
    }

    /// DAPO: clip-higher 0.2/0.28, dual clip 10, token-mean, no KL (overlong shaping and the
    /// group filter live in [`super::advantage`]).
    pub fn dapo() -> Self {
        Self {
            clip: Clip::Decoupled {
                low: 0.2,
                high: 0.28,
            },
            dual_clip: Some(10.0),
            ..Self::grpo()
        }
    }

    /// GSPO: sequence ratio, clip 3e-4/4e-4, no dual clip, seq-mean-token-mean, no KL.
    pub fn gspo() -> Self {
        Self {
            ratio: RatioLevel::Sequence,
            clip: Clip::Decoupled {
                low: 3e-4,
                high: 4e-4,
            },
            dual_clip: None,
            aggregation: Aggregation::SeqMeanTokenMean,
            kl: KlPenalty::None,
            entropy_coef: 0.0,
        }
    }

    /// Rejects out-of-range values and incoherent combinations.
    pub fn validate(&self) -> Result<()> {
        let (low, high) = self.clip.bounds();
        if !(low.is_finite() && low > 0.0 && low < 1.0) {
            return Err(config_err(
                "clip.low",
                format!("must be in (0, 1), got {low}"),
            ));
        }
        if !(high.is_finite() && high > 0.0) {
            return Err(config_err(
                "clip.high",
                format!("must be finite and > 0, got {high}"),
            ));
        }
        if let Some(c) = self.dual_clip {
            // verl asserts the same: c ≤ 1 would bound the loss below the unclipped objective.
            if !(c.is_finite() && c > 1.0) {
                return Err(config_err(
                    "dual_clip",
                    format!("must be finite and > 1, got {c}"),
                ));
            }
            if c < 1.0 + high {
                return Err(config_err(
                    "dual_clip",
                    format!(
                        "{c} is inside the clip range 1 + {high}: it would cut the clipped loss"
                    ),
                ));
            }
        }
        if self.ratio == RatioLevel::Sequence {
            if self.dual_clip.is_some() {
                return Err(config_err(
                    "dual_clip",
                    "a sequence-level ratio (GSPO) has no dual clip",
                ));
            }
            if self.aggregation != Aggregation::SeqMeanTokenMean {
                return Err(config_err(
                    "aggregation",
                    format!(
                        "a sequence-level ratio (GSPO) is a per-sequence objective and needs \
                         seq_mean_token_mean, got {:?}",
                        self.aggregation
                    ),
                ));
            }
        }
        if let Aggregation::SeqMeanTokenSumNorm { horizon: Some(h) } = self.aggregation
            && !(h.is_finite() && h > 0.0)
        {
            return Err(config_err(
                "aggregation.horizon",
                format!("must be > 0, got {h}"),
            ));
        }
        if let KlPenalty::Loss { coef, .. } = self.kl
            && !(coef.is_finite() && coef >= 0.0)
        {
            return Err(config_err(
                "kl.coef",
                format!("must be finite and ≥ 0, got {coef}"),
            ));
        }
        if !self.entropy_coef.is_finite() {
            return Err(config_err(
                "entropy_coef",
                format!("must be finite, got {}", self.entropy_coef),
            ));
        }
        Ok(())
    }
}

/// The tensors of one micro-batch, all `[B, T]`.
#[derive(Debug, Clone, Copy)]
pub struct PolicyBatch<'a> {
    /// log π_θ of the sampled tokens (carries the gradient).
    pub log_prob: &'a Tensor,
    /// log π of the behaviour policy that sampled them (rollout log-probs).
    pub old_log_prob: &'a Tensor,
    /// Per-token advantages.
    pub advantages: &'a Tensor,
    /// 1 on tokens that count.
    pub response_mask: &'a Tensor,
    /// log π_ref, required when [`PolicyLoss::kl`] is not `None`.
    pub ref_log_prob: Option<&'a Tensor>,
    /// Per-token entropy (see [`entropy_from_logits`]), required when `entropy_coef ≠ 0`.
    pub entropy: Option<&'a Tensor>,
    /// Mini-batch normalisers for gradient accumulation; `None` aggregates over this
    /// micro-batch alone (verl dp_size 1 without `global_batch_info`).
    pub global_batch: Option<GlobalBatch>,
}

/// Diagnostics of a policy loss, 0-dim tensors (detached).
#[derive(Debug)]
pub struct PolicyLossStats {
    /// The aggregated clipped surrogate alone.
    pub pg_loss: Tensor,
    /// Fraction of valid tokens where the clipped term is the larger (verl `pg_clipfrac`).
    pub pg_clipfrac: Tensor,
    /// Fraction of valid tokens where the dual clip binds (A < 0); 0 without dual clip or for
    /// GSPO (verl `pg_clipfrac_lower`).
    pub pg_clipfrac_lower: Tensor,
    /// Mean over valid tokens of −log r (verl `ppo_kl`; token ratio clamped like the loss).
    pub ppo_kl: Tensor,
    /// Aggregated KL estimate (before the coefficient), when a KL term is configured.
    pub kl: Option<Tensor>,
    /// Aggregated entropy, when entropy was given.
    pub entropy: Option<Tensor>,
}

/// Per-token surrogate and its metrics, from [`ppo_token_loss`] / [`gspo_token_loss`].
#[derive(Debug)]
pub struct TokenLoss {
    /// `[B, T]` loss per token (zero-free only on valid tokens; aggregate with the mask).
    pub loss: Tensor,
    /// See [`PolicyLossStats::pg_clipfrac`].
    pub clipfrac: Tensor,
    /// See [`PolicyLossStats::pg_clipfrac_lower`].
    pub clipfrac_lower: Tensor,
    /// See [`PolicyLossStats::ppo_kl`].
    pub ppo_kl: Tensor,
}

/// The full objective: agg(surrogate) − entropy_coef·agg(entropy) + kl_coef·agg(KL).
///
/// Returns the loss to backpropagate (scale it by the micro-batch fraction yourself) and stats.
pub fn policy_loss(cfg: &PolicyLoss, batch: PolicyBatch<'_>) -> Result<(Tensor, PolicyLossStats)> {
    cfg.validate()?;
    let token = match cfg.ratio {
        RatioLevel::Token => ppo_token_loss(
            batch.log_prob,
            batch.old_log_prob,
            batch.advantages,
            batch.response_mask,
            cfg.clip,
            cfg.dual_clip,
        )?,
        RatioLevel::Sequence => gspo_token_loss(
            batch.log_prob,
            batch.old_log_prob,
            batch.advantages,
            batch.response_mask,
            cfg.clip,
        )?,
    };
    let pg_loss = aggregate_with(
        &token.loss,
        batch.response_mask,
        cfg.aggregation,
        batch.global_batch,
    )?;
    // the terms of the objective; summed at the end (no in-place ops on a graph tensor)
    let mut terms = vec![pg_loss.shallow_clone()];
    let entropy = match batch.entropy {
        Some(h) => {
            check_like("entropy", h, batch.log_prob)?;
            let agg = aggregate_with(h, batch.response_mask, cfg.aggregation, batch.global_batch)?;
            if cfg.entropy_coef != 0.0 {
                terms.push(&agg * -cfg.entropy_coef);
            }
            Some(agg.detach())
        }
        None if cfg.entropy_coef != 0.0 => {
            return Err(config_err(
                "entropy_coef",
                "is non-zero but the batch carries no entropy",
            ));
        }
        None => None,
    };
    let kl = match cfg.kl {
        KlPenalty::None => None,
        KlPenalty::Loss {
            estimator,
            coef,
            straight_through,
        } => {
            let Some(ref_lp) = batch.ref_log_prob else {
                return Err(config_err(
                    "kl",
                    "a KL penalty is configured but the batch carries no ref_log_prob",
                ));
            };
            check_like("ref_log_prob", ref_lp, batch.log_prob)?;
            let keep = mask_as(batch.response_mask, Kind::Bool)?;
            let lp = batch.log_prob.where_scalarother(&keep, 0.0);
            let rp = ref_lp.where_scalarother(&keep, 0.0);
            let per_token = kl_penalty(&lp, &rp, estimator, straight_through)?;
            let agg = aggregate_with(
                &per_token,
                batch.response_mask,
                cfg.aggregation,
                batch.global_batch,
            )?;
            terms.push(&agg * coef);
            Some(agg.detach())
        }
    };
    let total = Tensor::f_stack(&terms, 0)?.f_sum(None::<Kind>)?;
    let stats = PolicyLossStats {
        pg_loss: pg_loss.detach(),
        pg_clipfrac: token.clipfrac,
        pg_clipfrac_lower: token.clipfrac_lower,
        ppo_kl: token.ppo_kl,
        kl,
        entropy,
    };
    Ok((total, stats))
}

fn check_like(name: &'static str, t: &Tensor, like: &Tensor) -> Result<()> {
    expect_float(name, t)?;
    expect_shape(name, t, &like.size())?;
    expect_device(name, t, like.device())
}

/// Validates the four `[B, T]` inputs and returns them zeroed outside the mask, plus the mask as
/// bool and in the log-probs' kind.
fn prepare(
    log_prob: &Tensor,
    old_log_prob: &Tensor,
    advantages: &Tensor,
    response_mask: &Tensor,
) -> Result<[Tensor; 5]> {
    expect_float("log_prob", log_prob)?;
    expect_shape("log_prob", log_prob, &[-1, -1])?;
    check_like("old_log_prob", old_log_prob, log_prob)?;
    check_like("advantages", advantages, log_prob)?;
    expect_shape("response_mask", response_mask, &log_prob.size())?;
    expect_device("response_mask", response_mask, log_prob.device())?;
    let keep = mask_as(response_mask, Kind::Bool)?;
    let m = mask_as(response_mask, log_prob.kind())?;
    Ok([
        log_prob.where_scalarother(&keep, 0.0),
        old_log_prob.where_scalarother(&keep, 0.0),
        advantages.where_scalarother(&keep, 0.0),
        keep,
        m,
    ])
}

/// verl `masked_sum`: Σ where(mask, x, 0)·mask (the `where` keeps NaN outside the mask out).
fn masked_sum(x: &Tensor, keep: &Tensor, m: &Tensor, dim: Option<i64>) -> Tensor {
    let v = x.where_scalarother(keep, 0.0) * m;
    match dim {
        Some(d) => v.sum_dim_intlist(d, false, None::<Kind>),
        None => v.sum(None::<Kind>),
    }
}

/// verl `masked_mean` over all elements: masked_sum / (Σ mask + 1e-8).
fn masked_mean(x: &Tensor, keep: &Tensor, m: &Tensor) -> Tensor {
    masked_sum(x, keep, m, None) / (m.sum(None::<Kind>) + MASKED_MEAN_EPS)
}

/// Divides, using 1 for zero denominators (an empty mask aggregates to 0 instead of 0/0).
fn safe_div(num: &Tensor, den: &Tensor) -> Tensor {
    num / den.masked_fill(&den.eq(0.0), 1.0)
}

/// PPO clipped surrogate per token, with optional dual clip (verl `compute_policy_loss_vanilla`):
/// Δ = clamp(log π − log π_old, ±20), r = e^Δ, L₁ = −A·r, L₂ = −A·clip(r, 1−ε_lo, 1+ε_hi),
/// L = max(L₁, L₂); with dual clip c and A < 0: L = min(−A·c, L).
///
/// All inputs `[B, T]`; `loss [B, T]`.
pub fn ppo_token_loss(
    log_prob: &Tensor,
    old_log_prob: &Tensor,
    advantages: &Tensor,
    response_mask: &Tensor,
    clip: Clip,
    dual_clip: Option<f64>,
) -> Result<TokenLoss> {
    let [lp, old, adv, keep, m] = prepare(log_prob, old_log_prob, advantages, response_mask)?;
    let (lo, hi) = clip.bounds();
    let log_ratio = (&lp - &old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
    let ratio = log_ratio.exp();
    let ppo_kl = masked_mean(&(-&log_ratio), &keep, &m).detach();
    let l1 = -&adv * &ratio;
    let l2 = -&adv * ratio.clamp(1.0 - lo, 1.0 + hi);
    let clipped = l1.maximum(&l2);
    let clipfrac = masked_mean(&l2.gt_tensor(&l1).to_kind(m.kind()), &keep, &m).detach();
    let (loss, clipfrac_lower) = match dual_clip {
        Some(c) => {
            let l3 = -&adv * c;
            let negative = adv.lt(0.0);
            let lower = clipped
                .gt_tensor(&l3)
                .logical_and(&negative)
                .to_kind(m.kind());
            let loss = l3.minimum(&clipped).where_self(&negative, &clipped);
            (loss, masked_mean(&lower, &keep, &m).detach())
        }
        None => (clipped, Tensor::zeros([], (m.kind(), m.device()))),
    };
    Ok(TokenLoss {
        loss,
        clipfrac,
        clipfrac_lower,
        ppo_kl,
    })
}

/// GSPO per-token surrogate (verl `compute_policy_loss_gspo`, arXiv 2507.18071):
/// ℓᵢ = Σₜ Δᵢₜ mᵢₜ / max(1, Σₜ mᵢₜ), log sᵢₜ = min(10, log π − sg(log π) + sg(ℓᵢ)),
/// L = max(−A·s, −A·clip(s, 1−ε_lo, 1+ε_hi)). The value of sᵢₜ is the sequence ratio, its
/// gradient that of the token's own log-prob. No dual clip (`clipfrac_lower` = 0).
pub fn gspo_token_loss(
    log_prob: &Tensor,
    old_log_prob: &Tensor,
    advantages: &Tensor,
    response_mask: &Tensor,
    clip: Clip,
) -> Result<TokenLoss> {
    let [lp, old, adv, keep, m] = prepare(log_prob, old_log_prob, advantages, response_mask)?;
    let (lo, hi) = clip.bounds();
    let log_ratio = &lp - &old;
    let lengths = m.sum_dim_intlist(-1, false, None::<Kind>).clamp_min(1.0);
    let seq_log_ratio = (&log_ratio * &m).sum_dim_intlist(-1, false, None::<Kind>) / lengths;
    let log_s =
        (&lp - lp.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp_max(GSPO_LOG_RATIO_MAX);
    let s = log_s.exp();
    let l1 = -&adv * &s;
    let l2 = -&adv * s.clamp(1.0 - lo, 1.0 + hi);
    let loss = l1.maximum(&l2);
    let clipfrac = masked_mean(&l2.gt_tensor(&l1).to_kind(m.kind()), &keep, &m).detach();
    let ppo_kl = masked_mean(&(-&log_ratio), &keep, &m).detach();
    Ok(TokenLoss {
        loss,
        clipfrac,
        clipfrac_lower: Tensor::zeros([], (m.kind(), m.device())),
        ppo_kl,
    })
}

/// Normalisers of a whole mini-batch, for gradient accumulation over micro-batches (verl's
/// `batch_num_tokens` and `global_batch_size` arguments of `agg_loss`). With them, each
/// micro-batch loss is its share of the mini-batch loss and the micro-batch losses sum to it:
/// "token-mean" becomes a true mini-batch token mean rather than a mean of micro-batch means
/// (PRISM_ALGORITHM.md §6.4 notes the difference).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalBatch {
    /// Valid tokens in the mini-batch (Σ of all its response masks).
    pub num_tokens: f64,
    /// Sequences with at least one valid token in the mini-batch.
    pub num_sequences: f64,
}

impl GlobalBatch {
    /// Counts tokens and non-empty sequences over the micro-batch masks `[Bᵢ, T]` of one
    /// mini-batch. Syncs with the host (two numbers).
    pub fn of_masks(masks: &[&Tensor]) -> Result<Self> {
        let (mut num_tokens, mut num_sequences) = (0.0, 0.0);
        for m in masks {
            expect_shape("response_mask", m, &[-1, -1])?;
            let m = mask_as(m, Kind::Double)?;
            let per_seq = m.f_sum_dim_intlist(-1, false, None::<Kind>)?;
            num_tokens += per_seq.f_sum(None::<Kind>)?.f_double_value(&[])?;
            num_sequences += per_seq
                .f_gt(0.0)?
                .f_sum(Kind::Double)?
                .f_double_value(&[])?;
        }
        Ok(Self {
            num_tokens,
            num_sequences,
        })
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("num_tokens", self.num_tokens),
            ("num_sequences", self.num_sequences),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(config_err(name, format!("must be finite and ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// verl `agg_loss` (dp_size 1) over the micro-batch itself: `loss [B, T]`, `mask [B, T]` →
/// 0-dim tensor. See [`Aggregation`] for the formulas; an all-zero mask gives 0.
pub fn aggregate(loss: &Tensor, mask: &Tensor, mode: Aggregation) -> Result<Tensor> {
    aggregate_with(loss, mask, mode, None)
}

/// [`aggregate`] with optional mini-batch normalisers ([`GlobalBatch`]) in place of the
/// micro-batch's own token and sequence counts (verl `batch_num_tokens`, `global_batch_size`).
pub fn aggregate_with(
    loss: &Tensor,
    mask: &Tensor,
    mode: Aggregation,
    global: Option<GlobalBatch>,
) -> Result<Tensor> {
    expect_float("loss", loss)?;
    let dims = expect_shape("loss", loss, &[-1, -1])?;
    expect_shape("mask", mask, &dims)?;
    expect_device("mask", mask, loss.device())?;
    if let Some(g) = &global {
        g.validate()?;
    }
    let keep = mask_as(mask, Kind::Bool)?;
    let m = mask_as(mask, loss.kind())?;
    let seq_sum = || masked_sum(loss, &keep, &m, Some(-1));
    let tokens = m.sum_dim_intlist(-1, false, None::<Kind>);
    let nonempty = tokens.gt(0.0).to_kind(loss.kind());
    // a zero global count can only come with an all-empty numerator: divide by 1 instead
    let positive = |n: f64| if n > 0.0 { n } else { 1.0 };
    let seq_mean = |per_seq: Tensor| {
        let s = (per_seq * &nonempty).sum(None::<Kind>);
        match global {
            Some(g) => s / positive(g.num_sequences),
            None => safe_div(&s, &nonempty.sum(None::<Kind>)),
        }
    };
    Ok(match mode {
        Aggregation::TokenMean => {
            let s = masked_sum(loss, &keep, &m, None);
            match global {
                Some(g) => s / positive(g.num_tokens),
                None => safe_div(&s, &m.sum(None::<Kind>)),
            }
        }
        Aggregation::SeqMeanTokenSum => seq_mean(seq_sum()),
        Aggregation::SeqMeanTokenMean => seq_mean(seq_sum() / (&tokens + MASKED_MEAN_EPS)),
        Aggregation::SeqMeanTokenSumNorm { horizon } => {
            let h = horizon.unwrap_or(dims[1] as f64);
            seq_mean(seq_sum()) / h
        }
    })
}

/// Per-token KL estimate between `log_prob` and `ref_log_prob` (both `[..]`, same shape), verl
/// `kl_penalty`. With `straight_through` (verl's "k1+"/"k3+"): value of the estimator, gradient
/// of k2; k2 itself is unchanged.
pub fn kl_penalty(
    log_prob: &Tensor,
    ref_log_prob: &Tensor,
    estimator: KlEstimator,
    straight_through: bool,
) -> Result<Tensor> {
    expect_float("log_prob", log_prob)?;
    check_like("ref_log_prob", ref_log_prob, log_prob)?;
    let diff = log_prob - ref_log_prob;
    let value = match estimator {
        KlEstimator::K1 => diff.shallow_clone(),
        KlEstimator::Abs => diff.abs(),
        KlEstimator::K2 => &diff * &diff * 0.5,
        KlEstimator::K3 => {
            let k = (-&diff).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP);
            (k.exp() - &k - 1.0).clamp(-K3_VALUE_CLAMP, K3_VALUE_CLAMP)
        }
    };
    if !straight_through || estimator == KlEstimator::K2 {
        return Ok(value);
    }
    let k2 = &diff * &diff * 0.5;
    Ok(&k2 - k2.detach() + value.detach())
}

/// Entropy of the categorical distribution of each row of logits: logsumexp(z) − Σ softmax(z)·z.
/// `logits [.., V]` → `[..]`.
pub fn entropy_from_logits(logits: &Tensor) -> Result<Tensor> {
    expect_float("logits", logits)?;
    if logits.dim() == 0 {
        return Err(super::AlgoError::Shape {
            name: "logits",
            expected: "[.., V]".into(),
            got: vec![],
        });
    }
    let p = logits.f_softmax(-1, None::<Kind>)?;
    Ok(logits.f_logsumexp(-1, false)? - (p * logits).sum_dim_intlist(-1, false, None::<Kind>))
}

/// log-softmax of `logits [B, T, V]` gathered at `labels [B, T]` → `[B, T]`.
pub fn token_log_probs(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    expect_float("logits", logits)?;
    let dims = expect_shape("logits", logits, &[-1, -1, -1])?;
    expect_shape("labels", labels, &dims[..2])?;
    super::expect_integer("labels", labels)?;
    expect_device("labels", labels, logits.device())?;
    let labels = labels.f_to_kind(Kind::Int64)?;
    // An out-of-range id is a device-side assert on CUDA (fatal to the context), so check first;
    // this is the one host sync of the module.
    if labels.numel() > 0 {
        let min = labels.f_min()?.f_int64_value(&[])?;
        let max = labels.f_max()?.f_int64_value(&[])?;
        if min < 0 || max >= dims[2] {
            return Err(config_err(
                "labels",
                format!(
                    "token ids must be in [0, {}), got range [{min}, {max}]",
                    dims[2]
                ),
            ));
        }
    }
    Ok(logits
        .f_log_softmax(-1, None::<Kind>)?
        .f_gather(-1, &labels.unsqueeze(-1), false)?
        .squeeze_dim(-1))
}
