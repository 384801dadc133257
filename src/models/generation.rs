//! Batched, left-padded incremental decoding with a [`KvCache`]: greedy or sampled
//! (temperature → top-k → top-p, HF order), stop tokens, max new tokens, and the behaviour
//! log-probs of the sampled tokens.
//!
//! Randomness never touches the global torch generator: every batch row draws its uniforms from
//! its own `StdRng` seeded from `(seed, row)`, so a request is reproducible whatever other threads
//! do. The draw is an inverse-CDF lookup on the device (`searchsorted`), only `[B]` numbers cross
//! to the host per step. Finished rows are dropped from the cache.
//!
//! [`generate_with`] calls back once per generated token (row, id); the caller may halt a row
//! there (a server's per-request limits, stop strings, a client gone). [`generate`] is it with a
//! callback that never halts.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tch::{Kind, Tensor};

use super::error::{ModelError, Result};
use super::{KvCache, ModelInputs, Qwen3Vl};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Arg-max.
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
    /// (0 = all) and then to the smallest set with probability ≥ `top_p` (1.0 = all).
    Sample {
        temperature: f64,
        top_k: i64,
        top_p: f64,
    },
}

/// Settings of one generation request.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub sampling: Sampling,
    /// Upper bound on generated tokens per sequence (the stop token not counted).
    pub max_new_tokens: usize,
    /// Generation of a row ends when it samples one of these (not included in the output).
    pub stop_token_ids: Vec<i64>,
    /// Tokens that may never be sampled (e.g. `<|image_pad|>`, whose appearance in a response
    /// would break a later multimodal forward).
    pub suppress_token_ids: Vec<i64>,
    /// Base seed; row r uses its own RNG seeded from `(seed, r)`.
    pub seed: u64,
    /// Per-row seeds (one per batch row), overriding `seed`: a request then samples the same
    /// way whichever batch and row it lands in.
    pub row_seeds: Option<Vec<u64>>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            sampling: Sampling::Greedy,
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
            suppress_token_ids: Vec::new(),
            seed: 0,
            row_seeds: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopReason {
    /// A stop token was sampled (its id and its behaviour log-prob, for learners that train on
    /// the end-of-sequence token).
    Stop { token_id: i64, logprob: f32 },
    /// `max_new_tokens` (or the model context) was reached.
    Length,
    /// The `on_token` callback of [`generate_with`] halted the row after its last token.
    Halted,
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated ids, without prompt and stop token.
    pub token_ids: Vec<i64>,
    /// Log-prob of each token under the distribution it was drawn from (after temperature,
    /// top-k, top-p). For greedy decoding: the log-softmax of the raw logits.
    pub logprobs: Vec<f32>,
    pub stop_reason: StopReason,
}

fn row_rng(seed: u64, row: usize) -> StdRng {
    // SplitMix64 finaliser so that neighbouring (seed, row) pairs give unrelated streams.
    let mut z = seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Log-probs `[A, V]` (fp32) of the distribution tokens are drawn from.
fn sampling_logprobs(logits: &Tensor, sampling: Sampling, suppress: &Tensor) -> Result<Tensor> {
    let mut x = logits.f_to_kind(Kind::Float)?;
    if suppress.numel() > 0 {
        x = x.f_index_fill(1, suppress, f64::NEG_INFINITY)?;
    }
    match sampling {
        Sampling::Greedy => Ok(x.f_log_softmax(-1, Kind::Float)?),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            x = x.f_div_scalar(temperature)?;
            let v = x.size()[1];
            if top_k > 0 && top_k < v {
                let (kth, _) = x.f_topk(top_k, -1, true, true)?;
                let thresh = kth.f_narrow(1, top_k - 1, 1)?; // (A, 1)
                x = x.f_masked_fill(&x.f_lt_tensor(&thresh)?, f64::NEG_INFINITY)?;
            }
            if top_p < 1.0 {
                // Remove tokens once the cumulative probability of the more likely ones
                // exceeds top_p; the most likely token always stays.
                let (sorted, order) = x.f_sort(-1, true)?;
                let cum = sorted
                    .f_softmax(-1, Kind::Float)?
                    .f_cumsum(-1, Kind::Float)?;
                let probs_sorted = sorted.f_softmax(-1, Kind::Float)?;
                let before = cum.f_sub(&probs_sorted)?; // mass strictly before each token
                let drop_sorted = before.f_gt(top_p)?;
                let drop = drop_sorted.f_scatter(1, &order, &drop_sorted)?;
                x = x.f_masked_fill(&drop, f64::NEG_INFINITY)?;
            }
            Ok(x.f_log_softmax(-1, Kind::Float)?)
        }
    }
}

