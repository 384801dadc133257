//! Trains a Qwen-style tokenizer for the embedded demo and writes a model directory's text and
//! processor files.
//!
//! Owns making a tiny byte-level BPE (Qwen's split regex, NFC, GPT-2 byte alphabet, no BOS) from a
//! corpus, with Qwen3-VL's 26 added tokens placed right after the trained vocabulary in Qwen's
//! order, and writing `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`,
//! `preprocessor_config.json` and `generation_config.json`, so the demo's model directory is read
//! by the same loaders ([`QwenTokenizer`], [`ChatTemplate`], [`ImageProcessorConfig`]) as a real
//! checkpoint. Never writes model weights or `config.json`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl,
};

use super::chat_template::QWEN3_VL_CHAT_TEMPLATE;
use super::image_processor::{ImageProcessorConfig, ResizeBackend};
use super::tokenizer::{ENDOFTEXT, IM_END, QWEN3_VL_ADDED_TOKENS, QwenTokenizer, TokenizerError};

/// Qwen2/Qwen3 pre-tokenizer split pattern (contractions, letters, single digits, punctuation
/// runs, newlines, whitespace).
pub const QWEN_SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Size of the GPT-2 byte alphabet every byte-level BPE starts from.
pub const BYTE_ALPHABET: usize = 256;

/// Errors of training or writing a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training options: {0}")]
    Options(String),
    #[error("tokenizer training failed: {0}")]
    Train(String),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("the written tokenizer does not load back: {0}")]
    Reload(#[from] TokenizerError),
}

/// Options of [`train_qwen_tokenizer`].
#[derive(Debug, Clone)]
pub struct TokenizerTrainOptions {
    /// BPE vocabulary size including the 256 byte tokens (added tokens come on top).
    pub vocab_size: usize,
    /// Least count for a pair to be merged.
    pub min_frequency: u64,
    /// `model_max_length` written to tokenizer_config.json.
    pub model_max_length: usize,
}

impl Default for TokenizerTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 1024,
            min_frequency: 2,
            model_max_length: 4096,
        }
    }
}

type Impl = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Trains a byte-level BPE on `corpus` with Qwen's normaliser / pre-tokenizer / decoder and
/// appends Qwen3-VL's added tokens (ids `bpe_vocab..bpe_vocab+26`).
pub fn train_qwen_tokenizer(
    corpus: &[String],
    opts: &TokenizerTrainOptions,
) -> Result<tokenizers::Tokenizer, TrainError> {
    if opts.vocab_size < BYTE_ALPHABET {
        return Err(TrainError::Options(format!(
            "vocab_size {} is smaller than the byte alphabet ({BYTE_ALPHABET})",
            opts.vocab_size
        )));
    }
    if corpus.iter().all(|s| s.is_empty()) {
        return Err(TrainError::Options("the corpus is empty".into()));
    }
    let train_err = |e: tokenizers::Error| TrainError::Train(e.to_string());
    let split = Split::new(
        SplitPattern::Regex(QWEN_SPLIT_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(train_err)?;
    let byte_level = ByteLevel::new(false, false, false);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(byte_level),
    ]);
    let mut tok: Impl = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(Some(NormalizerWrapper::NFC(NFC)))
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
        .build()
        .map_err(train_err)?;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tok.train(&mut trainer, corpus.iter()).map_err(train_err)?;
    let bpe_size = tok.get_vocab_size(false);
    let mut tok = tokenizers::Tokenizer::from(tok);
    for (text, special) in QWEN3_VL_ADDED_TOKENS {
        let t = AddedToken::from(text, special).normalized(false);
        if special {
            tok.add_special_tokens([t]).map_err(train_err)?;
        } else {
            tok.add_tokens([t]).map_err(train_err)?;
        }
    }
    for (i, (text, _)) in QWEN3_VL_ADDED_TOKENS.iter().enumerate() {
        let want = (bpe_size + i) as u32;
        if tok.token_to_id(text) != Some(want) {
            return Err(TrainError::Train(format!(
                "added token {text} got id {:?}, expected {want}",
                tok.token_to_id(text)
            )));
        }
    }
    Ok(tok)
}

