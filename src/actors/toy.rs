//! Tiny real engines for tests and benchmarks: a tch bigram language model as the policy (real
//! sampling, real behaviour log-probs, a real PPO-clip step with Adam, so versions and
//! log-probs mean something), a bag-of-tokens Bradley–Terry scorer as each expert, a
//! deterministic oracle teacher and a token-level format/accuracy reward. Each engine can sleep
//! a configurable time per call to stand in for heavy compute. Also the reference for what the
//! real engines must do.
//!
//! Token conventions (vocabulary [`VOCAB`]): [`EOS`] ends a response, [`SEP`] separates the
//! caption from the reasoning; a response is well-formatted when it is
//! `caption… SEP reasoning… EOS` with both parts non-empty. The answer is the last reasoning
//! token.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

use super::config::DeviceSpec;
use super::engine::{
    EngineResult, Engines, LearnerEngine, LearnerFactory, PolicyEngine, PolicyFactory,
    RewardEngine, RewardFactory, ScorerEngine, ScorerFactory, TeacherBackend, TeacherFactory,
};
use super::messages::{
    BtPair, Demo, DiscStats, PromptItem, RewardOutcome, Rollout, SamplingParams, ScoreItem,
    Segment, StageKind, StepStats, TrainBatch, WeightsSnapshot,
};
use super::weights::{load_into_tensors, snapshot_from_tensors};

pub const VOCAB: i64 = 16;
pub const EOS: i64 = 1;
pub const SEP: i64 = 2;

/// Simulated compute time of one engine call.
pub type Delay = Arc<dyn Fn() -> Duration + Send + Sync>;

/// No delay.
pub fn no_delay() -> Delay {
    Arc::new(|| Duration::ZERO)
}

/// A fixed delay.
pub fn fixed_delay(d: Duration) -> Delay {
    Arc::new(move || d)
}

/// A seeded random delay, uniform in `[lo, hi]`.
pub fn random_delay(seed: u64, lo: Duration, hi: Duration) -> Delay {
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    Arc::new(move || {
        let u: f64 = rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        lo + (hi.saturating_sub(lo)).mul_f64(u)
    })
}

/// Counters the toy engines write, for tests to check what really happened.
#[derive(Debug, Default)]
pub struct ToyProbe {
    /// Prompt uid → number of learner steps that trained on it.
    pub trained: Mutex<BTreeMap<u64, u32>>,
    /// Teacher backend calls (cache misses).
    pub teacher_calls: AtomicU64,
    /// Generation calls and the policy versions the generators loaded.
    pub generate_calls: AtomicU64,
    pub loaded_versions: Mutex<Vec<u64>>,
    /// Engines built (first starts plus restarts), by kind.
    pub builds: Mutex<BTreeMap<String, u32>>,
}

impl ToyProbe {
    fn built(&self, what: &str) {
        *self
            .builds
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += 1;
    }
}

/// Settings of the toy engines.
#[derive(Clone)]
pub struct ToyOptions {
    pub seed: u64,
    pub lr: f64,
    pub generate_delay: Delay,
    pub learn_delay: Delay,
    pub score_delay: Delay,
    pub teacher_delay: Delay,
}

impl Default for ToyOptions {
    fn default() -> Self {
        ToyOptions {
            seed: 0,
            lr: 0.05,
            generate_delay: no_delay(),
            learn_delay: no_delay(),
            score_delay: no_delay(),
            teacher_delay: no_delay(),
        }
    }
}

