//! Request batching for `prism serve`: the batcher task gathers queued requests (up to
//! `max_batch` rows, waiting at most `max_wait` after the first), groups them by sampling
//! settings, and runs one left-padded [`generate`] per group on the model's dedicated compute
//! thread (the model is built there and never leaves it). Each request's `n` rows stay
//! together and sample with their own seeds (`seed + choice index`), so a request gets the same
//! answer whichever batch it lands in. Rows halt early, each on its own: at its request's
//! `max_tokens`, at its request's first stop string, or when its client went away; the tokens
//! of streamed requests go to their channel as they are generated. Also owns the decoding of a
//! finished row into an OpenAI choice (stop strings, token counts).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{Choice, FinishReason};
use crate::actors::compute::{BusyMeter, ComputeError, ComputeThread};
use crate::actors::engine::EngineResult;
use crate::models::Qwen3Vl;
use crate::models::generate_cli::{decode_output, generation_config, max_prompt_len, model_inputs};
use crate::models::generation::{GenerationOutput, Sampling, StopReason, generate_with};
use crate::models::processor::{EncodedPrompt, PaddingSide, Processor};
use crate::telemetry;

/// The model on its compute thread, with the processor that pads its batches.
pub struct ServeModel {
    pub model: Qwen3Vl,
    pub processor: Arc<Processor>,
}

/// One generated token of a streamed request: the choice (row of the request) and the id.
pub type StreamToken = (usize, i64);

/// One request waiting for generation.
pub struct GenJob {
    pub prompt: EncodedPrompt,
    /// Rows (choices) of this request.
    pub n: usize,
    pub sampling: Sampling,
    /// A row halts once it has this many tokens.
    pub max_new_tokens: usize,
    /// Seed of choice 0; choice `i` uses `seed + i`.
    pub seed: u64,
    /// A row halts once its decoded text contains one of these.
    pub stop: Vec<String>,
    /// Streamed requests: every generated token of every row, as it is generated.
    pub stream: Option<mpsc::UnboundedSender<StreamToken>>,
    /// Cancelled when the client went away: the request's rows halt.
    pub cancel: CancellationToken,
    /// One output per choice, or why generation failed.
    pub reply: oneshot::Sender<Result<Vec<GenerationOutput>, String>>,
}

impl GenJob {
    /// Whether nobody waits for this job's answer any more.
    fn abandoned(&self) -> bool {
        self.cancel.is_cancelled()
            || self.reply.is_closed()
            || self.stream.as_ref().is_some_and(|s| s.is_closed())
    }
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

use crate::telemetry::{SERVE_GENERATED_TOKENS_TOTAL, SERVE_REQUESTS_GENERATING};

/// What the compute thread needs of a job to decide when its rows halt.
struct RowLimits {
    max_new_tokens: usize,
    stop: Vec<String>,
    stream: Option<mpsc::UnboundedSender<StreamToken>>,
    cancel: CancellationToken,
}

/// One `generate` call for jobs that share their sampling settings. Each row halts at its own
/// request's `max_tokens`, at its request's first stop string, or when its client went away;
/// streamed requests get every token as it is generated.
async fn run_group(compute: &ComputeThread<ServeModel>, group: Vec<GenJob>) {
    // Jobs whose client went away need no rows.
    let group: Vec<GenJob> = group.into_iter().filter(|j| !j.abandoned()).collect();
    if group.is_empty() {
        return;
    }
    let generating = metrics::gauge!(SERVE_REQUESTS_GENERATING);
    generating.increment(group.len() as f64);
    let sampling = group[0].sampling;
    let max_new = group.iter().map(|j| j.max_new_tokens).max().unwrap_or(1);
    let mut prompts = Vec::new();
    let mut seeds = Vec::new();
    // Row r belongs to job `owner[r].0`, as its choice `owner[r].1`.
    let mut owner = Vec::new();
    for (k, j) in group.iter().enumerate() {
        for i in 0..j.n {
            prompts.push(j.prompt.clone());
            seeds.push(j.seed.wrapping_add(i as u64));
            owner.push((k, i));
        }
    }
    let limits: Vec<RowLimits> = group
        .iter()
        .map(|j| RowLimits {
            max_new_tokens: j.max_new_tokens,
            stop: j.stop.clone(),
            stream: j.stream.clone(),
            cancel: j.cancel.clone(),
        })
        .collect();
    metrics::histogram!(telemetry::SERVE_BATCH_ROWS).record(prompts.len() as f64);
    let result = compute
        .run(move |m: &mut ServeModel| {
            let enc = m.processor.collate(&prompts, PaddingSide::Left, None)?;
            let inputs = model_inputs(&enc, m.model.device())?;
            let mut cfg = generation_config(&m.processor, sampling, max_new, 0);
            cfg.row_seeds = Some(seeds);
            let processor = &m.processor;
            let generated = metrics::counter!(SERVE_GENERATED_TOKENS_TOTAL);
            let mut counts = vec![0usize; owner.len()];
            let mut ids: Vec<Vec<i64>> = vec![Vec::new(); owner.len()];
            let mut on_token = |row: usize, id: i64| -> bool {
                generated.increment(1);
                let (job, choice) = owner[row];
                let lim = &limits[job];
                if let Some(tx) = &lim.stream
                    && tx.send((choice, id)).is_err()
                {
                    return false; // the stream's reader is gone
                }
                counts[row] += 1;
                if lim.cancel.is_cancelled() || counts[row] >= lim.max_new_tokens {
                    return false;
                }
                if !lim.stop.is_empty() {
                    ids[row].push(id);
                    // A decoding error is reported by `make_choice` on the final output.
                    if let Ok(text) = decode_ids(processor, &ids[row])
                        && lim.stop.iter().any(|s| text.contains(s.as_str()))
                    {
                        return false;
                    }
                }
                true
            };
            Ok(generate_with(&m.model, &inputs, &cfg, &mut on_token)?)
        })
        .await;
    match result {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for j in group {
                let mine: Vec<GenerationOutput> = outputs.by_ref().take(j.n).collect();
                let _ = j.reply.send(Ok(mine));
                generating.decrement(1.0);
            }
        }
        Err(e) => {
            tracing::error!("serve: generation failed for a batch: {e}");
            for j in group {
                let _ = j.reply.send(Err(format!("generation failed: {e}")));
                generating.decrement(1.0);
            }
        }
    }
}

