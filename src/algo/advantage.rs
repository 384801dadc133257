//! Advantages: group normalisation (GN), the GRPO outcome advantage, PRISM's multi-reward
//! advantage (all six modes of PRISM_ALGORITHM.md §5.4), DAPO's overlong reward shaping and its
//! dynamic-sampling group filter.
//!
//! Shapes: scores `[B]`, masks and token rewards `[B, T]`, group statistics `[G]`. A group is the
//! set of rollouts that share an id (verl's `uid`/`index`); members need not be contiguous.
//!
//! Group statistics are computed in f64 whatever the input kind, then cast back. verl computes
//! them in the input kind (f32), which gives members of an all-equal group a spurious advantage
//! of order 1e-2 when the group mean does not round-trip in f32 (e.g. seven rewards of 0.2 get
//! −0.0147 each in verl 0.9.1); in f64 the sum of ≤ 2^29 f32 values is exact, so an all-equal
//! group gets exactly 0, which is what §5.4 specifies. Elsewhere results agree with verl to
//! ~1e-7 (tests/algo_parity.rs).
//!
//! Never touches devices or actors; no host syncs except in [`Groups::from_ids`] and
//! [`dynamic_sampling_filter`], whose output shapes depend on the data.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{
    Result, config_err, expect_device, expect_float, expect_integer, expect_shape, mask_as,
};

/// Grouping of `B` rollouts into `G` groups, as contiguous group numbers per rollout.
#[derive(Debug)]
pub struct Groups {
    /// `[B]` i64, the group number (0..G) of each rollout.
    index: Tensor,
    /// `[G]` f64, members per group (all ≥ 1).
    counts: Tensor,
    num_groups: i64,
}

impl Groups {
    /// Groups by arbitrary integer ids `[B]` (verl's `index`/`uid`); groups are numbered in
    /// ascending id order. Syncs with the host once (the number of distinct ids).
    pub fn from_ids(ids: &Tensor) -> Result<Self> {
        expect_shape("group ids", ids, &[-1])?;
        expect_integer("group ids", ids)?;
        let (values, inverse, counts) = ids.f_internal_unique2(true, true, true)?;
        let num_groups = values.size()[0];
        Ok(Self {
            index: inverse.f_to_kind(Kind::Int64)?,
            counts: counts.f_to_kind(Kind::Double)?,
            num_groups,
        })
    }

    /// Groups by arbitrary labels (e.g. uid strings) held on the host; groups are numbered by
    /// first appearance. No device sync.
    pub fn from_labels<T: std::hash::Hash + Eq>(labels: &[T], device: Device) -> Result<Self> {
        let mut number: std::collections::HashMap<&T, i64> = std::collections::HashMap::new();
        let mut counts: Vec<f64> = Vec::new();
        let mut index = Vec::with_capacity(labels.len());
        for label in labels {
            let g = *number.entry(label).or_insert_with(|| {
                counts.push(0.0);
                counts.len() as i64 - 1
            });
            counts[g as usize] += 1.0;
            index.push(g);
        }
        Ok(Self {
            index: Tensor::f_from_slice(&index)?.f_to_device(device)?,
            num_groups: counts.len() as i64,
            counts: Tensor::f_from_slice(&counts)?.f_to_device(device)?,
        })
    }

    /// `num_groups` groups of `group_size` consecutive rollouts (the layout of `n` samples per
    /// prompt, repeated interleaved).
    pub fn contiguous(num_groups: i64, group_size: i64, device: Device) -> Result<Self> {
        if num_groups < 0 || group_size < 1 {
            return Err(config_err(
                "group_size",
                format!(
                    "need num_groups ≥ 0 and group_size ≥ 1, got {num_groups} and {group_size}"
                ),
            ));
        }
        let index = Tensor::f_arange(num_groups, (Kind::Int64, device))?
            .f_repeat_interleave_self_int(group_size, 0, None)?;
        let counts = Tensor::f_full([num_groups], group_size, (Kind::Double, device))?;
        Ok(Self {
            index,
            counts,
            num_groups,
        })
    }

    /// `[B]` i64 group number of each rollout.
    pub fn index(&self) -> &Tensor {
        &self.index
    }

    /// `[G]` f64 member count of each group.
    pub fn counts(&self) -> &Tensor {
        &self.counts
    }

    /// Number of groups `G`.
    pub fn num_groups(&self) -> i64 {
        self.num_groups
    }

