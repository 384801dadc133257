//! The Qwen3-VL vision tower `model.visual` (QWEN3_VL.md §4): patch embed (a linear over the
//! flattened Conv3d kernel), bilinear-interpolated learned position embedding, 2-D rotary,
//! bidirectional attention separately inside each image/frame, merger and deepstack mergers.
//!
//! Shapes: `pixel_values [N, C·T·P·P]` (rows in merge-block order), `grid_thw [n, 3]`,
//! hidden `[N, hv]`, merged outputs `[N/m², D]`. Grid-derived index tables (positions,
//! interpolation weights, segment lengths) are built on the host once per call.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::config::VisionConfig;
use super::error::{ModelError, Result};
use super::layers::{AttnImpl, LayerNorm, Linear, attention, normal};
use super::rope::{apply_rotary, host_i64_2d, inv_freq};

const LN_EPS: f64 = 1e-6;

/// The patch grids of a batch: `(t, h, w)` per image/video, pre-merge patch units.
#[derive(Debug, Clone, PartialEq)]
pub struct Grids(pub Vec<[i64; 3]>);

impl Grids {
    /// Reads and validates `grid_thw [n, 3]` against the merge size.
    pub fn from_tensor(t: &Tensor, field: &str, merge: i64) -> Result<Self> {
        let (v, n, c) = host_i64_2d(t, field)?;
        if c != 3 {
            return Err(ModelError::input(
                field,
                format!("expected [n, 3], got [{n}, {c}]"),
            ));
        }
        let g: Vec<[i64; 3]> = v.chunks(3).map(|r| [r[0], r[1], r[2]]).collect();
        if let Some(bad) = g
            .iter()
            .find(|r| r[0] < 1 || r[1] < 1 || r[2] < 1 || r[1] % merge != 0 || r[2] % merge != 0)
        {
            return Err(ModelError::input(
                field,
                format!("grid {bad:?}: t, h, w must be positive and h, w divisible by {merge}"),
            ));
        }
        Ok(Grids(g))
    }

    /// Total patches `Σ t·h·w`.
    pub fn num_patches(&self) -> i64 {
        self.0.iter().map(|g| g[0] * g[1] * g[2]).sum()
    }

