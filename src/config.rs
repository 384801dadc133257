//! The run configuration of `prism run CONFIG`: one TOML file with `[run]`, `[data]`,
//! `[policy]`, `[actors]` and `[[stages]]`.
//!
//! Owns phase one of a run: parsing (serde, `deny_unknown_fields` everywhere), `--set key=value`
//! overrides applied to the TOML tree before deserialising, and validation that names the file
//! and the key. Phase two (generating data, building the policy, running stages) lives in
//! [`crate::stages::pipeline`]. Defaults live in `Default` impls; [`RunConfig::to_toml`] writes
//! the resolved configuration (`config.resolved.toml` in the run directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::actors::config::{ActorsConfig, DeviceSpec};
use crate::algo::adamw::AdamWConfig;

/// Errors of reading, overriding or validating a run config. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: --set {arg}: {message}", path.display())]
    Override {
        path: PathBuf,
        arg: String,
        message: String,
    },
    #[error("{}: `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Where and how the run executes.
    pub run: RunSection,
    /// Training and evaluation data.
    pub data: DataSection,
    /// The initial policy checkpoint.
    pub policy: PolicySection,
    /// Actor placement and supervision, used by the actor-based stages (align, rlvr).
    pub actors: ActorsConfig,
    /// The stages, run in order; each stage's output checkpoint is the next one's input
    /// unless its `from` names an earlier stage.
    pub stages: Vec<StageConfig>,
    /// The `from` and `arm` keys of each `[[stages]]` entry (one per stage; taken out of the
    /// stage tables before they are deserialised, written back by [`RunConfig::to_toml`]).
    #[serde(skip)]
    pub graph: Vec<StageLink>,
}

/// Where a stage takes its input from and which comparison arm it belongs to: the keys
/// `from = "<earlier stage name>"` and `arm = "<label>"` that every `[[stages]]` entry may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageLink {
    /// Input: the output of this earlier stage (default: the previous stage, or the initial
    /// policy for the first).
    pub from: Option<String>,
    /// Comparison arm (default: the arm of the input stage, `prism` for the first).
    pub arm: Option<String>,
}

/// The arm of stages that name none and follow no stage.
pub const DEFAULT_ARM: &str = "prism";

/// Takes the `from` / `arm` keys out of every `[[stages]]` table.
fn take_stage_links(table: &mut toml::Table) -> Result<Vec<StageLink>, String> {
    let Some(toml::Value::Array(stages)) = table.get_mut("stages") else {
        return Ok(Vec::new());
    };
    let mut links = Vec::with_capacity(stages.len());
    for (i, st) in stages.iter_mut().enumerate() {
        let mut link = StageLink::default();
        if let toml::Value::Table(t) = st {
            for (key, slot) in [("from", &mut link.from), ("arm", &mut link.arm)] {
                match t.remove(key) {
                    None => {}
                    Some(toml::Value::String(v)) => *slot = Some(v),
                    Some(other) => {
                        return Err(format!(
                            "`stages.{i}.{key}`: expected a stage name string, got {}",
                            other.type_str()
                        ));
                    }
                }
            }
        }
        links.push(link);
    }
    Ok(links)
}

/// Seeds of `[run] seeds` (the run repeated once per seed), or the single `[run] seed`.
fn seeds_of(run: &RunSection) -> Vec<u64> {
    if run.seeds.is_empty() {
        vec![run.seed]
    } else {
        run.seeds.clone()
    }
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run directory: data, init policy, stage outputs, metrics and the resolved config go here.
    pub out_dir: PathBuf,
    /// Seed of model init, data order and everything else random in the run.
    pub seed: u64,
    /// Repeat the whole run once per seed (each in `out_dir/seed-<s>/`) and report mean ± std
    /// over them; empty = one run with `seed`.
    pub seeds: Vec<u64>,
    /// libtorch intra-op threads; 0 keeps libtorch's default.
    pub threads: usize,
    /// `"cpu"` or `"cuda:N"`.
    pub device: String,
    /// Parameter dtype of the trained policy: `"float32"` or `"bfloat16"`.
    pub dtype: String,
    /// Prometheus exporter address, or `"none"` for no exporter.
    pub metrics_addr: String,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            out_dir: PathBuf::from("runs/prism"),
            seed: 0,
            seeds: Vec::new(),
            threads: 0,
            device: "cpu".into(),
            dtype: "float32".into(),
            metrics_addr: "127.0.0.1:9464".into(),
        }
    }
}

/// `[data]`: either `synth` (generated into `run_dir/data`) or a `train` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Generate the procedural visual-reasoning task.
    pub synth: Option<SynthSection>,
    /// Existing ShareGPT JSONL for SFT (image paths relative to the file's folder).
    pub train: Option<PathBuf>,
    /// Existing held-out ShareGPT JSONL for eval loss.
    pub eval: Option<PathBuf>,
}

/// `[data.synth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthSection {
    /// Number of train items.
    pub train: usize,
    /// Number of eval items (the held-out SFT file is made from their teacher demonstrations).
    pub eval: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Difficulty levels to mix (each in 1..=3).
    pub difficulties: Vec<u8>,
    /// Fraction of public demonstrations with a perception mistake.
    pub perception_error_rate: f64,
    /// Fraction of public demonstrations with a reasoning mistake.
    pub reasoning_error_rate: f64,
    /// Which demonstrations SFT trains on: `"teacher"` or `"public"`.
    pub sft_source: String,
}

impl Default for SynthSection {
    fn default() -> Self {
        SynthSection {
            train: 64,
            eval: 16,
            seed: 42,
            difficulties: vec![1],
            perception_error_rate: 0.2,
            reasoning_error_rate: 0.2,
            sft_source: "teacher".into(),
        }
    }
}

/// `[policy]`: `path` (an HF checkpoint directory) or `tiny` (built into `run_dir/init`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// HF-layout Qwen3-VL checkpoint directory.
    pub path: Option<PathBuf>,
    /// A random tiny Qwen3-VL with a tokenizer trained on the data's corpus.
    pub tiny: Option<TinyPolicy>,
}