    /// Number of rollouts `B`.
    pub fn len(&self) -> i64 {
        self.index.size()[0]
    }

    /// True when there are no rollouts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that a per-rollout tensor `[B]` matches this grouping.
    fn check(&self, name: &'static str, x: &Tensor) -> Result<()> {
        expect_shape(name, x, &[self.len()])?;
        expect_device(name, x, self.index.device())
    }

    /// Per-group sums `[G]` of `x [B]` (f64).
    fn sum(&self, x: &Tensor) -> Tensor {
        Tensor::zeros([self.num_groups], (Kind::Double, x.device())).index_add(0, &self.index, x)
    }

    /// `[G, B]` bool, true where rollout b belongs to group g.
    fn membership(&self) -> Tensor {
        Tensor::arange(self.num_groups, (Kind::Int64, self.index.device()))
            .unsqueeze(1)
            .eq_tensor(&self.index.unsqueeze(0))
    }

    /// Broadcasts per-group values `[G]` back to rollouts `[B]`.
    fn gather(&self, g: &Tensor) -> Tensor {
        g.index_select(0, &self.index)
    }

    /// Per-group mean and std `[G]` (f64) of `x [B]` (f64), two-pass; the std is unbiased
    /// (divisor n−1, like `torch.std`) or population (divisor n, like `np.std`).
    fn mean_std(&self, x: &Tensor, unbiased: bool) -> (Tensor, Tensor) {
        let mean = self.sum(x) / &self.counts;
        let dev = x - self.gather(&mean);
        let divisor = if unbiased {
            (&self.counts - 1.0).clamp_min(1.0)
        } else {
            self.counts.shallow_clone()
        };
        let std = (self.sum(&(&dev * &dev)) / divisor).sqrt();
        (mean, std)
    }
}

/// Options of group normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNorm {
    /// Added to the std before dividing. verl's `epsilon=1e-6` (compute_grpo_outcome_advantage)
    /// and PRISM's GN (§5.4) use 1e-6: it keeps all-equal groups at 0/(0+ε) = 0.
    pub eps: f64,
    /// Divide by the std (GRPO). `false` is Dr.GRPO (verl `norm_adv_by_std_in_grpo=False`,
    /// arXiv 2503.20783): only the mean is removed.
    pub scale_by_std: bool,
}

impl Default for GroupNorm {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            scale_by_std: true,
        }
    }
}

impl GroupNorm {
    /// Rejects a non-finite or negative `eps`.
    pub fn validate(&self) -> Result<()> {
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(config_err(
                "eps",
                format!("must be finite and ≥ 0, got {}", self.eps),
            ));
        }
        Ok(())
    }
}

/// GN(x)ᵢ = (xᵢ − μ_g)/(σ_g + ε) per group g ∋ i, σ the unbiased std; singleton groups use
/// μ = 0, σ = 1 (verl). With `scale_by_std = false`: xᵢ − μ_g.
///
/// `scores [B]` float, returns `[B]` in the kind of `scores`.
pub fn group_normalize(scores: &Tensor, groups: &Groups, opts: GroupNorm) -> Result<Tensor> {
    opts.validate()?;
    expect_float("scores", scores)?;
    groups.check("scores", scores)?;
    let x = scores.f_to_kind(Kind::Double)?;
    Ok(group_normalize_f64(&x, groups, opts).f_to_kind(scores.kind())?)
}

fn group_normalize_f64(x: &Tensor, groups: &Groups, opts: GroupNorm) -> Tensor {
    let (mean, std) = groups.mean_std(x, true);
    let single = groups.counts.eq(1.0);
    let mean = mean.masked_fill(&single, 0.0);
    let std = std.masked_fill(&single, 1.0);
    let centred = x - groups.gather(&mean);
    if opts.scale_by_std {
        centred / (groups.gather(&std) + opts.eps)
    } else {
        centred
    }
}

