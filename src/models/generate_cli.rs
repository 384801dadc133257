//! `prism generate`: one chat turn (images, then a prompt) through a checkpoint, printed as text
//! or as one JSON object.
//!
//! Owns the glue every caller of generation needs: turning a processor [`BatchEncoding`] into
//! [`ModelInputs`] tensors ([`model_inputs`]), building the [`GenerationConfig`] of a checkpoint
//! (its stop ids, greedy or temperature/top-p sampling: [`generation_config`]), and decoding the
//! result ([`GenerateResult`]). The stop token is never part of `token_ids`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::chat_template::{ChatMessage, ContentPart};
use super::generation::{GenerationConfig, GenerationOutput, Sampling, generate};
use super::image_processor::ImageError;
use super::processor::{BatchEncoding, PaddingSide, Processor, ProcessorError};
use super::tokenizer::TokenizerError;
use super::{ModelError, ModelInputs, Qwen3Vl};

/// Errors of `prism generate` (and of the helpers the evaluation reuses).
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model directory lacks a file or holds a bad one.
    #[error("model {dir}")]
    Model {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },
    /// Tokenizer, chat template or image processor files of the model directory.
    #[error("model {dir}")]
    ProcessorFiles {
        dir: PathBuf,
        #[source]
        source: ProcessorError,
    },
    /// An image file that cannot be read or decoded.
    #[error("image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    /// The prompt cannot be turned into model inputs (too long, image count, template).
    #[error("invalid prompt")]
    Prompt(#[source] ProcessorError),
    /// Generation itself failed.
    #[error("generation failed")]
    Generation(#[source] ModelError),
    /// Decoding generated ids to text failed.
    #[error("decoding the output")]
    Decode(#[source] TokenizerError),
    /// A bad command-line value.
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
}

/// `prism generate` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json, safetensors, tokenizer, chat template, preprocessor).
    #[arg(long)]
    pub model: PathBuf,
    /// Image file(s), placed before the prompt text in the user turn, in the order given.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// The user's text.
    #[arg(long)]
    pub prompt: String,
    /// Optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of generated tokens (the stop token not counted).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (only with a temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print `{"text", "token_ids", "logprobs"}` as one JSON object instead of the text.
    #[arg(long)]
    pub json: bool,
}

/// What `prism generate --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateResult {
    /// Decoded generated tokens, special tokens skipped.
    pub text: String,
    /// Generated ids only: no prompt, no stop token.
    pub token_ids: Vec<i64>,
    /// Log-prob of each generated token under the distribution it was drawn from.
    pub logprobs: Vec<f32>,
}

/// Greedy when `temperature == 0`, else temperature + top-p sampling (top-k off).
pub fn sampling_from_flags(temperature: f64, top_p: f64) -> Result<Sampling, GenerateError> {
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(GenerateError::Flag {
            flag: "temperature",
            reason: format!("must be a finite number >= 0, got {temperature}"),
        });
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(GenerateError::Flag {
            flag: "top-p",
            reason: format!("must be in (0, 1], got {top_p}"),
        });
    }
    Ok(if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_k: 0,
            top_p,
        }
    })
}

/// The generation settings for a checkpoint: stop at its `generation_config.json` eos ids.
pub fn generation_config(
    processor: &Processor,
    sampling: Sampling,
    max_new_tokens: usize,
    seed: u64,
) -> GenerationConfig {
    GenerationConfig {
        sampling,
        max_new_tokens,
        stop_token_ids: processor
            .tokenizer
            .stop_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect(),
        suppress_token_ids: Vec::new(),
        seed,
        row_seeds: None,
    }
}

/// Turns a padded processor batch into model input tensors on `device`.
pub fn model_inputs(enc: &BatchEncoding, device: Device) -> Result<ModelInputs, ModelError> {
    let (b, s) = (enc.batch_size as i64, enc.seq_len as i64);
    let ids = Tensor::f_from_slice(&enc.input_ids)?
        .f_view([b, s])?
        .f_to_device(device)?; // (B, S)
    let mask = Tensor::f_from_slice(&enc.attention_mask)?
        .f_view([b, s])?
        .f_to_device(device)?; // (B, S)
    let mut inputs = ModelInputs::text(ids, mask);
    if !enc.image_grid_thw.is_empty() {
        let px = Tensor::f_from_slice(&enc.pixel_values)?
            .f_view([enc.num_patches as i64, enc.patch_dim as i64])?
            .f_to_device(device)?; // (N, patch_dim)
        let flat: Vec<i64> = enc.image_grid_thw.iter().flatten().copied().collect();
        let grid = Tensor::f_from_slice(&flat)?
            .f_view([enc.image_grid_thw.len() as i64, 3])?
            .f_to_device(device)?; // (n_images, 3)
        inputs = inputs.with_images(px, grid);
    }
    Ok(inputs)
}

/// The longest prompt the model can take while still generating one token.
pub fn max_prompt_len(model: &Qwen3Vl) -> usize {
    (model.config.text_config.max_position_embeddings.max(1) - 1) as usize
}

