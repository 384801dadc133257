//! Tokenizer of a Qwen3-VL checkpoint directory.
//!
//! Owns text <-> token ids: `tokenizer.json` through the `tokenizers` crate (byte-level BPE, added
//! tokens matched before BPE, no BOS), and the special-token ids that the rest of prism needs
//! (image/video pads, vision start/end, ChatML markers, eos, pad), read from
//! `tokenizer_config.json` and the vocabulary rather than hard-coded. Never touches images,
//! templates or tensors (libtorch-free).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Qwen3-VL's added tokens in id order (real ids 151643..=151668) with their `special` flag as in
/// the released `tokenizer.json`. A trained demo tokenizer appends them right after its BPE vocab.
pub const QWEN3_VL_ADDED_TOKENS: [(&str, bool); 26] = [
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<|object_ref_start|>", true),
    ("<|object_ref_end|>", true),
    ("<|box_start|>", true),
    ("<|box_end|>", true),
    ("<|quad_start|>", true),
    ("<|quad_end|>", true),
    ("<|vision_start|>", true),
    ("<|vision_end|>", true),
    ("<|vision_pad|>", true),
    ("<|image_pad|>", true),
    ("<|video_pad|>", true),
    ("<tool_call>", false),
    ("</tool_call>", false),
    ("<|fim_prefix|>", false),
    ("<|fim_middle|>", false),
    ("<|fim_suffix|>", false),
    ("<|fim_pad|>", false),
    ("<|repo_name|>", false),
    ("<|file_sep|>", false),
    ("<tool_response>", false),
    ("</tool_response>", false),
    ("<think>", false),
    ("</think>", false),
];

/// Default token strings; `tokenizer_config.json` may rename the vision ones (`image_token`, ...).
pub const IMAGE_PAD: &str = "<|image_pad|>";
pub const VIDEO_PAD: &str = "<|video_pad|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Errors of loading or using a tokenizer. Every load error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: token {token:?} (the {role} token) is not in the vocabulary")]
    MissingToken {
        path: PathBuf,
        token: String,
        role: &'static str,
    },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// Ids of the tokens that the processor, the model and generation need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub image_pad: u32,
    pub video_pad: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub im_start: u32,
    pub im_end: u32,
    /// `eos_token` of tokenizer_config.json (`<|im_end|>` for Instruct checkpoints).
    pub eos: u32,
    /// `pad_token` of tokenizer_config.json, or `eos` when it has none.
    pub pad: u32,
    /// `bos_token` (null for Qwen: no BOS is ever added).
    pub bos: Option<u32>,
}

/// A checkpoint's tokenizer plus its special-token ids. Cheap to share through `Arc` (`Send + Sync`).
#[derive(Debug, Clone)]
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    /// Stop ids for generation: `generation_config.json` `eos_token_id` (int or list) when the
    /// directory has one, else `[eos]`.
    stop_ids: Vec<u32>,
    /// Where `tokenizer.json` came from (for error messages).
    source: PathBuf,
}