/// GRPO outcome advantage (verl `compute_grpo_outcome_advantage`): rᵢ = Σₜ rewardsᵢₜ,
/// Aᵢₜ = GN(r)ᵢ · maskᵢₜ. verl returns the same tensor as advantages and returns; so do we
/// (use it for both).
///
/// `token_level_rewards [B, T]`, `response_mask [B, T]` → `[B, T]` in the rewards' kind.
pub fn grpo_outcome_advantage(
    token_level_rewards: &Tensor,
    response_mask: &Tensor,
    groups: &Groups,
    opts: GroupNorm,
) -> Result<Tensor> {
    expect_float("token_level_rewards", token_level_rewards)?;
    let dims = expect_shape(
        "token_level_rewards",
        token_level_rewards,
        &[groups.len(), -1],
    )?;
    expect_shape("response_mask", response_mask, &dims)?;
    expect_device("response_mask", response_mask, token_level_rewards.device())?;
    let scores = token_level_rewards.f_sum_dim_intlist(-1, false, None::<Kind>)?;
    let adv = group_normalize(&scores, groups, opts)?;
    broadcast_over_mask(&adv, response_mask)
}

/// Aᵢₜ = aᵢ · maskᵢₜ: a per-sequence value `[B]` spread over the valid tokens `[B, T]`.
pub fn broadcast_over_mask(per_sequence: &Tensor, response_mask: &Tensor) -> Result<Tensor> {
    expect_float("per_sequence", per_sequence)?;
    let b = expect_shape("per_sequence", per_sequence, &[-1])?[0];
    expect_shape("response_mask", response_mask, &[b, -1])?;
    expect_device("response_mask", response_mask, per_sequence.device())?;
    let m = mask_as(response_mask, per_sequence.kind())?;
    Ok(per_sequence.unsqueeze(-1) * m)
}

/// Which of the six advantage formulas of PRISM's `grpo_multi_reward` (§5.4) to use.
///
/// Notation: A_align = w_cap·GN(cap′) + w_cot·GN(cot′); F = [format ≤ 0] (format-invalid);
/// W = [acc ≤ 0]·(1 − F) (wrong but well formatted; 0 without accuracies); c = `align_coef`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultiRewardMode {
    /// Mode 1, the paper's: A = A_align − p_fmt·F. (The original docstring claims
    /// A_align·(1−F); the code does not multiply, and neither do we — §11.9.)
    #[default]
    Align,
    /// Mode 2 (`use_acc_gating`): A = c·A_align − p_wrong·W − p_fmt·F.
    AccGating,
    /// Mode 3 (`use_gated_align`): A = c·A_align·(1−F)(1−W) − p_wrong·W − p_fmt·F.
    GatedAlign,
    /// Mode 4 (`use_rlvr`): A = GN(w_acc·acc + w_fmt·fmt) + c·A_align·(1−F)(1−W).
    Rlvr,
    /// Mode 5 (`use_rlvr_v2`): A = GN(w_acc·acc + w_fmt·fmt − p_wrong·W − p_fmt·F)
    /// + c·A_align·(1−F)(1−W).
    RlvrV2,
    /// Mode 6 (`use_sign_align`): A = GN((1−F)(w_acc·acc + w_fmt·fmt − p_wrong·W) − p_fmt·F)
    /// + c·A_align·(1−F)(1−2W).
    SignAlign,
}

impl MultiRewardMode {
    /// The mode selected by the original boolean flags, with their priority
    /// `use_sign_align > use_rlvr_v2 > use_rlvr > use_gated_align > use_acc_gating > default`.
    pub fn from_flags(
        use_acc_gating: bool,
        use_gated_align: bool,
        use_rlvr: bool,
        use_rlvr_v2: bool,
        use_sign_align: bool,
    ) -> Self {
        if use_sign_align {
            Self::SignAlign
        } else if use_rlvr_v2 {
            Self::RlvrV2
        } else if use_rlvr {
            Self::Rlvr
        } else if use_gated_align {
            Self::GatedAlign
        } else if use_acc_gating {
            Self::AccGating
        } else {
            Self::Align
        }
    }
}

/// Options of PRISM's multi-reward advantage. `Default` holds the original code's defaults;
/// [`MultiRewardOptions::paper`] the paper script's (`format_penalty = 1.5`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiRewardOptions {
    /// Which formula (§5.4 table).
    pub mode: MultiRewardMode,
    /// w_cap, weight of GN(caption scores). Code default and paper: 0.5.
    pub caption_weight: f64,
    /// w_cot, weight of GN(CoT scores). Code default and paper: 0.5.
    pub cot_weight: f64,
    /// p_fmt, subtracted from format-invalid rollouts. Code default 0.0; paper script 1.5.
    pub format_penalty: f64,
    /// c, scale of the alignment term in modes 2–6. Default 1.0.
    pub align_coef: f64,
    /// p_wrong, penalty of wrong-but-well-formatted rollouts (modes 2–6). Default 1.0.
    pub wrong_penalty: f64,
    /// w_acc, weight of the accuracy reward inside the verifiable term (modes 4–6). Default 1.0.
    pub acc_weight: f64,
    /// w_fmt, weight of the format reward inside the verifiable term (modes 4–6). Default 1.0.
    pub format_weight: f64,
    /// Group normalisation ε. 1e-6 as in the original.
    pub eps: f64,
}

