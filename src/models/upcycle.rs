//! Sparse upcycling (PRISM_ALGORITHM.md §2.1): a dense Qwen3-VL becomes a Qwen3-VL-MoE with a
//! value head, written in HF layout with a config transformers loads (`prism upcycle`).
//!
//! Every decoder MLP becomes `E` experts that are each a copy of it plus i.i.d. N(0, σ²) noise
//! (absolute σ, default 0.01), in the hub fused layout `gate_up_proj[e] = [W_gate; W_up]ᵀ`,
//! `down_proj[e] = W_downᵀ`; the router `mlp.gate.weight [E, D]` and the value head are drawn
//! from N(0, 0.02²) (head bias 0). Everything else (vision tower, embeddings, attention, norms,
//! lm_head) is copied exactly; a dense tensor with no same-shaped MoE counterpart is reported.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::config::{MoeConfig, Qwen3VlConfig};
use super::error::{ModelError, Result};
use super::value_head::ValueHeadConfig;
use super::{Heads, Qwen3Vl, layers};

/// Settings of an upcycling run.
#[derive(Debug, Clone)]
pub struct UpcycleOptions {
    pub num_experts: i64,
    pub top_k: i64,
    /// Std of the absolute Gaussian noise added to every expert copy.
    pub noise_std: f64,
    pub seed: u64,
    pub value_head: ValueHeadConfig,
    /// Router auxiliary loss coefficient written to the config (PRISM: 0.01).
    pub router_aux_loss_coef: f64,
}

impl Default for UpcycleOptions {
    fn default() -> Self {
        UpcycleOptions {
            num_experts: 4,
            top_k: 2,
            noise_std: 0.01,
            seed: 0,
            value_head: ValueHeadConfig::default(),
            router_aux_loss_coef: 0.01,
        }
    }
}

/// The MoE config of an upcycled dense config: same dims, every layer sparse with
/// `moe_intermediate_size = intermediate_size`, no shared expert.
pub fn upcycle_config(dense: &Qwen3VlConfig, opts: &UpcycleOptions) -> Result<Qwen3VlConfig> {
    let bad = |field: &str, reason: String| ModelError::Config {
        file: PathBuf::from("<upcycle options>"),
        field: field.into(),
        reason,
    };
    if dense.is_moe() {
        return Err(bad("model_type", "the input model is already a MoE".into()));
    }
    if opts.num_experts < 1 {
        return Err(bad(
            "experts",
            format!("must be >= 1, got {}", opts.num_experts),
        ));
    }
    if opts.top_k < 1 || opts.top_k > opts.num_experts {
        return Err(bad(
            "top_k",
            format!("must be in 1..={}, got {}", opts.num_experts, opts.top_k),
        ));
    }
    if !(opts.noise_std >= 0.0 && opts.noise_std.is_finite()) {
        return Err(bad(
            "noise_std",
            format!("must be >= 0, got {}", opts.noise_std),
        ));
    }
    let mut cfg = dense.clone();
    cfg.model_type = "qwen3_vl_moe".into();
    cfg.text_config.moe = Some(MoeConfig {
        num_experts: opts.num_experts,
        num_experts_per_tok: opts.top_k,
        moe_intermediate_size: dense.text_config.intermediate_size,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        norm_topk_prob: true,
        router_aux_loss_coef: opts.router_aux_loss_coef,
    });
    Ok(cfg)
}

/// What [`upcycle`] did.
#[derive(Debug, Default, Clone)]
pub struct UpcycleReport {
    /// Dense tensors copied unchanged.
    pub copied: usize,
    /// Decoder MLPs turned into experts.
    pub upcycled_layers: usize,
    /// Dense tensors left out (no same-shaped MoE parameter), as `name: why`.
    pub skipped: Vec<String>,
}

