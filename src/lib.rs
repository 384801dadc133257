//! prism: post-trains Qwen3-VL vision-language models with the PRISM recipe on one multi-GPU box.
//!
//! # Layout
//!
//! - [`models`]: Qwen3-VL and Qwen3-VL-MoE on libtorch (tch): config, safetensors I/O, vision
//!   tower, text decoder, MoE, value head, KV-cache generation, tokenizer, chat template, image
//!   processor.
//! - [`data`]: dataset formats (ShareGPT JSONL, RL parquet, warm-up pairs) and the procedural
//!   visual-reasoning task of the embedded default.
//! - [`reward`]: format validity, caption/reasoning split, answer extraction and matching.
//! - [`algo`]: the RL math as free functions over tensors (advantages, policy and
//!   discriminator losses); no actors, no devices.
//! - [`actors`]: the ractor runtime (generator, teacher-client, experts, reward, learner,
//!   coordinator).
//! - [`stages`]: SFT, discriminator warm-up, PRISM alignment, RLVR, evaluation, and the pipeline
//!   that chains them.
//! - [`serve`]: `prism serve`, the OpenAI-compatible HTTP server over a checkpoint.
//! - [`runtime`]: libtorch set-up and the facts `prism doctor` reports.
//!
//! # Data flow of one alignment step
//!
//! prompts → generator (rollouts with behaviour log-probs and policy version) → reward (format
//! check, caption/reasoning split) → perception and reasoning experts (scores; Bradley–Terry step
//! against the teacher's segments) → learner (advantages, policy update) → weights v+1 → generator.

pub mod actors;
pub mod algo;
pub mod config;
pub mod data;
pub mod models;
pub mod report;
pub mod reward;
pub mod runtime;
pub mod serve;
pub mod stages;
pub mod teacher;
pub mod telemetry;
