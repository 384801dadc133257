//! Image preprocessing of Qwen3-VL (transformers' `Qwen2VLImageProcessor`), libtorch-free.
//!
//! Owns decoded image → `pixel_values` rows + `image_grid_thw`: RGB conversion (alpha composited
//! onto white, as transformers does), `smart_resize` (banker's rounding, aspect-ratio limit 200),
//! antialiased bicubic resize, rescale + normalise, and patchify into merge-block order.
//!
//! Axis conventions: images are `(H, W)` RGB u8, row-major, channels interleaved. Output rows are
//! `(gh*gw, C*T*P*P)` = `(N, 1536)` for Qwen3-VL: row order block_row, block_col, in_row, in_col
//! (four consecutive rows form one 2x2 merge window); inside a row the order is (C, T, ph, pw),
//! which matches the Conv3d weight layout. The single frame is repeated along T.
//!
//! Two resize backends reproduce the two transformers backends bit for bit (both are two-pass
//! separable fixed-point filters, horizontal pass first, u8 between passes; Keys cubic a = -0.5
//! stretched by the downscale factor): [`ResizeBackend::Torchvision`] (the v5 default and 4.57's
//! `…Fast` processor: torch's uint8 antialias kernel, int16 weights with a per-axis precision) and
//! [`ResizeBackend::Pil`] (`PIL.Image.resize(BICUBIC)`, 22-bit weights). The two differ by a level
//! or two where a real resize happens. Pillow 13 sometimes runs the vertical pass first (seen
//! when the vertical scale shrinks much more than the horizontal one); we always run the
//! horizontal pass first like Pillow <= 12, which then differs by a few levels at some pixels.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, RgbImage};
use serde_json::Value;

mod resample;
pub use resample::{resize_bicubic, resize_lanczos_pil};

/// Errors of configuring the image processor or preprocessing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
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
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(
        "no image processor config in {dir} (looked for processor_config.json and preprocessor_config.json)"
    )]
    NotFound { dir: PathBuf },
    #[error("{origin}: cannot decode image: {message}")]
    Decode { origin: String, message: String },
    #[error(
        "{origin}: image of {width}x{height} pixels is larger than the limit of {limit} pixels"
    )]
    TooLarge {
        origin: String,
        width: u64,
        height: u64,
        limit: u64,
    },
    #[error("{origin}: {message}")]
    Size { origin: String, message: String },
    #[error("{origin}: empty image ({width}x{height})")]
    Empty {
        origin: String,
        width: u32,
        height: u32,
    },
    #[error(
        "{origin}: absolute aspect ratio must be smaller than 200, got {ratio} ({height}x{width})"
    )]
    AspectRatio {
        origin: String,
        height: u32,
        width: u32,
        ratio: f64,
    },
}

/// Which transformers backend to reproduce when resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeBackend {
    /// torchvision `resize(uint8, BICUBIC, antialias=True)`: v5 default, 4.57 `…Fast`.
    #[default]
    Torchvision,
    /// `PIL.Image.resize(BICUBIC)`: v5 `…Pil`, 4.57 slow processor.
    Pil,
}

/// The fields of `preprocessor_config.json` / `processor_config.json` (`image_processor`) that
/// matter, with transformers' names.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// `size.shortest_edge` (older files: `min_pixels`): least number of pixels after resizing.
    pub min_pixels: u64,
    /// `size.longest_edge` (older files: `max_pixels`): most number of pixels after resizing.
    pub max_pixels: u64,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub do_convert_rgb: bool,
    /// From `image_processor_type` (`…Pil` → PIL, otherwise torchvision).
    pub backend: ResizeBackend,
}

impl Default for ImageProcessorConfig {
    /// The released Qwen3-VL settings.
    fn default() -> Self {
        Self {
            min_pixels: 65536,
            max_pixels: 16_777_216,
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            backend: ResizeBackend::Torchvision,
        }
    }
}

