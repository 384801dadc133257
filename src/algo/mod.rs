//! RL math as free functions over tensors: advantages, policy losses, discriminator losses, our
//! AdamW and the non-finite guard. Never touches actors or devices.
//!
//! # What lives where
//!
//! - [`advantage`]: group normalisation, GRPO outcome advantage, PRISM's multi-reward advantage
//!   (six modes), DAPO overlong shaping and the dynamic-sampling group filter.
//! - [`policy_loss`]: the PPO family (dual clip, DAPO clip-higher, GSPO sequence ratio) as one
//!   [`policy_loss::PolicyLoss`] of orthogonal enums with presets; loss aggregation; KL
//!   estimators; entropy.
//! - [`discriminator`]: Bradley–Terry loss of the PRISM experts (teacher ≻ student) with the
//!   validity mask, fallback, score clip and L2 regulariser; warm-up pairwise loss; accuracies;
//!   MoE load-balancing loss.
//! - [`adamw`]: a checkpointable AdamW (tch exposes no optimizer state), grad-norm clipping, LR
//!   schedules.
//! - [`numerics`]: finiteness checks that let the caller count and skip a step.
//!
//! # Conventions
//!
//! Axis names: `B` sequences (rollouts), `T` response tokens, `V` vocabulary, `G` groups, `E`
//! experts, `L` router layers, `N` tokens. A response mask `[B, T]` is 1 on tokens that count
//! (up to and including the first EOS) and 0 on padding; any float, integer or bool kind works.
//! Functions validate shapes and kinds at entry (returning [`AlgoError`]) and then run plain tensor
//! ops; none calls `.item()` or otherwise syncs with the host, except the few documented ones:
//! where the output shape depends on data ([`advantage::Groups::from_ids`],
//! [`advantage::dynamic_sampling_filter`]), the token-id range check of
//! [`policy_loss::token_log_probs`], the counts of [`policy_loss::GlobalBatch::of_masks`], and
//! the explicit checks in [`numerics`]. Losses come back with a stats struct of tensors; the
//! learner decides when to sync and log.
//!
//! The reference semantics are verl 0.9.1 `verl/trainer/ppo/core_algos.py` (golden vectors in
//! `tests/fixtures/rl/`, produced by `tests/fixtures/gen_rl_reference.py`), and
//! PRISM_ALGORITHM.md §4–§6 for what is not in verl. Every deliberate deviation is documented at
//! the function that makes it.

pub mod adamw;
pub mod advantage;
pub mod discriminator;
pub mod numerics;
pub mod policy_loss;

use tch::{Kind, Tensor};

/// Errors of the algorithm layer: bad tensors handed in by a caller, or bad options.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlgoError {
    /// A tensor argument has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected}, got {got:?}")]
    Shape {
        name: &'static str,
        expected: String,
        got: Vec<i64>,
    },
    /// A tensor argument has the wrong element kind (e.g. integer log-probs).
    #[error("tensor `{name}`: expected {expected}, got {got:?}")]
    Kind {
        name: &'static str,
        expected: &'static str,
        got: Kind,
    },
    /// Two tensor arguments live on different devices.
    #[error("tensor `{name}` is on {got:?}, expected {expected:?} like the other inputs")]
    Device {
        name: &'static str,
        expected: tch::Device,
        got: tch::Device,
    },
    /// An option value is out of range or options combine badly.
    #[error("invalid option `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    /// Optimizer state being imported does not fit the parameters.
    #[error("optimizer state `{name}`: {reason}")]
    State { name: String, reason: String },
    /// A tensor that must be finite is not (see [`numerics::check_finite`]).
    #[error("tensor `{name}` is not finite: {nan} NaN and {inf} ±Inf of {numel} elements")]
    NonFinite {
        name: String,
        nan: i64,
        inf: i64,
        numel: i64,
    },
    /// An error from libtorch itself.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, AlgoError>;

pub(crate) fn config_err(field: &'static str, reason: impl Into<String>) -> AlgoError {
    AlgoError::Config {
        field,
        reason: reason.into(),
    }
}

/// Checks that `t` has exactly `dims` (`-1` = any size) and returns its sizes.
pub(crate) fn expect_shape(name: &'static str, t: &Tensor, dims: &[i64]) -> Result<Vec<i64>> {
    let got = t.size();
    let ok = got.len() == dims.len() && got.iter().zip(dims).all(|(g, d)| *d < 0 || g == d);
    if ok {
        Ok(got)
    } else {
        let expected = format!(
            "[{}]",
            dims.iter()
                .map(|d| if *d < 0 {
                    "_".to_string()
                } else {
                    d.to_string()
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        Err(AlgoError::Shape {
            name,
            expected,
            got,
        })
    }
}

/// Checks that `t` holds floating-point values.
pub(crate) fn expect_float(name: &'static str, t: &Tensor) -> Result<()> {
    let k = t.f_kind()?;
    if matches!(k, Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16) {
        Ok(())
    } else {
        Err(AlgoError::Kind {
            name,
            expected: "a floating-point tensor",
            got: k,
        })
    }
}

/// Checks that `t` holds integers (group ids, lengths, indices).
pub(crate) fn expect_integer(name: &'static str, t: &Tensor) -> Result<()> {
    let k = t.f_kind()?;
    match k {
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => Ok(()),
        _ => Err(AlgoError::Kind {
            name,
            expected: "an integer tensor",
            got: k,
        }),
    }
}

/// Checks that `t` is on `device`.
pub(crate) fn expect_device(name: &'static str, t: &Tensor, device: tch::Device) -> Result<()> {
    let got = t.device();
    if got == device {
        Ok(())
    } else {
        Err(AlgoError::Device {
            name,
            expected: device,
            got,
        })
    }
}

/// A mask of any kind (bool, integer, float) as 0/1 (or weights) in `kind`.
pub(crate) fn mask_as(mask: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(mask.f_to_kind(kind)?)
}