impl Default for MultiRewardOptions {
    fn default() -> Self {
        Self {
            mode: MultiRewardMode::Align,
            caption_weight: 0.5,
            cot_weight: 0.5,
            format_penalty: 0.0,
            align_coef: 1.0,
            wrong_penalty: 1.0,
            acc_weight: 1.0,
            format_weight: 1.0,
            eps: 1e-6,
        }
    }
}

impl MultiRewardOptions {
    /// The paper configuration (`qwen3_vl_prism.sh`): mode 1, weights 0.5/0.5, p_fmt = 1.5.
    pub fn paper() -> Self {
        Self {
            format_penalty: 1.5,
            ..Self::default()
        }
    }

    /// Rejects non-finite weights and a negative or non-finite ε.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("caption_weight", self.caption_weight),
            ("cot_weight", self.cot_weight),
            ("format_penalty", self.format_penalty),
            ("align_coef", self.align_coef),
            ("wrong_penalty", self.wrong_penalty),
            ("acc_weight", self.acc_weight),
            ("format_weight", self.format_weight),
        ];
        for (name, v) in fields {
            if !v.is_finite() {
                return Err(config_err(name, format!("must be finite, got {v}")));
            }
        }
        GroupNorm {
            eps: self.eps,
            scale_by_std: true,
        }
        .validate()
    }
}

/// The reward signals of one batch for [`prism_multi_reward_advantage`], all `[B]`.
#[derive(Debug, Clone, Copy)]
pub struct MultiRewardScores<'a> {
    /// Discriminator caption scores (invalid rollouts may hold anything: they are re-scored).
    pub caption: &'a Tensor,
    /// Discriminator CoT scores.
    pub cot: &'a Tensor,
    /// Format scores (valid ⇔ > 0). `None`: every rollout counts as valid (F ≡ 0), and modes
    /// 4–6 use fmt = 1.
    pub format: Option<&'a Tensor>,
    /// Rule-based accuracy rewards. `None`: W ≡ 0, and modes 4–6 use acc = 0.
    pub acc: Option<&'a Tensor>,
}

/// Output of [`prism_multi_reward_advantage`], all in the kind of the caption scores.
#[derive(Debug)]
pub struct MultiRewardAdvantage {
    /// `[B]` the scalar advantage Aᵢ of each rollout.
    pub per_sequence: Tensor,
    /// `[B, T]` Aᵢ·maskᵢₜ (verl uses the same tensor as returns).
    pub token_level: Tensor,
    /// `[B]` A_align = w_cap·GN(cap′) + w_cot·GN(cot′).
    pub align: Tensor,
    /// `[B]` F, 1 for format-invalid rollouts.
    pub invalid: Tensor,
    /// `[B]` W, 1 for wrong-but-well-formatted rollouts.
    pub wrong: Tensor,
}