/// The engines of a toy stage, and the probe they report to.
pub fn engines(opts: ToyOptions) -> (Engines, Arc<ToyProbe>) {
    let probe = Arc::new(ToyProbe::default());
    let (o, pr) = (opts.clone(), probe.clone());
    let policy: PolicyFactory = Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn PolicyEngine>> {
            pr.built("policy");
            Ok(Box::new(BigramPolicy::new(
                d.into(),
                o.seed,
                o.generate_delay.clone(),
                pr.clone(),
            )))
        },
    );
    let (o, pr) = (opts.clone(), probe.clone());
    let learner: LearnerFactory = Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn LearnerEngine>> {
            pr.built("learner");
            Ok(Box::new(BigramLearner::new(
                d.into(),
                o.seed,
                o.lr,
                o.learn_delay.clone(),
                pr.clone(),
            )?))
        },
    );
    let (o, pr) = (opts.clone(), probe.clone());
    let scorer: ScorerFactory = Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn ScorerEngine>> {
            pr.built("expert");
            Ok(Box::new(BagScorer::new(
                d.into(),
                o.lr,
                o.score_delay.clone(),
            )?))
        },
    );
    let (o, pr) = (opts.clone(), probe.clone());
    let teacher: TeacherFactory = Arc::new(
        move |_d: DeviceSpec| -> EngineResult<Box<dyn TeacherBackend>> {
            pr.built("teacher");
            Ok(Box::new(OracleTeacher {
                delay: o.teacher_delay.clone(),
                probe: pr.clone(),
            }))
        },
    );
    let pr = probe.clone();
    let reward: RewardFactory = Arc::new(
        move |_d: DeviceSpec| -> EngineResult<Box<dyn RewardEngine>> {
            pr.built("reward");
            Ok(Box::new(TokenReward))
        },
    );
    (
        Engines {
            policy,
            learner,
            reward,
            teacher: Some(teacher.clone()),
            perception: Some(scorer.clone()),
            reasoning: Some(scorer),
        },
        probe,
    )
}

/// `n` prompts with uids `0..n`: a few random tokens each and an answer token.
pub fn prompts(n: usize, seed: u64) -> Vec<PromptItem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n as u64)
        .map(|uid| {
            let ids: Vec<i64> = (0..4).map(|_| rng.random_range(3..VOCAB)).collect();
            let answer = ids.iter().sum::<i64>() % (VOCAB - 3) + 3;
            PromptItem {
                uid,
                text: format!("prompt {uid}"),
                prompt_ids: ids,
                image_hash: None,
                answer: Some(answer.to_string()),
            }
        })
        .collect()
}

/// Initial bigram logits `[V, V]`, the same for the policy and the learner of a seed, biased
/// so that short well-formatted responses are common.
fn initial_logits(seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let v = VOCAB as usize;
    let mut w: Vec<f32> = (0..v * v).map(|_| rng.random::<f32>() * 0.5).collect();
    for row in 0..v {
        w[row * v + SEP as usize] += 1.0;
        w[row * v + EOS as usize] += 1.0;
    }
    w
}

/// The policy sampler: bigram logits, sampling with its own seeded RNG (per prompt uid and
/// sample index, so results do not depend on thread interleaving).
pub struct BigramPolicy {
    /// `[V, V]` logits of the next token given the previous one.
    logits: Tensor,
    seed: u64,
    delay: Delay,
    probe: Arc<ToyProbe>,
}

impl BigramPolicy {
    pub fn new(dev: Device, seed: u64, delay: Delay, probe: Arc<ToyProbe>) -> BigramPolicy {
        let logits = Tensor::from_slice(&initial_logits(seed))
            .reshape([VOCAB, VOCAB])
            .to_device(dev);
        BigramPolicy {
            logits,
            seed,
            delay,
            probe,
        }
    }
}