/// `[policy.tiny]`: dimensions of a random Qwen3-VL (HF names of `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyPolicy {
    /// BPE vocabulary of the trained tokenizer, 256 bytes included (26 added tokens on top).
    pub tokenizer_vocab_size: usize,
    /// `text_config.hidden_size`.
    pub hidden_size: i64,
    /// `text_config.intermediate_size`.
    pub intermediate_size: i64,
    /// `text_config.num_hidden_layers`.
    pub num_hidden_layers: i64,
    /// `text_config.num_attention_heads`.
    pub num_attention_heads: i64,
    /// `text_config.num_key_value_heads`.
    pub num_key_value_heads: i64,
    /// `text_config.head_dim` (even; `mrope_section` is derived from it).
    pub head_dim: i64,
    /// `vision_config.depth`.
    pub vision_depth: i64,
    /// `vision_config.hidden_size`.
    pub vision_hidden_size: i64,
    /// `vision_config.intermediate_size`.
    pub vision_intermediate_size: i64,
    /// `vision_config.num_heads`.
    pub vision_num_heads: i64,
    /// Image processor `min_pixels` (`size.shortest_edge`).
    pub image_min_pixels: u64,
    /// Image processor `max_pixels` (`size.longest_edge`).
    pub image_max_pixels: u64,
}

impl Default for TinyPolicy {
    fn default() -> Self {
        TinyPolicy {
            tokenizer_vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vision_depth: 1,
            vision_hidden_size: 32,
            vision_intermediate_size: 64,
            vision_num_heads: 2,
            image_min_pixels: 1024,
            image_max_pixels: 160 * 160,
        }
    }
}

/// One `[[stages]]` entry, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
// a run holds a handful of stages: the size difference of the variants does not matter
#[allow(clippy::large_enum_variant)]
pub enum StageConfig {
    /// Supervised fine-tuning on ShareGPT data.
    Sft(SftConfig),
    /// Discriminator warm-up on offline (teacher, student) segment pairs; its output is its
    /// input, unchanged, and it writes the experts.
    Warmup(WarmupConfig),
    /// PRISM alignment: on-policy distillation against the teacher through the two experts.
    Align(AlignConfig),
    /// RLVR with a verifiable reward (GRPO, DAPO or GSPO) on the actor runtime.
    Rlvr(RlvrConfig),
    /// Evaluation of the incoming checkpoint on an RL parquet (accuracy, format-valid rate,
    /// perception- and reasoning-error rates); its output is its input, unchanged.
    Eval(EvalStageConfig),
}

/// `kind = "eval"` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalStageConfig {
    /// Stage name: the report goes to `run_dir/<name>/`. Default: `eval-<i>`.
    pub name: Option<String>,
    /// RL parquet to evaluate on. Default: the synthetic data's `rl_eval.parquet`.
    pub data: Option<PathBuf>,
    /// Row label in the results table. Default: the name of the evaluated stage (`init` for
    /// the initial policy).
    pub label: Option<String>,
    /// Evaluate only the first `limit` records (all when unset).
    pub limit: Option<usize>,
    /// Prompts generated together (left-padded, greedy).
    pub batch_size: usize,
    /// Maximum generated tokens per response.
    pub max_new_tokens: usize,
}

impl Default for EvalStageConfig {
    fn default() -> Self {
        EvalStageConfig {
            name: None,
            data: None,
            label: None,
            limit: None,
            batch_size: 8,
            max_new_tokens: 256,
        }
    }
}

/// Whether the warm-up trains two dedicated experts or one shared model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExpertLayout {
    /// A perception expert on caption pairs and a reasoning expert on reasoning pairs.
    #[default]
    Dedicated,
    /// One model on both kinds of pairs (the original PRISM discriminator).
    Shared,
}

/// `[stages.init]` of a warm-up: where the experts start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExpertInit {
    /// An HF checkpoint directory with a value head (and its processor files) that every
    /// expert starts from. Unset: tiny experts built from the input policy.
    pub path: Option<PathBuf>,
    /// How tiny experts are built when `path` is unset.
    pub tiny: crate::stages::expert::TinyExpertOptions,
}

/// `kind = "warmup"` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmupConfig {
    /// Stage name: outputs go to `run_dir/<name>/`. Default: `warmup-<i>`.
    pub name: Option<String>,
    /// Optimizer steps of each expert.
    pub steps: u64,
    /// Pairs per step per expert (a shared expert gets this many caption pairs and as many
    /// reasoning pairs).
    pub batch_size: usize,
    pub experts: ExpertLayout,
    pub init: ExpertInit,
    /// Warm-up pairs JSONL. Default: the synthetic data's `warmup_pairs.jsonl`.
    pub data: Option<PathBuf>,
    /// Lines at the end of the file held out for evaluation (never trained on).
    pub eval_pairs: usize,
    /// Evaluate on the held-out pairs every this many steps (and before the first and after
    /// the last); 0: only before and after.
    pub eval_every: u64,
    /// Linear LR warm-up over this fraction of the steps, then cosine decay (PRISM 0.1).
    pub warmup_ratio: f64,
    /// Optimizer, loss and scoring options of the experts.
    pub expert: crate::stages::expert::ExpertOptions,
    /// Write `checkpoint-<step>/` every this many steps; 0: only the final experts.
    pub save_every: u64,
    /// Resume from a `checkpoint-<step>/` folder of this stage.
    pub resume_from: Option<PathBuf>,
    /// Stop after this many non-finite steps in a row.
    pub max_bad_steps_in_row: u64,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            name: None,
            steps: 20,
            batch_size: 8,
            experts: ExpertLayout::Dedicated,
            init: ExpertInit::default(),
            data: None,
            eval_pairs: 16,
            eval_every: 0,
            warmup_ratio: 0.1,
            expert: crate::stages::expert::ExpertOptions::default(),
            save_every: 0,
            resume_from: None,
            max_bad_steps_in_row: 3,
        }
    }
}

impl WarmupConfig {
    /// Checks every field; the error is `(key relative to the stage, message)`.
    pub fn validate(&self, has_synth: bool) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        for (k, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size as u64),
            ("max_bad_steps_in_row", self.max_bad_steps_in_row),
        ] {
            if v == 0 {
                return bad(k, "must be at least 1".into());
            }
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("must be in [0, 1], got {}", self.warmup_ratio),
            );
        }
        if let Err(m) = self.expert.validate() {
            let field = m.split(':').next().unwrap_or("").to_string();
            return bad(&format!("expert.{field}"), m);
        }
        if let Err(m) = self.init.tiny.validate() {
            let field = m.split(':').next().unwrap_or("").to_string();
            return bad(&format!("init.tiny.{field}"), m);
        }
        if self.data.is_none() && !has_synth {
            return bad(
                "data",
                "no warm-up pairs: set it, or generate synthetic data ([data.synth])".into(),
            );
        }
        Ok(())
    }
}

