//! `prism data …`: generate the synthetic dataset and the sample images.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::error::DataError;
use super::synth::{PublicNoise, SynthConfig, write_dataset, write_samples};

/// The `prism data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate the procedural visual-reasoning dataset (images, SFT JSONL, RL parquet, warm-up
    /// pairs, manifest).
    Synth(SynthArgs),
    /// Write sample images and a README listing their questions and answers.
    Samples(SamplesArgs),
}

/// Arguments of `prism data synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (created if needed; existing files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of train items.
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Number of held-out eval items (never sharing a scene with train).
    #[arg(long, default_value_t = 200)]
    pub eval: usize,
    /// Seed: the same seed writes byte-identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Difficulty levels to mix, comma-separated (1 perception, 2 one reasoning step, 3 several).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub difficulty: Vec<u8>,
    /// Fraction of public demonstrations with a perception mistake.
    #[arg(long, default_value_t = 0.2)]
    pub public_perception_error_rate: f64,
    /// Fraction of public demonstrations with a reasoning mistake (caption right, answer wrong).
    #[arg(long, default_value_t = 0.2)]
    pub public_reasoning_error_rate: f64,
}

/// Arguments of `prism data samples`.
#[derive(Debug, Args)]
pub struct SamplesArgs {
    /// Output folder, e.g. docs/samples.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 12)]
    pub count: usize,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs a `prism data` subcommand, printing a one-line summary on stdout.
pub fn run(cmd: DataCommand) -> Result<(), DataError> {
    match cmd {
        DataCommand::Synth(a) => {
            let cfg = SynthConfig {
                train: a.train,
                eval: a.eval,
                seed: a.seed,
                difficulties: a.difficulty,
                noise: PublicNoise {
                    perception_error_rate: a.public_perception_error_rate,
                    reasoning_error_rate: a.public_reasoning_error_rate,
                },
            };
            let m = write_dataset(&a.out, &cfg)?;
            println!(
                "wrote {} train and {} eval items to {} (public labels: {} none, {} perception, {} reasoning)",
                m.train,
                m.eval,
                a.out.display(),
                m.public_labels.none,
                m.public_labels.perception,
                m.public_labels.reasoning
            );
        }
        DataCommand::Samples(a) => {
            write_samples(&a.out, a.seed, a.count)?;
            println!("wrote {} sample images to {}", a.count, a.out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(subcommand)]
        cmd: DataCommand,
    }

    fn parse(args: &[&str]) -> Result<DataCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("data").chain(args.iter().copied())).map(|w| w.cmd)
    }

    #[test]
    fn synth_flags_parse_and_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let cmd = parse(&[
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--train",
            "4",
            "--eval",
            "2",
            "--seed",
            "9",
            "--difficulty",
            "1,3",
            "--public-perception-error-rate",
            "0.5",
            "--public-reasoning-error-rate",
            "0.1",
        ])
        .unwrap();
        run(cmd).unwrap();
        let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
        let m: crate::data::synth::Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!((m.train, m.eval, m.seed), (4, 2, 9));
        assert_eq!(m.difficulties, vec![1, 3]);
        assert_eq!(m.public_perception_error_rate, 0.5);
        assert_eq!(m.sha256.len(), 6 + 6);
    }

    #[test]
    fn bad_flags_are_rejected_with_a_reason() {
        assert!(parse(&["synth", "--out", "x", "--train", "many"]).is_err());
        assert!(parse(&["synth"]).is_err(), "--out is required");
        let cmd = parse(&["synth", "--out", "unused", "--difficulty", "0"]).unwrap();
        let err = run(cmd).unwrap_err().to_string();
        assert!(err.contains("difficulty 0"), "{err}");
        let cmd = parse(&[
            "synth",
            "--out",
            "unused",
            "--public-perception-error-rate",
            "0.9",
            "--public-reasoning-error-rate",
            "0.2",
        ])
        .unwrap();
        let err = run(cmd).unwrap_err().to_string();
        assert!(err.contains("more than 1"), "{err}");
    }
}