impl PolicyEngine for BigramPolicy {
    fn generate(
        &mut self,
        prompts: &[PromptItem],
        n: usize,
        params: &SamplingParams,
    ) -> EngineResult<Vec<Rollout>> {
        std::thread::sleep((self.delay)());
        self.probe.generate_calls.fetch_add(1, Ordering::Relaxed);
        let _g = tch::no_grad_guard();
        let t = params.temperature.max(1e-4) as f64;
        // [V, V] log-probs at the sampling temperature, copied to the host once per call.
        let lp = self
            .logits
            .f_div_scalar(t)?
            .f_log_softmax(-1, Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_flatten(0, -1)?;
        let lp = Vec::<f32>::try_from(&lp)?;
        let v = VOCAB as usize;
        let mut out = Vec::with_capacity(prompts.len() * n);
        for p in prompts {
            for j in 0..n {
                let mut rng = StdRng::seed_from_u64(
                    params.seed ^ self.seed ^ p.uid.wrapping_mul(0x9e37_79b9) ^ ((j as u64) << 40),
                );
                let mut prev = *p.prompt_ids.last().unwrap_or(&0);
                let (mut ids, mut lps) = (Vec::new(), Vec::new());
                for _ in 0..params.max_new_tokens {
                    let row = &lp[prev as usize * v..(prev as usize + 1) * v];
                    let u: f32 = rng.random();
                    let mut acc = 0.0f32;
                    let mut tok = v - 1;
                    for (k, l) in row.iter().enumerate() {
                        acc += l.exp();
                        if u < acc {
                            tok = k;
                            break;
                        }
                    }
                    ids.push(tok as i64);
                    lps.push(row[tok]);
                    prev = tok as i64;
                    if tok as i64 == EOS {
                        break;
                    }
                }
                out.push(Rollout {
                    prompt_uid: p.uid,
                    sample_index: j as u32,
                    response_ids: ids,
                    behaviour_logprobs: lps,
                    policy_version: 0,
                    generator: String::new(),
                });
            }
        }
        Ok(out)
    }

    fn load_weights(&mut self, w: &WeightsSnapshot) -> EngineResult<()> {
        let mut named = vec![("logits".to_string(), self.logits.shallow_clone())];
        load_into_tensors(w, &mut named)?;
        self.probe.loaded_versions.lock().unwrap().push(w.version);
        Ok(())
    }
}

/// Scalar reward of one sample before group normalisation: alignment uses the mean expert
/// score (and -1 below the group for a bad format), RLVR 0.8·accuracy + 0.2·format.
fn raw_reward(kind: StageKind, s: &super::messages::ScoredSample) -> f32 {
    match kind {
        StageKind::Align => match (s.caption_score, s.reasoning_score) {
            (Some(c), Some(r)) if s.reward.format_score > 0.0 => 0.5 * c + 0.5 * r,
            _ => -1.0,
        },
        StageKind::Rlvr => 0.8 * s.reward.accuracy.unwrap_or(0.0) + 0.2 * s.reward.format_score,
    }
}

/// `(x - mean) / (std + 1e-6)` per group of `g` consecutive values (unbiased std; 0 for g = 1).
pub fn group_normalise(x: &[f32], g: usize) -> Vec<f32> {
    x.chunks(g)
        .flat_map(|c| {
            let n = c.len() as f32;
            let mean = c.iter().sum::<f32>() / n;
            let std = if c.len() < 2 {
                1.0
            } else {
                (c.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (n - 1.0)).sqrt()
            };
            c.iter().map(move |v| (v - mean) / (std + 1e-6))
        })
        .collect()
}

/// The trainer: PPO-clip (ε = 0.2) on the bigram logits with Adam.
pub struct BigramLearner {
    _vs: nn::VarStore,
    logits: Tensor,
    opt: nn::Optimizer,
    delay: Delay,
    probe: Arc<ToyProbe>,
}

impl BigramLearner {
    pub fn new(
        dev: Device,
        seed: u64,
        lr: f64,
        delay: Delay,
        probe: Arc<ToyProbe>,
    ) -> EngineResult<BigramLearner> {
        let vs = nn::VarStore::new(dev);
        let logits = vs
            .root()
            .var("logits", &[VOCAB, VOCAB], nn::Init::Const(0.0));
        tch::no_grad(|| {
            let init = Tensor::from_slice(&initial_logits(seed)).reshape([VOCAB, VOCAB]);
            logits.shallow_clone().f_copy_(&init)
        })?;
        let opt = nn::Adam::default().build(&vs, lr)?;
        Ok(BigramLearner {
            _vs: vs,
            logits,
            opt,
            delay,
            probe,
        })
    }
}

impl LearnerEngine for BigramLearner {
    fn step(&mut self, batch: &TrainBatch) -> EngineResult<StepStats> {
        std::thread::sleep((self.delay)());
        let raw: Vec<f32> = batch
            .samples
            .iter()
            .map(|s| raw_reward(batch.kind, s))
            .collect();
        let adv = group_normalise(&raw, batch.group_size.max(1));
        let (mut prev, mut next, mut a, mut behav) = (vec![], vec![], vec![], vec![]);
        for (s, &ad) in batch.samples.iter().zip(&adv) {
            let mut p = *s.prompt.prompt_ids.last().unwrap_or(&0);
            for (&t, &b) in s
                .rollout
                .response_ids
                .iter()
                .zip(&s.rollout.behaviour_logprobs)
            {
                prev.push(p);
                next.push(t);
                a.push(ad);
                behav.push(b);
                p = t;
            }
        }
        let dev = self.logits.device();
        let tokens = prev.len() as u64;
        let prev_t = Tensor::from_slice(&prev).to_device(dev);
        let next_t = Tensor::from_slice(&next).to_device(dev);
        let adv_t = Tensor::from_slice(&a).to_device(dev);
        let behav_t = Tensor::from_slice(&behav).to_device(dev);
        // [Ntok] log-probs of the sampled tokens under the current weights.
        let lp = self
            .logits
            .f_log_softmax(-1, Kind::Float)?
            .f_index(&[Some(prev_t), Some(next_t)])?;
        let ratio = (lp - behav_t).f_exp()?;
        let surr1 = ratio.f_mul(&adv_t)?;
        let surr2 = ratio.f_clamp(0.8, 1.2)?.f_mul(&adv_t)?;
        let loss = surr1.f_minimum(&surr2)?.f_mean(Kind::Float)?.f_neg()?;
        self.opt.zero_grad();
        loss.f_backward()?;
        self.opt.step();
        let mut trained = self.probe.trained.lock().unwrap();
        let mut uids: Vec<u64> = batch.samples.iter().map(|s| s.rollout.prompt_uid).collect();
        uids.dedup();
        for u in uids {
            *trained.entry(u).or_default() += 1;
        }
        Ok(StepStats {
            version: 0,
            loss: f32::try_from(&loss)?,
            tokens,
            extra: vec![(
                "ratio_mean".into(),
                f64::try_from(ratio.f_mean(Kind::Float)?)?,
            )],
        })
    }

    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot> {
        Ok(snapshot_from_tensors(
            version,
            &[("logits".to_string(), self.logits.shallow_clone())],
        )?)
    }