impl StageConfig {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Sft(_) => "sft",
            StageConfig::Warmup(_) => "warmup",
            StageConfig::Align(_) => "align",
            StageConfig::Rlvr(_) => "rlvr",
            StageConfig::Eval(_) => "eval",
        }
    }
}

/// Padding side of training batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadSide {
    #[default]
    Right,
    Left,
}

/// `kind = "sft"` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Stage name: its output goes to `run_dir/<name>/final`. Default: `sft` (`sft-<i>` when
    /// several SFT stages are given without names).
    pub name: Option<String>,
    /// Optimizer steps.
    pub steps: u64,
    /// Conversations per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Fraction of `steps` with linear warm-up before the cosine decay.
    pub warmup_ratio: f64,
    /// Decoupled weight decay of matrices (biases and norms get none).
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Gradient clipping threshold (total 2-norm).
    pub max_grad_norm: f64,
    /// Keep the vision tower fixed: its parameters get no gradient and no optimizer state.
    pub freeze_vision: bool,
    /// Compute the eval loss every this many steps (and before the first and after the last);
    /// 0 = never.
    pub eval_every: u64,
    /// Most eval conversations used per evaluation; 0 = all.
    pub eval_max_samples: usize,
    /// Longest tokenised conversation (images expanded); longer ones are an error naming the
    /// record.
    pub max_length: usize,
    /// Padding side of batches.
    pub padding_side: PadSide,
    /// Consecutive non-finite steps after which the stage stops with an error.
    pub max_bad_steps_in_row: u64,
    /// Train file; default: the `[data]` train file.
    pub train_file: Option<PathBuf>,
    /// Held-out file for eval loss; default: the `[data]` eval file.
    pub eval_file: Option<PathBuf>,
    /// Write a resumable checkpoint (`run_dir/<name>/checkpoint-<step>`) every this many
    /// steps; 0 = only the final one.
    pub save_every: u64,
    /// Keep only the newest this many `checkpoint-<step>` folders (older ones are deleted after
    /// each save); 0 keeps all.
    pub keep_checkpoints: usize,
    /// Continue from a checkpoint folder written by this stage (weights, optimizer state, step
    /// and data position); the stage options must otherwise be the same.
    pub resume_from: Option<PathBuf>,
    /// Fault injection for tests: the loss of these (1-based) steps is multiplied by NaN.
    pub inject_nan_steps: Vec<u64>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            name: None,
            steps: 100,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-5,
            warmup_ratio: 0.03,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            freeze_vision: false,
            eval_every: 0,
            eval_max_samples: 0,
            max_length: 4096,
            padding_side: PadSide::Right,
            max_bad_steps_in_row: 5,
            train_file: None,
            eval_file: None,
            save_every: 0,
            keep_checkpoints: 2,
            resume_from: None,
            inject_nan_steps: Vec::new(),
        }
    }
}

impl SftConfig {
    /// The optimizer hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            master_weights: true,
        }
    }
}

/// The policy-gradient algorithm of an RLVR stage (PRISM_ALGORITHM.md §6). Each one is a preset
/// of the options left unset in [`RlvrConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RlAlgorithm {
    /// Vanilla PPO loss, clip 0.2/0.2, dual clip 3, token-mean, wd 0.01, no warm-up.
    #[default]
    Grpo,
    /// GRPO plus clip-higher 0.2/0.28, dual clip 10, wd 0.1, 10 warm-up steps, dynamic sampling
    /// and overlong shaping.
    Dapo,
    /// Sequence-level ratio, clip 3e-4/4e-4, seq-mean-token-mean, wd 0.1, 5 % warm-up.
    Gspo,
}

/// verl's `loss_agg_mode` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggMode {
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    SeqMeanTokenSumNorm,
}

/// verl's KL estimator names (`k1` = "kl", `k2` = "mse", `k3` = "low_var_kl", `abs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimatorName {
    K1,
    K2,
    #[default]
    K3,
    Abs,
}

/// The learning-rate schedule of an RL stage (multiplies `lr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    /// Linear warm-up, then constant (the paper's RL stages).
    #[default]
    Constant,
    /// Linear warm-up, then half a cosine to 0 at the last update.
    Cosine,
}