/// Decodes one generation output, special tokens skipped. Ids past the tokenizer's vocabulary
/// (checkpoints pad the embedding matrix, and a model may pick a padding row) have no text and
/// are skipped, as transformers' decode does; they stay in `token_ids`.
pub fn decode_output(
    processor: &Processor,
    out: GenerationOutput,
) -> Result<GenerateResult, GenerateError> {
    let vocab = processor.tokenizer.vocab_size();
    let ids: Vec<u32> = out
        .token_ids
        .iter()
        .filter_map(|&t| u32::try_from(t).ok().filter(|&t| (t as usize) < vocab))
        .collect();
    let text = processor
        .tokenizer
        .decode(&ids, true)
        .map_err(GenerateError::Decode)?;
    Ok(GenerateResult {
        text,
        token_ids: out.token_ids,
        logprobs: out.logprobs,
    })
}

/// The conversation of `prism generate`: optional system turn, then one user turn made of the
/// images and then the prompt text.
pub fn single_turn(system: Option<&str>, num_images: usize, prompt: &str) -> Vec<ChatMessage> {
    let mut parts: Vec<ContentPart> = (0..num_images)
        .map(|_| ContentPart::Image { image: None })
        .collect();
    parts.push(ContentPart::Text {
        text: prompt.to_string(),
    });
    let mut messages = Vec::with_capacity(2);
    if let Some(s) = system {
        messages.push(ChatMessage::system(s));
    }
    messages.push(ChatMessage::parts("user", parts));
    messages
}

/// Loads the processor files of `dir`.
pub fn load_processor(dir: &Path) -> Result<Processor, GenerateError> {
    Processor::from_dir(dir).map_err(|source| GenerateError::ProcessorFiles {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Loads the weights of `dir` (CPU fp32, or CUDA bf16 when a GPU is visible).
pub fn load_model(dir: &Path) -> Result<Qwen3Vl, GenerateError> {
    let device = Device::cuda_if_available();
    let kind = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    Qwen3Vl::load(dir, device, kind).map_err(|source| GenerateError::Model {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Reads and decodes image files with the processor's decoder (RGB conversion as transformers:
/// alpha composited onto white).
pub fn load_images(
    processor: &Processor,
    paths: &[PathBuf],
) -> Result<Vec<RgbImage>, GenerateError> {
    paths
        .iter()
        .map(|p| {
            processor
                .image_processor
                .load(p)
                .map_err(|source| GenerateError::Image {
                    path: p.clone(),
                    source,
                })
        })
        .collect()
}

/// Generates the reply to one user turn (`images` then `prompt`, after an optional system turn).
pub fn generate_reply(
    model: &Qwen3Vl,
    processor: &Processor,
    system: Option<&str>,
    images: &[RgbImage],
    prompt: &str,
    cfg: &GenerationConfig,
) -> Result<GenerateResult, GenerateError> {
    let messages = single_turn(system, images.len(), prompt);
    let enc = processor
        .batch_chats(
            &[messages],
            &[images.to_vec()],
            true,
            PaddingSide::Left,
            Some(max_prompt_len(model)),
        )
        .map_err(GenerateError::Prompt)?;
    let inputs = model_inputs(&enc, model.device()).map_err(GenerateError::Generation)?;
    let out = generate(model, &inputs, cfg)
        .map_err(GenerateError::Generation)?
        .pop()
        .ok_or_else(|| {
            GenerateError::Generation(ModelError::Input {
                field: "input_ids".into(),
                reason: "generation returned no row".into(),
            })
        })?;
    decode_output(processor, out)
}

/// Runs `prism generate`: prints the text, or the JSON object with `--json`.
pub fn run(args: &GenerateArgs) -> Result<GenerateResult, GenerateError> {
    let sampling = sampling_from_flags(args.temperature, args.top_p)?;
    let processor = load_processor(&args.model)?;
    let images = load_images(&processor, &args.images)?;
    let model = load_model(&args.model)?;
    let cfg = generation_config(&processor, sampling, args.max_new_tokens, args.seed);
    let result = generate_reply(
        &model,
        &processor,
        args.system.as_deref(),
        &images,
        &args.prompt,
        &cfg,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&result).expect("strings and numbers serialise")
        );
    } else {
        println!("{}", result.text);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_sampling() {
        assert_eq!(sampling_from_flags(0.0, 1.0).unwrap(), Sampling::Greedy);
        assert_eq!(
            sampling_from_flags(0.7, 0.8).unwrap(),
            Sampling::Sample {
                temperature: 0.7,
                top_k: 0,
                top_p: 0.8
            }
        );
        assert!(sampling_from_flags(-1.0, 1.0).is_err());
        assert!(sampling_from_flags(f64::NAN, 1.0).is_err());
        assert!(sampling_from_flags(1.0, 0.0).is_err());
        assert!(sampling_from_flags(1.0, 1.5).is_err());
    }

    #[test]
    fn single_turn_puts_images_before_text() {
        let m = single_turn(Some("sys"), 2, "hi");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].num_images(), 2);
        let m = single_turn(None, 0, "hi");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].num_images(), 0);
    }
}