    fn restore(&mut self, w: &WeightsSnapshot) -> EngineResult<()> {
        // Adam moments are not in the toy snapshot: they restart from zero.
        let mut named = vec![("logits".to_string(), self.logits.shallow_clone())];
        Ok(load_into_tensors(w, &mut named)?)
    }
}

/// An expert: score = mean of a learned per-token weight over the segment.
pub struct BagScorer {
    _vs: nn::VarStore,
    w: Tensor,
    opt: nn::Optimizer,
    delay: Delay,
}

impl BagScorer {
    pub fn new(dev: Device, lr: f64, delay: Delay) -> EngineResult<BagScorer> {
        let vs = nn::VarStore::new(dev);
        let w = vs.root().var("w", &[VOCAB], nn::Init::Const(0.0));
        let opt = nn::Adam::default().build(&vs, lr)?;
        Ok(BagScorer {
            _vs: vs,
            w,
            opt,
            delay,
        })
    }

    /// `[N]` scores of `segs` (0 for an empty segment), differentiable.
    fn scores(&self, segs: &[&Segment]) -> EngineResult<Tensor> {
        let dev = self.w.device();
        let mut out = Vec::with_capacity(segs.len());
        for s in segs {
            if s.tokens.is_empty() {
                out.push(Tensor::zeros([], (Kind::Float, dev)));
                continue;
            }
            if let Some(t) = s.tokens.iter().find(|&&t| !(0..VOCAB).contains(&t)) {
                return Err(
                    format!("segment token {t} is outside the vocabulary 0..{VOCAB}").into(),
                );
            }
            let idx = Tensor::from_slice(&s.tokens).to_device(dev);
            out.push(self.w.f_index_select(0, &idx)?.f_mean(Kind::Float)?);
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0], (Kind::Float, dev)));
        }
        Ok(Tensor::f_stack(&out, 0)?)
    }
}

impl ScorerEngine for BagScorer {
    fn score(&mut self, items: &[ScoreItem]) -> EngineResult<Vec<f32>> {
        std::thread::sleep((self.delay)());
        let _g = tch::no_grad_guard();
        // The bag-of-tokens expert ignores the prompt context.
        let refs: Vec<&Segment> = items.iter().map(|x| &x.segment).collect();
        Ok(Vec::<f32>::try_from(&self.scores(&refs)?)?)
    }

