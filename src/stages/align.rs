//! The `align` stage: PRISM's black-box on-policy distillation (PRISM_ALGORITHM.md §5) on the
//! actor runtime. The policy samples `n` answers per prompt; the reward actor checks the format
//! and splits caption and reasoning; the perception expert scores captions and the reasoning
//! expert scores reasoning (prompt + segment, score at the segment's last token); the learner
//! takes a PPO step on the multi-reward advantage (mode 1 by default:
//! 0.5·GN(caption) + 0.5·GN(cot) − 1.5·invalid); in parallel each expert takes a Bradley–Terry
//! step on (teacher ≻ student) pairs against the teacher's demonstrations, which the
//! teacher-client fetches while the policy generates.
//!
//! Owns the stage's wiring only: the learner, policy and runner are [`super::rl`]'s, the experts
//! [`super::expert`]'s, the teacher either the dataset's teacher columns
//! ([`DatasetTeacher`]) or a live endpoint ([`HttpTeacher`]).
//!
//! Outputs: the aligned policy in `run_dir/<name>/final/` (with the experts' snapshots and the
//! trainer state), and the aligned experts as HF checkpoints in
//! `run_dir/<name>/experts/{perception,reasoning}/` (the summary's `experts`).
//!
//! Experts are dedicated: two actors, two models. An experts folder holding one `shared/` model
//! (the original code's single discriminator) starts both experts from that model; each then
//! trains its own copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Tensor};

use super::expert::{ExpertOptions, PromptContexts, QwenScorer, expert_dirs, scorer_factory};
use super::prompts::PromptStore;
use super::rl::{AlignEngines, RlOptions, run_actor_stage};
use super::{Result, StageContext, StageError, StageSummary, checkpoint};
use crate::actors::config::{ActorsConfig, DeviceSpec};
use crate::actors::dataset_teacher::DatasetTeacher;
use crate::actors::engine::{
    EngineResult, ScorerEngine, ScorerFactory, TeacherBackend, TeacherFactory,
};
use crate::actors::messages::{PromptItem, StageKind};
use crate::actors::weights::snapshot_from_tensors;
use crate::config::{AlignConfig, TeacherSource};
use crate::models::tokenizer::QwenTokenizer;
use crate::teacher::backend::{HttpTeacher, ImageLookup};
use crate::teacher::client::TeacherClient;
use crate::teacher::config::TeacherConfig;
use crate::teacher::error::TeacherError;

/// File of an expert's snapshot (weights and optimizer) inside an align checkpoint.
pub fn expert_snapshot_file(checkpoint: &Path, role: &str) -> PathBuf {
    checkpoint.join(format!("{role}.safetensors"))
}

/// Runs the `align` stage from the policy checkpoint `input` (see the module doc).
pub fn run_align(
    cfg: &AlignConfig,
    ctx: &StageContext,
    input: &Path,
    actors: &ActorsConfig,
) -> Result<StageSummary> {
    let invalid = |message: String| StageError::Invalid {
        stage: ctx.name.clone(),
        message,
    };
    let mut opts = RlOptions::from_rlvr(&cfg.policy, ctx.seed)?;
    opts.arm = ctx.arm.clone();
    opts.multi_reward = cfg.advantage;
    opts.stage_config = serde_json::to_value(cfg).map_err(|e| invalid(e.to_string()))?;
    let experts = cfg
        .experts
        .path
        .clone()
        .or_else(|| ctx.experts.clone())
        .ok_or_else(|| {
            invalid(
                "no experts: run a warmup stage before align (up its input chain) or set \
             experts.path to a folder with perception/ and reasoning/ (or shared/)"
                    .into(),
            )
        })?;
    let (perception_dir, reasoning_dir) = expert_dirs(&experts)?;
    let policy_dir = opts
        .resume_from
        .clone()
        .unwrap_or_else(|| input.to_path_buf());
    let resume = opts.resume_from.clone();
    let eopts = cfg.experts.options.clone();
    let build = |store: &Arc<PromptStore>, items: &[PromptItem]| -> Result<AlignEngines> {
        let snapshot = |role: &str| resume.as_deref().map(|d| expert_snapshot_file(d, role));
        Ok(AlignEngines {
            teacher: teacher_factory(cfg, store, items, &policy_dir)?,
            perception: expert_factory(
                &perception_dir,
                &eopts,
                store.clone(),
                snapshot("perception"),
            ),
            reasoning: expert_factory(&reasoning_dir, &eopts, store.clone(), snapshot("reasoning")),
        })
    };
    let mut summary = run_actor_stage(&opts, StageKind::Align, ctx, input, actors, Some(&build))?;
    let out = ctx.stage_dir().join("experts");
    for (role, init) in [
        ("perception", &perception_dir),
        ("reasoning", &reasoning_dir),
    ] {
        save_expert(
            &expert_snapshot_file(&summary.output, role),
            init,
            &eopts,
            &out.join(role),
        )?;
    }
    summary.experts = Some(out);
    Ok(summary)
}

