//! Our own AdamW over plain tensors, because tch's optimizer cannot export or import its state:
//! fp32 moments (and fp32 master weights for low-precision parameters), bias correction,
//! decoupled weight decay, parameter groups, grad-norm clipping that returns the total norm, LR
//! schedules, and state export/import as named tensors for safetensors checkpoints.
//!
//! The update is torch.optim.AdamW's single-tensor path (torch 2.11 `_single_tensor_adam` with
//! `decoupled_weight_decay=True`), step t = 1, 2, …:
//! θ ← θ·(1 − lr·λ); m ← m + (1−β₁)(g − m); v ← β₂v + (1−β₂)g²;
//! θ ← θ − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε).
//! Matched to torch within 1e-6 over 5 steps with two groups, clipping and a changing LR
//! (tests/algo_parity.rs). Parameters without a gradient are skipped, as torch does; their step
//! count is shared (one optimizer step count), which differs from torch only for parameters that
//! miss some steps.
//!
//! Never touches devices beyond the parameters' own; in-place updates run under `no_grad`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{AlgoError, Result, config_err};

/// Hyper-parameters shared by all groups. `Default` is torch's AdamW default except `lr`, which
/// torch also defaults (1e-3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule multiplies it).
    pub lr: f64,
    /// β₁ (torch 0.9).
    pub beta1: f64,
    /// β₂ (torch 0.999).
    pub beta2: f64,
    /// ε added to √v̂ (torch 1e-8).
    pub eps: f64,
    /// Decoupled weight decay λ of the decaying group (torch 0.01; PRISM 0.01, DAPO/GSPO 0.1).
    pub weight_decay: f64,
    /// Keep an fp32 master copy of non-fp32 parameters (bf16): updates of lr·step ≪ the bf16 ulp
    /// (lr 1e-6!) would otherwise round away. fp32 parameters never get a copy.
    pub master_weights: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            master_weights: true,
        }
    }
}

impl AdamWConfig {
    /// Rejects values torch rejects (lr, ε, λ < 0; β outside [0, 1)) and non-finite ones.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("lr", self.lr),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(config_err(name, format!("must be finite and ≥ 0, got {v}")));
            }
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(config_err(name, format!("must be in [0, 1), got {v}")));
            }
        }
        Ok(())
    }
}

/// A parameter group: its own weight decay and a multiplier of the scheduled LR.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// For logs and errors ("decay", "no_decay", "vision", …).
    pub name: String,
    /// λ of this group.
    pub weight_decay: f64,
    /// This group's LR = scheduled LR · `lr_scale`.
    pub lr_scale: f64,
}

/// True for parameters that conventionally get no weight decay: biases, norm weights and any
/// tensor of rank ≤ 1 (HF Trainer and nanoGPT use the same rule).
pub fn default_no_decay(name: &str, param: &Tensor) -> bool {
    let lower = name.to_ascii_lowercase();
    param.dim() <= 1 || lower.ends_with("bias") || lower.contains("norm")
}

/// One parameter and its state.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    group: usize,
    /// fp32 first moment m.
    exp_avg: Tensor,
    /// fp32 second moment v.
    exp_avg_sq: Tensor,
    /// fp32 master copy of a low-precision parameter (the authoritative value).
    master: Option<Tensor>,
}

/// AdamW with exportable state. Holds shallow clones of the parameters (same storage), so the
/// model sees every update.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<ParamGroup>,
    slots: Vec<Slot>,
    step: i64,
}

/// Key of the step count in [`AdamW::state_tensors`].
pub const STEP_KEY: &str = "adamw.step";

