//! Crash-safe checkpoint folders, shared by every stage.
//!
//! Owns the on-disk contract of a stage's checkpoints (`run_dir/<name>/`):
//!
//! - `checkpoint-<step>/` and `final/` are written by [`write_checkpoint_dir`]: the files go into
//!   `<dir>.partial`, every file and the folder are fsynced, then the folder is renamed into
//!   place and its parent fsynced. A folder without a suffix is therefore always complete; a
//!   crash leaves at most a `.partial` folder, which [`remove_stale`] deletes on the next start.
//! - Replacing an existing folder (a re-written `final/`) and pruning ([`prune_keep`]) first
//!   rename the old folder to `<dir>.old` (atomic) and delete it afterwards, so a crash in the
//!   middle of a deletion never leaves a half-deleted folder under a complete name.
//! - Every checkpoint holds `trainer_state.json` ([`TRAINER_STATE`]); [`newest_complete`] picks
//!   the highest `checkpoint-<step>` that has one, and [`validate_checkpoint`] checks that a
//!   folder is loadable and belongs to the same model as the stage's input before any step.
//!
//! How a stage follows the contract (what SFT does; the pipeline then resumes it through
//! [`super::resume::resume_stage`], which sets the stage's `resume_from`):
//!
//! ```no_run
//! use std::path::Path;
//! use prism::stages::checkpoint::{
//!     CHECKPOINT_PREFIX, TRAINER_STATE, prune_keep, remove_stale, write_checkpoint_dir,
//! };
//! # fn main() -> prism::stages::Result<()> {
//! let stage_dir = Path::new("runs/demo/rlvr-2");
//! remove_stale(stage_dir)?; // on start: leftovers of a killed write
//! let step = 40;
//! write_checkpoint_dir(&stage_dir.join(format!("{CHECKPOINT_PREFIX}{step}")), |tmp| {
//!     // weights (HF layout), optimizer state, queued prompts...; then the trainer state
//!     let state = serde_json::json!({"step": step, "kind": "rlvr", "next_cursor": 320});
//!     std::fs::write(tmp.join(TRAINER_STATE), state.to_string())
//!         .map_err(|e| prism::stages::StageError::Invalid {
//!             stage: "rlvr-2".into(),
//!             message: e.to_string(),
//!         })
//! })?;
//! prune_keep(stage_dir, 2)?; // keep_checkpoints
//! # Ok(())
//! # }
//! ```
//!
//! Test hook: when the environment variable [`PAUSE_ENV`] holds a number of milliseconds, the
//! writer sleeps that long after the files are written and before the rename, so a test can
//! kill the process while a checkpoint is being written.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Result, StageError};
use crate::models::weights::Checkpoint;

/// Trainer state file of every checkpoint folder.
pub const TRAINER_STATE: &str = "trainer_state.json";
/// Name prefix of the periodic checkpoints (`checkpoint-<step>`).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
/// The output checkpoint of a finished stage.
pub const FINAL_DIR: &str = "final";
/// Suffix of a folder being written.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Suffix of a folder being deleted.
pub const OLD_SUFFIX: &str = ".old";
/// Milliseconds to sleep inside each checkpoint write, before its rename (tests only).
pub const PAUSE_ENV: &str = "PRISM_TEST_PAUSE_IN_CHECKPOINT_MS";

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Fsyncs a folder (so renames and creations in it survive a crash). Some filesystems refuse
/// to open folders for syncing: that is ignored.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Fsyncs every file under `dir` (recursively) and every folder.
fn sync_tree(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(|e| StageError::io(&path, e))?;
        if ty.is_dir() {
            sync_tree(&path)?;
        } else if ty.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StageError::io(&path, e))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Deletes a folder by renaming it to `<dir>.old` first, so the complete name disappears
/// atomically even if the deletion is interrupted.
fn remove_dir_atomically(dir: &Path) -> Result<()> {
    let old = with_suffix(dir, OLD_SUFFIX);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| StageError::io(&old, e))?;
    }
    std::fs::rename(dir, &old).map_err(|e| StageError::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    std::fs::remove_dir_all(&old).map_err(|e| StageError::io(&old, e))
}