/// `kind = "rlvr"` options. Fields left unset take the value of `algorithm`'s preset (the
/// paper's scripts, PRISM_ALGORITHM.md §6.1); everything else defaults to the paper's GRPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlvrConfig {
    /// Stage name: outputs go to `run_dir/<name>/`. Default: `rlvr-<i>`.
    pub name: Option<String>,
    /// `grpo`, `dapo` or `gspo`.
    pub algorithm: RlAlgorithm,
    /// Training steps (fewer if the prompts of all passes run out).
    pub steps: u64,
    /// Prompts per step (`data.train_batch_size`).
    pub prompts_per_step: usize,
    /// Samples per prompt (`rollout.n`, the group size).
    pub samples_per_prompt: usize,
    /// Rollout temperature (0 = greedy).
    pub temperature: f64,
    /// Rollout nucleus mass.
    pub top_p: f64,
    /// Longest response in tokens (the stop token not counted).
    pub max_new_tokens: usize,
    /// Prompts longer than this (image tokens included) are left out and reported.
    pub max_prompt_tokens: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// LR schedule after the warm-up.
    pub lr_scheduler: LrScheduler,
    /// Warm-up as a fraction of the updates. Default: GRPO 0, DAPO none (see `warmup_steps`),
    /// GSPO 0.05.
    pub warmup_ratio: Option<f64>,
    /// Warm-up in updates (wins over `warmup_ratio`). Default: DAPO 10.
    pub warmup_steps: Option<u64>,
    /// Decoupled weight decay of matrices. Default: GRPO 0.01, DAPO and GSPO 0.1.
    pub weight_decay: Option<f64>,
    /// Gradient clipping threshold (total 2-norm).
    pub max_grad_norm: f64,
    /// Lower clip ε. Default: GRPO / DAPO 0.2, GSPO 3e-4.
    pub clip_ratio_low: Option<f64>,
    /// Upper clip ε. Default: GRPO 0.2, DAPO 0.28, GSPO 4e-4.
    pub clip_ratio_high: Option<f64>,
    /// Dual-clip constant c; 0 turns it off. Default: GRPO 3, DAPO 10, GSPO off.
    pub clip_ratio_c: Option<f64>,
    /// Loss aggregation. Default: GRPO / DAPO token-mean, GSPO seq-mean-token-mean.
    pub loss_agg_mode: Option<LossAggMode>,
    /// Coefficient of the KL-to-input-policy loss; 0 = none (no reference model is loaded).
    pub kl_coef: f64,
    /// KL estimator of the KL loss.
    pub kl_estimator: KlEstimatorName,
    /// Entropy bonus coefficient (0 in every PRISM stage).
    pub entropy_coef: f64,
    /// Policy updates per step: the batch is split into this many mini-batches, each one an
    /// optimizer step (so from the second on the ratio to the behaviour policy is not 1).
    pub mini_batches: usize,
    /// Rollouts per forward/backward inside a mini-batch (gradients accumulate; the loss is
    /// normalised over the whole mini-batch); 0 = the whole mini-batch in one forward.
    pub micro_batch_size: usize,
    /// Passes over the prompts.
    pub passes: usize,
    /// RL parquet of training prompts. Default: the prepared `rl_train.parquet`.
    pub data: Option<PathBuf>,
    /// Use only the first `limit` rows.
    pub limit: Option<usize>,
    /// Sampling seed; default: the run seed.
    pub seed: Option<u64>,
    /// Write `run_dir/<name>/checkpoint-<step>` every this many steps; 0 = only `final`.
    pub save_every: u64,
    /// Continue from a `checkpoint-<step>` (or `final`) folder written by this stage.
    pub resume_from: Option<PathBuf>,
    /// Consecutive non-finite steps after which the stage stops with an error.
    pub max_bad_steps_in_row: u64,
    /// DAPO dynamic sampling: drop groups whose accuracy does not vary and generate more
    /// prompts with the same policy version until `prompts_per_step` varying groups are kept
    /// (the surplus is trimmed). Default: DAPO on.
    pub dynamic_sampling: Option<bool>,
    /// Generation rounds of `prompts_per_step` new prompts per step at most under dynamic
    /// sampling (verl's `max_num_gen_batches`); 0 = unlimited. When the limit is reached with
    /// fewer varying groups than `prompts_per_step`, the step trains on the kept ones (or, with
    /// none, is skipped) and counts `dynamic_sampling_short`. Default 10; only valid with
    /// dynamic sampling on.
    pub max_gen_batches: Option<u32>,
    /// Prompts per generation round under dynamic sampling (verl's `data.gen_batch_size`; the
    /// paper's DAPO script draws 96 for 32 trained). Default `prompts_per_step`; only valid
    /// with dynamic sampling on.
    pub gen_batch_size: Option<usize>,
    /// DAPO overlong reward shaping. Default: DAPO on.
    pub overlong_buffer: Option<bool>,
    /// Length of the overlong penalty zone before `max_new_tokens` (DAPO 4096).
    pub overlong_buffer_len: usize,
    /// Penalty at `max_new_tokens` (DAPO 1.0).
    pub overlong_penalty_factor: f64,
    /// Fault injection for tests: the loss of these (1-based) steps is multiplied by NaN.
    pub inject_nan_steps: Vec<u64>,
}

/// Where the teacher's demonstrations come from in an `align` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TeacherSource {
    /// The RL parquet's teacher columns (`teacher_caption`/`teacher_cot` or `teacher_response`):
    /// demonstrations collected beforehand (`prism teacher`), or the synthetic oracle's.
    #[default]
    Dataset,
    /// A live OpenAI-compatible endpoint (`[stages.teacher] config` names its TOML).
    Http,
}

/// `[stages.teacher]` of an `align` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AlignTeacher {
    pub source: TeacherSource,
    /// Teacher client config (TOML, see configs/teacher-*.toml) when `source = "http"`.
    pub config: Option<PathBuf>,
}

/// `[stages.experts]` of an `align` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AlignExperts {
    /// Experts folder (`perception/` + `reasoning/`, or `shared/`). Default: the experts of
    /// the latest warmup (or align) stage up this stage's input chain.
    pub path: Option<PathBuf>,
    /// Optimizer, loss and scoring options of both experts (PRISM alignment: lr 1e-6, score
    /// clip 10, L2 0.001).
    pub options: crate::stages::expert::ExpertOptions,
}

/// `kind = "align"` options: the policy update (every `rlvr` option, in `[stages.policy]`),
/// the multi-reward advantage (`[stages.advantage]`), the experts and the teacher. Defaults are
/// the paper's Stage-2 settings (PRISM_ALGORITHM.md §5.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignConfig {
    /// Stage name: outputs go to `run_dir/<name>/`. Default: `align-<i>`.
    pub name: Option<String>,
    /// Rollouts and the policy update (vanilla PPO loss; `algorithm`, clip and loss options as
    /// in `rlvr`).
    pub policy: RlvrConfig,
    /// PRISM's multi-reward advantage (mode 1: 0.5·GN(caption) + 0.5·GN(cot) − 1.5·invalid).
    pub advantage: crate::algo::advantage::MultiRewardOptions,
    pub experts: AlignExperts,
    pub teacher: AlignTeacher,
}

impl Default for AlignConfig {
    fn default() -> Self {
        AlignConfig {
            name: None,
            policy: RlvrConfig {
                steps: 500,
                prompts_per_step: 4,
                samples_per_prompt: 16,
                max_new_tokens: 6144,
                save_every: 500,
                ..RlvrConfig::default()
            },
            advantage: crate::algo::advantage::MultiRewardOptions::paper(),
            experts: AlignExperts {
                path: None,
                options: crate::stages::expert::ExpertOptions {
                    lr: 1e-6,
                    ..Default::default()
                },
            },
            teacher: AlignTeacher::default(),
        }
    }
}

