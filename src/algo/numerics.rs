//! Finiteness checks for losses, scores and gradient norms, so the stage code can skip a step
//! (and count it) instead of stepping the optimizer on NaN/Inf.
//!
//! Policy (STYLE habit 13): a single non-finite loss or grad norm is counted, logged and the step
//! skipped (gradients zeroed); the stage aborts after N in a row. This module only detects.
//! [`all_finite`] stays on the device (no sync); [`check_finite`] syncs once and names the
//! culprit.

use tch::{Kind, Tensor};

use super::{AlgoError, Result};

/// 0-dim bool tensor: true when every element of every tensor is finite. No host sync; an empty
/// list is finite.
pub fn all_finite(tensors: &[&Tensor]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for t in tensors {
        let ok = t.f_isfinite()?.f_all()?;
        acc = Some(match acc {
            Some(a) => a.f_logical_and(&ok)?,
            None => ok,
        });
    }
    Ok(match acc {
        Some(a) => a,
        None => Tensor::from(true),
    })
}

/// Ok when `t` is entirely finite; otherwise [`AlgoError::NonFinite`] with the counts of NaN and
/// ±Inf elements, naming the tensor. Syncs with the host.
pub fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    if t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0 {
        return Ok(());
    }
    let nan = t.f_isnan()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let inf = t.f_isinf()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    Err(AlgoError::NonFinite {
        name: name.to_string(),
        nan,
        inf,
        numel: t.numel() as i64,
    })
}

/// True when `t` is entirely finite (syncs). Convenience for `if !is_finite(&loss)? { skip }`.
pub fn is_finite(t: &Tensor) -> Result<bool> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}
