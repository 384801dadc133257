//! The `warmup` stage: Bradley–Terry pre-training of the experts on offline (teacher, student)
//! segment pairs (PRISM_ALGORITHM.md §4.1), before alignment.
//!
//! Owns the warm-up data as the experts see it ([`WarmupPrompts`]: each line's prompt rebuilt as
//! system + user turn with its image, line `i` is prompt uid `i`; its caption pair and its
//! reasoning pair), the training loop and the stage's files. Each step takes the next
//! `batch_size` lines of a seeded epoch order; with `experts = "dedicated"` the perception
//! expert trains on their caption pairs and the reasoning expert on their reasoning pairs, with
//! `"shared"` one model trains on both in one step. LR: linear warm-up then cosine
//! ([`LrSchedule::cosine_with_warmup_ratio`]). The last `eval_pairs` lines are held out and
//! scored before training, every `eval_every` steps and at the end (accuracy = fraction of
//! pairs with teacher score > student score).
//!
//! Files: `run_dir/metrics.jsonl` (one record per step: `disc_loss`, `cap_acc`, `cot_acc`,
//! losses, grad norms, LR, and `eval_cap_acc` / `eval_cot_acc` when evaluated);
//! `run_dir/<name>/checkpoint-<step>/` every `save_every` steps and `run_dir/<name>/final/`,
//! each holding `perception/` and `reasoning/` (or `shared/`) HF checkpoints with the value head,
//! the processor files and `optimizer.safetensors`, plus `trainer_state.json`; written to
//! `.partial` and renamed. The policy passes through: the summary's `output` is the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::expert::{
    BtReport, PromptContext, PromptContexts, QwenScorer, build_tiny_expert, write_dir_atomically,
};
use super::sft::{DataPosition, OPTIMIZER_STATE, TRAINER_STATE, epoch_order};
use super::{Result, SkipStreak, StageContext, StageError, StageSummary};
use crate::actors::messages::{BtPair, Segment};
use crate::algo::adamw::LrSchedule;
use crate::config::{ExpertLayout, WarmupConfig};
use crate::data::ReadOptions;
use crate::data::io::resolve;
use crate::data::synth::SYSTEM_INSTRUCTION;
use crate::data::synth::demo::user_prompt;
use crate::data::warmup::{self, WarmupPair};
use crate::models::chat_template::{ChatMessage, split_vision_placeholders};
use crate::report::metrics_log::{MetricsLog, keys};

/// The prompts of a warm-up file: line `i` (0-based) is prompt uid `i`.
#[derive(Debug)]
pub struct WarmupPrompts {
    entries: Vec<(Vec<ChatMessage>, Vec<RgbImage>)>,
}

/// The chat of a warm-up line: the system instruction, then the user turn with the image
/// (first, as the RL prompts of the same data place it) and the prompt text. A prompt that
/// already holds `<image>` placeholders keeps them where they are.
pub fn warmup_messages(prompt: &str, has_image: bool) -> Vec<ChatMessage> {
    let text = if has_image && !prompt.contains("<image>") {
        user_prompt(prompt)
    } else {
        prompt.to_string()
    };
    vec![
        ChatMessage::system(SYSTEM_INSTRUCTION),
        ChatMessage::parts("user", split_vision_placeholders(&text)),
    ]
}

