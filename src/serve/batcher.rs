//! Request batching for `prism serve`: the batcher task gathers queued requests (up to
//! `max_batch` rows, waiting at most `max_wait` after the first), groups them by sampling
//! settings, and runs one left-padded [`generate`] per group on the model's dedicated compute
//! thread (the model is built there and never leaves it). Each request's `n` rows stay
//! together and sample with their own seeds (`seed + choice index`), so a request gets the same
//! answer whichever batch it lands in. Also owns the decoding of a finished row into an OpenAI
//! choice (stop strings, streamed text pieces).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::api::{Choice, FinishReason};
use crate::actors::compute::{BusyMeter, ComputeError, ComputeThread};
use crate::actors::engine::EngineResult;
use crate::models::Qwen3Vl;
use crate::models::generate_cli::{decode_output, generation_config, max_prompt_len, model_inputs};
use crate::models::generation::{GenerationOutput, Sampling, StopReason, generate};
use crate::models::processor::{EncodedPrompt, PaddingSide, Processor};
use crate::telemetry;

/// The model on its compute thread, with the processor that pads its batches.
pub struct ServeModel {
    pub model: Qwen3Vl,
    pub processor: Arc<Processor>,
}

/// One request waiting for generation.
pub struct GenJob {
    pub prompt: EncodedPrompt,
    /// Rows (choices) of this request.
    pub n: usize,
    pub sampling: Sampling,
    pub max_new_tokens: usize,
    /// Seed of choice 0; choice `i` uses `seed + i`.
    pub seed: u64,
    /// One output per choice, or why generation failed.
    pub reply: oneshot::Sender<Result<Vec<GenerationOutput>, String>>,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most rows in one `generate` call (a request's `n` rows are never split; a request with
    /// more rows than this runs alone).
    pub max_batch: usize,
    /// Longest wait for more requests after the first one of a batch arrived.
    pub max_wait: Duration,
}

/// Starts the compute thread, loading the model of `dir` on `device` there (bf16 on CUDA,
/// fp32 on CPU). Returns it with the longest prompt the model takes.
pub async fn start_model(
    dir: PathBuf,
    device: Device,
    processor: Arc<Processor>,
) -> Result<(ComputeThread<ServeModel>, usize), ComputeError> {
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let compute = ComputeThread::start(
        "serve-model",
        move || -> EngineResult<Box<ServeModel>> {
            let model = Qwen3Vl::load(&dir, device, kind)
                .map_err(|e| format!("model {}: {e}", dir.display()))?;
            Ok(Box::new(ServeModel { model, processor }))
        },
        BusyMeter::new("serve", "serve-model", &format!("{device:?}")),
    )
    .await?;
    let max_prompt = compute.run(|m| Ok(max_prompt_len(&m.model))).await?;
    Ok((compute, max_prompt))
}

/// Identity of a sampling setting, for grouping rows into one `generate` call.
fn sampling_key(s: Sampling) -> (u8, u64, i64, u64) {
    match s {
        Sampling::Greedy => (0, 0, 0, 0),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => (1, temperature.to_bits(), top_k, top_p.to_bits()),
    }
}

/// Runs until every sender of `rx` is gone (the server stopped): gathers batches, generates,
/// answers each job.
pub async fn run_batcher(
    mut rx: mpsc::Receiver<GenJob>,
    compute: ComputeThread<ServeModel>,
    limits: BatchLimits,
) {
    let max_batch = limits.max_batch.max(1);
    let mut carry: Option<GenJob> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut rows = first.n;
        let mut jobs = vec![first];
        let deadline = Instant::now() + limits.max_wait;
        while rows < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) if rows + j.n > max_batch => {
                    carry = Some(j);
                    break;
                }
                Ok(Some(j)) => {
                    rows += j.n;
                    jobs.push(j);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Group by sampling settings, keeping arrival order within a group.
        let mut groups: Vec<Vec<GenJob>> = Vec::new();
        for j in jobs {
            match groups
                .iter_mut()
                .find(|g| sampling_key(g[0].sampling) == sampling_key(j.sampling))
            {
                Some(g) => g.push(j),
                None => groups.push(vec![j]),
            }
        }
        for group in groups {
            run_group(&compute, group).await;
        }
    }
}

/// One `generate` call for jobs that share their sampling settings.
async fn run_group(compute: &ComputeThread<ServeModel>, group: Vec<GenJob>) {
    // Jobs whose client went away need no rows.
    let group: Vec<GenJob> = group.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if group.is_empty() {
        return;
    }
    let sampling = group[0].sampling;
    let max_new = group.iter().map(|j| j.max_new_tokens).max().unwrap_or(1);
    let mut prompts = Vec::new();
    let mut seeds = Vec::new();
    for j in &group {
        for i in 0..j.n {
            prompts.push(j.prompt.clone());
            seeds.push(j.seed.wrapping_add(i as u64));
        }
    }
    metrics::histogram!(telemetry::SERVE_BATCH_ROWS).record(prompts.len() as f64);
    let result = compute
        .run(move |m: &mut ServeModel| {
            let enc = m.processor.collate(&prompts, PaddingSide::Left, None)?;
            let inputs = model_inputs(&enc, m.model.device())?;
            let mut cfg = generation_config(&m.processor, sampling, max_new, 0);
            cfg.row_seeds = Some(seeds);
            Ok(generate(&m.model, &inputs, &cfg)?)
        })
        .await;
    match result {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for j in group {
                let mut mine: Vec<GenerationOutput> = outputs.by_ref().take(j.n).collect();
                for o in &mut mine {
                    // The group ran to its longest request's limit: cut this one to its own.
                    if o.token_ids.len() > j.max_new_tokens {
                        o.token_ids.truncate(j.max_new_tokens);
                        o.logprobs.truncate(j.max_new_tokens);
                        o.stop_reason = StopReason::Length;
                    }
                }
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            tracing::error!("serve: generation failed for a batch: {e}");
            for j in group {
                let _ = j.reply.send(Err(format!("generation failed: {e}")));
            }
        }
    }
}

