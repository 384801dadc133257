//! SFT training throughput of prism on CPU: tokens/s of the SFT stage's optimizer step on a fixed
//! synthetic multimodal batch, after warm-up steps. `benches/sft_reference.py` times a PyTorch
//! eager loop (transformers model, `torch.optim.AdamW`) on the very same batch, which this
//! program writes to a file, with the same thread count; it then prints both as a Markdown table.
//!
//! One step is what `prism::stages::sft::run_sft` does per step with `grad_accum = 1`: forward
//! to logits `[B, S, V]`, [`summed_token_loss`] over the assistant tokens divided by their
//! count, backward, [`clip_grad_norm`] (1.0), finiteness check, our [`AdamW`] step with the
//! stage's decay / no-decay groups, zero grad. The batch: `B` rows of `S` tokens (no padding),
//! each a user turn with one 256×256 image (grid 1×16×16 → 64 image tokens between
//! vision_start / vision_end) and random text, then random "assistant" tokens over the second
//! half of the row, which carry the labels. Tokens/s counts every (non-pad) token, as the SFT
//! stage's `tokens_per_s` metric does; `tokens_per_s` uses the median timed step (other
//! processes on a shared machine inflate single steps), `best_tokens_per_s` the fastest;
//! `phase_median_seconds` splits a step into forward + loss, backward, clip and AdamW.
//!
//! Run: `cargo bench --bench sft -- MODEL_DIR [--batch-dir DIR]` (default: the 142M model that
//! `benches/torch_reference.py` builds in the bench cache, and `target/bench-results`).
//! Environment: `PRISM_BENCH_THREADS` (2), `PRISM_BENCH_SFT_BATCHES` (`1,4`),
//! `PRISM_BENCH_SFT_SEQ` (256), `PRISM_BENCH_SFT_WARMUP` (2), `PRISM_BENCH_SFT_STEPS` (3),
//! `PRISM_BENCH_ATTN` (`sdpa`, the default and the stage's, or `eager`), `PRISM_BENCH_DEVICE`
//! (`cpu`, the default, or `cuda:N`: the step's parts are then timed with a device
//! synchronisation at each boundary). Prints one JSON line; nothing is asserted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prism::actors::config::DeviceSpec;
use prism::algo::adamw::{AdamW, clip_grad_norm};
use prism::algo::numerics::is_finite;
use prism::config::SftConfig;
use prism::models::{AttnImpl, ModelInputs, Qwen3Vl, Qwen3VlConfig};
use prism::stages::sft::{IGNORE_INDEX, SftBatch, summed_token_loss};
use tch::{Device, Kind, Tensor};

/// Image grid `(t, h, w)` in patches; `h·w / merge²` image tokens per row.
const GRID: [i64; 3] = [1, 16, 16];
const SEED: i64 = 20;
/// The parts of a step timed separately (libtorch CPU ops are synchronous).
const PHASES: [&str; 4] = ["forward_loss", "backward", "clip", "adamw"];

/// `name` from the environment parsed as `T`, else `default`.
fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} cannot be parsed"))
    })
}

/// Waits for the device's queued work (libtorch CPU ops are synchronous already).
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn batch_sizes() -> Vec<usize> {
    let v = std::env::var("PRISM_BENCH_SFT_BATCHES").unwrap_or_else(|_| "1,4".into());
    v.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("PRISM_BENCH_SFT_BATCHES={v:?}: not a list of sizes"))
        })
        .collect()
}