/// PRISM's `grpo_multi_reward` advantage (PRISM_ALGORITHM.md §5.4).
///
/// 1. F = [format ≤ 0].
/// 2. Invalid members' caption and CoT scores are replaced by (min over the group's valid
///    members) − 1, or −1 when the group has no valid member.
/// 3. A_align = w_cap·GN(cap′) + w_cot·GN(cot′).
/// 4. W = [acc ≤ 0]·(1−F).
/// 5. The mode's formula ([`MultiRewardMode`]).
/// 6. Aᵢₜ = Aᵢ·maskᵢₜ.
///
/// Scores `[B]`, `response_mask [B, T]`. Computed in f64, returned in the caption's kind.
pub fn prism_multi_reward_advantage(
    scores: MultiRewardScores<'_>,
    response_mask: &Tensor,
    groups: &Groups,
    opts: &MultiRewardOptions,
) -> Result<MultiRewardAdvantage> {
    opts.validate()?;
    let out_kind = scores.caption.f_kind()?;
    let f64_of = |name: &'static str, t: &Tensor| -> Result<Tensor> {
        expect_float(name, t)?;
        groups.check(name, t)?;
        Ok(t.f_to_kind(Kind::Double)?)
    };
    let cap = f64_of("caption scores", scores.caption)?;
    let cot = f64_of("cot scores", scores.cot)?;
    let fmt = scores
        .format
        .map(|t| f64_of("format scores", t))
        .transpose()?;
    let acc = scores.acc.map(|t| f64_of("acc scores", t)).transpose()?;
    expect_shape("response_mask", response_mask, &[groups.len(), -1])?;
    let gn = GroupNorm {
        eps: opts.eps,
        scale_by_std: true,
    };

    // 1. F = [format ≤ 0]
    let invalid = match &fmt {
        Some(f) => f.le(0.0).to_kind(Kind::Double),
        None => cap.zeros_like(),
    };
    let is_invalid = invalid.gt(0.0);
    // 2. re-score invalid members below the group's valid minimum
    let rescore = |x: &Tensor| -> Tensor {
        // [G, B] membership of valid rollouts; O(G·B) is nothing next to a policy forward
        let member = groups
            .membership()
            .logical_and(&is_invalid.logical_not().unsqueeze(0));
        let gmin = x
            .unsqueeze(0)
            .masked_fill(&member.logical_not(), f64::INFINITY)
            .amin(1, false);
        // a group without valid members keeps +inf: its floor is 0, so invalid members get −1
        let gmin = gmin.masked_fill(&gmin.isinf(), 0.0);
        x.where_self(&is_invalid.logical_not(), &(groups.gather(&gmin) - 1.0))
    };
    let cap2 = rescore(&cap);
    let cot2 = rescore(&cot);
    // 3. alignment term
    let align = group_normalize_f64(&cap2, groups, gn) * opts.caption_weight
        + group_normalize_f64(&cot2, groups, gn) * opts.cot_weight;
    // 4. wrong but well formatted
    let valid = 1.0 - &invalid;
    let wrong = match &acc {
        Some(a) => a.le(0.0).to_kind(Kind::Double) * &valid,
        None => cap.zeros_like(),
    };
    // 5. the mode's formula (modes 4–6: a missing acc is 0, a missing fmt is 1)
    let acc_or_0 = acc
        .as_ref()
        .map_or_else(|| cap.zeros_like(), |a| a.shallow_clone());
    let fmt_or_1 = fmt
        .as_ref()
        .map_or_else(|| cap.ones_like(), |f| f.shallow_clone());
    let verifiable = &acc_or_0 * opts.acc_weight + &fmt_or_1 * opts.format_weight;
    let p_fmt = &invalid * opts.format_penalty;
    let p_wrong = &wrong * opts.wrong_penalty;
    let c = opts.align_coef;
    let gated = &align * c * &valid * (1.0 - &wrong);
    let per_sequence = match opts.mode {
        MultiRewardMode::Align => &align - &p_fmt,
        MultiRewardMode::AccGating => &align * c - &p_wrong - &p_fmt,
        MultiRewardMode::GatedAlign => &gated - &p_wrong - &p_fmt,
        MultiRewardMode::Rlvr => group_normalize_f64(&verifiable, groups, gn) + &gated,
        MultiRewardMode::RlvrV2 => {
            group_normalize_f64(&(&verifiable - &p_wrong - &p_fmt), groups, gn) + &gated
        }
        MultiRewardMode::SignAlign => {
            let r = &valid * (&verifiable - &p_wrong) - &p_fmt;
            group_normalize_f64(&r, groups, gn) + &align * c * &valid * (1.0 - &wrong * 2.0)
        }
    };
    // 6. per token
    let per_sequence = per_sequence.f_to_kind(out_kind)?;
    let token_level = broadcast_over_mask(&per_sequence, response_mask)?;
    Ok(MultiRewardAdvantage {
        per_sequence,
        token_level,
        align: align.f_to_kind(out_kind)?,
        invalid: invalid.f_to_kind(out_kind)?,
        wrong: wrong.f_to_kind(out_kind)?,
    })
}

/// DAPO's overlong reward shaping (verl `DAPORewardManager`, `overlong_buffer`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlongBuffer {
    /// The generation limit (`max_response_length`), e.g. 8192.
    pub max_response_length: i64,
    /// Length of the soft-penalty zone at the end of the limit (DAPO 4096).
    pub buffer_length: i64,
    /// Penalty reached at `max_response_length` (DAPO 1.0).
    pub penalty_factor: f64,
}

