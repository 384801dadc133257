//! Overlap benchmark: the toy alignment workload (tch bigram policy, bag-of-tokens experts,
//! oracle teacher) with simulated compute times, generation and learning on separate threads.
//! Prints steps/s with `max_staleness = 1` and in `sync` mode, the overlap efficiency
//! max(generation time, learning time) / step time, and each actor's busy ratio.
//!
//! `cargo bench --bench overlap` (env `PRISM_BENCH_STEPS`, default 20).

use std::sync::Arc;
use std::time::Duration;

use prism::actors::config::DeviceSpec;
use prism::actors::messages::{SamplingParams, StageKind};
use prism::actors::toy::{self, ToyOptions};
use prism::actors::{ActorsConfig, NoCheckpoint, StageReport, StageSpec, run_stage};
use tokio_util::sync::CancellationToken;

const GEN_MS: u64 = 40;
const LEARN_MS: u64 = 40;
const SCORE_MS: u64 = 4;
const TEACHER_MS: u64 = 4;

fn run(rt: &tokio::runtime::Runtime, steps: u64, staleness: u64, sync: bool) -> StageReport {
    let mut cfg = ActorsConfig::default();
    cfg.placement.generators = vec![DeviceSpec::Cpu];
    cfg.max_staleness = staleness;
    cfg.sync = sync;
    cfg.prompts_per_request = 4;
    let (engines, _) = toy::engines(ToyOptions {
        generate_delay: toy::fixed_delay(Duration::from_millis(GEN_MS)),
        learn_delay: toy::fixed_delay(Duration::from_millis(LEARN_MS)),
        score_delay: toy::fixed_delay(Duration::from_millis(SCORE_MS)),
        teacher_delay: toy::fixed_delay(Duration::from_millis(TEACHER_MS)),
        ..ToyOptions::default()
    });
    let spec = StageSpec {
        name: if sync {
            "sync".into()
        } else {
            format!("staleness{staleness}")
        },
        kind: StageKind::Align,
        steps,
        prompts_per_step: 4,
        samples_per_prompt: 4,
        sampling: SamplingParams {
            max_new_tokens: 16,
            ..SamplingParams::default()
        },
        start_cursor: 0,
        initial_policy_version: 0,
    };
    let prompts = Arc::new(toy::prompts(4 * steps as usize, 0));
    rt.block_on(run_stage(
        &cfg,
        spec,
        engines,
        prompts,
        Arc::new(NoCheckpoint),
        CancellationToken::new(),
    ))
    .expect("benchmark run")
}

fn print(label: &str, r: &StageReport) {
    // Skip the first step (start-up) when timing.
    let s = &r.steps;
    let n = (s.len() - 1) as f64;
    let step_time = (s[s.len() - 1].done_at_secs - s[0].done_at_secs) / n;
    let gen_s = s[1..].iter().map(|x| x.gen_secs).sum::<f64>() / n;
    let learn = s[1..].iter().map(|x| x.learn_secs).sum::<f64>() / n;
    println!(
        "{label:<14} steps/s {:>6.2}   step {:>6.1} ms   gen {:>5.1} ms   learn {:>5.1} ms   overlap efficiency {:.2}   max staleness {}",
        1.0 / step_time,
        step_time * 1e3,
        gen_s * 1e3,
        learn * 1e3,
        gen_s.max(learn) / step_time,
        r.max_staleness().unwrap_or(0)
    );
    let busy: Vec<String> = r
        .busy
        .iter()
        .map(|b| format!("{}={:.2}", b.actor, b.ratio))
        .collect();
    println!("{:<14} busy ratios: {}", "", busy.join("  "));
}

fn main() {
    let steps: u64 = std::env::var("PRISM_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "toy alignment workload: {steps} steps, 4 prompts x 4 samples, simulated generate {GEN_MS} ms, learn {LEARN_MS} ms, score {SCORE_MS} ms, teacher {TEACHER_MS} ms"
    );
    let sync = run(&rt, steps, 0, true);
    let async1 = run(&rt, steps, 1, false);
    print("sync", &sync);
    print("max_staleness=1", &async1);
    let sp = |r: &StageReport| {
        let s = &r.steps;
        (s.len() - 1) as f64 / (s[s.len() - 1].done_at_secs - s[0].done_at_secs)
    };
    println!(
        "speed-up of max_staleness=1 over sync: {:.2}x",
        sp(&async1) / sp(&sync)
    );
}
