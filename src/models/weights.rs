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
}

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
        })
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

    /// Names of all tensors present.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.st.tensors().into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    }

    /// The shape of tensor `name` as stored, without loading it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st.get(name).ok().map(|v| v.shape().to_vec())
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
        if self.st.get(name).is_err() {
            candle_core::bail!("tensor `{name}` is missing from {}", self.where_(name));
        }
        let t = self.st.load(name, dev)?;
        if let Some(bar) = LOAD_PROGRESS.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.inc((t.elem_count() * t.dtype().size_in_bytes()) as u64);
        }
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }
}

/// Reads and parses a component's `config.json`.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}