    fn bt_step(&mut self, pairs: &[BtPair]) -> EngineResult<DiscStats> {
        std::thread::sleep((self.delay)());
        let chosen: Vec<&Segment> = pairs.iter().map(|p| &p.chosen).collect();
        let rejected: Vec<&Segment> = pairs.iter().map(|p| &p.rejected).collect();
        let margin = self.scores(&chosen)?.f_sub(&self.scores(&rejected)?)?;
        let accuracy = f64::try_from(
            margin
                .f_gt(0.0)?
                .f_to_kind(Kind::Float)?
                .f_mean(Kind::Float)?,
        )?;
        // Bradley–Terry: -log σ(s_teacher - s_student).
        let loss = margin.f_log_sigmoid()?.f_mean(Kind::Float)?.f_neg()?;
        self.opt.zero_grad();
        loss.f_backward()?;
        self.opt.step();
        Ok(DiscStats {
            loss: f32::try_from(&loss)?,
            accuracy: accuracy as f32,
            version: 0,
        })
    }

    fn snapshot(&mut self, version: u64) -> EngineResult<WeightsSnapshot> {
        Ok(snapshot_from_tensors(
            version,
            &[("w".to_string(), self.w.shallow_clone())],
        )?)
    }

    fn restore(&mut self, w: &WeightsSnapshot) -> EngineResult<()> {
        let mut named = vec![("w".to_string(), self.w.shallow_clone())];
        Ok(load_into_tensors(w, &mut named)?)
    }
}

/// The oracle teacher: a fixed function of the prompt (caption from the prompt tokens,
/// reasoning ending in the answer).
pub struct OracleTeacher {
    delay: Delay,
    probe: Arc<ToyProbe>,
}

impl TeacherBackend for OracleTeacher {
    fn demonstrate(&mut self, p: &PromptItem) -> EngineResult<Demo> {
        std::thread::sleep((self.delay)());
        self.probe.teacher_calls.fetch_add(1, Ordering::Relaxed);
        let answer: i64 = p
            .answer
            .as_deref()
            .ok_or_else(|| format!("prompt {} has no answer", p.uid))?
            .parse()
            .map_err(|e| format!("prompt {}: answer is not a token id: {e}", p.uid))?;
        let caption: Vec<i64> = p.prompt_ids.iter().map(|t| 3 + t % 5).collect();
        let reasoning = vec![8 + p.prompt_ids.len() as i64 % 4, answer];
        Ok(Demo {
            prompt_uid: p.uid,
            caption: Segment {
                text: format!("{caption:?}"),
                tokens: caption,
            },
            reasoning: Segment {
                text: format!("{reasoning:?}"),
                tokens: reasoning,
            },
            source: "toy-oracle".into(),
        })
    }
}

/// Format: `caption… SEP reasoning… EOS`, both parts non-empty; accuracy: last reasoning token
/// equals the answer.
pub struct TokenReward;