impl AlignConfig {
    /// Checks the options; `key(field)` names the field, errors are `(key, message)`.
    pub fn validate(
        &self,
        key: &dyn Fn(&str) -> String,
        synth_data: bool,
    ) -> Result<(), (String, String)> {
        self.policy
            .validate(&|k| key(&format!("policy.{k}")), synth_data)?;
        self.advantage
            .validate()
            .map_err(|e| (key("advantage"), e.to_string()))?;
        self.experts
            .options
            .validate()
            .map_err(|m| (key("experts.options"), m))?;
        match (self.teacher.source, &self.teacher.config) {
            (TeacherSource::Http, None) => Err((
                key("teacher.config"),
                "source = \"http\" needs the teacher client config (a TOML file)".into(),
            )),
            (TeacherSource::Dataset, Some(_)) => Err((
                key("teacher.config"),
                "only used with source = \"http\"".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// verl DAPO's `max_num_gen_batches`: generation rounds per step at most under dynamic sampling.
pub const DEFAULT_MAX_GEN_BATCHES: u32 = 10;

impl Default for RlvrConfig {
    fn default() -> Self {
        RlvrConfig {
            name: None,
            algorithm: RlAlgorithm::Grpo,
            steps: 1500,
            prompts_per_step: 32,
            samples_per_prompt: 16,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 8192,
            max_prompt_tokens: 2048,
            lr: 1e-6,
            lr_scheduler: LrScheduler::Constant,
            warmup_ratio: None,
            warmup_steps: None,
            weight_decay: None,
            max_grad_norm: 1.0,
            clip_ratio_low: None,
            clip_ratio_high: None,
            clip_ratio_c: None,
            loss_agg_mode: None,
            kl_coef: 0.0,
            kl_estimator: KlEstimatorName::K3,
            entropy_coef: 0.0,
            mini_batches: 1,
            micro_batch_size: 0,
            passes: 1,
            data: None,
            limit: None,
            seed: None,
            save_every: 120,
            resume_from: None,
            max_bad_steps_in_row: 5,
            dynamic_sampling: None,
            max_gen_batches: None,
            gen_batch_size: None,
            overlong_buffer: None,
            overlong_buffer_len: 4096,
            overlong_penalty_factor: 1.0,
            inject_nan_steps: Vec::new(),
        }
    }
}

impl RlvrConfig {
    /// Weight decay after the algorithm's preset.
    pub fn resolved_weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.algorithm {
            RlAlgorithm::Grpo => 0.01,
            RlAlgorithm::Dapo | RlAlgorithm::Gspo => 0.1,
        })
    }

    /// Warm-up in optimizer updates, for `updates` updates in all.
    pub fn resolved_warmup_steps(&self, updates: u64) -> u64 {
        if let Some(w) = self.warmup_steps {
            return w;
        }
        let ratio = self.warmup_ratio.unwrap_or(match self.algorithm {
            RlAlgorithm::Grpo => 0.0,
            RlAlgorithm::Dapo => return 10,
            RlAlgorithm::Gspo => 0.05,
        });
        (ratio * updates as f64).ceil() as u64
    }

    /// (clip low, clip high, dual clip c (None = off), aggregation) after the preset.
    pub fn resolved_clip(&self) -> (f64, f64, Option<f64>, LossAggMode) {
        let (lo, hi, c, agg) = match self.algorithm {
            RlAlgorithm::Grpo => (0.2, 0.2, Some(3.0), LossAggMode::TokenMean),
            RlAlgorithm::Dapo => (0.2, 0.28, Some(10.0), LossAggMode::TokenMean),
            RlAlgorithm::Gspo => (3e-4, 4e-4, None, LossAggMode::SeqMeanTokenMean),
        };
        let c = match self.clip_ratio_c {
            Some(0.0) => None,
            Some(x) => Some(x),
            None => c,
        };
        (
            self.clip_ratio_low.unwrap_or(lo),
            self.clip_ratio_high.unwrap_or(hi),
            c,
            self.loss_agg_mode.unwrap_or(agg),
        )
    }

    /// Whether DAPO dynamic sampling and overlong shaping are on, after the preset.
    pub fn resolved_dapo(&self) -> (bool, bool) {
        let dapo = self.algorithm == RlAlgorithm::Dapo;
        (
            self.dynamic_sampling.unwrap_or(dapo),
            self.overlong_buffer.unwrap_or(dapo),
        )
    }

    /// Generation rounds per step at most under dynamic sampling (0 = unlimited); `None` when
    /// dynamic sampling is off.
    pub fn resolved_max_gen_batches(&self) -> Option<u32> {
        let (dynamic, _) = self.resolved_dapo();
        dynamic.then(|| self.max_gen_batches.unwrap_or(DEFAULT_MAX_GEN_BATCHES))
    }

    /// Checks the options; `key(field)` names the field, errors are `(key, message)`.
    /// `synth_data`: the run generates `rl_train.parquet` (so `data` may stay unset).
    pub fn validate(
        &self,
        key: &dyn Fn(&str) -> String,
        synth_data: bool,
    ) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((key(k), m));
        for (k, v) in [
            ("steps", self.steps as usize),
            ("prompts_per_step", self.prompts_per_step),
            ("samples_per_prompt", self.samples_per_prompt),
            ("max_new_tokens", self.max_new_tokens),
            ("max_prompt_tokens", self.max_prompt_tokens),
            ("mini_batches", self.mini_batches),
            ("passes", self.passes),
            ("max_bad_steps_in_row", self.max_bad_steps_in_row as usize),
        ] {
            if v == 0 {
                return err(k, "must be at least 1".into());
            }
        }
        if self.limit == Some(0) {
            return err("limit", "must be at least 1 when set".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return err(
                "temperature",
                format!("must be finite and ≥ 0, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return err("lr", format!("must be finite and > 0, got {}", self.lr));
        }
        if let Some(r) = self.warmup_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return err("warmup_ratio", format!("must be in [0, 1], got {r}"));
        }
        let updates = self.steps * self.mini_batches as u64;
        if self.resolved_warmup_steps(updates) > updates {
            return err(
                "warmup_steps",
                format!("longer than the {updates} updates of the stage"),
            );
        }
        let wd = self.resolved_weight_decay();
        if !(wd.is_finite() && wd >= 0.0) {
            return err("weight_decay", format!("must be finite and ≥ 0, got {wd}"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return err(
                "max_grad_norm",
                format!("must be finite and > 0, got {}", self.max_grad_norm),
            );
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return err(
                "kl_coef",
                format!("must be finite and ≥ 0, got {}", self.kl_coef),
            );
        }
        if !self.entropy_coef.is_finite() {
            return err(
                "entropy_coef",
                format!("must be finite, got {}", self.entropy_coef),
            );
        }
        let (lo, hi, c, agg) = self.resolved_clip();
        if !(lo.is_finite() && lo > 0.0 && lo < 1.0) {
            return err("clip_ratio_low", format!("must be in (0, 1), got {lo}"));
        }
        if !(hi.is_finite() && hi > 0.0) {
            return err(
                "clip_ratio_high",
                format!("must be finite and > 0, got {hi}"),
            );
        }
        if let Some(c) = c
            && !(c.is_finite() && c >= 1.0 + hi)
        {
            return err(
                "clip_ratio_c",
                format!(
                    "must be ≥ 1 + clip_ratio_high = {} (or 0 for off), got {c}",
                    1.0 + hi
                ),
            );
        }
        if self.algorithm == RlAlgorithm::Gspo {
            if c.is_some() {
                return err("clip_ratio_c", "GSPO has no dual clip: set it to 0".into());
            }
            if agg != LossAggMode::SeqMeanTokenMean {
                return err(
                    "loss_agg_mode",
                    "GSPO is a per-sequence objective and needs seq-mean-token-mean".into(),
                );
            }
        }
        let (dynamic, overlong) = self.resolved_dapo();
        for (k, v) in [
            ("max_gen_batches", self.max_gen_batches.map(|m| m as usize)),
            ("gen_batch_size", self.gen_batch_size),
        ] {
            if !dynamic && let Some(m) = v {
                return err(
                    k,
                    format!(
                        "is {m} but dynamic sampling is off: it needs algorithm = \"dapo\" or \
                         dynamic_sampling = true"
                    ),
                );
            }
        }
        if self.gen_batch_size == Some(0) {
            return err("gen_batch_size", "must be at least 1 when set".into());
        }
        if overlong {
            if self.overlong_buffer_len == 0 || self.overlong_buffer_len > self.max_new_tokens {
                return err(
                    "overlong_buffer_len",
                    format!(
                        "must be in [1, max_new_tokens = {}], got {}",
                        self.max_new_tokens, self.overlong_buffer_len
                    ),
                );
            }
            if !(self.overlong_penalty_factor.is_finite() && self.overlong_penalty_factor >= 0.0) {
                return err(
                    "overlong_penalty_factor",
                    format!(
                        "must be finite and ≥ 0, got {}",
                        self.overlong_penalty_factor
                    ),
                );
            }
        }
        if self.data.is_none() && !synth_data {
            return err(
                "data",
                "no RL prompts: set it to an RL parquet, or use synthetic data".into(),
            );
        }
        Ok(())
    }
}

impl RunConfig {
    /// Reads `path`, applies `--set key=value` overrides, deserialises and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parses TOML text (`path` names it in errors), applies overrides, validates.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<RunConfig, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for arg in overrides {
            apply_override(&mut table, arg).map_err(|message| ConfigError::Override {
                path: path.to_path_buf(),
                arg: arg.clone(),
                message,
            })?;
        }
        let graph = take_stage_links(&mut table).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let whole = table.clone();
        let mut cfg: RunConfig =
            RunConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
                // serde's `kind`-tagged stages lose the field path: name the stage and the
                // field when a stage is at fault; otherwise, without overrides or stage links,
                // parsing the text itself gives the error its line and column
                let plain =
                    overrides.is_empty() && graph.iter().all(|l| *l == StageLink::default());
                let message = match (
                    stage_error_at(&whole),
                    plain,
                    toml::from_str::<RunConfig>(text),
                ) {
                    // serde's message without its "in `stages`" tail
                    (Some(at), _, _) => {
                        let what = e.to_string();
                        format!("{at}: {}", what.lines().next().unwrap_or_default())
                    }
                    (None, true, Err(spanned)) => spanned.to_string(),
                    _ => e.to_string(),
                };
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                }
            })?;
        cfg.graph = graph;
        cfg.graph.resize(cfg.stages.len(), StageLink::default());
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The resolved configuration as TOML (stage links written back into their stages).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut value = toml::Table::try_from(self)?;
        if let Some(toml::Value::Array(stages)) = value.get_mut("stages") {
            for (st, link) in stages.iter_mut().zip(&self.graph) {
                if let toml::Value::Table(t) = st {
                    if let Some(f) = &link.from {
                        t.insert("from".into(), toml::Value::String(f.clone()));
                    }
                    if let Some(a) = &link.arm {
                        t.insert("arm".into(), toml::Value::String(a.clone()));
                    }
                }
            }
        }
        toml::to_string(&value)
    }

    /// The seeds the run is repeated with (one element unless `[run] seeds` is set).
    pub fn seeds(&self) -> Vec<u64> {
        seeds_of(&self.run)
    }

    /// Index of the stage whose output stage `i` takes as input; `None` = the initial policy.
    pub fn input_of(&self, i: usize) -> Option<usize> {
        match self.graph.get(i).and_then(|l| l.from.as_deref()) {
            Some(name) => (0..i).find(|&j| self.stage_name(j) == name),
            None => i.checked_sub(1),
        }
    }

    /// The comparison arm of stage `i` (explicit, else its input stage's, else `prism`).
    pub fn arm_of(&self, i: usize) -> String {
        if let Some(a) = self.graph.get(i).and_then(|l| l.arm.clone()) {
            return a;
        }
        match self.input_of(i) {
            Some(j) => self.arm_of(j),
            None => DEFAULT_ARM.to_string(),
        }
    }

    /// The results-table label of eval stage `i`: its `label`, else the name of the stage it
    /// evaluates (`init` for the initial policy).
    pub fn eval_label(&self, i: usize) -> String {
        if let StageConfig::Eval(e) = &self.stages[i]
            && let Some(l) = &e.label
        {
            return l.clone();
        }
        match self.input_of(i) {
            Some(j) => self.stage_name(j),
            None => "init".to_string(),
        }
    }

    /// The `[run] device` as a tch device.
    pub fn device(&self) -> tch::Device {
        match self.run.device.parse::<DeviceSpec>() {
            Ok(DeviceSpec::Cuda(i)) => tch::Device::Cuda(i),
            _ => tch::Device::Cpu,
        }
    }

    /// The `[run] dtype` as a tch kind.
    pub fn kind(&self) -> tch::Kind {
        if self.run.dtype == "bfloat16" {
            tch::Kind::BFloat16
        } else {
            tch::Kind::Float
        }
    }

    /// The exporter address, `None` for `"none"`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.run.metrics_addr.parse().ok()
    }