impl AdamW {
    /// Builds the optimizer over named parameters; `assign(name, param)` picks each parameter's
    /// group index into `groups`.
    pub fn new(
        cfg: AdamWConfig,
        params: Vec<(String, Tensor)>,
        groups: Vec<ParamGroup>,
        assign: impl Fn(&str, &Tensor) -> usize,
    ) -> Result<Self> {
        cfg.validate()?;
        for g in &groups {
            if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
                return Err(config_err(
                    "weight_decay",
                    format!("group `{}`: got {}", g.name, g.weight_decay),
                ));
            }
            if !(g.lr_scale.is_finite() && g.lr_scale >= 0.0) {
                return Err(config_err(
                    "lr_scale",
                    format!("group `{}`: got {}", g.name, g.lr_scale),
                ));
            }
        }
        let mut slots = Vec::with_capacity(params.len());
        let mut seen = std::collections::HashSet::new();
        for (name, param) in params {
            if !seen.insert(name.clone()) {
                return Err(config_err(
                    "params",
                    format!("parameter `{name}` listed twice"),
                ));
            }
            let kind = param.f_kind()?;
            if !matches!(
                kind,
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                return Err(AlgoError::Kind {
                    name: "parameter",
                    expected: "a floating-point parameter",
                    got: kind,
                });
            }
            let group = assign(&name, &param);
            if group >= groups.len() {
                return Err(config_err(
                    "groups",
                    format!(
                        "parameter `{name}` assigned to group {group} of {}",
                        groups.len()
                    ),
                ));
            }
            let moment_kind = if kind == Kind::Double {
                Kind::Double
            } else {
                Kind::Float
            };
            let master = if cfg.master_weights && !matches!(kind, Kind::Float | Kind::Double) {
                Some(param.f_detach()?.f_to_kind(Kind::Float)?)
            } else {
                None
            };
            slots.push(Slot {
                exp_avg: param.f_zeros_like()?.f_to_kind(moment_kind)?,
                exp_avg_sq: param.f_zeros_like()?.f_to_kind(moment_kind)?,
                param: param.shallow_clone(),
                name,
                group,
                master,
            });
        }
        Ok(Self {
            cfg,
            groups,
            slots,
            step: 0,
        })
    }

    /// Two groups: "decay" (λ = `cfg.weight_decay`) and "no_decay" (λ = 0) by
    /// [`default_no_decay`].
    pub fn with_default_groups(cfg: AdamWConfig, params: Vec<(String, Tensor)>) -> Result<Self> {
        let groups = vec![
            ParamGroup {
                name: "decay".into(),
                weight_decay: cfg.weight_decay,
                lr_scale: 1.0,
            },
            ParamGroup {
                name: "no_decay".into(),
                weight_decay: 0.0,
                lr_scale: 1.0,
            },
        ];
        Self::new(cfg, params, groups, |n, p| {
            usize::from(default_no_decay(n, p))
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Optimizer steps taken so far (restored by [`AdamW::load_state_tensors`]).
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// The parameters (shallow clones), for [`clip_grad_norm`] and `zero_grad`.
    pub fn params(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.shallow_clone()).collect()
    }

    /// Zeroes (and detaches) every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// One AdamW step with learning rate `lr` (the scheduled value; each group multiplies it by
    /// its `lr_scale`). Parameters without a gradient are left untouched. Does not check
    /// finiteness: clip first and skip the step on a non-finite norm
    /// ([`super::numerics::is_finite`]).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(config_err(
                "lr",
                format!("must be finite and ≥ 0, got {lr}"),
            ));
        }
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2, eps) = (self.cfg.beta1, self.cfg.beta2, self.cfg.eps);
        let bias1 = 1.0 - b1.powf(t);
        let bias2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let _guard = tch::no_grad_guard();
        for s in &mut self.slots {
            let grad = s.param.grad();
            if !grad.defined() {
                continue;
            }
            let group = &self.groups[s.group];
            let lr_g = lr * group.lr_scale;
            let step_size = lr_g / bias1;
            let g = grad.f_to_kind(s.exp_avg.kind())?;
            // the value being optimised: the fp32 master, or the parameter itself
            let mut theta = match &s.master {
                Some(m) => m.shallow_clone(),
                None => s.param.shallow_clone(),
            };
            if group.weight_decay != 0.0 {
                let _ = theta.f_mul_scalar_(1.0 - lr_g * group.weight_decay)?;
            }
            // In-place ops, one temporary per line at most: the step is bound by memory
            // traffic and (on GPU) kernel launches, so this is ~8 kernels per tensor, not ~13.
            let _ = s.exp_avg.f_lerp_(&g, 1.0 - b1)?;
            let _ = s.exp_avg_sq.f_mul_scalar_(b2)?;
            let _ = s.exp_avg_sq.f_addcmul_(&g.f_mul_scalar(1.0 - b2)?, &g)?;
            if step_size != 0.0 {
                // θ ← θ − step_size · m / (√v / √(1−β₂ᵗ) + ε), as θ + m / d with
                // d = −(√v / √(1−β₂ᵗ) + ε) / step_size
                let mut denom = s.exp_avg_sq.f_sqrt()?;
                let _ = denom.f_div_scalar_(bias2_sqrt)?;
                let _ = denom.f_add_scalar_(eps)?;
                let _ = denom.f_mul_scalar_(-1.0 / step_size)?;
                if theta.kind() == s.exp_avg.kind() {
                    let _ = theta.f_addcdiv_(&s.exp_avg, &denom)?;
                } else {
                    // a low-precision parameter without a master copy
                    let update = s.exp_avg.f_div(&denom)?;
                    let _ = theta.f_add_(&update.f_to_kind(theta.kind())?)?;
                }
            }
            if let Some(m) = &s.master {
                s.param.f_copy_(&m.f_to_kind(s.param.kind())?)?;
            }
        }
        Ok(())
    }

    /// The state as named tensors for a safetensors checkpoint: `exp_avg/<param>`,
    /// `exp_avg_sq/<param>`, `master/<param>` (low-precision parameters only) and [`STEP_KEY`]
    /// (0-dim i64). The tensors share storage with the live state: write them before the next
    /// step.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            out.push((format!("exp_avg/{}", s.name), s.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq/{}", s.name),
                s.exp_avg_sq.shallow_clone(),
            ));
            if let Some(m) = &s.master {
                out.push((format!("master/{}", s.name), m.shallow_clone()));
            }
        }
        out.push((STEP_KEY.to_string(), Tensor::from(self.step)));
        out
    }

    /// Restores state written by [`AdamW::state_tensors`] (tensors may come from another device;
    /// they are copied into place). Every expected key must be present with the right shape and
    /// no unknown key may be left over; errors name the key. A restored master copy is also
    /// written into the parameter.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut by_name: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let state_err = |name: &str, reason: String| AlgoError::State {
            name: name.to_string(),
            reason,
        };
        let step_t = by_name
            .remove(STEP_KEY)
            .ok_or_else(|| state_err(STEP_KEY, "missing".into()))?;
        if step_t.numel() != 1 {
            return Err(state_err(
                STEP_KEY,
                format!("expected a scalar, got shape {:?}", step_t.size()),
            ));
        }
        let step = step_t
            .f_to_kind(Kind::Int64)?
            .f_reshape([1])?
            .f_int64_value(&[0])?;
        if step < 0 {
            return Err(state_err(STEP_KEY, format!("negative step {step}")));
        }
        // validate everything before mutating anything
        let mut plan = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let mut keys = vec![
                (format!("exp_avg/{}", s.name), 0usize),
                (format!("exp_avg_sq/{}", s.name), 1),
            ];
            if s.master.is_some() {
                keys.push((format!("master/{}", s.name), 2));
            }
            for (key, which) in keys {
                let t = by_name
                    .remove(key.as_str())
                    .ok_or_else(|| state_err(&key, "missing".into()))?;
                if t.size() != s.param.size() {
                    return Err(state_err(
                        &key,
                        format!(
                            "shape {:?} does not match parameter {:?}",
                            t.size(),
                            s.param.size()
                        ),
                    ));
                }
                let kind = t.f_kind()?;
                if !matches!(
                    kind,
                    Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                ) {
                    return Err(state_err(
                        &key,
                        format!("expected floating point, got {kind:?}"),
                    ));
                }
                plan.push((i, which, t.shallow_clone()));
            }
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(state_err(
                extra,
                "not a state entry of this optimizer (parameters differ?)".into(),
            ));
        }
        let _guard = tch::no_grad_guard();
        for (i, which, t) in plan {
            let s = &mut self.slots[i];
            match which {
                0 => s.exp_avg.f_copy_(&t)?,
                1 => s.exp_avg_sq.f_copy_(&t)?,
                _ => {
                    if let Some(m) = &mut s.master {
                        m.f_copy_(&t)?;
                        s.param.f_copy_(&m.f_to_kind(s.param.kind())?)?;
                    }
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// torch `clip_grad_norm_` (max_norm, 2-norm): total = ‖(‖g₁‖, …, ‖gₙ‖)‖, every gradient scaled
/// by min(1, max_norm/(total + 1e-6)) in place (the 1e-6 is torch's, it avoids dividing by 0).
/// Returns the total norm (0-dim f32) without syncing: a NaN/Inf norm poisons the gradients, so
/// the caller checks it ([`super::numerics::is_finite`]) and skips the step (zeroing gradients),
/// as verl does. Parameters without a gradient are ignored; none at all gives 0.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(config_err(
            "max_norm",
            format!("must be finite and > 0, got {max_norm}"),
        ));
    }
    let total = grad_norm(params)?;
    let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
    let _guard = tch::no_grad_guard();
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.f_mul_(&coef.f_to(g.device())?.f_to_kind(g.kind())?)?;
        }
    }
    Ok(total)
}

