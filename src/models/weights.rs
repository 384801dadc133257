//! Safetensors I/O: single-file and sharded HF checkpoints, strict loading, atomic saving.
//!
//! Reading memory-maps each file (`memmap2`) and parses only the header; a tensor's bytes are
//! copied once, straight from the map into a libtorch tensor, when it is requested. Strict loading
//! compares the model's parameters with the checkpoint and fails with one error that lists every
//! missing, unused and mis-shaped tensor and its file. Fused MoE expert weights are accepted in
//! both orientations (hub `[E, D, 2I]`/`[E, I, D]` and transformers-5 `[E, 2I, D]`/`[E, D, I]`),
//! decided by shape. Saving writes the HF layout, sharded above a size with
//! `model.safetensors.index.json`, each file through a temp file + fsync + rename.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, View};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::error::{ModelError, Result};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Default shard size of [`save_tensors`] (as `save_pretrained`'s `max_shard_size="5GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// libtorch kind of a safetensors dtype, for the dtypes prism reads.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Safetensors dtype of a libtorch kind.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// One memory-mapped safetensors file with its parsed header.
struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; prism never writes a checkpoint while reading it (saves go
        // through a temp file + rename, which leaves an open map on the old inode intact).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
            ModelError::checkpoint(path, format!("not a valid safetensors file: {e}"))
        })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + n,
            meta,
        })
    }
}

/// Shape, dtype and file of one checkpoint tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub shape: Vec<i64>,
    pub dtype: Dtype,
    pub file: PathBuf,
}

/// A checkpoint on disk (one file or shards), opened lazily through memory maps.
pub struct Checkpoint {
    root: PathBuf,
    files: Vec<MappedFile>,
    /// tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens a checkpoint: a `.safetensors` file, or a directory holding
    /// `model.safetensors.index.json` (sharded) or `model.safetensors`.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            let f = MappedFile::open(path)?;
            let index = f.meta.tensors().keys().map(|k| (k.clone(), 0)).collect();
            return Ok(Checkpoint {
                root: path.to_path_buf(),
                files: vec![f],
                index,
            });
        }
        let index_path = path.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_sharded(path, &index_path);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            let mut c = Self::open(&single)?;
            c.root = path.to_path_buf();
            return Ok(c);
        }
        Err(ModelError::checkpoint(
            path,
            format!("no {SINGLE_FILE} or {INDEX_FILE} found"),
        ))
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            ModelError::checkpoint(index_path, format!("index is not valid JSON: {e}"))
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::checkpoint(index_path, "missing object `weight_map`"))?;
        let mut file_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::checkpoint(index_path, format!("weight_map[{name}] is not a string"))
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(ModelError::checkpoint(
                    index_path,
                    format!("weight_map[{name}] = {file:?} is not a file name in the directory"),
                ));
            }
            let id = match file_ids.get(file) {
                Some(&id) => id,
                None => {
                    files.push(MappedFile::open(&dir.join(file))?);
                    file_ids.insert(file.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[id].meta.info(name).is_none() {
                return Err(ModelError::checkpoint(
                    dir.join(file),
                    format!("tensor `{name}` is listed in {INDEX_FILE} but not in this shard"),
                ));
            }
            index.insert(name.clone(), id);
        }
        // Tensors present in a shard but absent from the index are unused by HF; report them.
        for f in &files {
            for name in f.meta.tensors().keys() {
                if !index.contains_key(name) {
                    return Err(ModelError::checkpoint(
                        &f.path,
                        format!("tensor `{name}` is in this shard but not in {INDEX_FILE}"),
                    ));
                }
            }
        }
        Ok(Checkpoint {
            root: dir.to_path_buf(),
            files,
            index,
        })
    }

    /// The path the checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Shape, dtype and file of a tensor.
    pub fn meta(&self, name: &str) -> Option<TensorMeta> {
        let f = &self.files[*self.index.get(name)?];
        let info = f.meta.info(name)?;
        Some(TensorMeta {
            shape: info.shape.iter().map(|&d| d as i64).collect(),
            dtype: info.dtype,
            file: f.path.clone(),
        })
    }

    /// Copies a tensor out of its memory map into a CPU tensor of the file's dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let &id = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::checkpoint(&self.root, format!("no tensor `{name}`")))?;
        let f = &self.files[id];
        let info = f
            .meta
            .info(name)
            .ok_or_else(|| ModelError::checkpoint(&f.path, format!("no tensor `{name}`")))?;
        let kind = kind_of(info.dtype).ok_or_else(|| {
            ModelError::checkpoint(
                &f.path,
                format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
            )
        })?;
        let (a, b) = info.data_offsets;
        let bytes = &f.mmap[f.data_start + a..f.data_start + b];
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(bytes, &shape, kind)?)
    }
}