/// Turns one generated row into a choice: decoded text cut at the first stop string (then
/// `finish_reason` is `stop` and the tokens counted are those up to the cut), and, with
/// `pieces`, the text each token adds (what a stream sends).
pub fn make_choice(
    processor: &Processor,
    out: GenerationOutput,
    stop: &[String],
    pieces: bool,
) -> Result<Choice, String> {
    let natural = match out.stop_reason {
        StopReason::Stop { .. } => FinishReason::Stop,
        StopReason::Length => FinishReason::Length,
    };
    let ids = out.token_ids;
    let decode = |k: usize| -> Result<String, String> {
        let prefix = GenerationOutput {
            token_ids: ids[..k].to_vec(),
            logprobs: Vec::new(),
            stop_reason: StopReason::Length,
        };
        decode_output(processor, prefix)
            .map(|r| r.text)
            .map_err(|e| format!("decoding the output: {e}"))
    };
    let full = decode(ids.len())?;
    let cut = stop.iter().filter_map(|s| full.find(s.as_str())).min();
    let (text, finish) = match cut {
        Some(at) => (full[..at].to_string(), FinishReason::Stop),
        None => (full, natural),
    };
    let mut out_pieces = Vec::new();
    let mut tokens = ids.len();
    if pieces || cut.is_some() {
        // The text each token adds while the decoded prefix stays a prefix of `text` (a token
        // can end inside a multi-byte character; its text then comes with a later token).
        let mut done = 0usize;
        for k in 1..=ids.len() {
            if done >= text.len() && cut.is_some() {
                tokens = k - 1;
                break;
            }
            let t = decode(k)?;
            let end = t.len().min(text.len());
            if end > done
                && let Some(prefix) = t.get(..end)
                && text.starts_with(prefix)
            {
                out_pieces.push(text[done..end].to_string());
                done = end;
            }
        }
        if done < text.len() {
            out_pieces.push(text[done..].to_string());
        }
    }
    if !pieces {
        out_pieces.clear();
    }
    Ok(Choice {
        text,
        pieces: out_pieces,
        finish_reason: finish,
        completion_tokens: tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor() -> Processor {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qwen3_vl/tiny-qwen3-vl");
        Processor::from_dir(dir).unwrap()
    }

    fn output(p: &Processor, text: &str, reason: StopReason) -> GenerationOutput {
        let ids: Vec<i64> = p
            .tokenizer
            .encode(text)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        GenerationOutput {
            logprobs: vec![0.0; ids.len()],
            token_ids: ids,
            stop_reason: reason,
        }
    }

    #[test]
    fn pieces_concatenate_to_the_text_even_across_multibyte_characters() {
        let p = processor();
        let text = "héllo wörld ✓ 多字节 done";
        let o = output(&p, text, StopReason::Length);
        let n = o.token_ids.len();
        let c = make_choice(&p, o.clone(), &[], true).unwrap();
        assert_eq!(c.text, text);
        assert_eq!(c.pieces.concat(), text);
        assert!(c.pieces.len() > 5 && c.pieces.iter().all(|s| !s.is_empty()));
        assert_eq!(
            (c.finish_reason, c.completion_tokens),
            (FinishReason::Length, n)
        );
        // Without pieces (not streamed): same text, no pieces.
        let plain = make_choice(&p, o, &[], false).unwrap();
        assert_eq!(plain.text, text);
        assert!(plain.pieces.is_empty());
    }

    #[test]
    fn stop_strings_cut_the_text_and_the_token_count() {
        let p = processor();
        let text = "alpha beta gamma beta delta";
        let o = output(&p, text, StopReason::Length);
        let n = o.token_ids.len();
        let c = make_choice(&p, o.clone(), &["gamma".into(), " beta".into()], true).unwrap();
        assert_eq!(c.text, "alpha");
        assert_eq!(c.pieces.concat(), "alpha");
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert!(c.completion_tokens >= 1 && c.completion_tokens < n, "{c:?}");
        // A stop string that never appears changes nothing; a stop token ends with `stop`.
        let c = make_choice(&p, o, &["zzz".into()], false).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason),
            (text, FinishReason::Length)
        );
        let eos = StopReason::Stop {
            token_id: 402,
            logprob: 0.0,
        };
        let c = make_choice(&p, output(&p, "ok", eos), &[], false).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        // A stop string at the very start leaves nothing.
        let c = make_choice(
            &p,
            output(&p, text, StopReason::Length),
            &["alpha".into()],
            true,
        )
        .unwrap();
        assert_eq!((c.text.as_str(), c.completion_tokens), ("", 0));
        assert!(c.pieces.is_empty());
    }

    #[test]
    fn sampling_settings_group_by_value() {
        let s = |t: f64, p: f64| Sampling::Sample {
            temperature: t,
            top_k: 0,
            top_p: p,
        };
        assert_eq!(sampling_key(s(0.7, 0.9)), sampling_key(s(0.7, 0.9)));
        assert_ne!(sampling_key(s(0.7, 0.9)), sampling_key(s(0.7, 1.0)));
        assert_ne!(sampling_key(Sampling::Greedy), sampling_key(s(1.0, 1.0)));
    }
}