/// Total 2-norm of the gradients (0-dim f32), no clipping, no sync.
pub fn grad_norm(params: &[Tensor]) -> Result<Tensor> {
    // per-tensor norms on their own devices, gathered on the first gradient's device
    let mut norms = Vec::new();
    let mut first = None;
    for p in params {
        let g = p.grad();
        if g.defined() {
            let device = *first.get_or_insert(g.device());
            norms.push(g.f_to_kind(Kind::Float)?.f_norm()?.f_to(device)?);
        }
    }
    match first {
        None => Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu))),
        Some(_) => Ok(Tensor::f_stack(&norms, 0)?.f_norm()?),
    }
}

/// A learning-rate schedule: a multiplier of the peak LR per optimizer step (0-based: the factor
/// of the first update is `factor(0)`), as transformers' schedulers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Always 1 (PRISM alignment, GRPO).
    Constant,
    /// step/warmup during warm-up (so the first update has LR 0, as in PRISM's DAPO), then 1
    /// (transformers `get_constant_schedule_with_warmup`).
    ConstantWithWarmup { warmup_steps: i64 },
    /// Linear warm-up, then half a cosine period to 0 at `total_steps`
    /// (transformers `get_cosine_schedule_with_warmup`, num_cycles 0.5; SFT and warm-up).
    CosineWithWarmup { warmup_steps: i64, total_steps: i64 },
}