/// `tokenizer_config.json` for a trained Qwen-style tokenizer (what transformers writes for Qwen).
pub fn tokenizer_config_json(tok: &tokenizers::Tokenizer, model_max_length: usize) -> Value {
    let mut decoder = serde_json::Map::new();
    for (text, special) in QWEN3_VL_ADDED_TOKENS {
        if let Some(id) = tok.token_to_id(text) {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": text, "lstrip": false, "normalized": false, "rstrip": false,
                    "single_word": false, "special": special,
                }),
            );
        }
    }
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": null,
        "clean_up_tokenization_spaces": false,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null,
    })
}

/// `preprocessor_config.json` (4.57 key style, which v5 also reads) for an image processor config.
pub fn preprocessor_config_json(cfg: &ImageProcessorConfig) -> Value {
    let kind = match cfg.backend {
        ResizeBackend::Torchvision => "Qwen2VLImageProcessorFast",
        ResizeBackend::Pil => "Qwen2VLImageProcessorPil",
    };
    json!({
        "do_convert_rgb": cfg.do_convert_rgb,
        "do_normalize": cfg.do_normalize,
        "do_rescale": cfg.do_rescale,
        "do_resize": cfg.do_resize,
        "image_mean": cfg.image_mean,
        "image_processor_type": kind,
        "image_std": cfg.image_std,
        "merge_size": cfg.merge_size,
        "patch_size": cfg.patch_size,
        "processor_class": "Qwen3VLProcessor",
        "resample": 3,
        "rescale_factor": cfg.rescale_factor,
        "size": {"longest_edge": cfg.max_pixels, "shortest_edge": cfg.min_pixels},
        "temporal_patch_size": cfg.temporal_patch_size,
    })
}

/// `generation_config.json` with Qwen's stop ids (`<|im_end|>`, `<|endoftext|>`) and pad.
pub fn generation_config_json(tok: &tokenizers::Tokenizer) -> Value {
    let id = |t: &str| tok.token_to_id(t);
    json!({
        "bos_token_id": id(ENDOFTEXT),
        "eos_token_id": [id(IM_END), id(ENDOFTEXT)],
        "pad_token_id": id(ENDOFTEXT),
    })
}

fn write(path: &Path, contents: &str) -> Result<(), TrainError> {
    std::fs::write(path, contents).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, v: &Value) -> Result<(), TrainError> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    s.push('\n');
    write(path, &s)
}

/// Writes the tokenizer, chat template, image processor and generation config files of a model
/// directory (creating it).
pub fn write_processor_files(
    dir: &Path,
    tok: &tokenizers::Tokenizer,
    image_cfg: &ImageProcessorConfig,
    model_max_length: usize,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Write {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let tj = dir.join("tokenizer.json");
    tok.save(&tj, true).map_err(|e| TrainError::Write {
        path: tj.clone(),
        message: e.to_string(),
    })?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(tok, model_max_length),
    )?;
    write(&dir.join("chat_template.jinja"), QWEN3_VL_CHAT_TEMPLATE)?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &preprocessor_config_json(image_cfg),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(tok),
    )?;
    Ok(())
}

/// Trains on `corpus`, writes the files into `dir`, and loads them back through the checkpoint
/// loader (so a broken file fails here, not later).
pub fn train_demo_tokenizer(
    corpus: &[String],
    dir: &Path,
    opts: &TokenizerTrainOptions,
    image_cfg: &ImageProcessorConfig,
) -> Result<QwenTokenizer, TrainError> {
    let tok = train_qwen_tokenizer(corpus, opts)?;
    write_processor_files(dir, &tok, image_cfg, opts.model_max_length)?;
    Ok(QwenTokenizer::from_dir(dir)?)
}
