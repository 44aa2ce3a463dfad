//! Random weights for benchmarks: a `VarBuilder` backend that makes every requested tensor on the
//! fly (normal with std 0.02; norm scales are ones), straight on the target device and dtype, so a
//! full-size network can be timed without its checkpoint. Never used by the pipeline.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Standard deviation of the random weights.
pub const WEIGHT_STD: f64 = 0.02;

pub struct RandomWeights;

impl RandomWeights {
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }

    /// Random weights with the Linear weights `select` accepts quantized to fp8 when `format` says so.
    pub fn var_builder_with(
        dtype: DType,
        device: &Device,
        format: crate::models::quant::WeightFormat,
        select: fn(&str) -> bool,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(Self::backend(format, select), dtype, device.clone())
    }

    /// The backend of [`Self::var_builder_with`] (e.g. for a streamed model).
    pub fn backend(format: crate::models::quant::WeightFormat, select: fn(&str) -> bool) -> Box<dyn SimpleBackend> {
        use crate::models::quant::{fp8::Fp8Quantizer, WeightFormat};
        match format {
            WeightFormat::Native => Box::new(RandomWeights),
            WeightFormat::Fp8 => Box::new(Fp8Quantizer::new(Box::new(RandomWeights), select)),
        }
    }
}

fn is_scale(name: &str) -> bool {
    name.ends_with("gamma") || (name.contains("norm") && name.ends_with("weight")) || name.ends_with("ln_q.weight")
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if is_scale(name) {
            return Tensor::ones(s, dtype, dev);
        }
        // candle's CUDA RNG makes f32/f64 only: draw in f32, then convert tensor by tensor.
        Tensor::randn(0f32, WEIGHT_STD as f32, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need the shape of `{name}`")
    }

    /// Every tensor exists, except the virtual ones of the quantized formats (random weights are
    /// dense; `bench --weights fp8` quantizes them on the way).
    fn contains_tensor(&self, name: &str) -> bool {
        use crate::models::nn::linear::{GGML_DATA, GGML_TYPE, SCALE_KEYS};
        !(name.ends_with(GGML_DATA) || name.ends_with(GGML_TYPE) || SCALE_KEYS.iter().any(|k| name.ends_with(k)))
    }
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<usize>)>>>;

/// Records the shape of every tensor a network asks for and hands out zero-stride zeros, so the
/// structure of a full-size network is known without allocating its weights.
struct ShapeProbe {
    seen: Seen,
}

impl SimpleBackend for ShapeProbe {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the shape probe needs the shape of `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        RandomWeights.contains_tensor(name)
    }
}

/// The tensors (name, shape) that `build` asks for, in order, built on the CPU from zero-stride zeros
/// in `dtype` (no weight memory).
pub fn probe_shapes(
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<(String, Vec<usize>)>> {
    let seen = Seen::default();
    build(VarBuilder::from_backend(
        Box::new(ShapeProbe { seen: seen.clone() }),
        dtype,
        Device::Cpu,
    ))?;
    let shapes = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(shapes)
}

/// The Linear layers among `shapes` (from [`probe_shapes`]): module → `[out, in]`.
pub fn linear_shapes(shapes: &[(String, Vec<usize>)]) -> std::collections::HashMap<String, (usize, usize)> {
    shapes
        .iter()
        .filter_map(|(n, s)| match (n.strip_suffix(".weight"), s.as_slice()) {
            (Some(m), &[out, inp]) => Some((m.to_string(), (out, inp))),
            _ => None,
        })
        .collect()
}