/// The synthetic batch `[b, s]` described in the module doc, plus its tensors by name (what
/// `sft_reference.py` reads).
fn synthetic_batch(
    c: &Qwen3VlConfig,
    b: i64,
    s: i64,
    device: Device,
) -> (SftBatch, Vec<(String, Tensor)>) {
    let merge = c.vision_config.spatial_merge_size;
    let n_img = GRID[1] * GRID[2] / (merge * merge);
    assert!(
        s >= 2 * (n_img + 2),
        "PRISM_BENCH_SFT_SEQ={s} is too short for the image"
    );
    tch::manual_seed(SEED);
    // Random text ids below vocab - 8, none a vision special token, then the image run.
    let hi = c.text_config.vocab_size - 8;
    let ids = Tensor::randint_low(0, hi, [b, s], (Kind::Int64, Device::Cpu));
    let mut ids = Vec::<i64>::try_from(ids.flatten(0, -1)).expect("ids");
    let vision = [
        c.image_token_id,
        c.video_token_id,
        c.vision_start_token_id,
        c.vision_end_token_id,
    ];
    for id in ids.iter_mut() {
        while vision.contains(id) {
            *id = (*id + 1) % hi;
        }
    }
    let mut labels = vec![IGNORE_INDEX; (b * s) as usize];
    for r in 0..b as usize {
        let row = &mut ids[r * s as usize..(r + 1) * s as usize];
        row[0] = c.vision_start_token_id;
        row[1..=n_img as usize].fill(c.image_token_id);
        row[n_img as usize + 1] = c.vision_end_token_id;
        for t in (s / 2) as usize..s as usize {
            labels[r * s as usize + t] = row[t];
        }
    }
    let c_t_p_p = c.vision_config.in_channels
        * c.vision_config.temporal_patch_size
        * c.vision_config.patch_size
        * c.vision_config.patch_size;
    let patches = GRID.iter().product::<i64>();
    let pixels = Tensor::randn([b * patches, c_t_p_p], (Kind::Float, Device::Cpu)); // (N, C·T·P·P)
    let grid = Tensor::from_slice(&GRID).view([1, 3]).repeat([b, 1]); // (B, 3)
    let input_ids = Tensor::from_slice(&ids).view([b, s]);
    let labels = Tensor::from_slice(&labels).view([b, s]);
    let mask = Tensor::ones([b, s], (Kind::Int64, Device::Cpu));
    let named = vec![
        ("input_ids".to_string(), input_ids.shallow_clone()),
        ("attention_mask".to_string(), mask.shallow_clone()),
        ("labels".to_string(), labels.shallow_clone()),
        ("pixel_values".to_string(), pixels.shallow_clone()),
        ("image_grid_thw".to_string(), grid.shallow_clone()),
    ];
    let batch = SftBatch {
        inputs: ModelInputs::text(input_ids.to(device), mask.to(device))
            .with_images(pixels.to(device), grid.to(device)),
        labels: labels.to(device),
        num_labels: b * (s - s / 2),
        num_tokens: b * s,
    };
    (batch, named)
}

/// What one timed batch size gave.
struct Timing {
    params: i64,
    step_seconds: Vec<f64>,
    /// Per timed step, seconds of each of [`PHASES`].
    phase_seconds: Vec<[f64; 4]>,
    first_loss: f64,
    first_grad_norm: f64,
}

/// Warm-up then timed SFT steps on one batch, from a freshly loaded model and optimizer.
fn time_steps(
    dir: &Path,
    cfg: &SftConfig,
    attn: AttnImpl,
    batch: &SftBatch,
    warmup: usize,
    steps: usize,
    device: Device,
) -> Timing {
    let mut model = Qwen3Vl::load(dir, device, Kind::Float)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    model.set_attn_impl(attn);
    let mut opt =
        AdamW::with_default_groups(cfg.adamw(), model.named_parameters().into_iter().collect())
            .expect("optimizer");
    let params = opt.params();
    let mut step_seconds = Vec::with_capacity(steps);
    let mut phase_seconds = Vec::with_capacity(steps);
    let (mut first_loss, mut first_grad_norm) = (f64::NAN, f64::NAN);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        // The SFT stage's step (run_sft, grad_accum = 1).
        let logits = model.forward(&batch.inputs, None).expect("forward"); // (B, S, V)
        let loss = summed_token_loss(&logits, &batch.labels).expect("loss")
            / (batch.num_labels.max(1) as f64);
        let loss_value = loss.double_value(&[]);
        let t1 = Instant::now();
        loss.backward();
        sync(device);
        let t2 = Instant::now();
        let norm = clip_grad_norm(&params, cfg.max_grad_norm).expect("clip");
        let finite = is_finite(&norm).expect("norm");
        let t3 = Instant::now();
        if finite {
            opt.step(cfg.lr).expect("adamw");
        }
        opt.zero_grad();
        sync(device);
        let secs = t0.elapsed().as_secs_f64();
        let phases = [t1 - t0, t2 - t1, t3 - t2, t3.elapsed()].map(|d| d.as_secs_f64());
        if i == 0 {
            (first_loss, first_grad_norm) = (loss_value, norm.double_value(&[]));
        }
        if i >= warmup {
            step_seconds.push(secs);
            phase_seconds.push(phases);
        }
    }
    Timing {
        params: model.num_parameters(),
        step_seconds,
        phase_seconds,
        first_loss,
        first_grad_norm,
    }
}