impl WarmupPrompts {
    /// Builds the contexts of `pairs` read from `file` (images resolved next to it, decoded).
    pub fn from_pairs(pairs: &[WarmupPair], file: &Path) -> Result<Self> {
        let entries = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let images = match &p.image {
                    Some(rel) => {
                        let path = resolve(file, rel);
                        let img = image::open(&path).map_err(|e| StageError::Record {
                            path: file.to_path_buf(),
                            record: i + 1,
                            message: format!("image {}: {e}", path.display()),
                        })?;
                        vec![img.to_rgb8()]
                    }
                    None => Vec::new(),
                };
                let messages = warmup_messages(&p.prompt, !images.is_empty());
                let placeholders: usize = messages.iter().map(ChatMessage::num_images).sum();
                if placeholders != images.len() {
                    return Err(StageError::Record {
                        path: file.to_path_buf(),
                        record: i + 1,
                        message: format!(
                            "the prompt has {placeholders} <image> placeholder(s) but the line has {} image(s)",
                            images.len()
                        ),
                    });
                }
                Ok((messages, images))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WarmupPrompts { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PromptContexts for WarmupPrompts {
    fn context(&self, uid: u64) -> Option<PromptContext<'_>> {
        self.entries
            .get(uid as usize)
            .map(|(messages, images)| PromptContext {
                key: uid,
                messages,
                images,
            })
    }
}

fn segment(text: &str) -> Segment {
    Segment {
        tokens: Vec::new(),
        text: text.to_string(),
    }
}

/// The caption pair of line `uid` (teacher ≻ student).
pub fn caption_pair(uid: u64, p: &WarmupPair) -> BtPair {
    BtPair {
        prompt_uid: uid,
        chosen: segment(&p.teacher_caption),
        rejected: segment(&p.student_caption),
    }
}

/// The reasoning pair of line `uid` (teacher ≻ student).
pub fn reasoning_pair(uid: u64, p: &WarmupPair) -> BtPair {
    BtPair {
        prompt_uid: uid,
        chosen: segment(&p.teacher_cot),
        rejected: segment(&p.student_cot),
    }
}

/// `trainer_state.json` of a warm-up checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupState {
    pub stage: String,
    /// The policy checkpoint the stage passed through.
    pub input: PathBuf,
    /// Steps done (skipped ones included).
    pub step: u64,
    pub skipped_steps: u64,
    pub seed: u64,
    pub data: PathBuf,
    /// Lines used for training (the held-out ones follow them).
    pub train_pairs: usize,
    /// The next training line.
    pub position: DataPosition,
    pub layout: ExpertLayout,
    /// The experts' folder names in this checkpoint.
    pub experts: Vec<String>,
    pub eval_cap_acc: Option<f64>,
    pub eval_cot_acc: Option<f64>,
}

/// One trained model with its role and where its processor files come from.
struct Expert {
    role: &'static str,
    scorer: QwenScorer,
    processor_dir: PathBuf,
}

/// Held-out results: accuracy and mean BT loss per segment kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub cap_acc: f64,
    pub cot_acc: f64,
    pub cap_loss: f64,
    pub cot_loss: f64,
}

/// Accuracy and mean −log σ(s_T − s_S) of scored pairs.
fn acc_and_loss(scores: &[(f32, f32)]) -> (f64, f64) {
    let n = scores.len().max(1) as f64;
    let acc = scores.iter().filter(|(t, s)| t > s).count() as f64 / n;
    let loss = scores
        .iter()
        .map(|(t, s)| {
            let d = f64::from(t - s);
            // −log σ(d) = softplus(−d), computed stably
            (-d).max(0.0) + (-d.abs()).exp().ln_1p()
        })
        .sum::<f64>()
        / n;
    (acc, loss)
}

fn evaluate(experts: &mut [Expert], cap: &[BtPair], cot: &[BtPair]) -> Result<EvalResult> {
    let (cs, rs) = match experts {
        [shared] => (
            shared.scorer.pair_scores(cap)?,
            shared.scorer.pair_scores(cot)?,
        ),
        [perception, reasoning] => (
            perception.scorer.pair_scores(cap)?,
            reasoning.scorer.pair_scores(cot)?,
        ),
        _ => unreachable!("one shared or two dedicated experts"),
    };
    let (cap_acc, cap_loss) = acc_and_loss(&cs);
    let (cot_acc, cot_loss) = acc_and_loss(&rs);
    Ok(EvalResult {
        cap_acc,
        cot_acc,
        cap_loss,
        cot_loss,
    })
}

/// Writes the experts, their optimizer states and the trainer state into `dir` atomically.
fn save_experts(
    dir: &Path,
    experts: &[Expert],
    state: &WarmupState,
    cfg: &WarmupConfig,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| {
        for e in experts {
            let d = tmp.join(e.role);
            e.scorer.save(&d, &e.processor_dir)?;
            Tensor::write_safetensors(
                &e.scorer.optimizer().state_tensors(),
                d.join(OPTIMIZER_STATE),
            )?;
        }
        let path = tmp.join(TRAINER_STATE);
        let io = |e: serde_json::Error| StageError::io(&path, std::io::Error::other(e.to_string()));
        let mut value = serde_json::to_value(state).map_err(io)?;
        value["kind"] = serde_json::json!("warmup");
        value["config"] = serde_json::json!(cfg);
        let text = serde_json::to_string_pretty(&value).map_err(io)?;
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))
    })
}

