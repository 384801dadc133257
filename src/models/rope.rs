//! 3-D positions (`get_rope_index`) and the interleaved M-RoPE tables of the text decoder.
//!
//! Positions follow transformers 5 (QWEN3_VL.md §5): per batch row, over the tokens with
//! `attention_mask == 1`, text tokens get `(p, p, p)`, an image/video-frame run of
//! `(h/m)·(w/m)` tokens gets `(p, p + hi, p + wi)` and advances `p` by `max(h/m, w/m)`; padded
//! slots get 0; `rope_delta = max + 1 - valid_len`. Shapes: positions `[3, B, S]` (axes T, H, W),
//! deltas `[B]`. Decoding continues at `max + 1` for every axis (see [`KvCache`](super::cache)).

use tch::{Device, Kind, Tensor};

use super::config::TextConfig;
use super::error::{ModelError, Result};

/// The token ids and merge size `get_rope_index` needs.
#[derive(Debug, Clone, Copy)]
pub struct RopeTokens {
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub spatial_merge_size: i64,
}

/// Host-side copy of an integer tensor of shape `[rows, cols]` (`field` names it in errors).
pub(crate) fn host_i64_2d(t: &Tensor, field: &str) -> Result<(Vec<i64>, usize, usize)> {
    let (r, c) = t
        .size2()
        .map_err(|_| ModelError::input(field, format!("expected 2 dims, got {:?}", t.size())))?;
    let v = Vec::<i64>::try_from(
        &t.f_to_kind(Kind::Int64)?
            .f_to_device(Device::Cpu)?
            .f_flatten(0, -1)?,
    )?;
    Ok((v, r as usize, c as usize))
}