impl ImageProcessorConfig {
    /// Reads a checkpoint directory: `processor_config.json` (v5, `image_processor` section),
    /// else `preprocessor_config.json` (4.57).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ImageError> {
        let dir = dir.as_ref();
        let v5 = dir.join("processor_config.json");
        if v5.exists() {
            let json = read_json(&v5)?;
            if let Some(section) = json.get("image_processor") {
                return Self::from_json(section, &v5);
            }
        }
        let old = dir.join("preprocessor_config.json");
        if old.exists() {
            return Self::from_json(&read_json(&old)?, &old);
        }
        Err(ImageError::NotFound {
            dir: dir.to_path_buf(),
        })
    }

    /// Reads one JSON file holding the image processor fields directly.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let path = path.as_ref();
        Self::from_json(&read_json(path)?, path)
    }

    /// Parses the fields of a JSON object; `path` names the file in errors.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self, ImageError> {
        let field_err = |field: &str, message: String| ImageError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if !v.is_object() {
            return Err(field_err("(root)", "expected a JSON object".into()));
        }
        let d = Self::default();
        let uint = |field: &str, obj: &Value, name: &str| -> Result<Option<u64>, ImageError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| {
                    field_err(field, format!("expected a non-negative integer, got {x}"))
                }),
            }
        };
        let boolean = |name: &str, default: bool| -> Result<bool, ImageError> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(x) => Err(field_err(name, format!("expected true or false, got {x}"))),
            }
        };
        let triple = |name: &str, default: [f64; 3]| -> Result<[f64; 3], ImageError> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    Ok([x; 3])
                }
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(|x| x.is_number()) => Ok([
                    a[0].as_f64().unwrap_or(f64::NAN),
                    a[1].as_f64().unwrap_or(f64::NAN),
                    a[2].as_f64().unwrap_or(f64::NAN),
                ]),
                Some(x) => Err(field_err(name, format!("expected 3 numbers, got {x}"))),
            }
        };

        // Pixel limits: `size` {shortest_edge, longest_edge} (current), else min/max_pixels.
        let (mut min_pixels, mut max_pixels) = (d.min_pixels, d.max_pixels);
        match v.get("size") {
            None | Some(Value::Null) => {}
            Some(size @ Value::Object(_)) => {
                if size.get("height").is_some() || size.get("width").is_some() {
                    return Err(field_err(
                        "size",
                        "fixed height/width sizes are not used by Qwen-VL; expected shortest_edge and longest_edge (pixel counts)".into(),
                    ));
                }
                if let Some(x) = uint("size.shortest_edge", size, "shortest_edge")? {
                    min_pixels = x;
                }
                if let Some(x) = uint("size.longest_edge", size, "longest_edge")? {
                    max_pixels = x;
                }
            }
            Some(x) => return Err(field_err("size", format!("expected an object, got {x}"))),
        }
        if v.get("size").is_none_or(Value::is_null) {
            if let Some(x) = uint("min_pixels", v, "min_pixels")? {
                min_pixels = x;
            }
            if let Some(x) = uint("max_pixels", v, "max_pixels")? {
                max_pixels = x;
            }
        }
        let usize_field = |name: &str, default: usize| -> Result<usize, ImageError> {
            match uint(name, v, name)? {
                None => Ok(default),
                Some(0) => Err(field_err(name, "must be positive".into())),
                // far above any real setting; keeps products of sizes from overflowing
                Some(x) if x > 1024 => Err(field_err(
                    name,
                    format!("{x} is implausibly large (max 1024)"),
                )),
                Some(x) => Ok(x as usize),
            }
        };
        let backend = match v.get("image_processor_type") {
            Some(Value::String(s)) if s.ends_with("Pil") => ResizeBackend::Pil,
            _ => ResizeBackend::Torchvision,
        };
        if let Some(r) = v.get("resample")
            && !r.is_null()
            && r.as_u64() != Some(3)
        {
            return Err(field_err(
                "resample",
                format!("only 3 (bicubic) is supported, got {r}"),
            ));
        }
        let cfg = Self {
            min_pixels,
            max_pixels,
            patch_size: usize_field("patch_size", d.patch_size)?,
            temporal_patch_size: usize_field("temporal_patch_size", d.temporal_patch_size)?,
            merge_size: usize_field("merge_size", d.merge_size)?,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: triple("image_std", d.image_std)?,
            rescale_factor: match v.get("rescale_factor") {
                None | Some(Value::Null) => d.rescale_factor,
                Some(x) => x.as_f64().ok_or_else(|| {
                    field_err("rescale_factor", format!("expected a number, got {x}"))
                })?,
            },
            do_resize: boolean("do_resize", d.do_resize)?,
            do_rescale: boolean("do_rescale", d.do_rescale)?,
            do_normalize: boolean("do_normalize", d.do_normalize)?,
            do_convert_rgb: boolean("do_convert_rgb", d.do_convert_rgb)?,
            backend,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ImageError> {
        let err = |field: &str, message: String| ImageError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        if self.min_pixels > self.max_pixels {
            return Err(err(
                "size",
                format!(
                    "shortest_edge (min pixels {}) is larger than longest_edge (max pixels {})",
                    self.min_pixels, self.max_pixels
                ),
            ));
        }
        let f = self.factor() as u64;
        if self.max_pixels < f * f {
            return Err(err(
                "size.longest_edge",
                format!(
                    "{} pixels is less than one merge window ({f}x{f})",
                    self.max_pixels
                ),
            ));
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(err(
                "image_std",
                format!("must be finite and non-zero, got {:?}", self.image_std),
            ));
        }
        if self.image_mean.iter().any(|s| !s.is_finite()) {
            return Err(err(
                "image_mean",
                format!("must be finite, got {:?}", self.image_mean),
            ));
        }
        if !self.rescale_factor.is_finite() || self.rescale_factor <= 0.0 {
            return Err(err(
                "rescale_factor",
                format!("must be positive, got {}", self.rescale_factor),
            ));
        }
        Ok(())
    }

    /// Side multiple of resized images: patch_size * merge_size (32).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per `pixel_values` row: 3 * temporal_patch_size * patch_size² (1536).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// `(h, w)` after resizing and the grid `[1, h/patch, w/patch]` for an `(H, W)` image.
    pub fn resized_size(
        &self,
        height: u32,
        width: u32,
        origin: &str,
    ) -> Result<(u32, u32), ImageError> {
        if !self.do_resize {
            let f = self.patch_size as u32 * self.merge_size as u32;
            if !height.is_multiple_of(f) || !width.is_multiple_of(f) {
                return Err(ImageError::Size {
                    origin: origin.to_string(),
                    message: format!(
                        "do_resize is false but the image ({height}x{width}) is not a multiple of {f}"
                    ),
                });
            }
            return Ok((height, width));
        }
        smart_resize(
            height,
            width,
            self.factor() as u32,
            self.min_pixels,
            self.max_pixels,
        )
        .map_err(|e| e.with_origin(origin))
    }

    /// Number of `<|image_pad|>` tokens for an `(H, W)` image: t*gh*gw / merge².
    pub fn num_image_tokens(&self, height: u32, width: u32) -> Result<usize, ImageError> {
        let (h, w) = self.resized_size(height, width, "image")?;
        let p = self.patch_size;
        Ok((h as usize / p) * (w as usize / p) / (self.merge_size * self.merge_size))
    }
}

