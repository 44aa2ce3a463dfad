//! The Linear layer of every network, in one of three weight formats:
//!
//! - **dense**: `weight [out, in]` in the model dtype (what diffusers loads);
//! - **fp8**: `weight [out, in]` in float8 e4m3 with a scale per output row or per tensor; the weight
//!   is widened to the activation dtype (exact: every e4m3 value is a bf16 value) for the GEMM and the
//!   scale applied to the output, `y = (x · W8ᵀ) ⊙ s + b`;
//! - **ggml**: GGML block-quantized rows (Q8_0, Q6_K, Q5_K, Q4_K, …, from a GGUF file), dequantized to
//!   the activation dtype per call for the GEMM.
//!
//! The format is read from what the weight source offers under the module's prefix: a scale tensor
//! (`weight_scale`, or ComfyUI's `scale_weight`) next to `weight` means fp8; the GGUF backend offers the
//! raw blocks as the virtual tensors [`GGML_DATA`] / [`GGML_TYPE`]. Weight names stay exactly as on disk.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The names under which an fp8 weight's scale is accepted (scalar, `[out]` or `[out, 1]`, f32).
pub const SCALE_KEYS: [&str; 2] = ["weight_scale", "scale_weight"];
/// Virtual tensor of the GGUF backend: the raw GGML blocks of `weight` (u8, on the CPU).
pub const GGML_DATA: &str = "weight.ggml";
/// Virtual tensor of the GGUF backend: `[id]` (u32) with `id` = [`ggml_type_id`] of the blocks.
pub const GGML_TYPE: &str = "weight.ggml_type";

/// The GGML block types, in the order of their ids for [`GGML_TYPE`].
const GGML_TYPES: [GgmlDType; 15] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q8_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8K,
];

/// The id of `t` in the [`GGML_TYPE`] tensor.
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    GGML_TYPES
        .iter()
        .position(|x| *x == t)
        .expect("every GgmlDType has an id") as u32
}

fn ggml_type_from_id(id: u32) -> Result<GgmlDType> {
    GGML_TYPES
        .get(id as usize)
        .copied()
        .ok_or_else(|| candle_core::Error::Msg(format!("unknown GGML type id {id}")))
}

/// How a [`Linear`] holds its weight.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    /// e4m3 `[out, in]` and its f32 scale (`[1]` or `[out]`).
    Fp8 {
        weight: Tensor,
        scale: Tensor,
    },
    Ggml(std::sync::Arc<QTensor>),
}

/// `y = x · Wᵀ + b` over the last axis of `x`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

/// A Linear with a bias.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(in_dim, out_dim, true, vb)
}

/// A Linear without a bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    Linear::new(in_dim, out_dim, false, vb)
}

impl Linear {
    /// Loads `weight` (and `bias` when `with_bias`) from `vb`, in the format the source offers.
    pub fn new(in_dim: usize, out_dim: usize, with_bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = if vb.contains_tensor(GGML_DATA) {
            let ty = ggml_type_from_id(vb.get_unchecked_dtype(GGML_TYPE, DType::U32)?.to_vec1::<u32>()?[0])?;
            let data = vb.get_unchecked_dtype(GGML_DATA, DType::U8)?;
            let qt = if data.device().is_cuda() {
                // Blocks already on the GPU (a streamed block's slot): copied there, not via the host.
                crate::models::quant::ggml::qtensor_from_device(&data, ty, (out_dim, in_dim))?
            } else {
                let storage = QStorage::from_data(Cow::Owned(data.to_vec1::<u8>()?), vb.device(), ty)?;
                QTensor::new(storage, (out_dim, in_dim))?
            };
            LinearWeight::Ggml(std::sync::Arc::new(qt))
        } else if let Some(key) = SCALE_KEYS.iter().find(|k| vb.contains_tensor(k)) {
            let weight = vb.get_with_hints_dtype((out_dim, in_dim), "weight", Init::Const(0.), DType::F8E4M3)?;
            let scale = vb.get_unchecked_dtype(key, DType::F32)?.flatten_all()?;
            let n = scale.elem_count();
            if n != 1 && n != out_dim {
                candle_core::bail!(
                    "fp8 scale `{}.{key}` has {n} values, expected 1 or {out_dim}",
                    vb.prefix()
                );
            }
            LinearWeight::Fp8 { weight, scale }
        } else {
            LinearWeight::Dense(vb.get((out_dim, in_dim), "weight")?)
        };
        let bias = if with_bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
        })
    }

    /// A dense Linear from tensors (`weight [out, in]`).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Self {
            weight: LinearWeight::Dense(weight),
            bias,
            in_dim,
            out_dim,
        })
    }

    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// The weight as a dense `[out, in]` tensor of `dtype` (dequantized when stored quantized).
    pub fn dense_weight(&self, dtype: DType) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => w.to_dtype(dtype),
            LinearWeight::Fp8 { weight, scale } => {
                let w = super::fused::to_dtype(weight, DType::F32)?;
                let s = if scale.elem_count() == 1 {
                    scale.reshape((1, 1))?
                } else {
                    scale.reshape((self.out_dim, 1))?
                };
                w.broadcast_mul(&s)?.to_dtype(dtype)
            }
            LinearWeight::Ggml(q) => q.dequantize(&q.device())?.to_dtype(dtype),
        }
    }

    /// Bytes the weight takes on its device.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            LinearWeight::Fp8 { weight, scale } => weight.elem_count() + 4 * scale.elem_count(),
            LinearWeight::Ggml(q) => q.storage_size_in_bytes(),
        }
    }
}

impl Linear {
    /// The bias `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x · Wᵀ` (with the fp8 scale applied) without the bias, so that a fused kernel after the GEMM
    /// can add it: `forward(x) = forward_no_bias(x) + bias()`.
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        let (y, dims) = self.gemm(x)?;
        y.reshape(dims)
    }

    /// The GEMM over `x` flattened to rows: `[rows, out]` and the output shape.
    fn gemm(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let dtype = x.dtype();
        let mut dims = x.dims().to_vec();
        let last = dims.pop().unwrap_or(0);
        if last != self.in_dim {
            candle_core::bail!("linear expects {} input features, got {:?}", self.in_dim, x.dims());
        }
        let rows: usize = dims.iter().product();
        let x2 = x.reshape((rows, self.in_dim))?;
        let y = match &self.weight {
            LinearWeight::Dense(w) => x2.matmul(&w.t()?)?,
            LinearWeight::Fp8 { weight, scale } => {
                let y = x2.matmul(&super::fused::to_dtype(weight, dtype)?.t()?)?;
                y.broadcast_mul(&scale.to_dtype(dtype)?)?
            }
            LinearWeight::Ggml(q) => {
                let w = q.dequantize(x.device())?.to_dtype(dtype)?;
                x2.matmul(&w.t()?)?
            }
        };
        dims.push(self.out_dim);
        Ok((y, dims))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, dims) = self.gemm(x)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(dims)
    }
}
