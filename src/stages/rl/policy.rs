//! The generator's engine: a Qwen3-VL policy that samples groups of responses with their
//! behaviour log-probs ([`QwenPolicy`]), and the prompt encoding it shares with the learner
//! ([`PromptInputs`]: token ids from the runtime's [`PromptItem`], pixels from the
//! [`PromptStore`] by uid, processed once per row).
//!
//! Sampling is reproducible per sample: row `(uid, j)` of a request draws from its own RNG
//! seeded by [`sample_seed`]`(seed, uid, j)`, so a rollout does not depend on which generator,
//! request or batch row it landed in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind};

use crate::actors::config::DeviceSpec;
use crate::actors::engine::{EngineResult, PolicyEngine};
use crate::actors::messages::{PromptItem, Rollout, SamplingParams, WeightsSnapshot};
use crate::actors::weights::load_into_tensors;
use crate::models::Qwen3Vl;
use crate::models::generate_cli::model_inputs;
use crate::models::generation::{GenerationConfig, Sampling, StopReason, generate};
use crate::models::image_processor::ProcessedImage;
use crate::models::processor::{EncodedPrompt, PaddingSide, Processor};
use crate::stages::prompts::PromptStore;

/// Seed of sample `j` of prompt `uid` (SplitMix64 mixing of the three numbers).
pub fn sample_seed(seed: u64, uid: u64, j: u32) -> u64 {
    let mut z = seed
        ^ uid.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (u64::from(j) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Tokens a response may never contain: image and video placeholders would break the
/// learner's multimodal forward of prompt + response.
pub fn suppressed_tokens(processor: &Processor) -> Vec<i64> {
    let sp = processor.tokenizer.special();
    vec![i64::from(sp.image_pad), i64::from(sp.video_pad)]
}

/// Token ids of a message (i64) as the processor's u32, naming the offender.
pub fn to_u32(ids: &[i64], what: &str) -> EngineResult<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| format!("{what}: token id {t} is out of range").into())
        })
        .collect()
}

/// Model inputs of prompts (and optionally a continuation): ids from the [`PromptItem`]s, the
/// processed images of each prompt's row, cached.
pub struct PromptInputs {
    store: Arc<PromptStore>,
    processor: Processor,
    /// Processed images by row.
    images: HashMap<usize, Vec<ProcessedImage>>,
}

impl PromptInputs {
    pub fn new(store: Arc<PromptStore>, processor: Processor) -> Self {
        PromptInputs {
            store,
            processor,
            images: HashMap::new(),
        }
    }

    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// The unpadded row `prompt ++ continuation` with the prompt's images.
    pub fn encode(
        &mut self,
        item: &PromptItem,
        continuation: &[i64],
    ) -> EngineResult<EncodedPrompt> {
        let entry = self.store.get(item.uid).ok_or_else(|| {
            format!(
                "prompt {} is not in {}",
                item.uid,
                self.store.file().display()
            )
        })?;
        if !self.images.contains_key(&entry.row) {
            let enc = self
                .processor
                .encode_chat(&entry.messages, &entry.images, true, entry.row)
                .map_err(|e| format!("{} row {}: {e}", self.store.file().display(), entry.row))?;
            if enc.input_ids.len() != item.prompt_ids.len() {
                return Err(format!(
                    "prompt {} (row {}): {} tokens here but {} in the runtime's prompt \
                     (another tokenizer?)",
                    item.uid,
                    entry.row,
                    enc.input_ids.len(),
                    item.prompt_ids.len()
                )
                .into());
            }
            self.images.insert(entry.row, enc.images);
        }
        let mut input_ids = to_u32(&item.prompt_ids, &format!("prompt {}", item.uid))?;
        input_ids.extend(to_u32(
            continuation,
            &format!("response to prompt {}", item.uid),
        )?);
        Ok(EncodedPrompt {
            input_ids,
            images: self.images[&entry.row].clone(),
        })
    }
}