impl ImageError {
    fn with_origin(self, origin: &str) -> Self {
        match self {
            ImageError::AspectRatio {
                height,
                width,
                ratio,
                ..
            } => ImageError::AspectRatio {
                origin: origin.to_string(),
                height,
                width,
                ratio,
            },
            ImageError::Size { message, .. } => ImageError::Size {
                origin: origin.to_string(),
                message,
            },
            other => other,
        }
    }
}

fn read_json(path: &Path) -> Result<Value, ImageError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ImageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Qwen's `smart_resize`: `(h, w)` multiples of `factor` with h*w in [min_pixels, max_pixels],
/// close to the input aspect ratio. Python's `round` is round-half-to-even (80/32 = 2.5 → 2).
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::Empty {
            origin: "image".into(),
            width,
            height,
        });
    }
    let (hf, wf, ff) = (height as f64, width as f64, factor as f64);
    let ratio = hf.max(wf) / hf.min(wf);
    if ratio > 200.0 {
        return Err(ImageError::AspectRatio {
            origin: "image".into(),
            height,
            width,
            ratio,
        });
    }
    let mut h = (hf / ff).round_ties_even() * ff;
    let mut w = (wf / ff).round_ties_even() * ff;
    if h * w > max_pixels as f64 {
        let beta = (hf * wf / max_pixels as f64).sqrt();
        h = ff.max((hf / beta / ff).floor() * ff);
        w = ff.max((wf / beta / ff).floor() * ff);
    } else if h * w < min_pixels as f64 {
        let beta = (min_pixels as f64 / (hf * wf)).sqrt();
        h = (hf * beta / ff).ceil() * ff;
        w = (wf * beta / ff).ceil() * ff;
    }
    if h < 1.0 || w < 1.0 || h > u32::MAX as f64 || w > u32::MAX as f64 {
        return Err(ImageError::Size {
            origin: "image".into(),
            message: format!(
                "smart_resize of {height}x{width} gives {h}x{w}; check the pixel limits ({min_pixels}..{max_pixels})"
            ),
        });
    }
    Ok((h as u32, w as u32))
}