/// Computes `position_ids [3, B, S]` (Int64, on `input_ids`' device) and `rope_deltas [B]`
/// (host) for a batch; grids are `[n, 3]` rows `(t, h, w)` in row-major token order.
pub fn get_rope_index(
    input_ids: &Tensor,
    attention_mask: &Tensor,
    image_grid_thw: Option<&Tensor>,
    video_grid_thw: Option<&Tensor>,
    tokens: RopeTokens,
) -> Result<(Tensor, Vec<i64>)> {
    let (ids, b, s) = host_i64_2d(input_ids, "input_ids")?;
    let (mask, mb, ms) = host_i64_2d(attention_mask, "attention_mask")?;
    if (mb, ms) != (b, s) {
        return Err(ModelError::input(
            "attention_mask",
            format!("shape [{mb}, {ms}] differs from input_ids [{b}, {s}]"),
        ));
    }
    let m = tokens.spatial_merge_size;
    let grids = |t: Option<&Tensor>, field: &str| -> Result<Vec<(i64, i64)>> {
        let Some(t) = t else { return Ok(Vec::new()) };
        let (g, n, c) = host_i64_2d(t, field)?;
        if c != 3 {
            return Err(ModelError::input(
                field,
                format!("expected [n, 3], got [{n}, {c}]"),
            ));
        }
        let mut frames = Vec::new();
        for row in g.chunks(3) {
            let (gt, gh, gw) = (row[0], row[1], row[2]);
            if gt < 1 || gh < 1 || gw < 1 || gh % m != 0 || gw % m != 0 {
                return Err(ModelError::input(
                    field,
                    format!("grid {row:?} must be positive with h, w divisible by {m}"),
                ));
            }
            // Every temporal group is its own (1, h/m, w/m) run (images have t = 1).
            frames.extend(std::iter::repeat_n((gh / m, gw / m), gt as usize));
        }
        Ok(frames)
    };
    let image_frames = grids(image_grid_thw, "image_grid_thw")?;
    let video_frames = grids(video_grid_thw, "video_grid_thw")?;
    let (mut next_image, mut next_video) = (0usize, 0usize);
    let mut pos = vec![0i64; 3 * b * s];
    let mut deltas = Vec::with_capacity(b);
    for row in 0..b {
        let valid: Vec<usize> = (0..s).filter(|&j| mask[row * s + j] != 0).collect();
        let mut p = 0i64;
        let mut max_pos = -1i64;
        let mut k = 0;
        while k < valid.len() {
            let tok = ids[row * s + valid[k]];
            let (frames, next, name) = if tok == tokens.image_token_id {
                (&image_frames, &mut next_image, "image_grid_thw")
            } else if tok == tokens.video_token_id {
                (&video_frames, &mut next_video, "video_grid_thw")
            } else {
                for axis in 0..3 {
                    pos[axis * b * s + row * s + valid[k]] = p;
                }
                max_pos = max_pos.max(p);
                p += 1;
                k += 1;
                continue;
            };
            let &(gh, gw) = frames.get(*next).ok_or_else(|| {
                ModelError::input(
                    name,
                    format!(
                        "batch row {row} has more image/video token runs than grids ({})",
                        frames.len()
                    ),
                )
            })?;
            *next += 1;
            let n = (gh * gw) as usize;
            if k + n > valid.len() || (0..n).any(|i| ids[row * s + valid[k + i]] != tok) {
                return Err(ModelError::input(
                    "input_ids",
                    format!(
                        "batch row {row}: a run of {tok} tokens at valid index {k} is shorter than the {n} its grid needs"
                    ),
                ));
            }
            for hi in 0..gh {
                for wi in 0..gw {
                    let j = valid[k + (hi * gw + wi) as usize];
                    pos[row * s + j] = p;
                    pos[b * s + row * s + j] = p + hi;
                    pos[2 * b * s + row * s + j] = p + wi;
                }
            }
            max_pos = max_pos.max(p + (gh - 1).max(gw - 1));
            p += gh.max(gw);
            k += n;
        }
        deltas.push(max_pos + 1 - valid.len() as i64);
    }
    if next_image != image_frames.len() || next_video != video_frames.len() {
        return Err(ModelError::input(
            "image_grid_thw",
            format!(
                "{} image and {} video frame grids given but the tokens use {next_image} and {next_video}",
                image_frames.len(),
                video_frames.len()
            ),
        ));
    }
    let t = Tensor::from_slice(&pos)
        .view([3, b as i64, s as i64])
        .to_device(input_ids.device());
    Ok((t, deltas))
}

/// Interleaved M-RoPE frequencies of the text decoder.
#[derive(Debug)]
pub struct TextRotary {
    /// `theta^(-2j/hd)`, `[hd/2]` fp32.
    inv_freq: Tensor,
    /// Position axis (0 T, 1 H, 2 W) of each frequency, `[hd/2]` Int64.
    axis: Tensor,
}

/// Axis of each of the `hd/2` frequencies: H if `j % 3 == 1 && j < 3·sec[1]`, W if
/// `j % 3 == 2 && j < 3·sec[2]`, otherwise T (QWEN3_VL.md §6).
pub fn mrope_axes(half: i64, section: &[i64]) -> Vec<i64> {
    (0..half)
        .map(|j| {
            if j % 3 == 1 && j < 3 * section[1] {
                1
            } else if j % 3 == 2 && j < 3 * section[2] {
                2
            } else {
                0
            }
        })
        .collect()
}

/// `base^(-2j/dim)` for `j < dim/2`, as float32.
pub fn inv_freq(base: f64, dim: i64) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| (1.0 / base.powf((2 * j) as f64 / dim as f64)) as f32)
        .collect()
}

impl TextRotary {
    pub fn new(cfg: &TextConfig, device: Device) -> Self {
        let half = cfg.head_dim / 2;
        TextRotary {
            inv_freq: Tensor::from_slice(&inv_freq(cfg.rope_theta, cfg.head_dim)).to_device(device),
            axis: Tensor::from_slice(&mrope_axes(half, &cfg.mrope_section)).to_device(device),
        }
    }

