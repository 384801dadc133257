//! The `prism` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "Post-train Qwen3-VL with the PRISM recipe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the libtorch version, threads and the CUDA devices this binary sees.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Datasets: generate the procedural task (`data synth`), sample images (`data samples`).
    #[command(subcommand)]
    Data(prism::data::cli::DataCommand),
    /// Score a JSONL file of responses with the verifiable reward (0.8·acc + 0.2·format).
    Score(prism::reward::cli::ScoreArgs),
    /// Rebuild the results table and plots from run directories (several = seeds, mean ± std).
    Report(prism::report::cli::ReportArgs),
    /// Collect teacher demonstrations for an RL parquet from an OpenAI-compatible endpoint.
    Teacher(prism::teacher::cli::TeacherArgs),
    /// Upcycle a dense Qwen3-VL into a Qwen3-VL-MoE with a value head (PRISM discriminator).
    Upcycle(prism::models::upcycle::UpcycleArgs),
    /// Generate a reply to one user turn (images, then a prompt) with a checkpoint.
    Generate(prism::models::generate_cli::GenerateArgs),
    /// Evaluate a checkpoint on an RL parquet: accuracy, format, perception/reasoning errors.
    Eval(prism::stages::eval::EvalArgs),
    /// Run a pipeline of stages (sft, warmup, align, rlvr, eval) from a TOML run config.
    Run(prism::stages::pipeline::RunArgs),
    /// Serve a checkpoint over an OpenAI-compatible HTTP API (chat completions, batched).
    Serve(prism::serve::ServeArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => {
            let doctor = prism::runtime::Doctor::probe();
            if json {
                println!("{}", serde_json::to_string_pretty(&doctor)?);
            } else {
                print!("{}", doctor.report());
            }
        }
        Command::Data(cmd) => prism::data::cli::run(cmd)?,
        Command::Score(args) => {
            prism::reward::cli::run(&args)?;
        }
        Command::Report(args) => {
            prism::report::cli::run(&args)?;
        }
        Command::Teacher(args) => {
            prism::teacher::cli::run(&args)?;
        }
        Command::Upcycle(args) => prism::models::upcycle::run(&args)?,
        Command::Generate(args) => {
            prism::models::generate_cli::run(&args)?;
        }
        Command::Eval(args) => {
            prism::stages::eval::run(&args)?;
        }
        Command::Run(args) => {
            prism::stages::pipeline::run(&args)?;
        }
        Command::Serve(args) => prism::serve::run(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}