impl LrSchedule {
    /// Cosine with a warm-up of `ceil(ratio · total)` steps, as transformers' Trainer rounds
    /// `warmup_ratio` (verl truncates: `int(ratio · total)`; both give 75 for 5 % of 1500).
    pub fn cosine_with_warmup_ratio(ratio: f64, total_steps: i64) -> Result<Self> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(config_err(
                "warmup_ratio",
                format!("must be in [0, 1], got {ratio}"),
            ));
        }
        let s = Self::CosineWithWarmup {
            warmup_steps: (ratio * total_steps as f64).ceil() as i64,
            total_steps,
        };
        s.validate()?;
        Ok(s)
    }

    /// Rejects negative step counts and a warm-up longer than the run.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::ConstantWithWarmup { warmup_steps } if warmup_steps < 0 => Err(config_err(
                "warmup_steps",
                format!("must be ≥ 0, got {warmup_steps}"),
            )),
            LrSchedule::ConstantWithWarmup { .. } => Ok(()),
            LrSchedule::CosineWithWarmup {
                warmup_steps,
                total_steps,
            } => {
                if total_steps <= 0 || warmup_steps < 0 || warmup_steps > total_steps {
                    Err(config_err(
                        "warmup_steps",
                        format!(
                            "need 0 ≤ warmup ≤ total and total > 0, got {warmup_steps} and {total_steps}"
                        ),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The LR multiplier at 0-based optimizer step `step`.
    pub fn factor(&self, step: i64) -> f64 {
        let step = step.max(0) as f64;
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::ConstantWithWarmup { warmup_steps } => {
                let w = warmup_steps as f64;
                if step < w { step / w.max(1.0) } else { 1.0 }
            }
            LrSchedule::CosineWithWarmup {
                warmup_steps,
                total_steps,
            } => {
                let w = warmup_steps as f64;
                if step < w {
                    return step / w.max(1.0);
                }
                let progress = (step - w) / ((total_steps as f64 - w).max(1.0));
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}
