//! Pixel buffers ↔ VAE tensors, as diffusers' `VaeImageProcessor` does it (`do_normalize=True`).
//!
//! `preprocess_buffer`: `np.array(img).astype(float32) / 255` then `2 * x - 1` (f32), laid out `[1, 3, H, W]`.
//! `postprocess` (output type "pil"): `(x * 0.5 + 0.5).clamp(0, 1)` in the tensor's dtype, then f32,
//! `(x * 255).round()` with NumPy's round-half-to-even, then `uint8`. The 16-bit variant scales by
//! 65535 instead (no upstream counterpart; used for 16-bit output files).

use candle_core::{bail, DType, Device, Result, Tensor};

/// An interleaved RGB buffer (`height * width * 3` bytes, row-major) → `[1, 3, H, W]` f32 in [-1, 1].
pub fn preprocess_buffer(rgb: &[u8], height: usize, width: usize, device: &Device) -> Result<Tensor> {
    if height == 0 || width == 0 || rgb.len() != height * width * 3 {
        bail!(
            "preprocess_buffer: {} bytes is not a {height}x{width} RGB image",
            rgb.len()
        );
    }
    let plane = height * width;
    let mut chw = vec![0f32; 3 * plane];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let x = v as f32 / 255.0;
            chw[c * plane + p] = 2.0 * x - 1.0;
        }
    }
    Tensor::from_vec(chw, (1, 3, height, width), device)
}

/// `[1, 3, H, W]` in [-1, 1] (any dtype or device) → `[0, 1]` as f32 `[H, W, 3]` values on the host.
fn denormalize_hwc(x: &Tensor) -> Result<(Vec<f32>, usize, usize)> {
    let (b, c, h, w) = x.dims4()?;
    if b != 1 || c != 3 {
        bail!("postprocess: expected a [1, 3, H, W] image tensor, got {:?}", x.shape());
    }
    // In the tensor's dtype, as upstream (`denormalize` runs before `.float()`).
    let y = x.affine(0.5, 0.5)?.clamp(0f32, 1f32)?;
    let hwc = y
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .squeeze(0)?
        .permute((1, 2, 0))?; // [H, W, 3]
    let v = hwc.flatten_all()?.to_vec1::<f32>()?;
    Ok((v, h, w))
}

/// NumPy `(v * 255).round().astype(uint8)` for `v` in [0, 1].
pub(crate) fn quantize_u8(v: f32) -> u8 {
    (v * 255.0).round_ties_even() as u8
}

/// `(v * 65535).round()` (half to even) for `v` in [0, 1].
pub(crate) fn quantize_u16(v: f32) -> u16 {
    (v * 65535.0).round_ties_even() as u16
}

/// A decoded `[1, 3, H, W]` tensor in [-1, 1] → interleaved 8-bit RGB (`H * W * 3` bytes).
pub fn postprocess_u8(x: &Tensor) -> Result<Vec<u8>> {
    let (v, _, _) = denormalize_hwc(x)?;
    Ok(v.into_iter().map(quantize_u8).collect())
}

/// A decoded `[1, 3, H, W]` tensor in [-1, 1] → interleaved 16-bit RGB (`H * W * 3` values).
pub fn postprocess_u16(x: &Tensor) -> Result<Vec<u16>> {
    let (v, _, _) = denormalize_hwc(x)?;
    Ok(v.into_iter().map(quantize_u16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even() {
        // Find f32 values whose product with 255 is exactly k + 0.5 and check they round to even.
        let mut seen = [false, false];
        for k in 0..254u32 {
            let target = k as f32 + 0.5;
            let base = (target / 255.0).to_bits() as i64;
            for d in -3..=3 {
                let v = f32::from_bits((base + d) as u32);
                if v * 255.0 == target {
                    let want = if k % 2 == 0 { k } else { k + 1 };
                    assert_eq!(quantize_u8(v) as u32, want, "k = {k}");
                    seen[(k % 2) as usize] = true;
                }
            }
        }
        assert!(seen[0] && seen[1], "no exact ties found: {seen:?}");
        assert_eq!(quantize_u8(0.5), 128); // 127.5 -> 128
        assert_eq!(quantize_u8(1.0), 255);
        assert_eq!(quantize_u16(1.0), 65535);
        assert_eq!(quantize_u16(0.5), 32768); // 32767.5 -> 32768
    }
}