    /// The output name of stage `i`.
    pub fn stage_name(&self, i: usize) -> String {
        match &self.stages[i] {
            StageConfig::Sft(s) => s.name.clone().unwrap_or_else(|| {
                let n_sft = self
                    .stages
                    .iter()
                    .filter(|s| matches!(s, StageConfig::Sft(_)))
                    .count();
                if n_sft == 1 {
                    "sft".into()
                } else {
                    format!("sft-{i}")
                }
            }),
            StageConfig::Eval(e) => e.name.clone().unwrap_or_else(|| format!("eval-{i}")),
            StageConfig::Rlvr(r) => r.name.clone().unwrap_or_else(|| format!("rlvr-{i}")),
            StageConfig::Warmup(w) => w.name.clone().unwrap_or_else(|| format!("warmup-{i}")),
            StageConfig::Align(a) => a.name.clone().unwrap_or_else(|| format!("align-{i}")),
        }
    }

    /// Checks every field once; errors name the file and the dotted key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let r = &self.run;
        r.device
            .parse::<DeviceSpec>()
            .map_err(|m| bad("run.device", m))?;
        if r.dtype != "float32" && r.dtype != "bfloat16" {
            return Err(bad(
                "run.dtype",
                format!("expected \"float32\" or \"bfloat16\", got {:?}", r.dtype),
            ));
        }
        if r.metrics_addr != "none" && r.metrics_addr.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "run.metrics_addr",
                format!(
                    "expected host:port (e.g. 127.0.0.1:9464) or \"none\", got {:?}",
                    r.metrics_addr
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = r.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(bad("run.seeds", format!("seed {dup} is given twice")));
        }
        if r.out_dir.as_os_str().is_empty() {
            return Err(bad("run.out_dir", "must not be empty".into()));
        }

