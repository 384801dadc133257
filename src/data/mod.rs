//! Dataset formats and the procedural visual-reasoning task.
//!
//! # Layout
//!
//! - [`sharegpt`]: LLaMA-Factory ShareGPT multimodal JSONL (SFT demonstrations) with an image
//!   folder; reads both the `messages`/`role`/`content` and the `conversations`/`from`/`value`
//!   variants, writes the first.
//! - [`rl_parquet`]: the RL prompt parquet (prompt, images as `{bytes, path}` structs, ground
//!   truth, teacher segments, synth metadata).
//! - [`warmup`]: discriminator warm-up pairs JSONL (teacher vs student caption and reasoning).
//! - [`synth`]: the procedural task: scenes, rendering, questions, teacher and public
//!   demonstrations, the error classifier, and `prism data synth`.
//! - [`cli`]: the `prism data …` subcommands.
//!
//! # Error policy
//!
//! Readers fail on the first bad record with a [`DataError`] naming the file and the line (JSONL)
//! or row (parquet) and what is wrong. With [`ReadOptions::skip_bad`] they instead skip bad
//! records and return them in [`Loaded::skipped`], one [`Skipped`] each, so nothing is dropped
//! silently; file-level problems (unreadable file, wrong column types) always fail. Writers are
//! atomic: a temporary file in the same folder, fsync, rename.
//!
//! This module never imports tch: everything here runs without libtorch.

pub mod cli;
pub mod error;
pub mod io;
pub mod rl_parquet;
pub mod sharegpt;
pub mod synth;
pub mod warmup;

pub use error::{DataError, Loaded, Location, ReadOptions, Skipped};