/// The teacher-client's backend: the dataset's teacher columns for the stage's prompts, or the
/// HTTP endpoint of `[stages.teacher] config`.
fn teacher_factory(
    cfg: &AlignConfig,
    store: &Arc<PromptStore>,
    items: &[PromptItem],
    policy_dir: &Path,
) -> Result<TeacherFactory> {
    match cfg.teacher.source {
        TeacherSource::Dataset => {
            let records: Vec<_> = items
                .iter()
                .map(|it| {
                    store
                        .get(it.uid)
                        .map(|e| e.record.clone())
                        .expect("prompt items come from this store")
                })
                .collect();
            let uids: Vec<u64> = items.iter().map(|it| it.uid).collect();
            let tokenizer =
                Arc::new(
                    QwenTokenizer::from_dir(policy_dir).map_err(|e| StageError::Invalid {
                        stage: "align".into(),
                        message: format!("{}: {e}", policy_dir.display()),
                    })?,
                );
            let file = store.file().to_path_buf();
            // checked once here, over the store's rows (indexed by parquet row, so the error
            // names the row even when too-long prompts are left out of `items`), so a missing
            // demonstration is a setup error, not a restart loop
            let rows: Vec<_> = store.entries().iter().map(|e| e.record.clone()).collect();
            let row_uids: Vec<u64> = store.entries().iter().map(|e| e.row as u64).collect();
            DatasetTeacher::from_rl_records(&rows, &row_uids, &file, tokenizer.clone()).map_err(
                |message| StageError::Invalid {
                    stage: "align".into(),
                    message,
                },
            )?;
            Ok(Arc::new(
                move |_d: DeviceSpec| -> EngineResult<Box<dyn TeacherBackend>> {
                    let t =
                        DatasetTeacher::from_rl_records(&records, &uids, &file, tokenizer.clone())?;
                    Ok(Box::new(t))
                },
            ))
        }
        TeacherSource::Http => {
            let path = cfg
                .teacher
                .config
                .as_deref()
                .expect("validated: http teachers name their config");
            http_teacher(path, store.clone()).map_err(|e| StageError::Invalid {
                stage: "align".into(),
                message: format!("teacher {}: {e}", path.display()),
            })
        }
    }
}

/// The HTTP teacher of the client config `path`; the prompts' images come from `store`. One
/// client (cache, limits, cost counters) serves every rebuild of the backend.
fn http_teacher(
    path: &Path,
    store: Arc<PromptStore>,
) -> std::result::Result<TeacherFactory, TeacherError> {
    let client = TeacherClient::new(TeacherConfig::load(path)?)?;
    let images: ImageLookup = Arc::new(move |p: &PromptItem| {
        let e = store
            .get(p.uid)
            .ok_or_else(|| format!("prompt uid {} is not in {}", p.uid, store.file().display()))?;
        (0..e.record.images.len())
            .map(|i| e.record.image_bytes(i, store.file()))
            .collect()
    });
    Ok(Arc::new(
        move |_d: DeviceSpec| -> EngineResult<Box<dyn TeacherBackend>> {
            Ok(Box::new(HttpTeacher::new(client.clone(), images.clone())?))
        },
    ))
}

/// An expert engine from the HF checkpoint `dir`; on a resume, its trained state (weights and
/// optimizer moments) is put back from the checkpoint's snapshot file.
fn expert_factory(
    dir: &Path,
    opts: &ExpertOptions,
    store: Arc<PromptStore>,
    resume: Option<PathBuf>,
) -> ScorerFactory {
    let base = scorer_factory(dir, opts, store);
    let Some(file) = resume else {
        return base;
    };
    Arc::new(
        move |d: DeviceSpec| -> EngineResult<Box<dyn ScorerEngine>> {
            let mut engine = base(d)?;
            let named =
                Tensor::read_safetensors(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let snap = snapshot_from_tensors(0, &named)?;
            engine
                .restore(&snap)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(engine)
        },
    )
}

/// No prompts: saving an expert needs its model, not its contexts.
struct NoPrompts;

impl PromptContexts for NoPrompts {
    fn context(&self, _uid: u64) -> Option<super::expert::PromptContext<'_>> {
        None
    }
}

/// Writes the expert trained from `init` whose state is the snapshot file `snapshot` as an HF
/// checkpoint (value head and processor files included) into `out`, atomically. No snapshot
/// file means the expert never took a step (no well-formatted rollout to pair with the
/// teacher): `init` is written unchanged.
fn save_expert(snapshot: &Path, init: &Path, opts: &ExpertOptions, out: &Path) -> Result<()> {
    let kind = opts.kind().map_err(|message| StageError::Invalid {
        stage: "align".into(),
        message,
    })?;
    let mut scorer = QwenScorer::load(init, Device::Cpu, kind, opts, Arc::new(NoPrompts))?;
    if !snapshot.is_file() {
        tracing::warn!(
            expert = %out.display(),
            "the expert took no step in this stage: written unchanged"
        );
        return checkpoint::write_checkpoint_dir(out, |tmp| scorer.save(tmp, init));
    }
    let named = Tensor::read_safetensors(snapshot)?;
    let snap = snapshot_from_tensors(0, &named).map_err(|e| StageError::Invalid {
        stage: "align".into(),
        message: format!("{}: {e}", snapshot.display()),
    })?;
    scorer.restore(&snap).map_err(|e| StageError::Invalid {
        stage: "align".into(),
        message: format!("{}: {e}", snapshot.display()),
    })?;
    checkpoint::write_checkpoint_dir(out, |tmp| scorer.save(tmp, init))
}