/// The text of generated ids (special tokens skipped), as a choice shows it.
pub fn decode_ids(processor: &Processor, ids: &[i64]) -> Result<String, String> {
    let out = GenerationOutput {
        token_ids: ids.to_vec(),
        logprobs: Vec::new(),
        stop_reason: StopReason::Length,
    };
    decode_output(processor, out)
        .map(|r| r.text)
        .map_err(|e| format!("decoding the output: {e}"))
}

/// Turns one generated row into a choice: decoded text cut at the first stop string (then
/// `finish_reason` is `stop` and the tokens counted are those up to the cut). A row halted by
/// the batcher ended at its `max_tokens` unless a stop string cut it (or its client is gone).
pub fn make_choice(
    processor: &Processor,
    out: GenerationOutput,
    stop: &[String],
) -> Result<Choice, String> {
    let natural = match out.stop_reason {
        StopReason::Stop { .. } => FinishReason::Stop,
        StopReason::Length | StopReason::Halted => FinishReason::Length,
    };
    let ids = out.token_ids;
    let full = decode_ids(processor, &ids)?;
    let cut = stop.iter().filter_map(|s| full.find(s.as_str())).min();
    let Some(at) = cut else {
        return Ok(Choice {
            text: full,
            finish_reason: natural,
            completion_tokens: ids.len(),
        });
    };
    let text = full[..at].to_string();
    // The tokens counted: the shortest prefix whose text covers `text` (a token can end inside
    // a multi-byte character; its text then comes with a later token).
    let mut tokens = 0;
    if !text.is_empty() {
        tokens = ids.len();
        for k in 1..=ids.len() {
            let t = decode_ids(processor, &ids[..k])?;
            if t.len() >= text.len() && t.starts_with(text.as_str()) {
                tokens = k;
                break;
            }
        }
    }
    Ok(Choice {
        text,
        finish_reason: FinishReason::Stop,
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
    fn multibyte_text_decodes_whole() {
        let p = processor();
        let text = "héllo wörld ✓ 多字节 done";
        let o = output(&p, text, StopReason::Length);
        let n = o.token_ids.len();
        let c = make_choice(&p, o.clone(), &[]).unwrap();
        assert_eq!(c.text, text);
        assert_eq!(
            (c.finish_reason, c.completion_tokens),
            (FinishReason::Length, n)
        );
        // A row the batcher halted (its max_tokens) ends with `length`.
        let mut halted = o;
        halted.stop_reason = StopReason::Halted;
        let c = make_choice(&p, halted, &[]).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason),
            (text, FinishReason::Length)
        );
        // A stop string after a multi-byte character counts the tokens that complete it.
        let c = make_choice(&p, output(&p, text, StopReason::Length), &[" done".into()]).unwrap();
        assert_eq!(c.text, "héllo wörld ✓ 多字节");
        let want = (1..=n)
            .find(|&k| {
                decode_ids(&p, &output(&p, text, StopReason::Length).token_ids[..k])
                    .unwrap()
                    .starts_with(c.text.as_str())
            })
            .unwrap();
        assert_eq!(c.completion_tokens, want);
        assert!(want < n);
    }

    #[test]
    fn stop_strings_cut_the_text_and_the_token_count() {
        let p = processor();
        let text = "alpha beta gamma beta delta";
        let o = output(&p, text, StopReason::Length);
        let n = o.token_ids.len();
        let c = make_choice(&p, o.clone(), &["gamma".into(), " beta".into()]).unwrap();
        assert_eq!(c.text, "alpha");
        assert_eq!(c.finish_reason, FinishReason::Stop);
        assert!(c.completion_tokens >= 1 && c.completion_tokens < n, "{c:?}");
        // A stop string that never appears changes nothing; a stop token ends with `stop`.
        let c = make_choice(&p, o, &["zzz".into()]).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason),
            (text, FinishReason::Length)
        );
        let eos = StopReason::Stop {
            token_id: 402,
            logprob: 0.0,
        };
        let c = make_choice(&p, output(&p, "ok", eos), &[]).unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop);
        // A stop string at the very start leaves nothing.
        let c = make_choice(&p, output(&p, text, StopReason::Length), &["alpha".into()]).unwrap();
        assert_eq!((c.text.as_str(), c.completion_tokens), ("", 0));
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
