//! Qwen3-VL processor: conversations + images → the model's batched inputs, libtorch-free.
//!
//! Owns what transformers' `Qwen3VLProcessor` does for images: render the chat template,
//! tokenize, expand each `<|image_pad|>` into `t*gh*gw / merge²` copies, preprocess the images,
//! and pad a batch (left or right) into `input_ids`, `attention_mask`, `mm_token_type_ids`
//! (0 text, 1 image, 2 video), `pixel_values` and `image_grid_thw`. Plain `Vec`s with row-major
//! shapes `[B, S]` and `[N, patch_dim]`; the model side turns them into tensors. Videos are not
//! supported (a `<|video_pad|>` in a prompt is an error).

use std::path::Path;

use image::RgbImage;

use super::chat_template::{ChatMessage, ChatTemplate, RenderOptions, TemplateError};
use super::image_processor::{ImageError, ImageProcessor, ProcessedImage};
use super::tokenizer::{QwenTokenizer, TokenizerError};

/// Errors of turning prompts and images into model inputs.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("prompt {row}: {placeholders} image placeholder(s) but {images} image(s) given")]
    ImageCount {
        row: usize,
        placeholders: usize,
        images: usize,
    },
    #[error("prompt {row}: contains a video placeholder; videos are not supported")]
    Video { row: usize },
    #[error(
        "prompt {row}: {length} tokens (images expanded) is more than the maximum of {max_length}"
    )]
    TooLong {
        row: usize,
        length: usize,
        max_length: usize,
    },
    #[error("empty batch")]
    EmptyBatch,
}

/// Which side of a row gets the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// transformers' default.
    #[default]
    Right,
    /// For batched generation: every row ends at the last column.
    Left,
}

/// `mm_token_type_ids` values.
pub const TOKEN_TYPE_TEXT: i64 = 0;
pub const TOKEN_TYPE_IMAGE: i64 = 1;
pub const TOKEN_TYPE_VIDEO: i64 = 2;

/// One prompt, tokenized with its image tokens expanded, not padded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPrompt {
    pub input_ids: Vec<u32>,
    /// Its images in order of appearance.
    pub images: Vec<ProcessedImage>,
}