/// One preprocessed image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `(num_patches, patch_dim)` row-major.
    pub pixel_values: Vec<f32>,
    /// `[t, gh, gw]` pre-merge patch grid (t = 1 for images).
    pub grid_thw: [u32; 3],
    /// `(h, w)` after smart_resize.
    pub resized_hw: (u32, u32),
}

impl ProcessedImage {
    pub fn num_patches(&self) -> usize {
        (self.grid_thw[0] * self.grid_thw[1] * self.grid_thw[2]) as usize
    }
}

/// Decodes and preprocesses images for one checkpoint.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
    /// Largest decoded image accepted, in pixels (before resizing). Default: PIL's
    /// decompression-bomb error threshold, 2 * 89,478,485.
    pub max_input_pixels: u64,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self {
            config,
            max_input_pixels: 2 * 89_478_485,
        }
    }

    /// Reads the config of a checkpoint directory (see [`ImageProcessorConfig::from_dir`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ImageError> {
        Ok(Self::new(ImageProcessorConfig::from_dir(dir)?))
    }

    /// Returns a copy that resizes like the given backend.
    pub fn with_backend(mut self, backend: ResizeBackend) -> Self {
        self.config.backend = backend;
        self
    }

    /// Reads and decodes an image file (PNG or JPEG) to RGB.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.decode(&bytes, &path.display().to_string())
    }

    /// Decodes encoded image bytes to RGB; `origin` names the source in errors.
    pub fn decode(&self, bytes: &[u8], origin: &str) -> Result<RgbImage, ImageError> {
        let decode_err = |message: String| ImageError::Decode {
            origin: origin.to_string(),
            message,
        };
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(e.to_string()))?;
        if reader.format().is_none() {
            return Err(decode_err("unknown image format".into()));
        }
        // Check the header's size before decoding anything big.
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| decode_err(e.to_string()))?;
        if w as u64 * h as u64 > self.max_input_pixels {
            return Err(ImageError::TooLarge {
                origin: origin.to_string(),
                width: w as u64,
                height: h as u64,
                limit: self.max_input_pixels,
            });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_input_pixels.saturating_mul(16));
        reader.limits(limits);
        let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
        Ok(to_rgb(&img))
    }

    /// Preprocesses one RGB image. `origin` names it in errors.
    pub fn preprocess(&self, img: &RgbImage, origin: &str) -> Result<ProcessedImage, ImageError> {
        let cfg = &self.config;
        let (width, height) = img.dimensions();
        if width == 0 || height == 0 {
            return Err(ImageError::Empty {
                origin: origin.to_string(),
                width,
                height,
            });
        }
        if width as u64 * height as u64 > self.max_input_pixels {
            return Err(ImageError::TooLarge {
                origin: origin.to_string(),
                width: width as u64,
                height: height as u64,
                limit: self.max_input_pixels,
            });
        }
        let (h, w) = cfg.resized_size(height, width, origin)?;
        let resized;
        let src = if (h, w) == (height, width) {
            img
        } else {
            resized = resize_bicubic(img, h, w, cfg.backend);
            &resized
        };
        let p = cfg.patch_size;
        // smart_resize returns multiples of patch*merge, so the grid splits into merge windows.
        let (gh, gw) = (h as usize / p, w as usize / p);
        Ok(ProcessedImage {
            pixel_values: patchify(src, cfg),
            grid_thw: [1, gh as u32, gw as u32],
            resized_hw: (h, w),
        })
    }

    /// Loads and preprocesses an image file.
    pub fn preprocess_file(&self, path: impl AsRef<Path>) -> Result<ProcessedImage, ImageError> {
        let path = path.as_ref();
        let img = self.load(path)?;
        self.preprocess(&img, &path.display().to_string())
    }
}

/// Converts a decoded image to RGB u8 the way transformers' `convert_to_rgb` does: images with
/// an alpha channel are composited onto opaque white (PIL's `alpha_composite` integer
/// arithmetic), grey is replicated, 16-bit and float images are scaled down to 8 bits.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = composite_on_white(src[c], a);
        }
    }
    out
}