        let d = &self.data;
        match (&d.synth, &d.train) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "data",
                    "give either `synth` or `train`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "data",
                    "needs `synth` (generated data) or `train` (a ShareGPT JSONL file)".into(),
                ));
            }
            _ => {}
        }
        if d.synth.is_some() && d.eval.is_some() {
            return Err(bad(
                "data.eval",
                "synthetic data brings its own eval split; remove `eval` or `synth`".into(),
            ));
        }
        if let Some(s) = &d.synth {
            if s.train == 0 {
                return Err(bad("data.synth.train", "must be at least 1".into()));
            }
            if s.sft_source != "teacher" && s.sft_source != "public" {
                return Err(bad(
                    "data.synth.sft_source",
                    format!("expected \"teacher\" or \"public\", got {:?}", s.sft_source),
                ));
            }
            if s.difficulties.is_empty() || s.difficulties.iter().any(|d| !(1..=3).contains(d)) {
                return Err(bad(
                    "data.synth.difficulties",
                    format!("each level must be 1, 2 or 3, got {:?}", s.difficulties),
                ));
            }
            for (k, v) in [
                ("perception_error_rate", s.perception_error_rate),
                ("reasoning_error_rate", s.reasoning_error_rate),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(bad(
                        &format!("data.synth.{k}"),
                        format!("must be in [0, 1], got {v}"),
                    ));
                }
            }
            if s.perception_error_rate + s.reasoning_error_rate > 1.0 {
                return Err(bad(
                    "data.synth",
                    "perception_error_rate + reasoning_error_rate must be ≤ 1".into(),
                ));
            }
        }

        match (&self.policy.path, &self.policy.tiny) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "policy",
                    "give either `path` or `tiny`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "policy",
                    "needs `path` (an HF checkpoint directory) or `tiny` (a random tiny model)"
                        .into(),
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.policy.tiny {
            for (k, v) in [
                ("hidden_size", t.hidden_size),
                ("intermediate_size", t.intermediate_size),
                ("num_hidden_layers", t.num_hidden_layers),
                ("num_attention_heads", t.num_attention_heads),
                ("num_key_value_heads", t.num_key_value_heads),
                ("head_dim", t.head_dim),
                ("vision_depth", t.vision_depth),
                ("vision_hidden_size", t.vision_hidden_size),
                ("vision_intermediate_size", t.vision_intermediate_size),
                ("vision_num_heads", t.vision_num_heads),
            ] {
                if v <= 0 {
                    return Err(bad(
                        &format!("policy.tiny.{k}"),
                        format!("must be > 0, got {v}"),
                    ));
                }
            }
            if t.head_dim % 8 != 0 {
                return Err(bad(
                    "policy.tiny.head_dim",
                    format!(
                        "must be a multiple of 8 (M-RoPE sections), got {}",
                        t.head_dim
                    ),
                ));
            }
            if t.num_attention_heads % t.num_key_value_heads != 0 {
                return Err(bad(
                    "policy.tiny.num_key_value_heads",
                    "must divide num_attention_heads".into(),
                ));
            }
            if t.vision_hidden_size % t.vision_num_heads != 0 {
                return Err(bad(
                    "policy.tiny.vision_num_heads",
                    "must divide vision_hidden_size".into(),
                ));
            }
            if t.tokenizer_vocab_size <= 256 {
                return Err(bad(
                    "policy.tiny.tokenizer_vocab_size",
                    format!(
                        "must be above the 256 byte tokens, got {}",
                        t.tokenizer_vocab_size
                    ),
                ));
            }
            if t.image_min_pixels == 0 || t.image_min_pixels > t.image_max_pixels {
                return Err(bad(
                    "policy.tiny.image_min_pixels",
                    "need 0 < image_min_pixels ≤ image_max_pixels".into(),
                ));
            }
        }

        self.actors
            .validate()
            .map_err(|e| bad(&e.field, e.msg.clone()))?;

        if self.stages.is_empty() {
            return Err(bad(
                "stages",
                "no stage given (add a [[stages]] entry)".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, st) in self.stages.iter().enumerate() {
            let key = |k: &str| format!("stages.{i}.{k}");
            let name = self.stage_name(i);
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(
                    &key("name"),
                    format!("{name:?}: use letters, digits, '-' and '_' only"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(bad(&key("name"), format!("{name:?} is used twice")));
            }
            if let Some(link) = self.graph.get(i) {
                if let Some(from) = &link.from
                    && !(0..i).any(|j| self.stage_name(j) == *from)
                {
                    let earlier: Vec<String> = (0..i).map(|j| self.stage_name(j)).collect();
                    return Err(bad(
                        &key("from"),
                        format!("{from:?} is not an earlier stage (earlier: {earlier:?})"),
                    ));
                }
                if let Some(arm) = &link.arm
                    && (arm.is_empty()
                        || !arm
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                {
                    return Err(bad(
                        &key("arm"),
                        format!("{arm:?}: use letters, digits, '-' and '_' only"),
                    ));
                }
            }
            let s = match st {
                StageConfig::Sft(s) => s,
                StageConfig::Warmup(w) => {
                    w.validate(self.data.synth.is_some())
                        .map_err(|(k, m)| bad(&key(&k), m))?;
                    continue;
                }
                StageConfig::Eval(e) => {
                    for (k, v) in [
                        ("batch_size", e.batch_size),
                        ("max_new_tokens", e.max_new_tokens),
                    ] {
                        if v == 0 {
                            return Err(bad(&key(k), "must be at least 1".into()));
                        }
                    }
                    if e.limit == Some(0) {
                        return Err(bad(&key("limit"), "must be at least 1 when set".into()));
                    }
                    let synth_eval = self.data.synth.as_ref().is_some_and(|s| s.eval > 0);
                    if e.data.is_none() && !synth_eval {
                        return Err(bad(
                            &key("data"),
                            "no evaluation data: set it, or generate synthetic eval items \
                             (data.synth.eval > 0)"
                                .into(),
                        ));
                    }
                    continue;
                }
                StageConfig::Rlvr(r) => {
                    r.validate(&key, self.data.synth.is_some())
                        .map_err(|(k, m)| bad(&k, m))?;
                    continue;
                }
                StageConfig::Align(a) => {
                    a.validate(&key, self.data.synth.is_some())
                        .map_err(|(k, m)| bad(&k, m))?;
                    continue;
                }
            };
            for (k, v) in [
                ("steps", s.steps as usize),
                ("batch_size", s.batch_size),
                ("grad_accum", s.grad_accum),
                ("max_length", s.max_length),
                ("max_bad_steps_in_row", s.max_bad_steps_in_row as usize),
            ] {
                if v == 0 {
                    return Err(bad(&key(k), "must be at least 1".into()));
                }
            }
            s.adamw()
                .validate()
                .map_err(|e| bad(&key("lr"), e.to_string()))?;
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return Err(bad(
                    &key("lr"),
                    format!("must be finite and > 0, got {}", s.lr),
                ));
            }
            if !(0.0..=1.0).contains(&s.warmup_ratio) {
                return Err(bad(
                    &key("warmup_ratio"),
                    format!("must be in [0, 1], got {}", s.warmup_ratio),
                ));
            }
            if !(s.max_grad_norm.is_finite() && s.max_grad_norm > 0.0) {
                return Err(bad(
                    &key("max_grad_norm"),
                    format!("must be finite and > 0, got {}", s.max_grad_norm),
                ));
            }
            if s.train_file.is_none() && self.data.synth.is_none() && self.data.train.is_none() {
                return Err(bad(&key("train_file"), "no training data".into()));
            }
        }
        Ok(())
    }
}

/// Where the first `[[stages]]` entry that fails to deserialise on its own fails, as
/// `stages.I (kind = "K"), `field.path``; `None` when every stage parses (the error is
/// elsewhere) or a stage has no known `kind` (serde's own message names the kinds).
fn stage_error_at(table: &toml::Table) -> Option<String> {
    fn path_of<T: serde::de::DeserializeOwned>(v: toml::Value) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(|e| e.path().to_string())
    }
    let stages = table.get("stages")?.as_array()?;
    stages.iter().enumerate().find_map(|(i, st)| {
        let mut body = st.as_table()?.clone();
        let kind = body.remove("kind")?.as_str()?.to_string();
        let v = toml::Value::Table(body);
        let path = match kind.as_str() {
            "sft" => path_of::<SftConfig>(v),
            "warmup" => path_of::<WarmupConfig>(v),
            "align" => path_of::<AlignConfig>(v),
            "rlvr" => path_of::<RlvrConfig>(v),
            "eval" => path_of::<EvalStageConfig>(v),
            _ => None,
        }?;
        Some(match path.as_str() {
            "." => format!("stages.{i} (kind = {kind:?})"),
            p => format!("stages.{i} (kind = {kind:?}), `{p}`"),
        })
    })
}