    /// Full-grid `(row, col)` of every patch in merge-block order, frames repeated.
    pub fn patch_coords(&self, m: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::with_capacity(self.num_patches() as usize);
        for &[t, h, w] in &self.0 {
            for _ in 0..t {
                for br in 0..h / m {
                    for bc in 0..w / m {
                        for ir in 0..m {
                            for ic in 0..m {
                                out.push((br * m + ir, bc * m + ic));
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Bilinear (align_corners) interpolation of the `g × g` position table at every patch:
/// 4 corner indices `[4·N]` and fp32 weights `[4·N]` (corner-major).
pub fn pos_embed_interp(grids: &Grids, g: i64, m: i64) -> (Vec<i64>, Vec<f32>) {
    let n = grids.num_patches() as usize;
    let mut idx = vec![0i64; 4 * n];
    let mut wts = vec![0f32; 4 * n];
    let mut k = 0;
    for &[t, h, w] in &grids.0 {
        let coords = Grids(vec![[1, h, w]]).patch_coords(m);
        for _ in 0..t {
            for &(r, c) in &coords {
                let scale = |x: i64, len: i64| -> f32 {
                    if len == 1 {
                        0.0
                    } else {
                        x as f32 * (g - 1) as f32 / (len - 1) as f32
                    }
                };
                let (sr, sc) = (scale(r, h), scale(c, w));
                let (r0, c0) = (sr.floor() as i64, sc.floor() as i64);
                let (r1, c1) = ((r0 + 1).min(g - 1), (c0 + 1).min(g - 1));
                let (dr, dc) = (sr - r0 as f32, sc - c0 as f32);
                let corners = [
                    (r0 * g + c0, (1.0 - dr) * (1.0 - dc)),
                    (r0 * g + c1, (1.0 - dr) * dc),
                    (r1 * g + c0, dr * (1.0 - dc)),
                    (r1 * g + c1, dr * dc),
                ];
                for (ci, (i, wt)) in corners.into_iter().enumerate() {
                    idx[ci * n + k] = i;
                    wts[ci * n + k] = wt;
                }
                k += 1;
            }
        }
    }
    (idx, wts)
}

/// One vision block: pre-LN attention + pre-LN MLP.
#[derive(Debug)]
pub struct VisionBlock {
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub linear_fc1: Linear,
    pub linear_fc2: Linear,
    heads: i64,
    tanh_gelu: bool,
    pub(crate) attn_impl: AttnImpl,
}

impl VisionBlock {
    fn new(p: Path, cfg: &VisionConfig) -> Self {
        let hv = cfg.hidden_size;
        VisionBlock {
            norm1: LayerNorm::new(&p / "norm1", hv, LN_EPS),
            norm2: LayerNorm::new(&p / "norm2", hv, LN_EPS),
            qkv: Linear::new(&p / "attn" / "qkv", hv, 3 * hv, true),
            proj: Linear::new(&p / "attn" / "proj", hv, hv, true),
            linear_fc1: Linear::new(&p / "mlp" / "linear_fc1", hv, cfg.intermediate_size, true),
            linear_fc2: Linear::new(&p / "mlp" / "linear_fc2", cfg.intermediate_size, hv, true),
            heads: cfg.num_heads,
            tanh_gelu: cfg.hidden_act == "gelu_pytorch_tanh",
            attn_impl: AttnImpl::default(),
        }
    }

    /// `x [N, hv]`, cos/sin `[N, dv]` fp32, `segments` = rows per image/frame.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[i64]) -> Tensor {
        let (n, hv) = x.size2().expect("[N, hv]");
        let dv = hv / self.heads;
        // 1. qkv (N, 3hv) -> (3, N, nh, dv).
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x))
            .view([n, 3, self.heads, dv])
            .permute([1, 0, 2, 3]);
        let kind = x.kind();
        // 2. 2-D rotary in fp32 on q, k; cos/sin (N, dv) -> (N, 1, dv).
        let (c, s) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = apply_rotary(&qkv.get(0).to_kind(Kind::Float), &c, &s).to_kind(kind);
        let k = apply_rotary(&qkv.get(1).to_kind(Kind::Float), &c, &s).to_kind(kind);
        let v = qkv.get(2);
        // 3. Bidirectional attention inside each segment: (nh, L, dv) per segment.
        let mut outs = Vec::with_capacity(segments.len());
        let mut start = 0;
        for &len in segments {
            let qs = q.narrow(0, start, len).transpose(0, 1);
            let ks = k.narrow(0, start, len).transpose(0, 1);
            let vs = v.narrow(0, start, len).transpose(0, 1);
            let o = attention(&qs, &ks, &vs, None, self.attn_impl);
            outs.push(o.transpose(0, 1)); // (L, nh, dv)
            start += len;
        }
        let o = Tensor::cat(&outs, 0).reshape([n, hv]);
        let x = x + self.proj.forward(&o);
        // 4. MLP with tanh-approximate GELU.
        let h = self.linear_fc1.forward(&self.norm2.forward(&x));
        let h = if self.tanh_gelu {
            h.gelu("tanh")
        } else {
            h.gelu("none")
        };
        &x + self.linear_fc2.forward(&h)
    }
}

/// Patch merger: LayerNorm (over hv before grouping, or over 4hv after, for deepstack), then
/// `fc2(gelu_erf(fc1(·)))` on groups of m² consecutive rows.
#[derive(Debug)]
pub struct PatchMerger {
    pub norm: LayerNorm,
    pub linear_fc1: Linear,
    pub linear_fc2: Linear,
    postshuffle_norm: bool,
    group: i64,
}

impl PatchMerger {
    fn new(p: Path, cfg: &VisionConfig, postshuffle_norm: bool) -> Self {
        let group = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let norm_dim = if postshuffle_norm {
            group
        } else {
            cfg.hidden_size
        };
        PatchMerger {
            norm: LayerNorm::new(&p / "norm", norm_dim, LN_EPS),
            linear_fc1: Linear::new(&p / "linear_fc1", group, group, true),
            linear_fc2: Linear::new(&p / "linear_fc2", group, cfg.out_hidden_size, true),
            postshuffle_norm,
            group,
        }
    }

    /// `[N, hv]` → `[N/m², D]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.postshuffle_norm {
            self.norm.forward(&x.reshape([-1, self.group]))
        } else {
            self.norm.forward(x).reshape([-1, self.group])
        };
        self.linear_fc2
            .forward(&self.linear_fc1.forward(&x).gelu("none"))
    }
}

/// `model.visual`.
#[derive(Debug)]
pub struct VisionModel {
    /// `patch_embed.proj.weight [hv, C, T, P, P]` (used as `[hv, C·T·P·P]`).
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    /// `pos_embed.weight [G², hv]`.
    pub pos_embed: Tensor,
    pub blocks: Vec<VisionBlock>,
    pub merger: PatchMerger,
    pub deepstack_merger_list: Vec<PatchMerger>,
    cfg: VisionConfig,
}

/// Output of the vision tower.
#[derive(Debug)]
pub struct VisionOutput {
    /// Merged image/video embeddings `[N/m², D]`.
    pub embeds: Tensor,
    /// One `[N/m², D]` feature per deepstack index.
    pub deepstack: Vec<Tensor>,
}

impl VisionModel {
    pub fn new(p: Path, cfg: &VisionConfig) -> Self {
        let hv = cfg.hidden_size;
        let pe = &p / "patch_embed" / "proj";
        let ps = cfg.patch_size;
        VisionModel {
            patch_weight: normal(
                &pe,
                "weight",
                &[hv, cfg.in_channels, cfg.temporal_patch_size, ps, ps],
            ),
            patch_bias: pe.var("bias", &[hv], tch::nn::Init::Const(0.0)),
            pos_embed: normal(
                &(&p / "pos_embed"),
                "weight",
                &[cfg.num_position_embeddings, hv],
            ),
            blocks: (0..cfg.depth)
                .map(|i| VisionBlock::new(&p / "blocks" / i, cfg))
                .collect(),
            merger: PatchMerger::new(&p / "merger", cfg, false),
            deepstack_merger_list: (0..cfg.deepstack_visual_indexes.len() as i64)
                .map(|j| PatchMerger::new(&p / "deepstack_merger_list" / j, cfg, true))
                .collect(),
            cfg: cfg.clone(),
        }
    }

    /// Runs the tower. `pixel_values [N, C·T·P·P]` must have Σ t·h·w rows.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        grids: &Grids,
        mut trace: Option<&mut Vec<(String, Tensor)>>,
    ) -> Result<VisionOutput> {
        let cfg = &self.cfg;
        let (m, hv) = (cfg.spatial_merge_size, cfg.hidden_size);
        let n = grids.num_patches();
        let size = pixel_values.size();
        if size != [n, cfg.patch_dim()] {
            return Err(ModelError::input(
                "pixel_values",
                format!(
                    "shape {size:?}, but the grids need [{n}, {}]",
                    cfg.patch_dim()
                ),
            ));
        }
        let dev = self.pos_embed.device();
        let kind = self.pos_embed.kind();
        let mut record = |name: &str, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name.to_string(), t.shallow_clone()));
            }
        };
        // 1. Patch embed: (N, 1536) · Wᵀ + b, input cast to the model dtype first.
        let px = pixel_values.f_to_device(dev)?.f_to_kind(kind)?;
        let x = px.f_linear(&self.patch_weight.view([hv, -1]), Some(&self.patch_bias))?;
        record("patch_embed", &x);
        // 2. Interpolated absolute position embedding (fp32 weights, as transformers 5).
        let (idx, wts) = pos_embed_interp(grids, cfg.pos_grid(), m);
        let idx = Tensor::from_slice(&idx).view([4, n]).to_device(dev);
        let wts = Tensor::from_slice(&wts).view([4, n, 1]).to_device(dev);
        let corners = Tensor::embedding(&self.pos_embed, &idx, -1, false, false) * wts; // (4, N, hv)
        let pe = (corners.get(0) + corners.get(1) + corners.get(2) + corners.get(3)).to_kind(kind);
        record("pos_embeds", &pe);
        let mut x = x + pe;
        // 3. 2-D rotary tables (N, dv) in fp32.
        let dv = cfg.head_dim();
        let inv = inv_freq(10000.0, dv / 2); // dv/4 frequencies
        let coords = grids.patch_coords(m);
        let mut ang = Vec::with_capacity(coords.len() * (dv / 2) as usize);
        for &(r, c) in &coords {
            ang.extend(inv.iter().map(|f| r as f32 * f));
            ang.extend(inv.iter().map(|f| c as f32 * f));
        }
        let ang = Tensor::from_slice(&ang).view([n, dv / 2]).to_device(dev);
        let emb = Tensor::cat(&[&ang, &ang], -1); // (N, dv)
        let (cos, sin) = (emb.cos(), emb.sin());
        let segments: Vec<i64> = grids
            .0
            .iter()
            .flat_map(|&[t, h, w]| std::iter::repeat_n(h * w, t as usize))
            .collect();
        // 4. Blocks, with deepstack features after the listed ones.
        let mut deepstack = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &cos, &sin, &segments);
            record(&format!("block{i}"), &x);
            if let Some(j) = cfg
                .deepstack_visual_indexes
                .iter()
                .position(|&d| d == i as i64)
            {
                let ds = self.deepstack_merger_list[j].forward(&x);
                record(&format!("deepstack{j}"), &ds);
                deepstack.push((j, ds));
            }
        }
        deepstack.sort_by_key(|(j, _)| *j);
        // 5. Final merger.
        let embeds = self.merger.forward(&x);
        record("merger", &embeds);
        Ok(VisionOutput {
            embeds,
            deepstack: deepstack.into_iter().map(|(_, t)| t).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_block_order() {
        let c = Grids(vec![[1, 2, 4]]).patch_coords(2);
        assert_eq!(
            &c[..8],
            &[
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (0, 2),
                (0, 3),
                (1, 2),
                (1, 3)
            ]
        );
    }

    #[test]
    fn interpolation_hits_corners_exactly() {
        // A grid as large as the table maps every patch onto one table entry with weight 1.
        let (idx, w) = pos_embed_interp(&Grids(vec![[1, 4, 4]]), 4, 2);
        let n = 16;
        assert_eq!(&idx[..4], &[0, 1, 4, 5]);
        assert!((0..n).all(|k| (w[k] - 1.0).abs() < 1e-6));
        // Weights of every patch sum to 1.
        let (_, w) = pos_embed_interp(&Grids(vec![[1, 6, 4]]), 8, 2);
        let n = 24;
        for k in 0..n {
            let s: f32 = (0..4).map(|c| w[c * n + k]).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn grids_validation() {
        let t = Tensor::from_slice(&[1i64, 3, 4]).view([1, 3]);
        let e = Grids::from_tensor(&t, "image_grid_thw", 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_grid_thw") && e.contains("divisible"),
            "{e}"
        );
    }
}