/// PIL `ImagingAlphaComposite` of one channel over an opaque white background (7-bit precision,
/// division by 255 via two shifts).
fn composite_on_white(v: u8, a: u32) -> u8 {
    const PRECISION_BITS: u32 = 7;
    // outa255 = a*255 + 255*(255-a) = 255*255, so coef1 = a << 7, coef2 = (255 - a) << 7.
    let coef1 = a << PRECISION_BITS;
    let coef2 = (255 - a) << PRECISION_BITS;
    let tmp = v as u32 * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS).min(255) as u8
}

/// Rescale + normalise + patchify an image whose sides are multiples of patch*merge.
/// Returns `(gh*gw, 3*T*P*P)` row-major.
pub fn patchify(img: &RgbImage, cfg: &ImageProcessorConfig) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let p = cfg.patch_size;
    let m = cfg.merge_size;
    let t = cfg.temporal_patch_size;
    let (gh, gw) = (h / p, w / p);
    // Per-channel affine map u8 -> f32. transformers' torchvision path fuses rescale into the
    // normalisation: (x - mean/rf) / (std/rf) in float32, i.e. (x - 127.5) / 127.5.
    let affine: [(f32, f32, bool); 3] = std::array::from_fn(|c| {
        if cfg.do_normalize && cfg.do_rescale {
            let inv = 1.0 / cfg.rescale_factor;
            (
                (cfg.image_mean[c] * inv) as f32,
                (cfg.image_std[c] * inv) as f32,
                false,
            )
        } else if cfg.do_normalize {
            (cfg.image_mean[c] as f32, cfg.image_std[c] as f32, false)
        } else if cfg.do_rescale {
            (0.0, cfg.rescale_factor as f32, true)
        } else {
            (0.0, 1.0, false)
        }
    });
    let table: Vec<[f32; 3]> = (0..256)
        .map(|u| {
            std::array::from_fn(|c| {
                let (a, b, multiply) = affine[c];
                if multiply {
                    u as f32 * b
                } else {
                    (u as f32 - a) / b
                }
            })
        })
        .collect();
    let raw = img.as_raw();
    let dim = 3 * t * p * p;
    let mut out = Vec::with_capacity(gh * gw * dim);
    for br in 0..gh / m {
        for bc in 0..gw / m {
            for ir in 0..m {
                for ic in 0..m {
                    let (row, col) = (br * m + ir, bc * m + ic);
                    for c in 0..3 {
                        let start = out.len();
                        for py in 0..p {
                            let y = row * p + py;
                            for px in 0..p {
                                let x = col * p + px;
                                out.push(table[raw[(y * w + x) * 3 + c] as usize][c]);
                            }
                        }
                        // repeat the single frame along T
                        for _ in 1..t {
                            out.extend_from_within(start..start + p * p);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_examples_from_the_notes() {
        let r = |h, w| smart_resize(h, w, 32, 65536, 16_777_216).unwrap();
        assert_eq!(r(1080, 1920), (1088, 1920));
        assert_eq!(r(64, 64), (256, 256));
        assert_eq!(r(4000, 3000), (4000, 3008));
        // banker's rounding: 80/32 = 2.5 -> 2, 112/32 = 3.5 -> 4 (then the min-pixel upscale)
        assert_eq!(smart_resize(80, 112, 32, 1, 1 << 30).unwrap(), (64, 128));
        // a zero minimum lets tiny images round to nothing: an error, not an empty grid
        assert!(matches!(
            smart_resize(5, 5, 32, 0, 16384),
            Err(ImageError::Size { .. })
        ));
        // extreme ratios can leave the budget, exactly as in transformers
        // (transformers: smart_resize(20, 4000, 32, 4096, 65536) == (32, 3616), 115712 pixels)
        assert_eq!(smart_resize(20, 4000, 32, 4096, 65536).unwrap(), (32, 3616));
        assert_eq!(smart_resize(1, 200, 32, 4096, 65536).unwrap(), (32, 928));
        assert!(matches!(
            smart_resize(10, 2001, 32, 1, 1 << 30),
            Err(ImageError::AspectRatio { .. })
        ));
    }

    #[test]
    fn composite_matches_pil() {
        // PIL.Image.alpha_composite(white, (v, v, v, a)) with Pillow 13
        for (v, a, want) in [
            (200, 0, 255),
            (200, 255, 200),
            (10, 90, 169),
            (250, 1, 255),
            (0, 254, 1),
        ] {
            assert_eq!(composite_on_white(v, a), want, "v={v} a={a}");
        }
    }
}
