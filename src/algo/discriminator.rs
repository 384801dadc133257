//! Losses of the PRISM discriminator ("experts"): the Bradley–Terry game of the alignment stage
//! (teacher ≻ student, caption and CoT scored separately), the warm-up pairwise loss, their
//! accuracies, and the MoE router load-balancing loss.
//!
//! Shapes: per-sample scores `[B]` (the value head at the last valid token of a segment),
//! validity mask `[B]`, router logits per layer `[N, E]` with `N = B·S`, attention mask `[B, S]`.
//!
//! Reference: PRISM_ALGORITHM.md §4.1 (warm-up) and §4.2 (alignment update), written a second
//! time in plain torch in tests/fixtures/gen_rl_reference.py; the load-balancing loss against
//! transformers' `load_balancing_loss_func` (Qwen3-MoE / Qwen3-VL-MoE). Never touches devices or
//! actors; no host syncs.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{AlgoError, Result, config_err, expect_device, expect_float, expect_shape, mask_as};

/// Options of the alignment-stage Bradley–Terry loss. `Default` is the paper configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BtOptions {
    /// Scores are clamped to ±`score_clip` after non-finite values are zeroed. Paper config
    /// `critic.score_clip = 10.0` (§3.3, §4.2): it keeps −log σ(Δ) and the L2 term bounded
    /// (|Δ| ≤ 20) when the value head drifts. `None` disables the clamp.
    pub score_clip: Option<f64>,
    /// Coefficient of the L2 score regulariser R = mean of the four squared score means.
    /// Paper config `score_reg_coef = 0.001` (code default 0.0): a weak pull of the value head
    /// towards 0, so the scores cannot drift together (BT only constrains differences).
    pub score_reg_coef: f64,
    /// Weight of the fallback loss used when no sample of the global micro-batch is valid:
    /// 0.01·(−log σ(mean s^T_cap) − log σ(mean s^T_cot)). The 0.01 is a literal in the original
    /// `update_critic` (§4.2): it keeps a small, well-defined gradient (pushing teacher scores up)
    /// and a graph that every rank can backpropagate through, so collective ops stay in step.
    pub fallback_coef: f64,
}

impl Default for BtOptions {
    fn default() -> Self {
        Self {
            score_clip: Some(10.0),
            score_reg_coef: 0.001,
            fallback_coef: 0.01,
        }
    }
}

