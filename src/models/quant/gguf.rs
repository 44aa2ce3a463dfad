//! GGUF transformer files (as published for Qwen-Image-Edit for ComfyUI-GGUF / stable-diffusion.cpp) as
//! a `VarBuilder` backend.
//!
//! The file is memory-mapped. Tensor names are the diffusers ones (`transformer_blocks.0.attn.to_q.weight`,
//! `img_in.weight`, …), possibly under a `model.diffusion_model.` / `diffusion_model.` prefix, which is
//! stripped. Tensors stored as F32 / F16 / BF16 load as ordinary tensors; block-quantized Linear
//! weights (Q8_0, Q6_K, Q5_K, Q4_K, …) are offered to [`crate::models::nn::linear::Linear`] as the
//! virtual tensors `<module>.weight.ggml` (raw blocks) and `<module>.weight.ggml_type`, so they stay
//! quantized on the device; asked for as plain tensors they are dequantized.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, TensorInfo};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::models::nn::linear::{ggml_type_id, GGML_DATA, GGML_TYPE};

/// Prefixes stripped from the tensor names of a GGUF file.
const PREFIXES: [&str; 3] = ["model.diffusion_model.", "diffusion_model.", "transformer."];

/// A memory-mapped GGUF file.
pub struct GgufWeights {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_offset: usize,
    /// our name → (name in the file, info)
    tensors: HashMap<String, TensorInfo>,
    architecture: Option<String>,
}

impl GgufWeights {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: mapped read-only; like every weights reader we rely on nobody truncating the file.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let content = gguf_file::Content::read(&mut std::io::Cursor::new(&mmap[..]))
            .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let tensors = content
            .tensor_infos
            .into_iter()
            .map(|(name, info)| {
                let ours = PREFIXES
                    .iter()
                    .find_map(|p| name.strip_prefix(p))
                    .map(str::to_string)
                    .unwrap_or(name);
                (ours, info)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_offset: content.tensor_data_offset as usize,
            tensors,
            architecture,
        })
    }

    /// `general.architecture` of the file, if given.
    pub fn architecture(&self) -> Option<&str> {
        self.architecture.as_deref()
    }

    /// Tensor names (prefix stripped) with their GGML type, sorted.
    pub fn tensor_types(&self) -> Vec<(String, GgmlDType)> {
        let mut v: Vec<_> = self.tensors.iter().map(|(n, i)| (n.clone(), i.ggml_dtype)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Tensor names (prefix stripped) with their stored size in bytes.
    pub fn tensor_bytes(&self) -> Vec<(String, u64)> {
        self.tensors
            .iter()
            .map(|(n, i)| {
                let t = i.ggml_dtype;
                (
                    n.clone(),
                    (i.shape.elem_count() / t.block_size() * t.type_size()) as u64,
                )
            })
            .collect()
    }

    fn bytes(&self, info: &TensorInfo) -> candle_core::Result<&[u8]> {
        let n = info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = self.data_offset + info.offset as usize;
        self.mmap
            .get(start..start + n)
            .ok_or_else(|| candle_core::Error::Msg(format!("{} is truncated", self.path.display())))
    }

    fn info(&self, name: &str) -> candle_core::Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{name}` is missing from {}", self.path.display())))
    }

    /// The block-quantized weight behind a virtual name, if `name` is one.
    fn virtual_target<'a>(&self, name: &'a str) -> Option<(&'a str, bool)> {
        let (base, is_data) = if let Some(m) = name.strip_suffix(&format!(".{GGML_DATA}")) {
            (m, true)
        } else {
            (name.strip_suffix(&format!(".{GGML_TYPE}"))?, false)
        };
        let info = self.tensors.get(&format!("{base}.weight"))?;
        is_block_quantized(info.ggml_dtype).then_some((base, is_data))
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some((base, is_data)) = self.virtual_target(name) {
            let info = self.info(&format!("{base}.weight"))?;
            return if is_data {
                let bytes = self.bytes(info)?;
                Tensor::from_slice(bytes, bytes.len(), &Device::Cpu)
            } else {
                Tensor::new(&[ggml_type_id(info.ggml_dtype)], &Device::Cpu)
            };
        }
        let info = self.info(name)?;
        let bytes = self.bytes(info)?;
        let t = match info.ggml_dtype {
            GgmlDType::F32 => Tensor::from_raw_buffer(bytes, DType::F32, info.shape.dims(), dev)?,
            GgmlDType::F16 => Tensor::from_raw_buffer(bytes, DType::F16, info.shape.dims(), dev)?,
            GgmlDType::BF16 => Tensor::from_raw_buffer(bytes, DType::BF16, info.shape.dims(), dev)?,
            ty => {
                let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, ty)?;
                QTensor::new(storage, info.shape.clone())?.dequantize(dev)?
            }
        };
        t.to_dtype(dtype)
    }
}

/// Whether `t` is a block format (not a plain float array).
fn is_block_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl SimpleBackend for GgufWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if self.virtual_target(name).is_none() && t.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` in {} has shape {:?}, but the config expects {:?}",
                self.path.display(),
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.virtual_target(name).is_some()
    }
}