/// Writes a checkpoint folder atomically: `write` fills `<dir>.partial` (a fresh, empty folder),
/// then every file is fsynced, the folder is renamed to `dir` (replacing an older `dir`) and
/// the parent folder is fsynced. On error the `.partial` folder is left for [`remove_stale`].
pub fn write_checkpoint_dir<F>(dir: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = with_suffix(dir, PARTIAL_SUFFIX);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
    write(&tmp)?;
    if let Some(ms) = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    sync_tree(&tmp)?;
    if dir.exists() {
        remove_dir_atomically(dir)?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| StageError::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// The step of a `checkpoint-<step>` folder name.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The complete `checkpoint-<step>` folders of a stage, oldest first (a missing stage folder
/// has none). Complete = the name has no suffix and the folder holds [`TRAINER_STATE`].
pub fn complete_checkpoints(stage_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(stage_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StageError::io(stage_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(stage_dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(checkpoint_step) else {
            continue;
        };
        let path = entry.path();
        if path.is_dir() && path.join(TRAINER_STATE).is_file() {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete `checkpoint-<step>` folder of a stage, if any.
pub fn newest_complete(stage_dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(complete_checkpoints(stage_dir)?.pop())
}

/// Keeps the newest `keep` complete checkpoints of a stage and deletes the others (each renamed
/// away first). `keep = 0` keeps all. Returns the folders deleted.
pub fn prune_keep(stage_dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let all = complete_checkpoints(stage_dir)?;
    let n_drop = all.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(n_drop);
    for (_, dir) in all.into_iter().take(n_drop) {
        remove_dir_atomically(&dir)?;
        removed.push(dir);
    }
    Ok(removed)
}

/// Deletes the leftovers of an interrupted write or deletion (`*.partial`, `*.old` folders) in
/// a stage folder. Returns what was deleted.
pub fn remove_stale(stage_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(stage_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StageError::io(stage_dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(stage_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(PARTIAL_SUFFIX) || name.ends_with(OLD_SUFFIX)) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| StageError::io(&path, e))?;
        } else {
            std::fs::remove_file(&path).map_err(|e| StageError::io(&path, e))?;
        }
        tracing::info!(path = %path.display(), "removed an interrupted checkpoint write");
        removed.push(path);
    }
    Ok(removed)
}

/// `config.json` keys that fix the architecture: a checkpoint whose values differ was written
/// by another model. (`dtype`, token ids of generation and the like may differ.)
pub const ARCHITECTURE_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "text_config.model_type",
    "text_config.vocab_size",
    "text_config.hidden_size",
    "text_config.intermediate_size",
    "text_config.num_hidden_layers",
    "text_config.num_attention_heads",
    "text_config.num_key_value_heads",
    "text_config.head_dim",
    "text_config.tie_word_embeddings",
    "text_config.num_experts",
    "text_config.moe_intermediate_size",
    "vision_config.depth",
    "vision_config.hidden_size",
    "vision_config.intermediate_size",
    "vision_config.num_heads",
    "vision_config.patch_size",
    "vision_config.temporal_patch_size",
    "vision_config.spatial_merge_size",
    "vision_config.out_hidden_size",
    "vision_config.deepstack_visual_indexes",
    "tie_word_embeddings",
];

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| StageError::Record {
        path: path.to_path_buf(),
        record: 1,
        message: format!("not valid JSON (truncated or corrupt?): {e}"),
    })
}

fn lookup<'a>(v: &'a serde_json::Value, dotted: &str) -> Option<&'a serde_json::Value> {
    dotted.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// Checks, before any training step, that `ckpt` is a complete checkpoint of the same model as
/// `input` (the stage's input checkpoint): its `trainer_state.json` parses, its weights (and
/// `optimizer.safetensors`, when present) are whole safetensors files, its `config.json` agrees
/// with the input's on [`ARCHITECTURE_KEYS`], every tensor has the input's shape, and it has
/// every processor file the input has. Errors name the file and the key or tensor.
pub fn validate_checkpoint(ckpt: &Path, input: &Path) -> Result<serde_json::Value> {
    let invalid = |message: String| StageError::Invalid {
        stage: "resume".into(),
        message,
    };
    if !ckpt.is_dir() {
        return Err(invalid(format!(
            "{}: no such checkpoint folder",
            ckpt.display()
        )));
    }
    let state = read_json(&ckpt.join(TRAINER_STATE))?;
    if state
        .get("step")
        .and_then(serde_json::Value::as_u64)
        .is_none()
    {
        return Err(StageError::Record {
            path: ckpt.join(TRAINER_STATE),
            record: 1,
            message: "no `step`: not a trainer state".into(),
        });
    }
    let ours = read_json(&ckpt.join("config.json"))?;
    let theirs = read_json(&input.join("config.json"))?;
    let differing: Vec<String> = ARCHITECTURE_KEYS
        .iter()
        .filter_map(|k| {
            let (a, b) = (lookup(&ours, k), lookup(&theirs, k));
            (a != b).then(|| {
                let show = |v: Option<&serde_json::Value>| v.map_or("-".into(), |v| v.to_string());
                format!("{k} = {} (input: {})", show(a), show(b))
            })
        })
        .collect();
    if !differing.is_empty() {
        return Err(invalid(format!(
            "{} was written by another model than the input {}: {}",
            ckpt.join("config.json").display(),
            input.display(),
            differing.join(", ")
        )));
    }
    let weights = Checkpoint::open(ckpt)?;
    let reference = Checkpoint::open(input)?;
    for name in reference.names() {
        let want = reference.meta(name).map(|m| m.shape);
        let got = weights.meta(name).map(|m| m.shape);
        match (want, got) {
            (Some(w), Some(g)) if w != g => {
                return Err(invalid(format!(
                    "{}: tensor `{name}` has shape {g:?}, the input's has {w:?} (another model)",
                    ckpt.display()
                )));
            }
            (Some(_), None) => {
                return Err(invalid(format!(
                    "{}: tensor `{name}` of the input is missing (another model)",
                    ckpt.display()
                )));
            }
            _ => {}
        }
    }
    for f in super::sft::PROCESSOR_FILES {
        if input.join(f).is_file() && !ckpt.join(f).is_file() {
            return Err(invalid(format!(
                "{}: {f} is missing (the input {} has it)",
                ckpt.display(),
                input.display()
            )));
        }
    }
    let opt = ckpt.join(super::sft::OPTIMIZER_STATE);
    if opt.is_file() {
        Checkpoint::open(&opt)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_files(names: &'static [&'static str]) -> impl FnOnce(&Path) -> Result<()> {
        move |tmp: &Path| {
            for n in names {
                std::fs::write(tmp.join(n), n.as_bytes()).map_err(|e| StageError::io(tmp, e))?;
            }
            Ok(())
        }
    }

    #[test]
    fn a_write_lands_complete_and_replaces_the_old_folder() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("final");
        write_checkpoint_dir(&dir, write_files(&[TRAINER_STATE, "a"])).unwrap();
        assert!(dir.join("a").is_file());
        write_checkpoint_dir(&dir, write_files(&[TRAINER_STATE, "b"])).unwrap();
        assert!(dir.join("b").is_file() && !dir.join("a").exists());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["final"], "no temporary folder is left");
    }

    #[test]
    fn a_failed_write_leaves_only_a_partial_folder_that_is_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("checkpoint-3");
        let e = write_checkpoint_dir(&dir, |tmp| {
            std::fs::write(tmp.join(TRAINER_STATE), b"{").unwrap();
            Err(StageError::Invalid {
                stage: "t".into(),
                message: "disk full".into(),
            })
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"));
        assert!(!dir.exists());
        assert_eq!(newest_complete(d.path()).unwrap(), None);
        std::fs::create_dir(d.path().join("checkpoint-1.old")).unwrap();
        let removed = remove_stale(d.path()).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn newest_complete_and_pruning_by_step_number_not_name() {
        let d = tempfile::tempdir().unwrap();
        for step in [2u64, 10, 9] {
            let dir = d.path().join(format!("checkpoint-{step}"));
            write_checkpoint_dir(&dir, write_files(&[TRAINER_STATE])).unwrap();
        }
        // no trainer state: not complete; odd names: not checkpoints
        std::fs::create_dir(d.path().join("checkpoint-11")).unwrap();
        std::fs::create_dir(d.path().join("checkpoint-x")).unwrap();
        std::fs::create_dir(d.path().join("checkpoint-12.partial")).unwrap();
        let (step, path) = newest_complete(d.path()).unwrap().unwrap();
        assert_eq!((step, path.clone()), (10, d.path().join("checkpoint-10")));
        let removed = prune_keep(d.path(), 2).unwrap();
        assert_eq!(removed, [d.path().join("checkpoint-2")]);
        let left: Vec<u64> = complete_checkpoints(d.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, [9, 10]);
        assert!(prune_keep(d.path(), 0).unwrap().is_empty(), "0 keeps all");
        assert_eq!(newest_complete(&d.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn checkpoint_names_parse_strictly() {
        assert_eq!(checkpoint_step("checkpoint-12"), Some(12));
        assert_eq!(checkpoint_step("checkpoint-"), None);
        assert_eq!(checkpoint_step("checkpoint-+1"), None);
        assert_eq!(checkpoint_step("checkpoint-3.partial"), None);
        assert_eq!(checkpoint_step("final"), None);
    }
}
