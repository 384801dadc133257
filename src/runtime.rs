//! libtorch set-up facts: version, threads, devices. What `prism doctor` prints.

use serde::Serialize;

/// What this process sees of libtorch and the accelerators.
#[derive(Debug, Clone, Serialize)]
pub struct Doctor {
    pub prism_version: &'static str,
    pub libtorch_version: String,
    pub intra_op_threads: i32,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: i64,
}

impl Doctor {
    /// Reads the facts from the linked libtorch.
    pub fn probe() -> Doctor {
        Doctor {
            prism_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: libtorch_version(),
            intra_op_threads: tch::get_num_threads(),
            cuda_available: tch::Cuda::is_available(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            cuda_devices: tch::Cuda::device_count(),
        }
    }

    /// Human-readable report, one fact per line.
    pub fn report(&self) -> String {
        let devices = if self.cuda_devices > 0 {
            (0..self.cuda_devices)
                .map(|i| format!("cuda:{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            "none".to_string()
        };
        format!(
            "prism {}\nlibtorch {}\nintra-op threads {}\ncuda available {}\ncudnn available {}\ncuda devices {} ({})\n",
            self.prism_version,
            self.libtorch_version,
            self.intra_op_threads,
            self.cuda_available,
            self.cudnn_available,
            self.cuda_devices,
            devices
        )
    }
}

/// The libtorch this process has loaded: its directory (read from `/proc/self/maps`) and the
/// version recorded next to it by the torch wheel (`torch/version.py`).
pub fn loaded_libtorch() -> Option<(std::path::PathBuf, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let lib_dir = std::path::Path::new(lib).parent()?.to_path_buf();
    let version_py = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok();
    let version = version_py
        .as_deref()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .unwrap_or_else(|| "unknown (no torch/version.py beside the library)".to_string());
    Some((lib_dir, version))
}

/// The version of the loaded libtorch, or a sentence saying why it is unknown.
pub fn libtorch_version() -> String {
    // Make sure libtorch is loaded (it is, as a NEEDED library, but be explicit).
    let _ = tch::get_num_threads();
    match loaded_libtorch() {
        Some((dir, v)) => format!("{v} ({})", dir.display()),
        None => "unknown (libtorch_cpu.so not found in /proc/self/maps)".to_string(),
    }
}