fn main() {
    // cargo passes `--bench`; `--batch-dir DIR` names where batches go; the rest is the model.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut model_dir, mut batch_dir) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--batch-dir" => batch_dir = args.next().map(PathBuf::from),
            _ => model_dir = Some(PathBuf::from(a)),
        }
    }
    let model_dir = model_dir.unwrap_or_else(|| {
        let cache = std::env::var("PRISM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/prism")
            });
        cache.join("bench/qwen3vl-100m")
    });
    let batch_dir = batch_dir
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results"));
    std::fs::create_dir_all(&batch_dir).unwrap_or_else(|e| panic!("{}: {e}", batch_dir.display()));
    let threads: usize = env("PRISM_BENCH_THREADS", 2);
    let seq: i64 = env("PRISM_BENCH_SFT_SEQ", 256);
    let warmup: usize = env("PRISM_BENCH_SFT_WARMUP", 2);
    let steps = env::<usize>("PRISM_BENCH_SFT_STEPS", 3).max(1);
    let attn = match env("PRISM_BENCH_ATTN", String::from("sdpa")).as_str() {
        "sdpa" => AttnImpl::Sdpa, // the SFT stage's default
        "eager" => AttnImpl::Eager,
        other => panic!("PRISM_BENCH_ATTN={other:?}: use sdpa or eager"),
    };
    let device_name = env("PRISM_BENCH_DEVICE", String::from("cpu"));
    let device: tch::Device = device_name
        .parse::<DeviceSpec>()
        .unwrap_or_else(|e| panic!("PRISM_BENCH_DEVICE: {e}"))
        .into();
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(threads as i32);

    let config = Qwen3VlConfig::from_dir(&model_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    // The SFT stage's defaults: lr 1e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on
    // matrices, clip 1.0.
    let cfg = SftConfig::default();
    let mut params = 0;
    let mut results = Vec::new();
    for b in batch_sizes() {
        let (batch, named) = synthetic_batch(&config, b as i64, seq, device);
        let file = batch_dir.join(format!("sft_batch_b{b}_s{seq}.safetensors"));
        Tensor::write_safetensors(&named, &file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let t = time_steps(&model_dir, &cfg, attn, &batch, warmup, steps, device);
        params = t.params;
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2] // the upper median
        };
        let best = t.step_seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let phases: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let xs = t.phase_seconds.iter().map(|p| p[k]).collect();
                (name.to_string(), serde_json::json!(median(xs)))
            })
            .collect();
        results.push(serde_json::json!({
            "batch": b,
            "seq": seq,
            "tokens": batch.num_tokens,
            "label_tokens": batch.num_labels,
            "batch_file": file.display().to_string(),
            "step_seconds": t.step_seconds,
            "tokens_per_s": batch.num_tokens as f64 / median(t.step_seconds.clone()),
            "best_tokens_per_s": batch.num_tokens as f64 / best,
            "phase_median_seconds": phases,
            "first_loss": t.first_loss,
            "first_grad_norm": t.first_grad_norm,
        }));
    }
    let result = serde_json::json!({
        "impl": format!("prism {}, libtorch {}", env!("CARGO_PKG_VERSION"),
                        prism::runtime::libtorch_version()),
        "model_dir": model_dir.display().to_string(),
        "params": params,
        "threads": threads,
        "device": device_name,
        "attn": format!("{attn:?}").to_lowercase(),
        "warmup": warmup,
        "steps": steps,
        "adamw": cfg.adamw(),
        "max_grad_norm": cfg.max_grad_norm,
        "sft": results,
    });
    println!("{result}");
}
