//! Generation throughput of prism on CPU: greedy decoding with the KV cache, text-only prompts of
//! 32 random tokens, 32 new tokens with no early stop, at batch 1 and batch 16; best of 3 timed
//! runs after one warm-up. The same protocol as `benches/torch_reference.py` (transformers'
//! `generate()`), so the two JSON lines compare directly on the same weights and threads.
//!
//! Model directories: the command-line arguments, else the tiny test fixture plus
//! `PRISM_BENCH_MODEL_DIR` when set (the ~100M random Qwen3-VL that
//! `benches/torch_reference.py --model-dir DIR` creates). Environment: `PRISM_BENCH_THREADS`
//! (default 2), `PRISM_BENCH_REPS` (default 3), `PRISM_BENCH_ATTN` (`sdpa`, the default, or
//! `eager`, the implementation transformers is timed with), `PRISM_BENCH_DEVICE` (`cpu`, the
//! default, or `cuda:N`; generation reads each step's tokens back, so the clock sees finished
//! work).
//!
//! Run: `cargo bench --bench generate [-- DIR...]`. Prints one JSON line; nothing is asserted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prism::actors::config::DeviceSpec;
use prism::models::generation::{GenerationConfig, Sampling, generate};
use prism::models::{AttnImpl, ModelInputs, Qwen3Vl};
use tch::{Kind, Tensor};

const PROMPT_LEN: usize = 32;
const NEW_TOKENS: usize = 32;
const BATCHES: [usize; 2] = [1, 16];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a positive integer")),
        Err(_) => default,
    }
}

/// SplitMix64: the same prompts on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random prompt ids `[batch, PROMPT_LEN]` below `vocab - 8`, never a vision token (a text-only
/// forward must not see image placeholders).
fn prompt_ids(model: &Qwen3Vl, batch: usize, seed: u64) -> Vec<i64> {
    let c = &model.config;
    let vision = [
        c.image_token_id,
        c.video_token_id,
        c.vision_start_token_id,
        c.vision_end_token_id,
    ];
    let hi = (c.text_config.vocab_size - 8).max(1) as u64;
    let mut rng = SplitMix(seed);
    let mut ids = Vec::with_capacity(batch * PROMPT_LEN);
    while ids.len() < batch * PROMPT_LEN {
        let t = (rng.next() % hi) as i64;
        if !vision.contains(&t) {
            ids.push(t);
        }
    }
    ids
}

/// Best tokens/s over `reps` timed runs (after one warm-up).
fn tokens_per_s(model: &Qwen3Vl, batch: usize, reps: usize) -> f64 {
    let ids = prompt_ids(model, batch, 1);
    let b = batch as i64;
    let device = model.device();
    let inputs = ModelInputs::text(
        Tensor::from_slice(&ids)
            .view([b, PROMPT_LEN as i64])
            .to(device), // (B, S)
        Tensor::ones([b, PROMPT_LEN as i64], (Kind::Int64, device)),
    );
    let cfg = GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens: NEW_TOKENS,
        stop_token_ids: Vec::new(), // no early stop
        suppress_token_ids: Vec::new(),
        seed: 0,
        row_seeds: None,
    };
    let run = || {
        let t0 = Instant::now();
        let out = generate(model, &inputs, &cfg).expect("generation");
        let secs = t0.elapsed().as_secs_f64();
        let produced: usize = out.iter().map(|o| o.token_ids.len()).sum();
        assert_eq!(produced, batch * NEW_TOKENS, "every row runs to the end");
        produced as f64 / secs
    };
    run(); // warm-up
    (0..reps).map(|_| run()).fold(0.0, f64::max)
}

fn model_dirs() -> Vec<PathBuf> {
    // cargo passes `--bench`; every other argument is a model directory.
    let args: Vec<PathBuf> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .collect();
    if !args.is_empty() {
        return args;
    }
    let mut dirs =
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl/tiny-qwen3-vl")];
    if let Ok(d) = std::env::var("PRISM_BENCH_MODEL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

fn main() {
    let threads = env_usize("PRISM_BENCH_THREADS", 2);
    let reps = env_usize("PRISM_BENCH_REPS", 3).max(1);
    let attn = match std::env::var("PRISM_BENCH_ATTN").as_deref() {
        Ok("eager") => AttnImpl::Eager,
        Ok("sdpa") | Err(_) => AttnImpl::Sdpa,
        Ok(other) => panic!("PRISM_BENCH_ATTN={other:?}: use sdpa or eager"),
    };
    let device_name = std::env::var("PRISM_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device: tch::Device = device_name
        .parse::<DeviceSpec>()
        .unwrap_or_else(|e| panic!("PRISM_BENCH_DEVICE: {e}"))
        .into();
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(threads as i32);
    let _guard = tch::no_grad_guard();
    let mut models = Vec::new();
    for dir in model_dirs() {
        let mut model = Qwen3Vl::load(&dir, device, Kind::Float)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        model.set_attn_impl(attn);
        let mut per_batch = serde_json::Map::new();
        for batch in BATCHES {
            per_batch.insert(
                format!("batch{batch}"),
                serde_json::json!(tokens_per_s(&model, batch, reps)),
            );
        }
        models.push(serde_json::json!({
            "model_dir": dir.display().to_string(),
            "params": model.num_parameters(),
            "generate_tokens_per_s": per_batch,
        }));
    }
    let result = serde_json::json!({
        "impl": format!("prism {}, libtorch {}", env!("CARGO_PKG_VERSION"),
                        prism::runtime::libtorch_version()),
        "threads": threads,
        "device": device_name,
        "attn": format!("{attn:?}").to_lowercase(),
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "reps": reps,
        "models": models,
    });
    println!("{result}");
}