impl QwenTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (required) and `generation_config.json`
    /// (optional) from a checkpoint directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let gen_cfg = dir.join("generation_config.json");
        Self::from_files(
            &dir.join("tokenizer.json"),
            &dir.join("tokenizer_config.json"),
            gen_cfg.exists().then_some(gen_cfg.as_path()),
        )
    }

    /// Loads from explicit file paths.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: &Path,
        generation_config: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        if !tokenizer_json.exists() {
            return Err(TokenizerError::Io {
                path: tokenizer_json.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        let inner =
            tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| TokenizerError::Load {
                path: tokenizer_json.to_path_buf(),
                message: e.to_string(),
            })?;
        let config = read_json(tokenizer_config)?;
        let special = special_tokens(&inner, &config, tokenizer_config)?;
        let stop_ids = match generation_config {
            Some(p) => {
                let g = read_json(p)?;
                match g.get("eos_token_id") {
                    None | Some(Value::Null) => vec![special.eos],
                    Some(v) => id_list(v).ok_or_else(|| TokenizerError::Field {
                        path: p.to_path_buf(),
                        field: "eos_token_id".into(),
                        message: format!("expected a token id or a list of ids, got {v}"),
                    })?,
                }
            }
            None => vec![special.eos],
        };
        let vocab = inner.get_vocab_size(true) as u32;
        if let Some(bad) = stop_ids.iter().find(|&&id| id >= vocab) {
            return Err(TokenizerError::Field {
                path: generation_config.unwrap_or(tokenizer_config).to_path_buf(),
                field: "eos_token_id".into(),
                message: format!("id {bad} is outside the vocabulary (size {vocab})"),
            });
        }
        Ok(Self {
            inner,
            special,
            stop_ids,
            source: tokenizer_json.to_path_buf(),
        })
    }

    /// Special-token ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Generation stop ids (`generation_config.json` `eos_token_id`, else `[eos]`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Path of the `tokenizer.json` this was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Vocabulary size including added tokens (not the model's embedding rows, which may be more).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text as `tokenizer(text)` does in transformers: added tokens are matched first,
    /// nothing is prepended (Qwen has no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids; `skip_special_tokens` drops added tokens flagged special (as transformers does).
    /// No clean-up of tokenization spaces (Qwen sets `clean_up_tokenization_spaces: false`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let vocab = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
            return Err(TokenizerError::Decode(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn id_list(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(|x| vec![x]),
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => None,
    }
}

/// A token field of tokenizer_config.json: a string, an AddedToken object `{"content": ..}`, or null.
fn token_field(config: &Value, field: &str, path: &Path) -> Result<Option<String>, TokenizerError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::Field {
                path: path.to_path_buf(),
                field: field.into(),
                message: "object without a string `content`".into(),
            }),
        },
        Some(other) => Err(TokenizerError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            message: format!("expected a token string, got {other}"),
        }),
    }
}

/// A vision token name: top-level field, `extra_special_tokens` map entry, or the Qwen default.
fn named_token(
    config: &Value,
    field: &str,
    default: &str,
    path: &Path,
) -> Result<String, TokenizerError> {
    if let Some(s) = token_field(config, field, path)? {
        return Ok(s);
    }
    if let Some(extra) = config.get("extra_special_tokens").filter(|v| v.is_object())
        && let Some(s) = token_field(extra, field, path)?
    {
        return Ok(s);
    }
    Ok(default.to_string())
}

fn special_tokens(
    tok: &tokenizers::Tokenizer,
    config: &Value,
    path: &Path,
) -> Result<SpecialTokens, TokenizerError> {
    if !config.is_object() {
        return Err(TokenizerError::Field {
            path: path.to_path_buf(),
            field: "(root)".into(),
            message: "expected a JSON object".into(),
        });
    }
    let id = |token: &str, role: &'static str| {
        tok.token_to_id(token)
            .ok_or_else(|| TokenizerError::MissingToken {
                path: path.to_path_buf(),
                token: token.to_string(),
                role,
            })
    };
    let eos_name =
        token_field(config, "eos_token", path)?.ok_or_else(|| TokenizerError::Field {
            path: path.to_path_buf(),
            field: "eos_token".into(),
            message: "missing (needed to stop generation)".into(),
        })?;
    let eos = id(&eos_name, "eos_token")?;
    let pad = match token_field(config, "pad_token", path)? {
        Some(name) => id(&name, "pad_token")?,
        None => eos,
    };
    let bos = match token_field(config, "bos_token", path)? {
        Some(name) => Some(id(&name, "bos_token")?),
        None => None,
    };
    Ok(SpecialTokens {
        image_pad: id(
            &named_token(config, "image_token", IMAGE_PAD, path)?,
            "image_token",
        )?,
        video_pad: id(
            &named_token(config, "video_token", VIDEO_PAD, path)?,
            "video_token",
        )?,
        vision_start: id(
            &named_token(config, "vision_start_token", VISION_START, path)?,
            "vision_start_token",
        )?,
        vision_end: id(
            &named_token(config, "vision_end_token", VISION_END, path)?,
            "vision_end_token",
        )?,
        im_start: id(IM_START, "im_start")?,
        im_end: id(IM_END, "im_end")?,
        eos,
        pad,
        bos,
    })
}