/// Loads a checkpoint's weights as `kind` on `device`.
pub fn load_policy(dir: &Path, device: Device, kind: Kind) -> EngineResult<Qwen3Vl> {
    Qwen3Vl::load(dir, device, kind).map_err(|e| format!("policy {}: {e}", dir.display()).into())
}

/// The sampler of one generator replica.
pub struct QwenPolicy {
    model: Qwen3Vl,
    inputs: PromptInputs,
    stop_ids: Vec<i64>,
    suppress: Vec<i64>,
}

impl QwenPolicy {
    /// Loads the policy in `dir` (weights and processor files) for prompts of `store`.
    pub fn load(
        dir: &Path,
        store: Arc<PromptStore>,
        device: DeviceSpec,
        kind: Kind,
    ) -> EngineResult<Self> {
        let processor = Processor::from_dir(dir)
            .map_err(|e| format!("policy processor {}: {e}", dir.display()))?;
        let model = load_policy(dir, device.into(), kind)?;
        Ok(Self::new(model, PromptInputs::new(store, processor)))
    }

    /// A sampler over an already loaded model.
    pub fn new(model: Qwen3Vl, inputs: PromptInputs) -> Self {
        let stop_ids = inputs
            .processor()
            .tokenizer
            .stop_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        let suppress = suppressed_tokens(inputs.processor());
        QwenPolicy {
            model,
            inputs,
            stop_ids,
            suppress,
        }
    }

    /// The model (for tests and weight checks).
    pub fn model(&self) -> &Qwen3Vl {
        &self.model
    }
}

impl PolicyEngine for QwenPolicy {
    fn generate(
        &mut self,
        prompts: &[PromptItem],
        n: usize,
        params: &SamplingParams,
    ) -> EngineResult<Vec<Rollout>> {
        if prompts.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(prompts.len() * n);
        let mut seeds = Vec::with_capacity(prompts.len() * n);
        for p in prompts {
            let row = self.inputs.encode(p, &[])?;
            for j in 0..n as u32 {
                rows.push(row.clone());
                seeds.push(sample_seed(params.seed, p.uid, j));
            }
        }
        let enc = self
            .inputs
            .processor()
            .collate(&rows, PaddingSide::Left, None)
            .map_err(|e| {
                format!(
                    "prompts {:?}: {e}",
                    prompts.iter().map(|p| p.uid).collect::<Vec<_>>()
                )
            })?;
        let inputs = model_inputs(&enc, self.model.device())?;
        let sampling = if params.temperature <= 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: f64::from(params.temperature),
                top_k: params.top_k.max(0),
                top_p: f64::from(params.top_p),
            }
        };
        let cfg = GenerationConfig {
            sampling,
            max_new_tokens: params.max_new_tokens,
            stop_token_ids: self.stop_ids.clone(),
            suppress_token_ids: self.suppress.clone(),
            seed: params.seed,
            row_seeds: Some(seeds),
        };
        let outputs = generate(&self.model, &inputs, &cfg)?;
        let mut rollouts = Vec::with_capacity(outputs.len());
        for (i, mut o) in outputs.into_iter().enumerate() {
            // the response includes its first stop token (the learner trains on it)
            if let StopReason::Stop { token_id, logprob } = o.stop_reason {
                o.token_ids.push(token_id);
                o.logprobs.push(logprob);
            }
            rollouts.push(Rollout {
                prompt_uid: prompts[i / n].uid,
                sample_index: (i % n) as u32,
                response_ids: o.token_ids,
                behaviour_logprobs: o.logprobs,
                policy_version: 0,
                generator: String::new(),
            });
        }
        Ok(rollouts)
    }

    fn load_weights(&mut self, weights: &WeightsSnapshot) -> EngineResult<()> {
        let mut named: Vec<(String, tch::Tensor)> =
            self.model.named_parameters().into_iter().collect();
        load_into_tensors(weights, &mut named)?;
        Ok(())
    }
}
