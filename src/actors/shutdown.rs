//! SIGINT/SIGTERM handling for a training run: the first signal stops the intake of prompts,
//! in-flight steps are finished (within `deadlines.drain_secs`), the checkpoint hook is called,
//! and the run returns normally so the binary exits 0. A second signal is left to the default
//! handler's successor: it is logged and the drain continues (kill -9 remains the hard stop).

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::config::ActorsConfig;
use super::coordinator::{CheckpointHook, StageReport, StageSpec, run_stage};
use super::engine::Engines;
use super::errors::StageError;
use super::messages::PromptItem;

/// A token cancelled on the first SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if first {
                tracing::warn!(
                    signal = name,
                    "stopping: no new prompts; finishing in-flight steps, then checkpointing"
                );
                t.cancel();
                first = false;
            } else {
                tracing::warn!(
                    signal = name,
                    "already stopping; still draining in-flight steps"
                );
            }
        }
    });
    Ok(token)
}

/// Runs a stage that stops cleanly on SIGINT/SIGTERM (what the binary calls).
pub async fn run_stage_with_signals(
    cfg: &ActorsConfig,
    spec: StageSpec,
    engines: Engines,
    prompts: Arc<Vec<PromptItem>>,
    hook: Arc<dyn CheckpointHook>,
) -> Result<StageReport, StageError> {
    let token = shutdown_on_signals().map_err(|e| StageError::Setup {
        stage: spec.name.clone(),
        msg: format!("cannot install signal handlers: {e}"),
    })?;
    run_stage(cfg, spec, engines, prompts, hook, token).await
}

/// Exit status of a run: success when it finished or was stopped by a signal (its checkpoint
/// is saved), failure when it ended with an error.
pub fn exit_code(result: &Result<StageReport, StageError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
