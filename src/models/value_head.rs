//! Scalar value head (QWEN3_VL.md §9, PRISM_ALGORITHM.md §2.3): `Linear(D, 1)` on the final-normed
//! hidden state at every position → values `[B, S]`; a sequence's value is read at its last
//! valid token. Name (`score`, `v_head.summary`, `value_head`, ...) and bias are configurable
//! because frameworks disagree; dropout is a training concern of the caller.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::error::{ModelError, Result};
use super::layers::Linear;

/// Where the value head lives in the checkpoint and whether it has a bias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueHeadConfig {
    /// Dotted prefix of the head's tensors, e.g. `score` → `score.weight`, `score.bias`.
    pub name: String,
    /// Whether the head has a bias (`score` in transformers 5: yes; OpenRLHF/PRISM: no).
    pub bias: bool,
}

impl Default for ValueHeadConfig {
    /// transformers 5 token-classification style: `score`, with bias.
    fn default() -> Self {
        ValueHeadConfig {
            name: "score".into(),
            bias: true,
        }
    }
}

/// `Linear(D, 1)` value head.
#[derive(Debug)]
pub struct ValueHead {
    pub linear: Linear,
    pub config: ValueHeadConfig,
}

impl ValueHead {
    /// Creates the head under `root / name` (dots in the name become path components).
    pub fn new(root: Path, hidden: i64, config: &ValueHeadConfig) -> Self {
        let p = config.name.split('.').fold(root, |p, c| &p / c);
        ValueHead {
            linear: Linear::new(p, hidden, 1, config.bias),
            config: config.clone(),
        }
    }

    /// Final-normed hidden `[B, S, D]` → values `[B, S]`.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.linear.forward(hidden).squeeze_dim(-1)
    }
}

/// Index of the last valid token of each row of `attention_mask [B, S]` → `[B]` Int64
/// (S-1 under left padding, `len-1` under right padding). Rows without any valid token are an
/// error.
pub fn last_valid_index(attention_mask: &Tensor) -> Result<Tensor> {
    let (_, s) = attention_mask.size2().map_err(|_| {
        ModelError::input(
            "attention_mask",
            format!("expected [B, S], got {:?}", attention_mask.size()),
        )
    })?;
    let valid = attention_mask.f_ne(0)?;
    let any = valid.f_any_dim(1, false)?;
    if !bool::try_from(any.f_all()?)? {
        return Err(ModelError::input(
            "attention_mask",
            "a row has no valid token",
        ));
    }
    let ar = Tensor::f_arange(s, (Kind::Int64, attention_mask.device()))?;
    // Position where valid, -1 elsewhere; the max is the last valid index.
    let pos = ar
        .f_unsqueeze(0)?
        .f_where_self(&valid, &Tensor::from(-1i64).to_device(ar.device()))?;
    Ok(pos.f_amax([1].as_slice(), false)?)
}

/// `values [B, S]` read at the last valid token of each row → `[B]`.
pub fn values_at_last_token(values: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let idx = last_valid_index(attention_mask)?;
    Ok(values
        .f_gather(1, &idx.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_token_left_and_right_padding() {
        let mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
        let idx = Vec::<i64>::try_from(last_valid_index(&mask).unwrap()).unwrap();
        assert_eq!(idx, vec![3, 1]);
        let vals = Tensor::from_slice(&[0f32, 1., 2., 3., 4., 5., 6., 7.]).view([2, 4]);
        let v = Vec::<f32>::try_from(values_at_last_token(&vals, &mask).unwrap()).unwrap();
        assert_eq!(v, vec![3., 5.]);
        let empty = Tensor::zeros([1, 3], (Kind::Int64, tch::Device::Cpu));
        assert!(last_valid_index(&empty).is_err());
    }
}