impl OverlongBuffer {
    /// DAPO as in PRISM's Stage 3: limit 8192, buffer 4096, factor 1.0.
    pub fn dapo(max_response_length: i64) -> Self {
        Self {
            max_response_length,
            buffer_length: 4096,
            penalty_factor: 1.0,
        }
    }

    /// The checks verl asserts: buffer > 0 and limit ≥ buffer; plus a finite factor ≥ 0.
    pub fn validate(&self) -> Result<()> {
        if self.buffer_length <= 0 {
            return Err(config_err(
                "buffer_length",
                format!("must be > 0, got {}", self.buffer_length),
            ));
        }
        if self.max_response_length < self.buffer_length {
            return Err(config_err(
                "max_response_length",
                format!(
                    "must be ≥ buffer_length {}, got {}",
                    self.buffer_length, self.max_response_length
                ),
            ));
        }
        if !self.penalty_factor.is_finite() || self.penalty_factor < 0.0 {
            return Err(config_err(
                "penalty_factor",
                format!("must be finite and ≥ 0, got {}", self.penalty_factor),
            ));
        }
        Ok(())
    }
}

/// Overlong penalty min(−(L − L_exp)/buffer · factor, 0) with L_exp = max_len − buffer, for
/// valid response lengths `[B]` (tokens, EOS included). Returns `[B]` f32, ≤ 0; add it to the
/// outcome score.
pub fn overlong_penalty(response_lengths: &Tensor, cfg: &OverlongBuffer) -> Result<Tensor> {
    cfg.validate()?;
    expect_shape("response_lengths", response_lengths, &[-1])?;
    expect_integer("response_lengths", response_lengths)?;
    let expected = (cfg.max_response_length - cfg.buffer_length) as f64;
    let exceed = response_lengths.f_to_kind(Kind::Double)? - expected;
    let penalty = (exceed * (-cfg.penalty_factor / cfg.buffer_length as f64)).clamp_max(0.0);
    Ok(penalty.f_to_kind(Kind::Float)?)
}

/// Places a per-sequence outcome reward `[B]` at the last valid token of each response
/// (`response_mask [B, T]`), zeros elsewhere, as verl's reward managers do. A row with an empty
/// mask gets no reward (verl would write index −1, i.e. the last column).
pub fn outcome_to_token_rewards(scores: &Tensor, response_mask: &Tensor) -> Result<Tensor> {
    expect_float("scores", scores)?;
    let b = expect_shape("scores", scores, &[-1])?[0];
    let dims = expect_shape("response_mask", response_mask, &[b, -1])?;
    expect_device("response_mask", response_mask, scores.device())?;
    let lengths = mask_as(response_mask, Kind::Int64)?.sum_dim_intlist(-1, false, Kind::Int64);
    let last = (&lengths - 1).clamp_min(0).unsqueeze(-1);
    let value = scores.masked_fill(&lengths.eq(0), 0.0).unsqueeze(-1);
    Ok(Tensor::zeros(&dims, (scores.kind(), scores.device())).scatter(1, &last, &value))
}

/// Result of [`dynamic_sampling_filter`].
#[derive(Debug)]
pub struct GroupFilter {
    /// `[K]` i64 indices of the kept rollouts, ascending (original order).
    pub kept: Tensor,
    /// `[G]` bool, which groups are kept (numbered as in [`Groups`]).
    pub group_kept: Tensor,
}

/// DAPO dynamic sampling (`filter_groups`): keep a group when its metric (DAPO: `acc_reward`)
/// varies over its members — population std (np.std) > 0 — or when it has a single member.
/// `metric [B]` float. Syncs with the host once (the number of kept rollouts).
pub fn dynamic_sampling_filter(groups: &Groups, metric: &Tensor) -> Result<GroupFilter> {
    expect_float("metric", metric)?;
    groups.check("metric", metric)?;
    let x = metric.f_to_kind(Kind::Double)?;
    let (_, std) = groups.mean_std(&x, false);
    let group_kept = std.gt(0.0).logical_or(&groups.counts.eq(1.0));
    let kept = groups.gather(&group_kept).f_nonzero()?.f_squeeze_dim(1)?;
    Ok(GroupFilter { kept, group_kept })
}
