//! Fused ops on channel-first images `[B, C, H, W]` (the Qwen-Image VAE).
//!
//! | op | unfused chain it replaces |
//! |---|---|
//! | [`channel_rms_norm`] | f32 → `x²` → sum over C → `√` → `max(eps)` → `x / ‖x‖` → dtype → `· √C` → `· γ` (→ SiLU) |
//! | [`pixel_attention`] | q/k/v channel slices → `[B, 1, HW, C]` copies → f32 → chunked `QKᵀ`, `· scale`, softmax, `· V` → dtype → back to `[B, C, H, W]` |
//!
//! On CUDA with bf16 tensors (and [`super::enabled`]) the kernels of `kernels/fused.cu` run; everywhere
//! else each function runs the chain above op by op, exactly the code the VAE ran before, so CPU and
//! f32 results are bit-identical to it.
//!
//! Roundings of the fused path, against diffusers 0.42.1 on bf16 input:
//! - `channel_rms_norm` reproduces `QwenImageRMS_norm` + `nn.SiLU` rounding for rounding:
//!   `F.normalize(x.float())` (f32 sum of squares, `√`, `max(eps)`, true division) cast to bf16, then
//!   `· scale` with the scale as f32 and `· γ`, each product rounded to bf16, then SiLU in f32 rounded
//!   once. Only the order of the f32 sum differs. (The candle chain rounds `√C` itself to bf16 first,
//!   a 0.15% bias at C = 96, and evaluates SiLU in bf16 steps.)
//! - `pixel_attention` matches PyTorch's memory-efficient SDPA (which serves head dim 384): bf16
//!   `Q`, `K`, `V`, f32 scores (the scale folded into the GEMM), f32 softmax, probabilities rounded to
//!   bf16 for the `P·V` GEMM with f32 accumulation, output rounded once. The candle chain instead runs
//!   the whole attention in f32 and rounds once at the end.

use candle_core::{DType, Result, Tensor};

use crate::models::nn::attention::{attention, AttnMask};

/// `x / max(‖x‖₂ over C, eps) · scale · γ` per pixel of `x: [B, C, H, W]` (`gamma`: `C` values, any
/// shape), then SiLU if `silu`. The normalisation runs in f32 and is cast back to the dtype of `x`
/// before the two products (diffusers' `QwenImageRMS_norm` with `images` either way).
pub fn channel_rms_norm(x: &Tensor, gamma: &Tensor, scale: f64, eps: f64, silu: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if super::enabled() {
        if let Some(y) = super::cuda::image::channel_rms_norm(x, gamma, scale, eps, silu)? {
            return Ok(y);
        }
    }
    let c = x.dim(1)?;
    let gamma = gamma.reshape((1, c, 1, 1))?;
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(eps)?; // [B, 1, H, W]
    let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
    let y = (normalized * scale)?.broadcast_mul(&gamma)?;
    if silu {
        y.silu()
    } else {
        Ok(y)
    }
}