impl BtOptions {
    /// Rejects a non-positive clip and negative or non-finite coefficients.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = self.score_clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(config_err(
                "score_clip",
                format!("must be finite and > 0, got {c}"),
            ));
        }
        for (name, v) in [
            ("score_reg_coef", self.score_reg_coef),
            ("fallback_coef", self.fallback_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(config_err(name, format!("must be finite and ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// The four per-sample scores `[B]` of one micro-batch (gradient-carrying).
#[derive(Debug, Clone, Copy)]
pub struct SegmentScores<'a> {
    /// Student (policy rollout) caption segment.
    pub student_caption: &'a Tensor,
    /// Student CoT segment.
    pub student_cot: &'a Tensor,
    /// Teacher caption segment (the same teacher for all rollouts of a prompt).
    pub teacher_caption: &'a Tensor,
    /// Teacher CoT segment.
    pub teacher_cot: &'a Tensor,
}

/// Diagnostics of [`bradley_terry_loss`], 0-dim detached tensors, named after the original
/// `critic/*` metrics.
#[derive(Debug)]
pub struct BtStats {
    /// `d_loss`: the whole loss (before any micro-batch scaling).
    pub loss: Tensor,
    /// `cap_loss`: h·L_cap + (1−h)·fallback_coef·(−log σ(mean s^T_cap)).
    pub cap_loss: Tensor,
    /// `cot_loss`: analogous.
    pub cot_loss: Tensor,
    /// `score_reg`: R.
    pub score_reg: Tensor,
    /// `score_reg_loss`: score_reg_coef·R.
    pub score_reg_loss: Tensor,
    /// `cap_acc`: fraction of valid samples with teacher caption score > student's (strict).
    /// 0 when no sample is valid — check `n_valid` (the original logs a constant 0.92 then).
    pub cap_acc: Tensor,
    /// `cot_acc`: as `cap_acc` for the CoT.
    pub cot_acc: Tensor,
    /// `d_acc`: (cap_acc + cot_acc)/2.
    pub d_acc: Tensor,
    /// Number of valid samples in this micro-batch.
    pub n_valid: Tensor,
    /// `valid_ratio`: mean validity.
    pub valid_ratio: Tensor,
    /// h = \[global valid count > 0\]: 1 when the pairwise loss was used, 0 for the fallback.
    pub pairwise_active: Tensor,
    /// Means over valid samples (0 if none) of the four sanitised scores.
    pub student_caption_mean: Tensor,
    /// See `student_caption_mean`.
    pub student_cot_mean: Tensor,
    /// See `student_caption_mean`.
    pub teacher_caption_mean: Tensor,
    /// See `student_caption_mean`.
    pub teacher_cot_mean: Tensor,
}

/// Non-finite scores → 0 (with a zero gradient), then clamp to ±`clip` (§3.3: the original
/// zeroes NaN and ±Inf, it does not saturate Inf to the clip).
pub fn sanitize_scores(scores: &Tensor, clip: Option<f64>) -> Result<Tensor> {
    expect_float("scores", scores)?;
    let v = scores.f_nan_to_num(0.0, 0.0, 0.0)?;
    Ok(match clip {
        Some(c) => v.f_clamp(-c, c)?,
        None => v,
    })
}

/// The score of each sequence: the value-head output at its **last valid token**, after the
/// per-token clean-up of §3.3 (non-finite → 0, clamp to ±`clip`).
///
/// `values [B, S]` (or `[B, S, 1]`), `attention_mask [B, S]` (1 = real token, left or right
/// padding, or both) → `[B]`. A row without any valid token scores 0. This is the rule the
/// warm-up script meant to implement: it inferred the padding side from `mask[0, 0]` alone, so
/// with left padding and a longest first row it read pad/prompt positions for the other rows
/// (PRISM_ALGORITHM.md §11.7).
pub fn last_valid_token_scores(
    values: &Tensor,
    attention_mask: &Tensor,
    clip: Option<f64>,
) -> Result<Tensor> {
    expect_float("values", values)?;
    let values = match values.dim() {
        3 => {
            expect_shape("values", values, &[-1, -1, 1])?;
            values.f_squeeze_dim(-1)?
        }
        _ => values.shallow_clone(),
    };
    let dims = expect_shape("values", &values, &[-1, -1])?;
    expect_shape("attention_mask", attention_mask, &dims)?;
    expect_device("attention_mask", attention_mask, values.device())?;
    let valid = mask_as(attention_mask, Kind::Bool)?;
    let clean = sanitize_scores(&values, clip)?;
    // position of the last valid token: max over t of t·[valid] (0 for an empty row)
    let positions = Tensor::f_arange(dims[1], (Kind::Int64, values.device()))?.unsqueeze(0);
    let last = (positions * valid.to_kind(Kind::Int64)).f_argmax(-1, true)?;
    let picked = clean.f_gather(-1, &last, false)?.f_squeeze_dim(-1)?;
    let any = valid.f_any_dim(-1, false)?;
    Ok(picked.where_scalarother(&any, 0.0))
}

/// Optional length correction of a segment score (§3.3, off in the paper config: β = 0):
/// s − β·ln(1 + len), then clamp to ±`clip`. `scores [B]` float, `lengths [B]` token counts.
pub fn length_corrected_scores(
    scores: &Tensor,
    lengths: &Tensor,
    beta: f64,
    clip: Option<f64>,
) -> Result<Tensor> {
    expect_float("scores", scores)?;
    let b = expect_shape("scores", scores, &[-1])?[0];
    expect_shape("lengths", lengths, &[b])?;
    expect_device("lengths", lengths, scores.device())?;
    if !beta.is_finite() {
        return Err(config_err("beta", format!("must be finite, got {beta}")));
    }
    let len = lengths.f_to_kind(scores.kind())?.clamp_min(0.0);
    let corrected = scores - len.log1p() * beta;
    Ok(match clip {
        Some(c) => corrected.f_clamp(-c, c)?,
        None => corrected,
    })
}

/// The alignment-stage discriminator loss (§4.2), for one micro-batch:
///
/// Δcap = s^T_cap − s^S_cap, Δcot likewise (scores sanitised by [`sanitize_scores`]);
/// L_cap = Σ mᵢ·(−log σ(Δcapᵢ)) / max(1, n_loc), L_cot likewise;
/// L_fb = fallback_coef·(−log σ(mean s^T_cap) − log σ(mean s^T_cot)) over all samples;
/// h = \[n_glob > 0\]; R = (mean s^S_cap² + mean s^S_cot² + mean s^T_cap² + mean s^T_cot²)/4 over
/// all samples (valid or not); L = h·(L_cap + L_cot) + (1−h)·L_fb + score_reg_coef·R.
///
/// `valid [B]` (bool or 0/1) marks format-valid rollouts. `global_valid` is the number of valid
/// samples summed over data-parallel ranks for this micro-batch index (0-dim); `None` uses the
/// local count. Scale the result by the micro-batch fraction yourself.
pub fn bradley_terry_loss(
    scores: SegmentScores<'_>,
    valid: &Tensor,
    global_valid: Option<&Tensor>,
    opts: &BtOptions,
) -> Result<(Tensor, BtStats)> {
    opts.validate()?;
    let b = expect_shape("student_caption", scores.student_caption, &[-1])?[0];
    let device = scores.student_caption.device();
    let prep = |name: &'static str, t: &Tensor| -> Result<Tensor> {
        expect_shape(name, t, &[b])?;
        expect_device(name, t, device)?;
        sanitize_scores(t, opts.score_clip)
    };
    let sc = prep("student_caption", scores.student_caption)?;
    let scot = prep("student_cot", scores.student_cot)?;
    let tc = prep("teacher_caption", scores.teacher_caption)?;
    let tcot = prep("teacher_cot", scores.teacher_cot)?;
    expect_shape("valid", valid, &[b])?;
    expect_device("valid", valid, device)?;
    let kind = sc.kind();
    let m = mask_as(valid, Kind::Bool)?.to_kind(kind);
    let n_loc = m.sum(None::<Kind>);
    let n_glob = match global_valid {
        Some(g) => {
            expect_shape("global_valid", g, &[])?;
            expect_device("global_valid", g, device)?;
            g.f_to_kind(kind)?
        }
        None => n_loc.shallow_clone(),
    };
    let h = n_glob.gt(0.0).to_kind(kind);
    let denom = n_loc.clamp_min(1.0);

    let d_cap = &tc - &sc;
    let d_cot = &tcot - &scot;
    let nll = |d: &Tensor| -d.log_sigmoid();
    let l_cap = (&m * nll(&d_cap)).sum(None::<Kind>) / &denom;
    let l_cot = (&m * nll(&d_cot)).sum(None::<Kind>) / &denom;
    let fb_cap = nll(&tc.mean(None::<Kind>)) * opts.fallback_coef;
    let fb_cot = nll(&tcot.mean(None::<Kind>)) * opts.fallback_coef;
    let sq_mean = |x: &Tensor| (x * x).mean(None::<Kind>);
    let reg = (sq_mean(&sc) + sq_mean(&scot) + sq_mean(&tc) + sq_mean(&tcot)) / 4.0;
    let one_minus_h = 1.0 - &h;
    let cap_loss = &h * &l_cap + &one_minus_h * &fb_cap;
    let cot_loss = &h * &l_cot + &one_minus_h * &fb_cot;
    let reg_loss = &reg * opts.score_reg_coef;
    let loss = &cap_loss + &cot_loss + &reg_loss;

    let acc = |d: &Tensor| (&m * d.gt(0.0).to_kind(kind)).sum(None::<Kind>) / &denom;
    let cap_acc = acc(&d_cap).detach();
    let cot_acc = acc(&d_cot).detach();
    let valid_mean = |x: &Tensor| ((&m * x).sum(None::<Kind>) / &denom).detach();
    let stats = BtStats {
        loss: loss.detach(),
        cap_loss: cap_loss.detach(),
        cot_loss: cot_loss.detach(),
        score_reg: reg.detach(),
        score_reg_loss: reg_loss.detach(),
        d_acc: ((&cap_acc + &cot_acc) / 2.0).detach(),
        cap_acc,
        cot_acc,
        valid_ratio: m.mean(None::<Kind>).detach(),
        n_valid: n_loc.detach(),
        pairwise_active: h.detach(),
        student_caption_mean: valid_mean(&sc),
        student_cot_mean: valid_mean(&scot),
        teacher_caption_mean: valid_mean(&tc),
        teacher_cot_mean: valid_mean(&tcot),
    };
    Ok((loss, stats))
}

/// Warm-up pairwise loss (§4.1): d = s_T − s_S, loss = mean(−log σ(d)), acc = mean \[d > 0\].
/// `teacher [B]`, `student [B]` → (loss, acc) 0-dim; acc is detached.
pub fn pairwise_bt_loss(teacher: &Tensor, student: &Tensor) -> Result<(Tensor, Tensor)> {
    expect_float("teacher", teacher)?;
    let b = expect_shape("teacher", teacher, &[-1])?[0];
    expect_float("student", student)?;
    expect_shape("student", student, &[b])?;
    expect_device("student", student, teacher.device())?;
    if b == 0 {
        return Err(AlgoError::Shape {
            name: "teacher",
            expected: "at least one pair".into(),
            got: vec![0],
        });
    }
    let d = teacher - student;
    let loss = (-d.log_sigmoid()).mean(None::<Kind>);
    let acc = d
        .gt(0.0)
        .to_kind(teacher.kind())
        .mean(None::<Kind>)
        .detach();
    Ok((loss, acc))
}

/// Switch-style router load-balancing loss as transformers' `load_balancing_loss_func` computes
/// it for Qwen3-MoE / Qwen3-VL-MoE:
/// P = softmax(logits), sel = top-k(P); f_e = (tokens routed to e, over all k) / rows,
/// p_e = Σ P_e / rows (rows and sums over unpadded tokens of every layer);
/// loss = E · Σ_e f_e·p_e. Multiply by `router_aux_loss_coef` (0.01 in the warm-up) yourself.
///
/// `router_logits`: one `[N, E]` tensor per MoE layer, N = B·S in the layout of
/// `attention_mask [B, S]` (1 = real token). Softmax runs in f32 (transformers runs it in the
/// logits' dtype, bf16 in practice, and upcasts after).
pub fn load_balancing_loss(
    router_logits: &[Tensor],
    num_experts: i64,
    top_k: i64,
    attention_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(first) = router_logits.first() else {
        return Err(config_err(
            "router_logits",
            "no router logits (no MoE layer?)",
        ));
    };
    if !(1..=num_experts).contains(&top_k) {
        return Err(config_err(
            "top_k",
            format!("must be in 1..={num_experts}, got {top_k}"),
        ));
    }
    let device = first.device();
    let n = first.size().first().copied().unwrap_or(0);
    let flat_mask = match attention_mask {
        Some(am) => {
            let dims = expect_shape("attention_mask", am, &[-1, -1])?;
            if dims[0] * dims[1] != n {
                return Err(AlgoError::Shape {
                    name: "attention_mask",
                    expected: format!("[B, S] with B·S = {n} router rows"),
                    got: dims,
                });
            }
            expect_device("attention_mask", am, device)?;
            Some(mask_as(am, Kind::Float)?.reshape([-1]))
        }
        None => None,
    };
    let mut tokens_per_expert = Tensor::zeros([num_experts], (Kind::Float, device));
    let mut prob_per_expert = Tensor::zeros([num_experts], (Kind::Float, device));
    let mut rows = Tensor::zeros([], (Kind::Float, device));
    for layer in router_logits {
        expect_float("router_logits", layer)?;
        expect_shape("router_logits", layer, &[n, num_experts])?;
        expect_device("router_logits", layer, device)?;
        let p = layer.f_to_kind(Kind::Float)?.f_softmax(-1, None::<Kind>)?;
        let (_, selected) = p.f_topk(top_k, -1, true, true)?;
        let routed = selected.f_one_hot(num_experts)?.to_kind(Kind::Float); // [N, k, E]
        match &flat_mask {
            Some(fm) => {
                tokens_per_expert += (routed * fm.view([-1, 1, 1])).sum_dim_intlist(
                    [0i64, 1].as_slice(),
                    false,
                    None::<Kind>,
                );
                prob_per_expert += (&p * fm.unsqueeze(-1)).sum_dim_intlist(0, false, None::<Kind>);
                rows += fm.sum(None::<Kind>);
            }
            None => {
                tokens_per_expert +=
                    routed.sum_dim_intlist([0i64, 1].as_slice(), false, None::<Kind>);
                prob_per_expert += p.sum_dim_intlist(0, false, None::<Kind>);
                rows += n as f64;
            }
        }
    }
    let f = tokens_per_expert / &rows;
    let p = prob_per_expert / &rows;
    Ok((f * p).sum(None::<Kind>) * num_experts as f64)
}
