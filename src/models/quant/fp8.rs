//! float8 e4m3 weights: quantization with one scale per output row, and a `VarBuilder` backend that
//! quantizes the selected Linear weights of any other backend as they load.
//!
//! `s[o] = max_i |W[o, i]| / 448` (448 = the largest finite e4m3), `W8 = e4m3(W / s)` (round to
//! nearest, saturating); [`crate::models::nn::linear::Linear`] computes `y = (x · W8ᵀ) ⊙ s + b`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, D};
use candle_nn::var_builder::SimpleBackend;

use crate::models::nn::fused;
use crate::models::nn::linear::SCALE_KEYS;

/// The largest finite float8 e4m3 value.
pub const E4M3_MAX: f64 = 448.0;

/// Quantizes `w [out, in]` to e4m3 with a per-row f32 scale `[out]`.
pub fn quantize_rows(w: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let w = w.to_dtype(DType::F32)?;
    let amax = w.abs()?.max_keepdim(D::Minus1)?; // [out, 1]
                                                 // An all-zero row keeps scale 1 (its codes are all zero anyway).
    let scale = (amax.clamp(1e-30, f64::MAX)? / E4M3_MAX)?;
    let scale = amax.gt(0.0)?.where_cond(&scale, &scale.ones_like()?)?;
    let q = fused::to_dtype(&w.broadcast_div(&scale)?.clamp(-E4M3_MAX, E4M3_MAX)?, DType::F8E4M3)?;
    Ok((q, scale.flatten_all()?))
}

/// `W ≈ e4m3 · s` in f32, `s` scalar or per row.
pub fn dequantize_rows(q: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    let (out, _) = q.dims2()?;
    let s = if scale.elem_count() == 1 {
        scale.reshape((1, 1))?
    } else {
        scale.reshape((out, 1))?
    };
    fused::to_dtype(q, DType::F32)?.broadcast_mul(&s.to_dtype(DType::F32)?)
}

/// Wraps a weight source so that the Linear weights `select` accepts (by module path, e.g.
/// `transformer_blocks.3.attn.to_q`) load as e4m3 with a per-row scale (`<module>.weight_scale`).
/// Weights the source already stores in fp8 with a scale pass through unchanged.
pub struct Fp8Quantizer {
    inner: Box<dyn SimpleBackend>,
    select: fn(&str) -> bool,
    /// Scales computed with a weight, until the Linear asks for them.
    scales: Mutex<HashMap<String, Tensor>>,
}

impl Fp8Quantizer {
    pub fn new(inner: Box<dyn SimpleBackend>, select: fn(&str) -> bool) -> Self {
        Self {
            inner,
            select,
            scales: Mutex::new(HashMap::new()),
        }
    }

    /// The module of `name` if it is a weight this wrapper quantizes.
    fn quantized_module<'a>(&self, name: &'a str) -> Option<&'a str> {
        let module = name.strip_suffix(".weight")?;
        let pre_quantized = SCALE_KEYS
            .iter()
            .any(|k| self.inner.contains_tensor(&format!("{module}.{k}")));
        ((self.select)(module) && !pre_quantized && self.inner.contains_tensor(name)).then_some(module)
    }

    /// The module of `name` if it is the scale key this wrapper serves.
    fn scale_module<'a>(&self, name: &'a str) -> Option<&'a str> {
        let module = name.strip_suffix(".weight_scale")?;
        self.quantized_module(&format!("{module}.weight"))
            .is_some()
            .then_some(module)
    }

    fn quantize(&self, module: &str, w: Tensor) -> candle_core::Result<Tensor> {
        let (q, s) = quantize_rows(&w)?;
        self.scales
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(module.to_string(), s);
        Ok(q)
    }
}

impl SimpleBackend for Fp8Quantizer {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.quantized_module(name) {
            Some(module) if dtype == DType::F8E4M3 => {
                let w = self.inner.get(s, name, h, DType::F32, dev)?;
                self.quantize(module, w)
            }
            _ => self.inner.get(s, name, h, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(module) = self.scale_module(name) {
            let cached = self.scales.lock().unwrap_or_else(|p| p.into_inner()).remove(module);
            let s = match cached {
                Some(s) => s,
                None => {
                    let w = self.inner.get_unchecked(&format!("{module}.weight"), DType::F32, dev)?;
                    quantize_rows(&w)?.1
                }
            };
            return s.to_dtype(dtype);
        }
        match self.quantized_module(name) {
            Some(module) if dtype == DType::F8E4M3 => {
                let w = self.inner.get_unchecked(name, DType::F32, dev)?;
                self.quantize(module, w)
            }
            _ => self.inner.get_unchecked(name, dtype, dev),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.scale_module(name).is_some() || self.inner.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_e4m3_precision() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 96), &dev).unwrap();
        // A row of zeros and a row with one outlier.
        let w = w
            .slice_assign(&[0..1, 0..96], &Tensor::zeros((1, 96), DType::F32, &dev).unwrap())
            .unwrap();
        let (q, s) = quantize_rows(&w).unwrap();
        assert_eq!(q.dtype(), DType::F8E4M3);
        assert_eq!(s.dims(), &[64]);
        let back = dequantize_rows(&q, &s).unwrap();
        // e4m3 has 3 mantissa bits: relative rounding error ≤ 2^-4 of each value (normal range),
        // and values below the row's amax/2^9 fall into the subnormals (absolute error ≤ s·2^-10).
        let err = (&back - &w).unwrap().abs().unwrap();
        let bound = ((w.abs().unwrap() * 0.0625)
            .unwrap()
            .broadcast_add(&(s.reshape((64, 1)).unwrap() * 2f64.powi(-9)).unwrap()))
        .unwrap();
        let over = err.gt(&bound).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap();
        assert_eq!(over.to_scalar::<f32>().unwrap(), 0.0);
        // The zero row stays zero; every row's amax maps to ±448 exactly.
        assert_eq!(
            back.get(0)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let qmax = q.to_dtype(DType::F32).unwrap().abs().unwrap().max_keepdim(1).unwrap();
        let qmax: Vec<f32> = qmax.flatten_all().unwrap().to_vec1().unwrap();
        assert!(qmax[1..].iter().all(|&m| m == 448.0), "{qmax:?}");
        // Mean relative error over the matrix, the number that matters for GEMMs: ~2 %.
        let rel = (err.sum_all().unwrap() / w.abs().unwrap().sum_all().unwrap())
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(rel < 0.03, "mean relative error {rel}");
    }
}