/// Single-head self-attention over the pixels of each image: `qkv: [B, 3C, H, W]` holds q, k and v as
/// channels `[0, C)`, `[C, 2C)`, `[2C, 3C)`; each pixel is a token with a `C`-dim feature. Returns
/// `softmax(QKᵀ · scale) · V` as `[B, C, H, W]` in the dtype of `qkv`.
pub fn pixel_attention(qkv: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, c3, h, w) = qkv.dims4()?;
    if c3 % 3 != 0 {
        candle_core::bail!("pixel_attention: {c3} channels are not q, k and v of equal width");
    }
    let c = c3 / 3;
    #[cfg(feature = "cuda")]
    if super::enabled() {
        if let Some(o) = super::cuda::image::pixel_attention(qkv, scale)? {
            return Ok(o);
        }
    }
    // Each of q, k, v becomes [B, 1, HW, C].
    let head = |i: usize| -> Result<Tensor> {
        qkv.narrow(1, i * c, c)?
            .reshape((b, 1, c, h * w))?
            .transpose(2, 3)?
            .contiguous()
    };
    let (q, k, v) = (head(0)?, head(1)?, head(2)?);
    let o = attention(&q, &k, &v, AttnMask::None, scale)?; // [B, 1, HW, C]
    o.squeeze(1)?.transpose(1, 2)?.reshape((b, c, h, w)) // [B, C, H, W]
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Deterministic values in roughly [−amp, amp] (a small LCG).
    fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                amp * (2.0 * ((s >> 40) as f32) / ((1u64 << 24) as f32) - 1.0)
            })
            .collect()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The chain `RmsNorm::forward` (+ `.silu()`) of the VAE ran before this module existed.
    fn old_chain(x: &Tensor, gamma: &Tensor, scale: f64, silu: bool) -> Tensor {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32).unwrap();
        let norm = xf
            .sqr()
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .maximum(1e-12)
            .unwrap();
        let normalized = xf.broadcast_div(&norm).unwrap().to_dtype(dtype).unwrap();
        let y = (normalized * scale).unwrap().broadcast_mul(gamma).unwrap();
        if silu {
            y.silu().unwrap()
        } else {
            y
        }
    }

    #[test]
    fn channel_rms_norm_is_the_old_chain_and_the_formula() {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(1, 4, 3, 5), (2, 7, 2, 3), (1, 12, 1, 1)] {
            let xv = values(b * c * h * w, 3 + c as u64, 2.5);
            let gv: Vec<f32> = values(c, 5, 0.5).iter().map(|g| g + 1.0).collect();
            let scale = (c as f64).sqrt();
            for dtype in [DType::F32, DType::BF16] {
                let x = Tensor::from_vec(xv.clone(), (b, c, h, w), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let gamma = Tensor::from_vec(gv.clone(), (1, c, 1, 1), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                for silu in [false, true] {
                    let got = channel_rms_norm(&x, &gamma, scale, 1e-12, silu).unwrap();
                    assert_eq!(got.dtype(), dtype);
                    assert_eq!(got.dims(), &[b, c, h, w]);
                    // Bit for bit the chain the VAE ran before (also with gamma as [C]).
                    let want = old_chain(&x, &gamma, scale, silu);
                    assert_eq!(flat(&got), flat(&want), "{b}x{c}x{h}x{w} {dtype:?} silu {silu}");
                    let flat_gamma = gamma.flatten_all().unwrap();
                    let again = channel_rms_norm(&x, &flat_gamma, scale, 1e-12, silu).unwrap();
                    assert_eq!(flat(&again), flat(&want));
                }
            }
            // And in f32 the formula, pixel by pixel.
            let x = Tensor::from_vec(xv.clone(), (b, c, h, w), &dev).unwrap();
            let gamma = Tensor::from_vec(gv.clone(), c, &dev).unwrap();
            let got = flat(&channel_rms_norm(&x, &gamma, scale, 1e-12, true).unwrap());
            let hw = h * w;
            for bi in 0..b {
                for p in 0..hw {
                    let at = |ci: usize| bi * c * hw + ci * hw + p;
                    let n = (0..c).map(|ci| (xv[at(ci)] as f64).powi(2)).sum::<f64>().sqrt();
                    for ci in 0..c {
                        let y = xv[at(ci)] as f64 / n * scale * gv[ci] as f64;
                        let want = y / (1.0 + (-y).exp());
                        let e = (got[at(ci)] as f64 - want).abs();
                        assert!(
                            e <= 1e-5 * want.abs().max(1.0),
                            "{bi} {ci} {p}: {} vs {want}",
                            got[at(ci)]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn channel_rms_norm_keeps_zero_pixels_zero() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        let gamma = Tensor::ones(3, DType::F32, &dev).unwrap();
        for silu in [false, true] {
            let y = channel_rms_norm(&x, &gamma, 3f64.sqrt(), 1e-12, silu).unwrap();
            assert_eq!(flat(&y), vec![0f32; 12]);
        }
    }

    /// The attention block code the VAE ran before this module existed.
    fn old_attention(qkv: &Tensor, c: usize) -> Tensor {
        let (b, _, h, w) = qkv.dims4().unwrap();
        let head = |i: usize| {
            qkv.narrow(1, i * c, c)
                .unwrap()
                .reshape((b, 1, c, h * w))
                .unwrap()
                .transpose(2, 3)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (head(0), head(1), head(2));
        let o = attention(&q, &k, &v, AttnMask::None, 1.0 / (c as f64).sqrt()).unwrap();
        o.squeeze(1)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, c, h, w))
            .unwrap()
    }

    #[test]
    fn pixel_attention_is_the_old_code_and_the_formula() {
        let dev = Device::Cpu;
        let (b, c, h, w) = (2, 6, 3, 5);
        let n = h * w;
        let qv = values(b * 3 * c * n, 17, 1.5);
        let scale = 1.0 / (c as f64).sqrt();
        for dtype in [DType::F32, DType::BF16] {
            let qkv = Tensor::from_vec(qv.clone(), (b, 3 * c, h, w), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = pixel_attention(&qkv, scale).unwrap();
            assert_eq!(got.dims(), &[b, c, h, w]);
            assert_eq!(got.dtype(), dtype);
            assert_eq!(flat(&got), flat(&old_attention(&qkv, c)), "{dtype:?}");
        }
        // softmax over keys of q·k·scale, weighting v, per pixel, in f64.
        let qkv = Tensor::from_vec(qv.clone(), (b, 3 * c, h, w), &dev).unwrap();
        let got = flat(&pixel_attention(&qkv, scale).unwrap());
        let at = |bi: usize, ch: usize, p: usize| qv[(bi * 3 * c + ch) * n + p] as f64;
        for bi in 0..b {
            for i in 0..n {
                let logits: Vec<f64> = (0..n)
                    .map(|j| (0..c).map(|ci| at(bi, ci, i) * at(bi, c + ci, j)).sum::<f64>() * scale)
                    .collect();
                let m = logits.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for ci in 0..c {
                    let want = (0..n).map(|j| e[j] / z * at(bi, 2 * c + ci, j)).sum::<f64>();
                    let g = got[(bi * c + ci) * n + i] as f64;
                    assert!((g - want).abs() <= 1e-5, "b{bi} c{ci} p{i}: {g} vs {want}");
                }
            }
        }
        // A channel count that is not 3·C is refused.
        let bad = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
        assert!(pixel_attention(&bad, 1.0).is_err());
    }
}