/// Applies one `key=value` override: `key` is a dotted path (`run.seed`, `stages.0.lr`;
/// numbers index arrays), `value` is a TOML value (`1e-4`, `true`, `"x"`, `[1, 2]`) or, when it
/// does not parse as one, a bare string. Missing tables are created.
pub fn apply_override(root: &mut toml::Table, arg: &str) -> Result<(), String> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| "expected key=value".to_string())?;
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key".into());
    }
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed key {key:?}"));
    }
    let mut whole = toml::Value::Table(std::mem::take(root));
    let result = set_path(&mut whole, &parts, value);
    if let toml::Value::Table(t) = whole {
        *root = t;
    }
    result
}

/// Sets `parts` (a split dotted key) in `cur` to `value`.
fn set_path(mut cur: &mut toml::Value, parts: &[&str], value: toml::Value) -> Result<(), String> {
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        let here = parts[..=depth].join(".");
        match cur {
            toml::Value::Table(t) => {
                if last {
                    t.insert(part.to_string(), value);
                    return Ok(());
                }
                cur = t
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
            toml::Value::Array(a) => {
                let i: usize = part
                    .parse()
                    .map_err(|_| format!("`{here}`: {part:?} is not an index of the array"))?;
                let len = a.len();
                let slot = a.get_mut(i).ok_or_else(|| {
                    format!("`{here}`: index {i} is out of range (the array has {len} entries)")
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                cur = slot;
            }
            _ => {
                return Err(format!(
                    "`{}` is a value, not a table or array",
                    parts[..depth].join(".")
                ));
            }
        }
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
