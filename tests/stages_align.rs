//! The `align` stage (PRISM alignment) on the tiny synthetic task: its outputs (aligned policy,
//! aligned experts, per-step expert metrics), its setup errors, exact resume of the policy and
//! of both experts, and the trend of issue 5 judged by a frozen copy of the warmed-up experts:
//! alignment brings the student's reasoning and captions closer to the teacher's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prism::actors::ActorsConfig;
use prism::actors::messages::{ScoreItem, Segment, StageKind};
use prism::config::{AlignConfig, RlvrConfig, RunConfig};
use prism::data::ReadOptions;
use prism::data::rl_parquet::{self, RlRecord};
use prism::data::synth::classify::extract_caption;
use prism::data::synth::demo::{dense_caption, sparse_caption};
use prism::data::synth::scene::{Colour, Scene};
use prism::models::Qwen3Vl;
use prism::models::generation::Sampling;
use prism::models::processor::Processor;
use prism::reward::format::split_text;
use prism::stages::align::{expert_snapshot_file, run_align};
use prism::stages::eval::{EvalOptions, generate_responses};
use prism::stages::expert::{ExpertOptions, QwenScorer, expert_dirs};
use prism::stages::prompts::PromptStore;
use prism::stages::rl::read_trainer_state;
use prism::stages::{StageContext, StageSummary};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

mod common;

const SFT_STEPS: u64 = 150;
const WARMUP_STEPS: u64 = 8;

/// Synthetic data, a tiny policy SFT'd on the demonstrations, and experts warmed up from it,
/// built once per test binary.
fn setup() -> &'static common::TrainedSetup {
    static S: OnceLock<common::TrainedSetup> = OnceLock::new();
    S.get_or_init(|| {
        let text = r#"
[data.synth]
train = 64
eval = 16
seed = 7
difficulties = [1]
perception_error_rate = 0.3
reasoning_error_rate = 0.3
[policy.tiny]
image_max_pixels = 4096
[[stages]]
kind = "sft"
"#;
        common::trained_setup(text, SFT_STEPS, WARMUP_STEPS)
    })
}

/// The context of the align stage of run `run`, without experts.
fn ctx_in(run: &str, seed: u64) -> StageContext {
    setup().tiny.ctx(run, "align", seed)
}

/// A stage context whose experts are the warmed-up ones (as the pipeline passes them).
fn ctx(run: &str, seed: u64) -> StageContext {
    StageContext {
        experts: Some(setup().experts.clone()),
        ..ctx_in(run, seed)
    }
}

/// A small alignment run: `steps` steps of `prompts × samples` rollouts.
fn align_cfg(steps: u64, prompts: usize, samples: usize) -> AlignConfig {
    let mut cfg = AlignConfig {
        name: Some("align".into()),
        ..AlignConfig::default()
    };
    cfg.policy = RlvrConfig {
        steps,
        prompts_per_step: prompts,
        samples_per_prompt: samples,
        max_new_tokens: 128,
        max_prompt_tokens: 512,
        lr: 1e-4,
        limit: Some(16),
        save_every: 0,
        ..RlvrConfig::default()
    };
    cfg.experts.options = ExpertOptions {
        lr: 5e-4,
        micro_batch_pairs: 16,
        ..ExpertOptions::default()
    };
    cfg
}

/// Everything in turn, on-policy: exact reruns.
fn sync_actors() -> ActorsConfig {
    ActorsConfig {
        sync: true,
        max_staleness: 0,
        ..ActorsConfig::default()
    }
}