impl RewardEngine for TokenReward {
    fn evaluate(&mut self, p: &PromptItem, r: &Rollout) -> EngineResult<RewardOutcome> {
        let ids = &r.response_ids;
        let sep = ids.iter().position(|&t| t == SEP);
        let valid = match sep {
            Some(s) => s > 0 && ids.last() == Some(&EOS) && ids.len() >= s + 3,
            None => false,
        };
        if !valid {
            return Ok(RewardOutcome {
                format_score: 0.0,
                caption: None,
                reasoning: None,
                accuracy: Some(0.0),
            });
        }
        let s = sep.unwrap_or_default();
        let seg = |t: &[i64]| Segment {
            tokens: t.to_vec(),
            text: format!("{t:?}"),
        };
        let reasoning = &ids[s + 1..ids.len() - 1];
        let accuracy = match (&p.answer, reasoning.last()) {
            (Some(a), Some(last)) => (a.parse::<i64>().ok() == Some(*last)) as i32 as f32,
            _ => 0.0,
        };
        Ok(RewardOutcome {
            format_score: 1.0,
            caption: Some(seg(&ids[..s])),
            reasoning: Some(seg(reasoning)),
            accuracy: Some(accuracy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_normalise_matches_hand_values() {
        // Group [1, 2, 3]: mean 2, unbiased std 1 → [-1, 0, 1]; group [5, 5, 5] → 0.
        let z = group_normalise(&[1.0, 2.0, 3.0, 5.0, 5.0, 5.0], 3);
        let want = [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        for (a, b) in z.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{z:?}");
        }
    }

    #[test]
    fn behaviour_logprobs_match_the_learner_and_a_step_changes_them() {
        let probe = Arc::new(ToyProbe::default());
        let mut pol = BigramPolicy::new(Device::Cpu, 3, no_delay(), probe.clone());
        let mut learner =
            BigramLearner::new(Device::Cpu, 3, 0.1, no_delay(), probe.clone()).unwrap();
        let ps = prompts(2, 1);
        let params = SamplingParams {
            max_new_tokens: 8,
            ..SamplingParams::default()
        };
        let rs = pol.generate(&ps, 4, &params).unwrap();
        assert_eq!(rs.len(), 8);
        // Recompute the first rollout's log-probs from the learner's weights.
        let w = learner.snapshot(0).unwrap();
        let lp = Tensor::from_slice(&initial_logits(3))
            .reshape([VOCAB, VOCAB])
            .log_softmax(-1, Kind::Float);
        let mut prev = *ps[0].prompt_ids.last().unwrap();
        for (&t, &b) in rs[0].response_ids.iter().zip(&rs[0].behaviour_logprobs) {
            let want = lp.double_value(&[prev, t]) as f32;
            assert!((want - b).abs() < 1e-5);
            prev = t;
        }
        // One RLVR step moves the weights; the policy loads them as version 1.
        let samples = rs
            .iter()
            .map(|r| super::super::messages::ScoredSample {
                prompt: ps[r.prompt_uid as usize].clone(),
                rollout: r.clone(),
                reward: TokenReward.evaluate(&ps[r.prompt_uid as usize], r).unwrap(),
                caption_score: None,
                reasoning_score: None,
                perception_version: None,
                reasoning_version: None,
                teacher_source: None,
            })
            .collect();
        let mut raw: Vec<f32> = vec![0.0; 8];
        raw[0] = 1.0; // make sure at least one group has a non-zero advantage
        let mut batch = TrainBatch {
            step: 0,
            kind: StageKind::Rlvr,
            group_size: 4,
            samples,
        };
        batch.samples[0].reward.accuracy = Some(raw[0]);
        batch.samples[0].reward.format_score = 1.0;
        let stats = learner.step(&batch).unwrap();
        assert!(stats.loss.is_finite() && stats.tokens > 0);
        let w1 = learner.snapshot(1).unwrap();
        assert_ne!(
            w.tensors[0].data, w1.tensors[0].data,
            "a step must change the weights"
        );
        pol.load_weights(&w1).unwrap();
        assert_eq!(*probe.loaded_versions.lock().unwrap(), vec![1]);
        assert_eq!(probe.trained.lock().unwrap().len(), 2);
    }

    #[test]
    fn bt_step_raises_the_teacher_margin() {
        let mut e = BagScorer::new(Device::Cpu, 0.1, no_delay()).unwrap();
        let seg = |t: &[i64]| Segment {
            tokens: t.to_vec(),
            text: String::new(),
        };
        let pairs = vec![BtPair {
            prompt_uid: 0,
            chosen: seg(&[3, 4]),
            rejected: seg(&[5, 6]),
        }];
        let first = e.bt_step(&pairs).unwrap();
        for _ in 0..20 {
            e.bt_step(&pairs).unwrap();
        }
        let item = |t: &[i64]| ScoreItem {
            prompt_uid: 0,
            segment: seg(t),
        };
        let s = e.score(&[item(&[3, 4]), item(&[5, 6]), item(&[])]).unwrap();
        assert!(s[0] > s[1] && s[2] == 0.0, "{s:?}");
        assert!((first.loss - std::f32::consts::LN_2).abs() < 1e-5);
        assert!(e.score(&[item(&[99])]).is_err());
    }
}