    /// cos/sin tables `[B, S, hd]` in `kind` for positions `[3, B, S]`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let (_, b, s) = positions.size3()?;
        let half = self.inv_freq.size()[0];
        // [3, B, S, 1] * [hd/2] -> [3, B, S, hd/2]
        let angles = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)? * &self.inv_freq;
        let idx = self
            .axis
            .view([1, 1, 1, half])
            .expand([1, b, s, half], false);
        let a = angles.f_gather(0, &idx, false)?.f_squeeze_dim(0)?; // [B, S, hd/2]
        let emb = Tensor::f_cat(&[&a, &a], -1)?; // [B, S, hd]
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

/// `cat(-x[.., d/2:], x[.., :d/2])` over the last dim.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("rotate_half on a 0-d tensor");
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d - d / 2);
    Tensor::cat(&[&(-x2), &x1], -1)
}

/// NeoX rotary: `x·cos + rotate_half(x)·sin` (cos/sin broadcast against x).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_axes_match_notes() {
        // hd 128, sections [24, 20, 20]: THW repeated for j < 60, then T.
        let a = mrope_axes(64, &[24, 20, 20]);
        assert_eq!(&a[..6], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(a.iter().filter(|&&x| x == 1).count(), 20);
        assert_eq!(a.iter().filter(|&&x| x == 2).count(), 20);
        assert!(a[60..].iter().all(|&x| x == 0));
    }

    #[test]
    fn rope_index_example_from_notes() {
        // <|im_start|> user \n <|vision_start|> then a 4x6 patch grid (2x3 tokens), then text.
        let img = 9;
        let ids =
            Tensor::from_slice(&[1i64, 2, 3, 4, img, img, img, img, img, img, 5, 6]).view([1, 12]);
        let mask = Tensor::ones([1, 12], (Kind::Int64, Device::Cpu));
        let grid = Tensor::from_slice(&[1i64, 4, 6]).view([1, 3]);
        let tokens = RopeTokens {
            image_token_id: img,
            video_token_id: 99,
            spatial_merge_size: 2,
        };
        let (p, d) = get_rope_index(&ids, &mask, Some(&grid), None, tokens).unwrap();
        let p = Vec::<i64>::try_from(p.flatten(0, -1)).unwrap();
        assert_eq!(&p[4..10], &[4; 6]);
        assert_eq!(&p[12 + 4..12 + 10], &[4, 4, 4, 5, 5, 5]);
        assert_eq!(&p[24 + 4..24 + 10], &[4, 5, 6, 4, 5, 6]);
        assert_eq!(p[10], 7);
        assert_eq!(d, vec![8 + 1 - 12]);
    }

    #[test]
    fn rope_index_rejects_missing_grid_and_short_run() {
        let tokens = RopeTokens {
            image_token_id: 9,
            video_token_id: 99,
            spatial_merge_size: 2,
        };
        let ids = Tensor::from_slice(&[1i64, 9, 9, 2]).view([1, 4]);
        let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
        let e = get_rope_index(&ids, &mask, None, None, tokens)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image_grid_thw"), "{e}");
        let grid = Tensor::from_slice(&[1i64, 4, 4]).view([1, 3]);
        let e = get_rope_index(&ids, &mask, Some(&grid), None, tokens)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter"), "{e}");
    }

    #[test]
    fn left_padding_gives_same_positions_for_valid_tokens() {
        let tokens = RopeTokens {
            image_token_id: 9,
            video_token_id: 99,
            spatial_merge_size: 2,
        };
        let ids = Tensor::from_slice(&[0i64, 0, 5, 6, 7]).view([1, 5]);
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1]).view([1, 5]);
        let (p, d) = get_rope_index(&ids, &mask, None, None, tokens).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(p.get(0).flatten(0, -1)).unwrap(),
            vec![0, 0, 0, 1, 2]
        );
        assert_eq!(d, vec![0]);
    }
}
