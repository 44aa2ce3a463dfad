//! Normalisation layers whose statistics are always computed in f32.
//!
//! In f32 the layers are written out op by op (two-pass mean/variance), which is what the parity tests
//! compare against PyTorch. In f16/bf16 they use candle's fused kernels, which accumulate in f32 and
//! round once at the end; PyTorch's reference (`torch.layer_norm`, diffusers' `RMSNorm`) also computes
//! its statistics in f32, so the two agree to the rounding of the last step.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

/// diffusers `normalization.RMSNorm` with a learned weight: `x · rsqrt(mean(x²) + eps)` in f32, cast to
/// the weight's dtype, then `· weight`. Normalises over the last axis.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` `[dim]` from `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// Builds the layer from an existing weight `[dim]`.
    pub fn from_weight(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 {
            rms_norm_f32(x, &self.weight, self.eps)
        } else {
            let x = x.to_dtype(self.weight.dtype())?.contiguous()?;
            candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)
        }
    }
}

/// The op-by-op RMSNorm (statistics in f32), returning the dtype of `weight`.
pub fn rms_norm_f32(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (var + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&rstd)?.to_dtype(weight.dtype())?.broadcast_mul(weight)
}

/// `torch.nn.LayerNorm(dim, elementwise_affine=False, eps)` over the last axis.
#[derive(Debug, Clone)]
pub struct LayerNormNoAffine {
    eps: f64,
    /// Unit weight and zero bias for the fused kernel, in the model dtype.
    ones: Tensor,
    zeros: Tensor,
}

impl LayerNormNoAffine {
    pub fn new(dim: usize, eps: f64, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            eps,
            ones: Tensor::ones(dim, dtype, device)?,
            zeros: Tensor::zeros(dim, dtype, device)?,
        })
    }

    /// Normalises `x` (any dtype; same dtype out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 {
            layer_norm_f32(x, self.eps)
        } else {
            let dim = x.dim(D::Minus1)?;
            if dim != self.ones.dim(0)? {
                candle_core::bail!(
                    "layer norm over {} channels got input {:?}",
                    self.ones.dim(0)?,
                    x.shape()
                );
            }
            let x = x.contiguous()?;
            let ones = self.ones.to_dtype(x.dtype())?;
            let zeros = self.zeros.to_dtype(x.dtype())?;
            candle_nn::ops::layer_norm(&x, &ones, &zeros, self.eps as f32)
        }
    }
}

/// The op-by-op affine-free LayerNorm: two-pass mean and (biased) variance in f32, result in the input
/// dtype.
pub fn layer_norm_f32(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (var + eps)?.sqrt()?.recip()?;
    centred.broadcast_mul(&rstd)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn layer_norm_matches_hand_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [10., 10., 10., 14.]], &dev).unwrap();
        let y = layer_norm_f32(&x, 1e-6).unwrap();
        // Row 0: mean 2.5, var 1.25. Row 1: mean 11, var 3.
        let s0 = (1.25f32 + 1e-6).sqrt();
        let s1 = (3f32 + 1e-6).sqrt();
        let want = Tensor::new(
            &[
                [-1.5 / s0, -0.5 / s0, 0.5 / s0, 1.5 / s0],
                [-1. / s1, -1. / s1, -1. / s1, 3. / s1],
            ],
            &dev,
        )
        .unwrap();
        assert!(max_abs(&y, &want) < 1e-6);
    }

    #[test]
    fn rms_norm_matches_hand_values() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.]], &dev).unwrap();
        let w = Tensor::new(&[2f32, 0.5], &dev).unwrap();
        let y = RmsNorm::from_weight(w, 0.0).forward(&x).unwrap();
        let r = (12.5f32).sqrt();
        let want = Tensor::new(&[[6. / r, 2. / r]], &dev).unwrap();
        assert!(max_abs(&y, &want) < 1e-6);
    }

    #[test]
    fn fused_half_paths_agree_with_f32_paths() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 64), &dev)
            .unwrap()
            .affine(3.0, 0.5)
            .unwrap();
        let w = (Tensor::randn(0f32, 0.2, 64, &dev).unwrap() + 1.0).unwrap();
        let xb = x.to_dtype(DType::BF16).unwrap();
        let ln = LayerNormNoAffine::new(64, 1e-6, DType::BF16, &dev).unwrap();
        let got = ln.forward(&xb).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let d = max_abs(&got, &layer_norm_f32(&xb, 1e-6).unwrap());
        assert!(d <= 1.0 / 32.0, "{d}");
        let rms = RmsNorm::from_weight(w.to_dtype(DType::BF16).unwrap(), 1e-6);
        let got = rms.forward(&xb).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = rms_norm_f32(&xb, &w.to_dtype(DType::BF16).unwrap(), 1e-6).unwrap();
        // One bf16 rounding apart: |x| < 8 here, where a bf16 ulp is 1/32.
        let d = max_abs(&got, &want);
        assert!(d <= 1.0 / 32.0, "{d}");
    }
}