/// How a checkpoint tensor's layout relates to the model parameter it fills.
fn layout_for(name: &str, file_shape: &[i64], param_shape: &[i64]) -> Option<bool> {
    if file_shape == param_shape {
        return Some(false);
    }
    let is_expert =
        name.ends_with("mlp.experts.gate_up_proj") || name.ends_with("mlp.experts.down_proj");
    if is_expert
        && file_shape.len() == 3
        && param_shape.len() == 3
        && file_shape[0] == param_shape[0]
        && file_shape[1] == param_shape[2]
        && file_shape[2] == param_shape[1]
    {
        return Some(true);
    }
    None
}

/// Fills `params` (name → parameter tensor, names as checkpoint keys) from `ckpt`, strictly.
///
/// Every parameter must be in the checkpoint with the same shape (or, for fused expert weights,
/// the transposed layout) and a floating dtype; every checkpoint tensor must be used, except the
/// names in `ignore`. Values are cast to each parameter's kind and device. Runs under no_grad.
pub fn load_strict(
    ckpt: &Checkpoint,
    params: &BTreeMap<String, Tensor>,
    ignore: &[&str],
) -> Result<()> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut plan = Vec::new();
    for (name, p) in params {
        let Some(m) = ckpt.meta(name) else {
            missing.push(name.clone());
            continue;
        };
        let file = m
            .file
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if !matches!(m.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            wrong.push(format!(
                "{name} ({file}): dtype {:?} is not F32/BF16/F16",
                m.dtype
            ));
            continue;
        }
        match layout_for(name, &m.shape, &p.size()) {
            Some(transposed) => plan.push((name, transposed)),
            None => wrong.push(format!(
                "{name} ({file}): shape {:?}, model expects {:?}",
                m.shape,
                p.size()
            )),
        }
    }
    let unused: Vec<String> = ckpt
        .names()
        .filter(|n| !params.contains_key(*n) && !ignore.contains(n))
        .map(|n| {
            let file = ckpt
                .meta(n)
                .and_then(|m| m.file.file_name().map(|s| s.to_string_lossy().to_string()))
                .unwrap_or_default();
            format!("{n} ({file})")
        })
        .collect();
    if !missing.is_empty() || !unused.is_empty() || !wrong.is_empty() {
        return Err(ModelError::WeightsMismatch {
            path: ckpt.root().to_path_buf(),
            missing,
            unused,
            wrong,
        });
    }
    let _guard = tch::no_grad_guard();
    for (name, transposed) in plan {
        let p = &params[name];
        let mut t = ckpt.tensor(name)?;
        if transposed {
            t = t.f_transpose(1, 2)?;
        }
        let t = t.f_to_device(p.device())?.f_to_kind(p.kind())?;
        let mut p = p.shallow_clone();
        p.f_copy_(&t)?;
    }
    Ok(())
}

/// A tensor to be written, converted to bytes only when the writer asks for them.
struct LazyView {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl View for LazyView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let numel = self.shape.iter().product::<usize>();
        let mut buf = vec![0u8; self.data_len()];
        // The tensor was made contiguous on the CPU with a known dtype in `save_tensors`.
        self.tensor
            .f_copy_data_u8(&mut buf, numel)
            .expect("copying a contiguous CPU tensor to bytes");
        Cow::Owned(buf)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| ModelError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    drop(f);
    commit_tmp(&tmp, path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| ModelError::io(path, e))?;
    if let Some(dir) = path.parent() {
        // Make the rename durable; ignore filesystems that refuse to fsync a directory.
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Saves named tensors to `dir` in HF layout: `model.safetensors`, or shards
/// `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` when the total exceeds
/// `max_shard_bytes`. Tensors keep their kind. Each file is written atomically; a stale index or
/// single file of the other layout is removed afterwards.
pub fn save_tensors(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut views: Vec<(String, LazyView)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            ModelError::input(
                "tensors",
                format!("`{name}` has unsupported kind {:?}", t.kind()),
            )
        })?;
        let tensor = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        views.push((
            name.clone(),
            LazyView {
                tensor,
                dtype,
                shape,
            },
        ));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = views.iter().map(|(_, v)| v.data_len() as u64).sum();
    let mut shards: Vec<Vec<(String, LazyView)>> = vec![Vec::new()];
    let mut cur = 0u64;
    for (name, v) in views {
        let n = v.data_len() as u64;
        if cur > 0 && cur + n > max_shard_bytes {
            shards.push(Vec::new());
            cur = 0;
        }
        cur += n;
        shards.last_mut().expect("one shard").push((name, v));
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        write_shard(&path, shards.pop().expect("one shard"), &metadata)?;
        remove_if_exists(&dir.join(INDEX_FILE))?;
        return Ok(());
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), json!(fname));
        }
        write_shard(&dir.join(&fname), shard, &metadata)?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_atomic(
        &dir.join(INDEX_FILE),
        serde_json::to_string_pretty(&index)
            .expect("index serialises")
            .as_bytes(),
    )?;
    remove_if_exists(&dir.join(SINGLE_FILE))
}

