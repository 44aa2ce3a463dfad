//! Loading a component's weights from its diffusers folder.
//!
//! A component folder (`transformer/`, `vae/`, `text_encoder/`) holds either one `*.safetensors` file or
//! a `*.safetensors.index.json` whose `weight_map` names the shard of every tensor. The shards are
//! memory-mapped and each tensor is copied straight to the target device and converted to the target
//! dtype when a module asks for it, so the whole model never sits in host memory as f32. Errors name the
//! tensor, the shard it should be in and the folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Where the bytes of loaded tensors are counted while a model loads (a progress bar), if anywhere.
static LOAD_PROGRESS: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Counts the bytes of every tensor loaded on `bar` until the guard is dropped.
pub fn track_loading(bar: indicatif::ProgressBar) -> LoadTracking {
    *LOAD_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    LoadTracking
}

/// Stops the counting of [`track_loading`] when dropped.
pub struct LoadTracking;

impl Drop for LoadTracking {
    fn drop(&mut self) {
        *LOAD_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Bytes of the weights of the component folders `dirs` (those that can be opened).
pub fn weight_bytes(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .filter_map(|d| ComponentWeights::open(d).ok())
        .map(|w| w.total_bytes())
        .sum()
}

/// Why a component's weights could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("no safetensors weights in {0} (expected *.safetensors or *.safetensors.index.json)")]
    NoWeights(PathBuf),
    #[error("weight index {path} is unreadable: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("shard {shard} listed in {index} is missing")]
    MissingShard { shard: PathBuf, index: PathBuf },
    #[error("cannot open {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

/// The safetensors files of one component, memory-mapped.
pub struct ComponentWeights {
    dir: PathBuf,
    st: candle_core::safetensors::MmapedSafetensors,
    /// tensor name → shard file name, from the index (empty for a single file).
    shard_of: HashMap<String, String>,
    files: Vec<PathBuf>,
    /// Prefix of every stored name (`model.diffusion_model.` in ComfyUI single files), else empty.
    prefix: &'static str,
}

/// Prefixes of single-file checkpoints (ComfyUI) stripped from the stored names.
const SINGLE_FILE_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

#[derive(serde::Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl ComponentWeights {
    /// Opens the weights of the component folder `dir`.
    pub fn open(dir: &Path) -> Result<Self, WeightsError> {
        let mut index_path = None;
        let mut singles = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| WeightsError::Open {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                index_path = Some(entry.path());
            } else if name.ends_with(".safetensors") {
                singles.push(entry.path());
            }
        }
        singles.sort();
        let (files, shard_of) = if let Some(index_path) = index_path {
            let text = std::fs::read_to_string(&index_path).map_err(|e| WeightsError::BadIndex {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
            let index: Index = serde_json::from_str(&text).map_err(|e| WeightsError::BadIndex {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
            let mut shards: Vec<String> = index.weight_map.values().cloned().collect();
            shards.sort();
            shards.dedup();
            let mut files = Vec::new();
            for s in &shards {
                let p = dir.join(s);
                if !p.is_file() {
                    return Err(WeightsError::MissingShard {
                        shard: p,
                        index: index_path.clone(),
                    });
                }
                files.push(p);
            }
            (files, index.weight_map)
        } else if singles.is_empty() {
            return Err(WeightsError::NoWeights(dir.to_path_buf()));
        } else {
            (singles, HashMap::new())
        };
        // SAFETY: the files are mapped read-only; like every safetensors reader we rely on nobody
        // truncating them while the process runs.
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| WeightsError::Open {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            st,
            shard_of,
            files,
            prefix: "",
        })
    }

    /// Opens one safetensors file (a single-file checkpoint). When every tensor name starts with a
    /// ComfyUI prefix (`model.diffusion_model.`), the names are read without it.
    pub fn open_file(path: &Path) -> Result<Self, WeightsError> {
        if !path.is_file() {
            return Err(WeightsError::Open {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        // SAFETY: as in `open`.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| WeightsError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let prefix = SINGLE_FILE_PREFIXES
            .iter()
            .find(|p| !names.is_empty() && names.iter().all(|n| n.starts_with(*p)))
            .copied()
            .unwrap_or("");
        Ok(Self {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            st,
            shard_of: HashMap::new(),
            files: vec![path.to_path_buf()],
            prefix,
        })
    }

    /// Whether any weight comes with an fp8 scale (a pre-quantized "scaled fp8" checkpoint).
    pub fn has_fp8_scales(&self) -> bool {
        self.st.tensors().iter().any(|(n, _)| {
            crate::models::nn::linear::SCALE_KEYS
                .iter()
                .any(|k| n.ends_with(&format!(".{k}")))
        })
    }

    fn stored<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if self.prefix.is_empty() {
            std::borrow::Cow::Borrowed(name)
        } else {
            std::borrow::Cow::Owned(format!("{}{name}", self.prefix))
        }
    }

    /// The files that were mapped.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Total bytes of the mapped files.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Names of all tensors present (without the single-file prefix).
    pub fn tensor_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .st
            .tensors()
            .into_iter()
            .map(|(n, _)| n.strip_prefix(self.prefix).map(str::to_string).unwrap_or(n))
            .collect();
        v.sort();
        v
    }

    /// Names (without the single-file prefix) and stored dtypes of all tensors.
    pub fn tensor_dtypes(&self) -> Vec<(String, DType)> {
        self.st
            .tensors()
            .into_iter()
            .filter_map(|(n, v)| {
                let dtype = DType::try_from(v.dtype()).ok()?;
                Some((n.strip_prefix(self.prefix).map(str::to_string).unwrap_or(n), dtype))
            })
            .collect()
    }

    /// The shape of tensor `name` as stored, without loading it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st.get(&self.stored(name)).ok().map(|v| v.shape().to_vec())
    }

    fn where_(&self, name: &str) -> String {
        match self.shard_of.get(name) {
            Some(shard) => format!("{} (shard {shard})", self.dir.display()),
            None if self.files.len() == 1 => self.files[0].display().to_string(),
            None => self.dir.display().to_string(),
        }
    }

    /// A `VarBuilder` over these weights producing tensors of `dtype` on `device`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for ComponentWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` in {} has shape {:?}, but the config expects {:?}",
                self.where_(name),
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self.stored(name);
        if self.st.get(&stored).is_err() {
            candle_core::bail!("tensor `{name}` is missing from {}", self.where_(name));
        }
        let t = self.st.load(&stored, dev)?;
        if let Some(bar) = LOAD_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.inc((t.elem_count() * t.dtype().size_in_bytes()) as u64);
        }
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(&self.stored(name)).is_ok()
    }
}

/// Reads and parses a component's `config.json`.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}