/// Builds the upcycled MoE (+ value head) from a dense model, on the dense model's device/kind.
pub fn upcycle(dense: &Qwen3Vl, opts: &UpcycleOptions) -> Result<(Qwen3Vl, UpcycleReport)> {
    let cfg = upcycle_config(&dense.config, opts)?;
    let kind = dense.language_model.embed_tokens.kind();
    let heads = Heads {
        lm_head: true,
        value_head: Some(opts.value_head.clone()),
    };
    let moe = Qwen3Vl::build(&cfg, &heads, dense.device(), kind);
    let _guard = tch::no_grad_guard();
    // Router and value head: N(0, 0.02²) from a private RNG seeded by `seed`; biases 0.
    let vh_prefix = format!("{}.", opts.value_head.name);
    layers::randomize(&moe.named_parameters(), opts.seed, |n| {
        n.ends_with("mlp.gate.weight") || n.starts_with(&vh_prefix)
    })?;
    // Expert noise: the global torch generator, seeded here (a one-shot, single-threaded tool;
    // host-side sampling of billions of values would be far slower).
    tch::manual_seed(opts.seed as i64);
    let src = dense.named_parameters();
    let dst = moe.named_parameters();
    let mut report = UpcycleReport::default();
    let e = opts.num_experts;
    for (name, t) in &src {
        if let Some(prefix) = name.strip_suffix("mlp.gate_proj.weight") {
            let get = |n: &str| {
                src.get(&format!("{prefix}mlp.{n}.weight")).ok_or_else(|| {
                    ModelError::checkpoint(
                        "<dense model>",
                        format!("missing {prefix}mlp.{n}.weight"),
                    )
                })
            };
            let (wg, wu, wd) = (t, get("up_proj")?, get("down_proj")?);
            let gate_up = Tensor::f_cat(&[wg, wu], 0)?
                .f_transpose(0, 1)?
                .f_contiguous()?; // (D, 2I)
            let down = wd.f_transpose(0, 1)?.f_contiguous()?; // (I, D)
            let gu = dst[&format!("{prefix}mlp.experts.gate_up_proj")].shallow_clone();
            let dp = dst[&format!("{prefix}mlp.experts.down_proj")].shallow_clone();
            for x in 0..e {
                let n1 = gate_up.f_randn_like()?.f_mul_scalar(opts.noise_std)?;
                let n2 = down.f_randn_like()?.f_mul_scalar(opts.noise_std)?;
                gu.f_get(x)?.f_copy_(&(&gate_up + n1))?;
                dp.f_get(x)?.f_copy_(&(&down + n2))?;
            }
            report.upcycled_layers += 1;
            continue;
        }
        if name.ends_with("mlp.up_proj.weight") || name.ends_with("mlp.down_proj.weight") {
            continue;
        }
        match dst.get(name) {
            Some(d) if d.size() == t.size() => {
                d.shallow_clone().f_copy_(t)?;
                report.copied += 1;
            }
            Some(d) => {
                report
                    .skipped
                    .push(format!("{name}: shape {:?} vs {:?}", t.size(), d.size()))
            }
            None => report.skipped.push(format!("{name}: no MoE counterpart")),
        }
    }
    for s in &report.skipped {
        tracing::warn!("upcycle: left at random init / dropped: {s}");
    }
    Ok((moe, report))
}

/// Processor/tokenizer files copied next to the upcycled weights.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Loads `dense_dir`, upcycles it and saves the result (+ tokenizer/processor files) to
/// `out_dir`, on the CPU, in `kind`.
pub fn upcycle_dir(
    dense_dir: &Path,
    out_dir: &Path,
    kind: Kind,
    opts: &UpcycleOptions,
) -> Result<UpcycleReport> {
    let dense = Qwen3Vl::load(dense_dir, Device::Cpu, kind)?;
    let (moe, report) = upcycle(&dense, opts)?;
    drop(dense);
    moe.save(out_dir)?;
    for f in SIDE_FILES {
        let src = dense_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out_dir.join(f)).map_err(|e| ModelError::io(&src, e))?;
        }
    }
    Ok(report)
}

/// `prism upcycle` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UpcycleArgs {
    /// Dense Qwen3-VL checkpoint directory (config.json + safetensors).
    #[arg(long)]
    pub dense: PathBuf,
    /// Output directory for the Qwen3-VL-MoE + value head checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of experts per layer.
    #[arg(long, default_value_t = 4)]
    pub experts: i64,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: i64,
    /// Std of the absolute Gaussian noise added to each expert copy.
    #[arg(long, default_value_t = 0.01)]
    pub noise_std: f64,
    /// Seed of the noise, router and value-head init.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight dtype: bf16 (as PRISM), f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Value head tensor prefix.
    #[arg(long, default_value = "score")]
    pub value_head_name: String,
    /// Give the value head no bias.
    #[arg(long)]
    pub value_head_no_bias: bool,
}

/// Runs `prism upcycle`.
pub fn run(args: &UpcycleArgs) -> Result<()> {
    let kind = match args.dtype.as_str() {
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "fp16" | "float16" => Kind::Half,
        "f32" | "fp32" | "float32" => Kind::Float,
        other => {
            return Err(ModelError::input(
                "--dtype",
                format!("expected bf16, f16 or f32, got {other:?}"),
            ));
        }
    };
    let opts = UpcycleOptions {
        num_experts: args.experts,
        top_k: args.top_k,
        noise_std: args.noise_std,
        seed: args.seed,
        value_head: ValueHeadConfig {
            name: args.value_head_name.clone(),
            bias: !args.value_head_no_bias,
        },
        ..UpcycleOptions::default()
    };
    let report = upcycle_dir(&args.dense, &args.out, kind, &opts)?;
    println!(
        "upcycled {} layers into {} experts (top-{}), copied {} tensors, skipped {}; wrote {}",
        report.upcycled_layers,
        args.experts,
        args.top_k,
        report.copied,
        report.skipped.len(),
        args.out.display()
    );
    Ok(())
}