fn write_shard(
    path: &Path,
    tensors: Vec<(String, LazyView)>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(tensors, Some(metadata.clone()), &tmp)
        .map_err(|e| ModelError::checkpoint(&tmp, format!("writing safetensors: {e}")))?;
    let f = File::open(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    commit_tmp(&tmp, path)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn single_and_sharded_round_trip() {
        let d = tmpdir();
        let a = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([3, 4]);
        let b = Tensor::ones([5], (Kind::BFloat16, tch::Device::Cpu));
        let ts = vec![
            ("a.weight".to_string(), a.shallow_clone()),
            ("b".to_string(), b.shallow_clone()),
        ];
        save_tensors(d.path(), &ts, u64::MAX).unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        assert_eq!(c.names().collect::<Vec<_>>(), vec!["a.weight", "b"]);
        assert!(c.tensor("a.weight").unwrap().equal(&a));
        assert_eq!(c.meta("b").unwrap().dtype, Dtype::BF16);
        // Sharded: each tensor above 40 bytes lands in its own shard.
        save_tensors(d.path(), &ts, 40).unwrap();
        assert!(!d.path().join(SINGLE_FILE).exists());
        assert!(d.path().join("model-00002-of-00002.safetensors").exists());
        let c = Checkpoint::open(d.path()).unwrap();
        assert!(c.tensor("b").unwrap().equal(&b));
    }

    #[test]
    fn strict_load_lists_every_problem() {
        let d = tmpdir();
        let ts = vec![
            (
                "x".to_string(),
                Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "extra".to_string(),
                Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "ids".to_string(),
                Tensor::zeros([1], (Kind::Int64, tch::Device::Cpu)),
            ),
        ];
        save_tensors(d.path(), &ts, u64::MAX).unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        let mut params = BTreeMap::new();
        params.insert(
            "x".to_string(),
            Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)),
        );
        params.insert(
            "y".to_string(),
            Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
        );
        params.insert(
            "ids".to_string(),
            Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
        );
        let err = load_strict(&c, &params, &[]).unwrap_err().to_string();
        assert!(err.contains("missing tensors (1): y"), "{err}");
        assert!(
            err.contains("unused tensors (1): extra (model.safetensors)"),
            "{err}"
        );
        assert!(
            err.contains("x (model.safetensors): shape [2, 3], model expects [3, 2]"),
            "{err}"
        );
        assert!(err.contains("ids (model.safetensors): dtype I64"), "{err}");
    }

    #[test]
    fn experts_accepted_transposed_by_shape() {
        let d = tmpdir();
        let w = Tensor::arange(2 * 3 * 4, (Kind::Float, tch::Device::Cpu)).view([2, 3, 4]);
        let name = "m.mlp.experts.gate_up_proj".to_string();
        save_tensors(d.path(), &[(name.clone(), w.shallow_clone())], u64::MAX).unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        let p = Tensor::zeros([2, 4, 3], (Kind::Float, tch::Device::Cpu));
        let params: BTreeMap<_, _> = [(name.clone(), p.shallow_clone())].into();
        load_strict(&c, &params, &[]).unwrap();
        assert!(p.equal(&w.transpose(1, 2)));
    }

    #[test]
    fn corrupt_file_names_the_file() {
        let d = tmpdir();
        let path = d.path().join(SINGLE_FILE);
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = Checkpoint::open(d.path())
            .err()
            .expect("corrupt file must fail")
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
        let err = Checkpoint::open(&d.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no model.safetensors"), "{err}");
    }
}