/// Picks one token per row from `logprobs [A, V]`; `rngs[i]` belongs to active row i.
fn pick(
    logprobs: &Tensor,
    sampling: Sampling,
    rngs: &mut [StdRng],
) -> Result<(Vec<i64>, Vec<f32>)> {
    let idx = match sampling {
        Sampling::Greedy => logprobs.f_argmax(-1, true)?,
        Sampling::Sample { .. } => {
            let cdf = logprobs.f_exp()?.f_cumsum(-1, Kind::Float)?; // (A, V)
            let total = cdf.f_narrow(1, cdf.size()[1] - 1, 1)?;
            let u: Vec<f32> = rngs.iter_mut().map(|r| r.random::<f32>()).collect();
            let u = Tensor::from_slice(&u)
                .view([-1, 1])
                .to_device(logprobs.device());
            // First index with cdf > u·total: a token of positive probability.
            let target = u.f_mul(&total)?;
            let i = target.f_searchsorted(&cdf, false, true, "right", None::<&Tensor>)?;
            i.f_clamp_max(cdf.size()[1] - 1)?
        }
    };
    let lp = logprobs.f_gather(1, &idx, false)?;
    let ids = Vec::<i64>::try_from(&idx.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    let lps = Vec::<f32>::try_from(&lp.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?;
    Ok((ids, lps))
}

/// Generates continuations of a left-padded batch. The prompt's last column must be a real
/// token in every row. Runs under no_grad.
pub fn generate(
    model: &Qwen3Vl,
    inputs: &ModelInputs,
    cfg: &GenerationConfig,
) -> Result<Vec<GenerationOutput>> {
    generate_with(model, inputs, cfg, &mut |_, _| true)
}

/// [`generate`], calling `on_token(row, id)` once per generated token (stop tokens excluded),
/// right after it joined `row`'s output. Returning `false` halts that row: it keeps the token,
/// ends with [`StopReason::Halted`] and leaves the batch (its cache row is dropped) at once.
pub fn generate_with(
    model: &Qwen3Vl,
    inputs: &ModelInputs,
    cfg: &GenerationConfig,
    on_token: &mut dyn FnMut(usize, i64) -> bool,
) -> Result<Vec<GenerationOutput>> {
    let _guard = tch::no_grad_guard();
    let (b, s) = inputs.input_ids.size2().map_err(|_| {
        ModelError::input(
            "input_ids",
            format!("expected [B, S], got {:?}", inputs.input_ids.size()),
        )
    })?;
    if let Sampling::Sample {
        temperature,
        top_p,
        top_k,
    } = cfg.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(ModelError::input(
                "temperature",
                format!("must be > 0, got {temperature}"),
            ));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ModelError::input(
                "top_p",
                format!("must be in (0, 1], got {top_p}"),
            ));
        }
        if top_k < 0 {
            return Err(ModelError::input(
                "top_k",
                format!("must be >= 0, got {top_k}"),
            ));
        }
    }
    let ctx = model.config.text_config.max_position_embeddings;
    if s >= ctx {
        return Err(ModelError::input(
            "input_ids",
            format!("prompt length {s} leaves no room in the model context of {ctx} tokens"),
        ));
    }
    let last = inputs.attention_mask.f_select(1, s - 1)?;
    if !bool::try_from(last.f_ne(0)?.f_all()?)? {
        return Err(ModelError::input(
            "attention_mask",
            "every row must end with a real token (use left padding for generation)",
        ));
    }
    let vocab = model.config.text_config.vocab_size;
    if let Some(bad) = cfg
        .suppress_token_ids
        .iter()
        .find(|&&t| t < 0 || t >= vocab)
    {
        return Err(ModelError::input(
            "suppress_token_ids",
            format!("{bad} outside [0, {vocab})"),
        ));
    }
    let dev = model.device();
    let suppress = Tensor::from_slice(&cfg.suppress_token_ids).to_device(dev);
    // The cache positions count from the prompt's M-RoPE max; bound generation by the context.
    let max_new = cfg.max_new_tokens.min((ctx - s) as usize);
    let mut outputs: Vec<GenerationOutput> = (0..b)
        .map(|_| GenerationOutput {
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            stop_reason: StopReason::Length,
        })
        .collect();
    let mut rngs: Vec<StdRng> = match &cfg.row_seeds {
        None => (0..b as usize).map(|r| row_rng(cfg.seed, r)).collect(),
        Some(seeds) if seeds.len() == b as usize => seeds.iter().map(|&s| row_rng(s, 0)).collect(),
        Some(seeds) => {
            return Err(ModelError::input(
                "row_seeds",
                format!("{} seeds for a batch of {b}", seeds.len()),
            ));
        }
    };
    let mut active: Vec<usize> = (0..b as usize).collect();
    if max_new == 0 {
        return Ok(outputs);
    }
    let mut cache = KvCache::with_capacity(model.language_model.layers.len(), s + max_new as i64);
    let out = model.forward_hidden(inputs, Some(&mut cache), None)?;
    let mut logits = model.logits(&out.hidden.f_select(1, s - 1)?)?; // (A, V)
    for step in 0..max_new {
        let lp = sampling_logprobs(&logits, cfg.sampling, &suppress)?;
        let (ids, lps) = pick(&lp, cfg.sampling, &mut rngs)?;
        let mut keep = Vec::with_capacity(active.len());
        let mut next_ids = Vec::with_capacity(active.len());
        for (i, &row) in active.iter().enumerate() {
            let o = &mut outputs[row];
            if cfg.stop_token_ids.contains(&ids[i]) {
                o.stop_reason = StopReason::Stop {
                    token_id: ids[i],
                    logprob: lps[i],
                };
            } else {
                o.token_ids.push(ids[i]);
                o.logprobs.push(lps[i]);
                if on_token(row, ids[i]) {
                    keep.push(i as i64);
                    next_ids.push(ids[i]);
                } else {
                    o.stop_reason = StopReason::Halted;
                }
            }
        }
        if keep.is_empty() || step + 1 == max_new {
            break;
        }
        if keep.len() < active.len() {
            cache.select_rows(&keep);
            let k: Vec<usize> = keep.iter().map(|&i| i as usize).collect();
            active = k.iter().map(|&i| active[i]).collect();
            let mut kept_rngs = Vec::with_capacity(k.len());
            for (i, r) in std::mem::take(&mut rngs).into_iter().enumerate() {
                if k.contains(&i) {
                    kept_rngs.push(r);
                }
            }
            rngs = kept_rngs;
        }
        let a = active.len() as i64;
        let step_ids = Tensor::from_slice(&next_ids).view([a, 1]).to_device(dev);
        let step_mask = Tensor::ones([a, 1], (Kind::Int64, dev));
        let out = model.forward_hidden(
            &ModelInputs::text(step_ids, step_mask),
            Some(&mut cache),
            None,
        )?;
        logits = model.logits(&out.hidden.f_select(1, 0)?)?;
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_top_p_filtering_and_renormalisation() {
        // probs ∝ [0.5, 0.3, 0.15, 0.05]
        let p = Tensor::from_slice(&[0.5f32, 0.3, 0.15, 0.05]).view([1, 4]);
        let logits = p.log();
        let none = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
        };
        let lp = Vec::<f32>::try_from(
            sampling_logprobs(&logits, s, &none)
                .unwrap()
                .exp()
                .flatten(0, -1),
        )
        .unwrap();
        // 0.5 < 0.7, 0.8 >= 0.7: keep the first two, renormalised.
        assert!((lp[0] - 0.625).abs() < 1e-6 && (lp[1] - 0.375).abs() < 1e-6 && lp[2] == 0.0);
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
        };
        let lp = Vec::<f32>::try_from(
            sampling_logprobs(&logits, s, &none)
                .unwrap()
                .exp()
                .flatten(0, -1),
        )
        .unwrap();
        assert!((lp[2] - 0.15 / 0.95).abs() < 1e-6 && lp[3] == 0.0);
        let sup = Tensor::from_slice(&[0i64]);
        let lp = Vec::<f32>::try_from(
            sampling_logprobs(&logits, Sampling::Greedy, &sup)
                .unwrap()
                .exp()
                .flatten(0, -1),
        )
        .unwrap();
        assert!(lp[0] == 0.0 && (lp[1] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let p = Tensor::from_slice(&[0.1f32, 0.0, 0.6, 0.3])
            .view([1, 4])
            .log();
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        let none = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
        let lp = sampling_logprobs(&p, s, &none).unwrap();
        let mut rngs = vec![row_rng(7, 0)];
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let (ids, lps) = pick(&lp, s, &mut rngs).unwrap();
            counts[ids[0] as usize] += 1;
            assert!(lps[0].is_finite());
        }
        assert_eq!(counts[1], 0);
        assert!((counts[2] as f64 / 4000.0 - 0.6).abs() < 0.03, "{counts:?}");
        assert!((counts[0] as f64 / 4000.0 - 0.1).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn a_halted_row_keeps_its_tokens_and_the_others_run_on_unchanged() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen3_vl/tiny-qwen3-vl");
        let model = Qwen3Vl::load(&dir, tch::Device::Cpu, Kind::Float).unwrap();
        let ids =
            Tensor::from_slice(&[11i64, 12, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34]).view([3, 4]);
        let inputs = ModelInputs::text(ids, Tensor::ones([3, 4], (Kind::Int64, tch::Device::Cpu)));
        let cfg = GenerationConfig {
            max_new_tokens: 8,
            ..GenerationConfig::default()
        };
        let plain = generate(&model, &inputs, &cfg).unwrap();
        assert!(plain.iter().all(|o| o.token_ids.len() == 8));
        // Row 1 halts at its 3rd token, row 2 at its 1st; every token is reported once.
        let mut seen: Vec<Vec<i64>> = vec![Vec::new(); 3];
        let mut on_token = |row: usize, id: i64| {
            seen[row].push(id);
            !(row == 1 && seen[row].len() == 3 || row == 2)
        };
        let halted = generate_with(&model, &inputs, &cfg, &mut on_token).unwrap();
        assert_eq!(seen[0], plain[0].token_ids);
        assert_eq!(seen[1], plain[1].token_ids[..3]);
        assert_eq!(seen[2], plain[2].token_ids[..1]);
        // Row 0 decodes in a smaller batch once the others left: same tokens, log-probs equal
        // up to float rounding.
        assert_eq!(halted[0].token_ids, plain[0].token_ids);
        assert_eq!(halted[0].stop_reason, StopReason::Length);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(close(&halted[0].logprobs, &plain[0].logprobs));
        for (r, k) in [(1, 3), (2, 1)] {
            assert_eq!(halted[r].token_ids, plain[r].token_ids[..k]);
            assert!(close(&halted[r].logprobs, &plain[r].logprobs[..k]));
            assert_eq!(halted[r].stop_reason, StopReason::Halted);
        }
    }
}