/// A padded batch of model inputs (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchEncoding {
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[B, S]`
    pub input_ids: Vec<i64>,
    /// `[B, S]`, 1 for real tokens.
    pub attention_mask: Vec<i64>,
    /// `[B, S]`, 0 text / pad, 1 image, 2 video.
    pub mm_token_type_ids: Vec<i64>,
    /// `[num_patches, patch_dim]`: the rows of all images of all prompts, in order.
    pub pixel_values: Vec<f32>,
    pub num_patches: usize,
    pub patch_dim: usize,
    /// `[num_images, 3]` as `[t, gh, gw]`.
    pub image_grid_thw: Vec<[i64; 3]>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
}

impl BatchEncoding {
    /// Row `b` of `input_ids`.
    pub fn row_ids(&self, b: usize) -> &[i64] {
        &self.input_ids[b * self.seq_len..(b + 1) * self.seq_len]
    }
}

/// Tokenizer + chat template + image processor of one checkpoint.
#[derive(Debug)]
pub struct Processor {
    pub tokenizer: QwenTokenizer,
    pub template: ChatTemplate,
    pub image_processor: ImageProcessor,
}

impl Processor {
    /// Loads all three from a checkpoint directory (4.57 or v5 file layout).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ProcessorError> {
        let dir = dir.as_ref();
        Ok(Self {
            tokenizer: QwenTokenizer::from_dir(dir)?,
            template: ChatTemplate::from_dir(dir)?,
            image_processor: ImageProcessor::from_dir(dir)?,
        })
    }

    /// Renders a conversation to the prompt text (image parts as one `<|image_pad|>` each).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        Ok(self.template.render(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..Default::default()
            },
        )?)
    }

    /// Tokenizes a rendered prompt holding one `<|image_pad|>` per image and expands each into
    /// the image's token count. `row` names the prompt in errors.
    pub fn encode_text(
        &self,
        text: &str,
        images: &[RgbImage],
        row: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        let special = self.tokenizer.special();
        let ids = self.tokenizer.encode(text)?;
        let placeholders = ids.iter().filter(|&&i| i == special.image_pad).count();
        if placeholders != images.len() {
            return Err(ProcessorError::ImageCount {
                row,
                placeholders,
                images: images.len(),
            });
        }
        if ids.contains(&special.video_pad) {
            return Err(ProcessorError::Video { row });
        }
        let processed = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                self.image_processor
                    .preprocess(img, &format!("prompt {row} image {i}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let merge = self.image_processor.config.merge_size as u32;
        let mut out = Vec::with_capacity(
            ids.len() + processed.iter().map(|p| p.num_patches()).sum::<usize>(),
        );
        let mut next = processed.iter();
        for id in ids {
            if id == special.image_pad {
                let img = next.next().expect("placeholder count checked above");
                let [t, gh, gw] = img.grid_thw;
                let n = (t * gh * gw / (merge * merge)) as usize;
                out.extend(std::iter::repeat_n(id, n));
            } else {
                out.push(id);
            }
        }
        Ok(EncodedPrompt {
            input_ids: out,
            images: processed,
        })
    }

    /// Renders and encodes one conversation; `images` are its image parts' pixels, in order.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        images: &[RgbImage],
        add_generation_prompt: bool,
        row: usize,
    ) -> Result<EncodedPrompt, ProcessorError> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode_text(&text, images, row)
    }

    /// Encodes and pads rendered prompts (`images[b]` belong to `texts[b]`), like
    /// `processor(text=texts, images=flat_images, padding=True, padding_side=side)`.
    pub fn batch_texts(
        &self,
        texts: &[String],
        images: &[Vec<RgbImage>],
        side: PaddingSide,
        max_length: Option<usize>,
    ) -> Result<BatchEncoding, ProcessorError> {
        let no_images: Vec<RgbImage> = Vec::new();
        let rows = texts
            .iter()
            .enumerate()
            .map(|(b, t)| self.encode_text(t, images.get(b).unwrap_or(&no_images), b))
            .collect::<Result<Vec<_>, _>>()?;
        if images.len() > texts.len() {
            return Err(ProcessorError::ImageCount {
                row: texts.len(),
                placeholders: 0,
                images: images[texts.len()..].iter().map(Vec::len).sum(),
            });
        }
        self.collate(&rows, side, max_length)
    }

    /// Renders, encodes and pads conversations (`images[b]` are the image parts of
    /// `conversations[b]`, in order).
    pub fn batch_chats(
        &self,
        conversations: &[Vec<ChatMessage>],
        images: &[Vec<RgbImage>],
        add_generation_prompt: bool,
        side: PaddingSide,
        max_length: Option<usize>,
    ) -> Result<BatchEncoding, ProcessorError> {
        let texts = conversations
            .iter()
            .map(|c| self.apply_chat_template(c, add_generation_prompt))
            .collect::<Result<Vec<_>, _>>()?;
        self.batch_texts(&texts, images, side, max_length)
    }

    /// Pads encoded prompts into one batch with the tokenizer's pad id.
    pub fn collate(
        &self,
        rows: &[EncodedPrompt],
        side: PaddingSide,
        max_length: Option<usize>,
    ) -> Result<BatchEncoding, ProcessorError> {
        let special = *self.tokenizer.special();
        collate(
            rows,
            side,
            max_length,
            special.pad,
            special.image_pad,
            special.video_pad,
            self.image_processor.config.patch_dim(),
        )
    }
}

/// Pads rows into a batch. Free function so it can be used without a loaded processor.
pub fn collate(
    rows: &[EncodedPrompt],
    side: PaddingSide,
    max_length: Option<usize>,
    pad_id: u32,
    image_pad_id: u32,
    video_pad_id: u32,
    patch_dim: usize,
) -> Result<BatchEncoding, ProcessorError> {
    if rows.is_empty() {
        return Err(ProcessorError::EmptyBatch);
    }
    if let Some(max_length) = max_length
        && let Some((row, r)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.input_ids.len() > max_length)
    {
        return Err(ProcessorError::TooLong {
            row,
            length: r.input_ids.len(),
            max_length,
        });
    }
    let b = rows.len();
    let s = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
    let mut input_ids = vec![pad_id as i64; b * s];
    let mut attention_mask = vec![0i64; b * s];
    let mut mm_token_type_ids = vec![TOKEN_TYPE_TEXT; b * s];
    let mut pixel_values = Vec::new();
    let mut image_grid_thw = Vec::new();
    let mut num_patches = 0;
    for (i, r) in rows.iter().enumerate() {
        let n = r.input_ids.len();
        let start = match side {
            PaddingSide::Right => 0,
            PaddingSide::Left => s - n,
        };
        let base = i * s + start;
        for (j, &id) in r.input_ids.iter().enumerate() {
            input_ids[base + j] = id as i64;
            attention_mask[base + j] = 1;
            mm_token_type_ids[base + j] = if id == image_pad_id {
                TOKEN_TYPE_IMAGE
            } else if id == video_pad_id {
                TOKEN_TYPE_VIDEO
            } else {
                TOKEN_TYPE_TEXT
            };
        }
        for img in &r.images {
            pixel_values.extend_from_slice(&img.pixel_values);
            num_patches += img.num_patches();
            let [t, h, w] = img.grid_thw;
            image_grid_thw.push([t as i64, h as i64, w as i64]);
        }
    }
    debug_assert_eq!(pixel_values.len(), num_patches * patch_dim);
    Ok(BatchEncoding {
        batch_size: b,
        seq_len: s,
        input_ids,
        attention_mask,
        mm_token_type_ids,
        pixel_values,
        num_patches,
        patch_dim,
        image_grid_thw,
        lengths: rows.iter().map(|r| r.input_ids.len()).collect(),
    })
}