fn read_state(dir: &Path) -> Result<WarmupState> {
    let path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| StageError::Record {
        path: path.clone(),
        record: 1,
        message: format!("not a warm-up trainer state: {e}"),
    })
}

/// Runs the warm-up; `input` is the policy checkpoint (passed through, and the source of tiny
/// experts).
pub fn run_warmup(cfg: &WarmupConfig, ctx: &StageContext, input: &Path) -> Result<StageSummary> {
    let started = Instant::now();
    let stage = ctx.name.clone();
    let invalid = |message: String| StageError::Invalid {
        stage: stage.clone(),
        message,
    };
    cfg.validate(true)
        .map_err(|(k, m)| invalid(format!("{k}: {m}")))?;
    let data = cfg
        .data
        .clone()
        .or_else(|| ctx.warmup_file.clone())
        .ok_or_else(|| invalid("no warm-up pairs file".into()))?;
    let pairs = warmup::read(&data, ReadOptions::default())?.records;
    if cfg.eval_pairs >= pairs.len() {
        return Err(invalid(format!(
            "{}: {} pairs, but eval_pairs = {} leaves none to train on",
            data.display(),
            pairs.len(),
            cfg.eval_pairs
        )));
    }
    let n_train = pairs.len() - cfg.eval_pairs;
    let contexts: Arc<dyn PromptContexts> = Arc::new(WarmupPrompts::from_pairs(&pairs, &data)?);
    let eval_cap: Vec<BtPair> = (n_train..pairs.len())
        .map(|i| caption_pair(i as u64, &pairs[i]))
        .collect();
    let eval_cot: Vec<BtPair> = (n_train..pairs.len())
        .map(|i| reasoning_pair(i as u64, &pairs[i]))
        .collect();

    let roles: &[&'static str] = match cfg.experts {
        ExpertLayout::Dedicated => &["perception", "reasoning"],
        ExpertLayout::Shared => &["shared"],
    };
    let stage_dir = ctx.stage_dir();
    std::fs::create_dir_all(&stage_dir).map_err(|e| StageError::io(&stage_dir, e))?;
    let resumed = match &cfg.resume_from {
        Some(dir) => {
            let st = read_state(dir)?;
            if st.layout != cfg.experts || st.step >= cfg.steps || st.train_pairs != n_train {
                return Err(invalid(format!(
                    "{}: checkpoint at step {} ({:?} experts, {} training pairs) cannot resume \
                     this stage ({} steps, {:?} experts, {n_train} training pairs)",
                    dir.display(),
                    st.step,
                    st.layout,
                    st.train_pairs,
                    cfg.steps,
                    cfg.experts
                )));
            }
            Some((dir.clone(), st))
        }
        None => None,
    };
    tch::manual_seed(ctx.seed as i64);
    let mut experts = Vec::with_capacity(roles.len());
    for (i, &role) in roles.iter().enumerate() {
        let dir = match (&resumed, &cfg.init.path) {
            (Some((d, _)), _) => d.join(role),
            (None, Some(p)) => p.clone(),
            (None, None) => build_tiny_expert(
                input,
                &stage_dir.join("init").join(role),
                &cfg.init.tiny,
                ctx.seed.wrapping_add(i as u64),
            )?,
        };
        let mut scorer =
            QwenScorer::load(&dir, ctx.device, ctx.kind, &cfg.expert, contexts.clone())?;
        if resumed.is_some() {
            let path = dir.join(OPTIMIZER_STATE);
            let t = Tensor::read_safetensors(&path).map_err(|e| StageError::Record {
                path: path.clone(),
                record: 1,
                message: e.to_string(),
            })?;
            scorer.optimizer_mut().load_state_tensors(&t)?;
        }
        experts.push(Expert {
            role,
            scorer,
            processor_dir: dir,
        });
    }
    let schedule = LrSchedule::cosine_with_warmup_ratio(cfg.warmup_ratio, cfg.steps as i64)?;
    let mut log = MetricsLog::open_in(&ctx.run_dir).map_err(|e| invalid(e.to_string()))?;
    tracing::info!(
        stage = %stage,
        data = %data.display(),
        train = n_train,
        held_out = cfg.eval_pairs,
        experts = ?cfg.experts,
        params = experts[0].scorer.model().num_parameters(),
        moe = experts[0].scorer.model().config.is_moe(),
        "warmup: starting"
    );

    let mut evals: Vec<EvalResult> = Vec::new();
    let do_eval = !eval_cap.is_empty();
    if do_eval && resumed.is_none() {
        let e = evaluate(&mut experts, &eval_cap, &eval_cot)?;
        let mut m = BTreeMap::new();
        m.insert("eval_cap_acc".to_string(), e.cap_acc);
        m.insert("eval_cot_acc".to_string(), e.cot_acc);
        m.insert(
            "eval_disc_loss".to_string(),
            0.5 * (e.cap_loss + e.cot_loss),
        );
        log.log(&stage, &ctx.arm, 0, m)
            .map_err(|e| invalid(e.to_string()))?;
        evals.push(e);
    }

    let (first_step, mut pos, skipped) = match &resumed {
        Some((_, st)) => (st.step + 1, st.position, st.skipped_steps),
        None => (
            1,
            DataPosition {
                epoch: 0,
                position: 0,
            },
            0,
        ),
    };
    let mut order = epoch_order(n_train, ctx.seed, pos.epoch);
    let mut losses: Vec<f64> = Vec::new();
    let mut skips = SkipStreak::starting_at(skipped);
    let mut last_eval = None;
    let mut bar = crate::report::progress::global().stage(&stage, cfg.steps);
    bar.set_step(first_step.saturating_sub(1));
    for step in first_step..=cfg.steps {
        let t0 = Instant::now();
        let mut lines = Vec::with_capacity(cfg.batch_size);
        for _ in 0..cfg.batch_size {
            if pos.position == n_train {
                pos.epoch += 1;
                pos.position = 0;
                order = epoch_order(n_train, ctx.seed, pos.epoch);
            }
            lines.push(order[pos.position]);
            pos.position += 1;
        }
        let cap: Vec<BtPair> = lines
            .iter()
            .map(|&i| caption_pair(i as u64, &pairs[i]))
            .collect();
        let cot: Vec<BtPair> = lines
            .iter()
            .map(|&i| reasoning_pair(i as u64, &pairs[i]))
            .collect();
        let lr = cfg.expert.lr * schedule.factor(step as i64 - 1);
        let mut m = BTreeMap::new();
        let reports: Vec<(&str, BtReport)> = match experts.as_mut_slice() {
            [shared] => {
                let both: Vec<BtPair> = cap.iter().chain(&cot).cloned().collect();
                let r = shared.scorer.train_step(&both, lr)?;
                let k = cap.len();
                let frac = |c: &[bool]| c.iter().filter(|&&x| x).count() as f64 / c.len() as f64;
                m.insert(keys::CAP_ACC.to_string(), frac(&r.correct[..k]));
                m.insert(keys::COT_ACC.to_string(), frac(&r.correct[k..]));
                vec![("shared", r)]
            }
            [perception, reasoning] => {
                let rp = perception.scorer.train_step(&cap, lr)?;
                let rr = reasoning.scorer.train_step(&cot, lr)?;
                m.insert(keys::CAP_ACC.to_string(), rp.accuracy);
                m.insert(keys::COT_ACC.to_string(), rr.accuracy);
                m.insert("cap_loss".to_string(), rp.loss);
                m.insert("cot_loss".to_string(), rr.loss);
                vec![("perception", rp), ("reasoning", rr)]
            }
            _ => unreachable!("one shared or two dedicated experts"),
        };
        let loss = reports.iter().map(|(_, r)| r.loss).sum::<f64>() / reports.len() as f64;
        let step_skipped = reports.iter().any(|(_, r)| r.skipped);
        let tokens: i64 = reports.iter().map(|(_, r)| r.tokens).sum();
        for (role, r) in &reports {
            m.insert(format!("grad_norm_{role}"), r.grad_norm);
            m.insert(format!("teacher_score_{role}"), r.chosen_mean);
            m.insert(format!("student_score_{role}"), r.rejected_mean);
            if let Some(lb) = r.lb_loss {
                m.insert(format!("lb_loss_{role}"), lb);
            }
        }
        skips.record(step_skipped);
        if !step_skipped {
            losses.push(loss);
        }
        let secs = t0.elapsed().as_secs_f64();
        m.insert(keys::DISC_LOSS.to_string(), loss);
        m.insert(keys::LOSS.to_string(), loss);
        m.insert("lr".to_string(), lr);
        m.insert("tokens".to_string(), tokens as f64);
        m.insert("tokens_per_s".to_string(), tokens as f64 / secs.max(1e-9));
        m.insert("skipped".to_string(), f64::from(u8::from(step_skipped)));
        m.insert("epoch".to_string(), pos.epoch as f64);
        metrics::counter!(crate::telemetry::STEPS_TOTAL, "stage" => stage.clone()).increment(1);
        metrics::histogram!(crate::telemetry::STEP_SECONDS, "stage" => stage.clone()).record(secs);
        if do_eval && (step == cfg.steps || (cfg.eval_every > 0 && step % cfg.eval_every == 0)) {
            let e = evaluate(&mut experts, &eval_cap, &eval_cot)?;
            m.insert("eval_cap_acc".to_string(), e.cap_acc);
            m.insert("eval_cot_acc".to_string(), e.cot_acc);
            m.insert(
                "eval_disc_loss".to_string(),
                0.5 * (e.cap_loss + e.cot_loss),
            );
            evals.push(e);
            last_eval = Some(e);
        }
        if loss.is_finite() {
            bar.set_metric("d_loss", loss);
        }
        log.log(&stage, &ctx.arm, step, m)
            .map_err(|e| invalid(e.to_string()))?;
        bar.set_step(step);
        skips.check(&stage, step, cfg.max_bad_steps_in_row)?;
        let state = |step: u64, e: Option<EvalResult>| WarmupState {
            stage: stage.clone(),
            input: input.to_path_buf(),
            step,
            skipped_steps: skips.total,
            seed: ctx.seed,
            data: data.clone(),
            train_pairs: n_train,
            position: pos,
            layout: cfg.experts,
            experts: roles.iter().map(|r| r.to_string()).collect(),
            eval_cap_acc: e.map(|e| e.cap_acc),
            eval_cot_acc: e.map(|e| e.cot_acc),
        };
        if skips.in_row == 0 && cfg.save_every > 0 && step % cfg.save_every == 0 && step < cfg.steps
        {
            save_experts(
                &stage_dir.join(format!("checkpoint-{step}")),
                &experts,
                &state(step, last_eval),
                cfg,
            )?;
            log.sync().map_err(|e| invalid(e.to_string()))?;
        }
        if step == cfg.steps {
            save_experts(
                &stage_dir.join("final"),
                &experts,
                &state(step, last_eval),
                cfg,
            )?;
            log.sync().map_err(|e| invalid(e.to_string()))?;
        }
    }
    bar.finish();

    let mean = |xs: &[f64]| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let k = losses.len().min(5);
    let eval_loss = |e: &EvalResult| 0.5 * (e.cap_loss + e.cot_loss);
    Ok(StageSummary {
        name: stage,
        kind: "warmup".into(),
        output: input.to_path_buf(),
        experts: Some(stage_dir.join("final")),
        steps: cfg.steps,
        skipped_steps: skips.total,
        first_loss: mean(&losses[..k]),
        last_loss: mean(&losses[losses.len() - k..]),
        first_eval_loss: evals.first().map(eval_loss),
        last_eval_loss: evals.last().map(eval_loss),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::chat_template::{Content, ContentPart};

    #[test]
    fn a_warmup_prompt_becomes_system_then_image_then_text() {
        let m = warmup_messages("How many circles?", true);
        assert_eq!(m[0], ChatMessage::system(SYSTEM_INSTRUCTION));
        let Content::Parts(parts) = &m[1].content else {
            panic!("user turn has no parts: {m:?}")
        };
        assert_eq!(parts[0], ContentPart::Image { image: None });
        assert!(
            matches!(&parts[1], ContentPart::Text { text } if text.ends_with("How many circles?"))
        );
        // explicit placeholders are kept where they are; no image, no image part
        assert_eq!(warmup_messages("a<image>b", true)[1].num_images(), 1);
        assert_eq!(warmup_messages("plain", false)[1].num_images(), 0);
    }

    #[test]
    fn held_out_accuracy_is_strict_and_the_loss_is_softplus() {
        let (acc, loss) = acc_and_loss(&[(1.0, 0.0), (0.0, 0.0), (-1.0, 1.0)]);
        assert!((acc - 1.0 / 3.0).abs() < 1e-12);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let want = (sp(-1.0) + sp(0.0) + sp(2.0)) / 3.0;
        assert!((loss - want).abs() < 1e-9, "{loss} vs {want}");
    }
}