fn metrics(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sorted(mut t: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn read_tensors(file: &Path) -> Vec<(String, Tensor)> {
    sorted(Tensor::read_safetensors(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((ka, ta), (kb, tb))| {
            assert_eq!(ka, kb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn align_writes_the_policy_the_experts_and_the_expert_metrics() {
    let s = setup();
    let c = ctx("wiring", 1);
    let sum: StageSummary = run_align(&align_cfg(2, 2, 4), &c, &s.policy, &sync_actors()).unwrap();
    assert_eq!((sum.kind.as_str(), sum.steps), ("align", 2));
    let dir = c.stage_dir();
    assert_eq!(sum.output, dir.join("final"));
    assert_eq!(sum.experts.as_deref(), Some(dir.join("experts").as_path()));
    // the aligned policy: an HF dir with its processor files and an align trainer state
    Qwen3Vl::load(&sum.output, Device::Cpu, Kind::Float).unwrap();
    Processor::from_dir(&sum.output).unwrap();
    let st = read_trainer_state(&sum.output, StageKind::Align).unwrap();
    assert_eq!(st.steps_done, 2);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(sum.output.join("trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["kind"], "align", "{state}");

    let recs = metrics(&c.run_dir);
    assert_eq!(recs.len(), 2);
    let mut stepped = 0;
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["step"], i as u64 + 1);
        let m = &r["metrics"];
        for k in ["reward_perception", "reward_reasoning", "format_valid_rate"] {
            assert!(m[k].as_f64().is_some(), "step record without {k}: {r}");
        }
        let valid = m["format_valid_rate"].as_f64().unwrap();
        eprintln!("wiring step {}: format-valid rate {valid:.3}", i + 1);
        if valid > 0.0 {
            // format-valid rollouts give (teacher ≻ student) pairs: both experts stepped
            stepped += 1;
            for k in ["cap_acc", "cot_acc", "disc_loss"] {
                let v = m[k].as_f64().unwrap_or_else(|| panic!("no {k}: {r}"));
                assert!(v.is_finite(), "{k} = {v}");
            }
        } else {
            assert!(m.get("disc_loss").is_none(), "{r}");
        }
    }
    assert!(stepped > 0, "no format-valid rollout in the run: {recs:?}");

    // both aligned experts load with a value head, and they moved away from the warm-up's
    let experts = sum.experts.unwrap();
    let (p, r) = expert_dirs(&experts).unwrap();
    assert_eq!(
        (&p, &r),
        (&experts.join("perception"), &experts.join("reasoning"))
    );
    for (role, d) in [("perception", &p), ("reasoning", &r)] {
        let m = Qwen3Vl::load(d, Device::Cpu, Kind::Float).unwrap();
        assert!(m.heads().value_head.is_some(), "{role} has no value head");
        assert!(d.join("tokenizer.json").is_file(), "{role}: no tokenizer");
        assert!(
            expert_snapshot_file(&sum.output, role).is_file(),
            "{role}: no snapshot"
        );
        let before = read_tensors(&s.experts.join(role).join("model.safetensors"));
        let after = read_tensors(&d.join("model.safetensors"));
        assert!(max_abs_diff(&before, &after) > 0.0, "{role} did not train");
    }
}

#[test]
fn align_without_experts_names_experts_path() {
    let s = setup();
    let c = ctx_in("no-experts", 1);
    let err = run_align(&align_cfg(1, 1, 2), &c, &s.policy, &sync_actors())
        .unwrap_err()
        .to_string();
    assert!(err.contains("experts.path"), "{err}");
    assert!(!c.run_dir.join("metrics.jsonl").exists());
}

#[test]
fn a_missing_teacher_demonstration_is_a_setup_error_naming_file_and_row() {
    let s = setup();
    let good = s.tiny.data.rl_train.as_ref().unwrap();
    let mut records: Vec<RlRecord> = rl_parquet::read(good, ReadOptions::default())
        .unwrap()
        .records;
    records.truncate(8);
    // row 1 is too long for max_prompt_tokens and left out: rows must still be parquet rows
    let long = format!("{}{}", records[1].prompt, " and then".repeat(400));
    records[1].prompt = long;
    let r = &mut records[5];
    r.teacher_caption = None;
    r.teacher_cot = None;
    r.teacher_response = None;
    let bad = good.with_file_name("no_teacher.parquet");
    rl_parquet::write(&bad, &records).unwrap();
    let mut cfg = align_cfg(2, 2, 2);
    cfg.policy.data = Some(bad);
    cfg.policy.limit = None;
    let c = ctx("no-teacher", 1);
    let err = run_align(&cfg, &c, &s.policy, &sync_actors())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_teacher.parquet") && err.contains("row 5"),
        "{err}"
    );
    // nothing ran: no step record, no checkpoint
    let recs = std::fs::read_to_string(c.run_dir.join("metrics.jsonl")).unwrap_or_default();
    assert!(recs.trim().is_empty(), "{recs}");
    assert!(!c.stage_dir().join("final").exists());
}

#[test]
fn an_http_teacher_without_a_config_is_rejected_by_validation() {
    let base =
        "[run]\nout_dir = \"x\"\n[data.synth]\n[policy.tiny]\n[[stages]]\nkind = \"align\"\n";
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml_str(base, Path::new("a.toml"), &sets)
    };
    let ok = load(&[]).unwrap();
    assert!(matches!(ok.stages[0], prism::config::StageConfig::Align(_)));
    let e = load(&["stages.0.teacher.source=\"http\""])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stages.0.teacher.config") && e.contains("a.toml"),
        "{e}"
    );
    let e = load(&["stages.0.teacher.config=\"t.toml\""])
        .unwrap_err()
        .to_string();
    assert!(e.contains("stages.0.teacher.config"), "{e}");
}

#[test]
fn resumed_alignment_ends_with_the_policy_and_experts_of_an_uninterrupted_one() {
    let s = setup();
    // step 1 is the wiring run's first step, which has format-valid rollouts, so both experts
    // have stepped (and are in checkpoint-1) before the interruption
    let mut cfg = align_cfg(3, 2, 4);
    cfg.policy.save_every = 1;
    let full = ctx("resume-full", 1);
    let a = run_align(&cfg, &full, &s.policy, &sync_actors()).unwrap();
    let ck = full.stage_dir().join("checkpoint-1");
    for role in ["perception", "reasoning"] {
        assert!(expert_snapshot_file(&ck, role).is_file(), "{role} snapshot");
    }
    let mut rcfg = cfg.clone();
    rcfg.policy.resume_from = Some(ck);
    let resumed = ctx("resume-part", 1);
    let b = run_align(&rcfg, &resumed, &s.policy, &sync_actors()).unwrap();
    assert_eq!(b.steps, 3);
    let steps: Vec<u64> = metrics(&resumed.run_dir)
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [2, 3]);
    let w = |d: &Path| read_tensors(&d.join("model.safetensors"));
    assert_eq!(max_abs_diff(&w(&a.output), &w(&b.output)), 0.0, "policy");
    for role in ["perception", "reasoning"] {
        let (x, y) = (
            read_tensors(&expert_snapshot_file(&a.output, role)),
            read_tensors(&expert_snapshot_file(&b.output, role)),
        );
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{role} snapshot");
        let (ea, eb) = (a.experts.as_ref().unwrap(), b.experts.as_ref().unwrap());
        assert_eq!(
            max_abs_diff(&w(&ea.join(role)), &w(&eb.join(role))),
            0.0,
            "{role} HF checkpoint"
        );
    }
}

/// Held-out prompts for the trend test (the eval split, never trained on).
const HELD_OUT: usize = 16;
/// Sampled answers per held-out prompt: 256 in all, so that "before" rests on enough answers
/// (with 64, the SFT'd policy gave 4 format-valid ones and a caption gap of 0.08, against 0.40
/// over the 26 format-valid answers of 256: the old baseline was noise).
const ANSWERS: usize = 16;

/// The judge: the warmed-up experts, loaded once and never trained.
struct Judge {
    perception: QwenScorer,
    reasoning: QwenScorer,
    records: Vec<RlRecord>,
    file: PathBuf,
}

/// What the judge makes of one policy's sampled answers on the held-out prompts.
struct Judged {
    /// Teacher − student caption score of every answer holding a `<caption>…</caption>` block
    /// (format-valid or not: nearly all answers, so the population hardly depends on the
    /// policy's format-valid rate).
    caption: Vec<f64>,
    /// Teacher − student reasoning score of every format-valid answer.
    reasoning: Vec<f64>,
    /// Format-valid answers.
    valid: usize,
    /// Fraction of the caption pairs the judge orders teacher ≻ student.
    caption_pair_acc: f64,
}

impl Judge {
    fn new(experts: &Path) -> Judge {
        let s = setup();
        let file = s.tiny.data.rl_eval.clone().unwrap();
        let proc = Processor::from_dir(&s.policy).unwrap();
        let store = Arc::new(PromptStore::load(&proc, &file, Some(HELD_OUT)).unwrap());
        let records: Vec<RlRecord> = store.entries().iter().map(|e| e.record.clone()).collect();
        let (p, r) = expert_dirs(experts).unwrap();
        let load = |d: &Path| {
            QwenScorer::load(
                d,
                Device::Cpu,
                Kind::Float,
                &ExpertOptions::default(),
                store.clone(),
            )
            .unwrap()
        };
        Judge {
            perception: load(&p),
            reasoning: load(&r),
            records,
            file,
        }
    }

    /// `ANSWERS` sampled answers of `policy` per held-out prompt (a fixed seed, so before and
    /// after see the same sampling streams), judged against the teacher's segments.
    fn judge(&mut self, policy: &Path) -> Judged {
        let model = Qwen3Vl::load(policy, Device::Cpu, Kind::Float).unwrap();
        let proc = Processor::from_dir(policy).unwrap();
        let opts = EvalOptions {
            batch_size: 64,
            max_new_tokens: 128,
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            seed: 1234,
            ..EvalOptions::default()
        };
        let records: Vec<RlRecord> = (0..ANSWERS)
            .flat_map(|_| self.records.iter().cloned())
            .collect();
        let out = generate_responses(&model, &proc, &records, &self.file, &opts).unwrap();
        let item = |uid: usize, text: &str| ScoreItem {
            prompt_uid: uid as u64,
            segment: Segment {
                tokens: Vec::new(),
                text: text.to_string(),
            },
        };
        let (mut caps, mut cots) = (Vec::new(), Vec::new());
        for (i, ((text, _), rec)) in out.iter().zip(&records).enumerate() {
            let uid = i % HELD_OUT;
            // the first caption block, as the format rule or (invalid answers) a loose match
            // finds it, scored with its tags like the teacher's column
            if let Some(body) = extract_caption(text) {
                caps.push(item(uid, rec.teacher_caption.as_deref().unwrap()));
                caps.push(item(uid, &format!("<caption>{body}</caption>")));
            }
            if let Some(split) = split_text(text) {
                cots.push(item(uid, rec.teacher_cot.as_deref().unwrap()));
                cots.push(item(uid, split.cot));
            }
        }
        let gap = |s: Vec<f32>| -> Vec<f64> {
            s.chunks(2)
                .map(|p| f64::from(p[0]) - f64::from(p[1]))
                .collect()
        };
        let caption = gap(self.perception.scores(&caps).unwrap());
        let reasoning = gap(self.reasoning.scores(&cots).unwrap());
        let ordered = caption.iter().filter(|&&g| g > 0.0).count();
        Judged {
            caption_pair_acc: ordered as f64 / caption.len().max(1) as f64,
            valid: reasoning.len(),
            caption,
            reasoning,
        }
    }
}

/// The frozen judge's perception expert on held-out scenes: it must order the teacher's
/// dense caption above the public source's one-line caption of the same scene and above the
/// dense caption with the last object left out. Whether it notices one colour changed is
/// printed, not asserted: measured 9/16 (mean margin −0.01), it ranks captions by form more
/// than by content, a limit of the warm-up pairs (teacher dense vs public one-line captions).
#[test]
fn the_warmed_up_perception_expert_prefers_complete_teacher_captions_on_held_out_scenes() {
    let mut judge = Judge::new(&setup().experts);
    let probes: Vec<(usize, [String; 4])> = judge
        .records
        .iter()
        .enumerate()
        .map(|(uid, rec)| {
            let scene = Scene::from_json(rec.scene.as_deref().unwrap()).unwrap();
            let teacher = rec.teacher_caption.clone().unwrap();
            assert_eq!(
                teacher,
                dense_caption(&scene),
                "the teacher column is the dense caption"
            );
            let mut missing = scene.clone();
            missing.objects.pop();
            let mut recoloured = scene.clone();
            if let Some(o) = recoloured.objects.first_mut() {
                let i = Colour::ALL.iter().position(|c| *c == o.colour).unwrap();
                o.colour = Colour::ALL[(i + 1) % Colour::ALL.len()];
            }
            let alts = [
                teacher,
                sparse_caption(&scene),
                dense_caption(&missing),
                dense_caption(&recoloured),
            ];
            (uid, alts)
        })
        .collect();
    let items: Vec<ScoreItem> = probes
        .iter()
        .flat_map(|(uid, alts)| {
            alts.iter().map(|t| ScoreItem {
                prompt_uid: *uid as u64,
                segment: Segment {
                    tokens: Vec::new(),
                    text: t.clone(),
                },
            })
        })
        .collect();
    let scores = judge.perception.scores(&items).unwrap();
    let preferred = |k: usize| scores.chunks(4).filter(|s| s[0] > s[k]).count();
    let n = probes.len();
    let (public, missing, recoloured) = (preferred(1), preferred(2), preferred(3));
    eprintln!(
        "perception judge on {n} held-out scenes: teacher ≻ public caption {public}, ≻ missing \
         object {missing}, ≻ one colour changed {recoloured}"
    );
    assert!(
        4 * public >= 3 * n,
        "teacher ≻ public caption on {public} of {n}"
    );
    assert!(
        4 * missing >= 3 * n,
        "teacher ≻ a missing object on {missing} of {n}"
    );
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

// Measured (this set-up: SFT 150 steps, warm-up 8 steps, 16 align steps of 4×8 rollouts at
// policy lr 2e-4 and expert lr 1e-5; 256 judged answers; runs are deterministic, so a rerun
// prints these numbers):
//   before: 212 of 256 answers with a caption block, 26 format-valid; caption gap 0.655 (the
//   judge orders 0.759 of the caption pairs teacher ≻ student), reasoning gap 0.473
//   seed 1: valid 26 → 75, caption blocks 212 → 225, caption gap shrinks 0.050, reasoning 0.162
//   seed 2: valid 26 → 67, caption blocks 212 → 207, caption gap shrinks 0.323, reasoning 0.226
//   seed 3: valid 26 → 65, caption blocks 212 → 228, caption gap shrinks 0.253, reasoning 0.412
//   mean shrink: caption 0.209 (seed-to-seed sd 0.14; standard error of one gap ≈ 0.06),
//   reasoning 0.267.
// With 12 align steps (the former set-up), over 128 judged answers the caption gap moved by
// −0.10, +0.21, +0.09 and the reasoning gap by −0.03, +0.17, +0.23: no reliable trend. The
// caption score reaches the advantage late: in groups of 8 answers of the SFT'd policy only 1
// prompt of 16 has ≥ 2 format-valid ones, and the part of the mode-1 advantage that caption
// scores move (valid answers' captions set to their group mean vs not) has sd 0.004 against
// 1.03 for the whole (the format penalty); after 16 steps 8–14 prompts of 16, sd 0.13–0.24
// among valid answers. The frozen perception expert ranks captions by form more than content:
// on held-out scenes it orders the teacher's dense caption above the public one-line caption
// 16/16, above the same caption missing an object 15/16, but above it with one colour changed
// only 9/16 (mean margin −0.01); no sampled caption of the tiny policy states its scene
// correctly, before or after.
const TREND_SEEDS: [u64; 3] = [1, 2, 3];
/// One pass over the 64 training prompts, 4 per step (the stage stops when they run out).
const TREND_STEPS: u64 = 16;
const TREND_POLICY_LR: f64 = 2e-4;
const TREND_EXPERT_LR: f64 = 1e-5;
/// Minimum mean shrink of the reasoning gap over the seeds (measured 0.267).
const REASONING_MARGIN: f64 = 0.1;
/// Minimum mean shrink of the caption gap over the seeds (measured 0.209).
const CAPTION_MARGIN: f64 = 0.1;

/// Issue 5: after alignment the student's segments score closer to the teacher's, as judged by
/// the warmed-up experts frozen before alignment (so a drifting expert cannot fake it). The
/// judge scores sampled answers (fixed seed) of the policy before and after on held-out
/// prompts: the caption of every answer that has a caption block, the reasoning of the
/// format-valid ones (whose count must not collapse under the format penalty). The aligned
/// experts train with a small lr, so the policy's reward stays close to the judge's.
#[test]
fn alignment_brings_student_segments_closer_to_the_teacher_under_a_frozen_judge() {
    let s = setup();
    let mut judge = Judge::new(&s.experts);
    let n = HELD_OUT * ANSWERS;
    let before = judge.judge(&s.policy);
    let (cap0, cot0) = (mean(&before.caption), mean(&before.reasoning));
    eprintln!(
        "trend: before: {} of {n} answers with a caption block, {} format-valid; caption gap \
         {cap0:.4} (judge orders {:.3} of the pairs teacher ≻ student); reasoning gap {cot0:.4}",
        before.caption.len(),
        before.valid,
        before.caption_pair_acc
    );
    assert!(
        before.valid > 0,
        "the SFT'd policy gives no format-valid answer"
    );
    // the caption reward is a signal, not noise: the frozen judge tells the teacher's captions
    // from the SFT'd student's on held-out prompts
    assert!(
        before.caption_pair_acc >= 0.65,
        "the warmed-up perception expert orders only {:.3} of the held-out caption pairs",
        before.caption_pair_acc
    );
    let mut shrink = Vec::new();
    for seed in TREND_SEEDS {
        let mut cfg = align_cfg(TREND_STEPS, 4, 8);
        cfg.policy.limit = None;
        cfg.policy.lr = TREND_POLICY_LR;
        cfg.experts.options.lr = TREND_EXPERT_LR;
        let c = ctx(&format!("trend-{seed}"), seed);
        let t = std::time::Instant::now();
        let sum = run_align(&cfg, &c, &s.policy, &sync_actors()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let after = judge.judge(&sum.output);
        let (cap1, cot1) = (mean(&after.caption), mean(&after.reasoning));
        let valid_rates: Vec<f64> = metrics(&c.run_dir)
            .iter()
            .map(|r| r["metrics"]["format_valid_rate"].as_f64().unwrap())
            .collect();
        assert_eq!(
            valid_rates.len() as u64,
            TREND_STEPS,
            "seed {seed}: steps run"
        );
        let (d_cap, d_cot) = (cap0 - cap1, cot0 - cot1);
        eprintln!(
            "trend: seed {seed}: align {TREND_STEPS} steps in {secs:.1}s; format-valid {} → {}; \
             caption blocks {} → {}; caption gap {cap0:.4} → {cap1:.4} (shrinks {d_cap:.4}); \
             reasoning gap {cot0:.4} → {cot1:.4} (shrinks {d_cot:.4}); rollout valid rates \
             {valid_rates:?}",
            before.valid,
            after.valid,
            before.caption.len(),
            after.caption.len()
        );
        // the format penalty must not trade the valid answers away
        assert!(
            2 * after.valid >= before.valid,
            "seed {seed}: format-valid answers collapsed {} → {}",
            before.valid,
            after.valid
        );
        // the caption population stays (nearly) the whole sample: no selection effect
        for (when, j) in [("before", &before), ("after", &after)] {
            assert!(
                4 * j.caption.len() >= 3 * n,
                "seed {seed}: only {} of {n} answers {when} alignment have a caption block",
                j.caption.len()
            );
        }
        shrink.push((d_cap, d_cot));
    }
    let cap = mean(&shrink.iter().map(|s| s.0).collect::<Vec<_>>());
    let cot = mean(&shrink.iter().map(|s| s.1).collect::<Vec<_>>());
    eprintln!("trend: mean shrink over seeds: caption {cap:.4}, reasoning {cot:.4}");
    // Measured: see the notes above the constants.
    for (seed, (_, d_cot)) in TREND_SEEDS.iter().zip(&shrink) {
        assert!(
            *d_cot > 0.0,
            "seed {seed}: the reasoning gap widened by {:.4} ({shrink:?})",
            -d_cot
        );
    }
    assert!(
        cot > REASONING_MARGIN,
        "the teacher−student reasoning gap shrank only {cot:.4} on average ({shrink:?})"
    );
    let caption_shrank = shrink.iter().filter(|s| s.0 > 0.0).count();
    assert!(
        caption_shrank >= 2 && cap > CAPTION_MARGIN,
        "the teacher−student caption gap shrank on {caption_shrank} of {} seeds, by {cap:.4} on \
         average ({shrink:?})",
        TREND_SEEDS.len()
    );
}
