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

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}
