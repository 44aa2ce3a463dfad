//! The image side of `Qwen2VLProcessor`: `Qwen2VLImageProcessor` (the PIL/numpy implementation of
//! transformers 5.2.0, `image_processing_qwen2_vl.py`).
//!
//! Per image: `smart_resize` to multiples of `patch_size · merge_size` within `[min_pixels, max_pixels]`,
//! bicubic resize, rescale by `rescale_factor` (computed in f64, stored as f32), CLIP mean/std
//! normalisation in f32, then the patch layout: the single frame is repeated `temporal_patch_size` times
//! and the patches are ordered merge-block-major (`[grid_h/m, grid_w/m, m, m]`), each row flattened as
//! `(C, T, P, P)`. Output: `pixel_values [grid_h·grid_w, C·T·P·P]` and `grid_thw = [1, grid_h, grid_w]`.

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::config::ProcessorConfig;

/// Largest accepted aspect ratio (the reference raises above it).
const MAX_ASPECT_RATIO: f64 = 200.0;

/// One image after preprocessing.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// `[grid_t · grid_h · grid_w, C · T · P · P]`, f32 on the CPU.
    pub pixel_values: Tensor,
    /// `(grid_t, grid_h, grid_w)` in patches.
    pub grid_thw: [usize; 3],
}

impl ProcessedImage {
    /// Number of `<|image_pad|>` tokens this image expands to: `t·h·w / merge²`.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.grid_thw.iter().product::<usize>() / (merge_size * merge_size)
    }
}

/// `smart_resize(height, width, factor, min_pixels, max_pixels)` → `(height, width)`.
///
/// Python's `round` (half to even) is used for the first rounding, as the reference.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> anyhow::Result<(usize, usize)> {
    if height == 0 || width == 0 {
        anyhow::bail!("image has zero size {width}x{height}");
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > MAX_ASPECT_RATIO {
        anyhow::bail!(
            "absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {}",
            h.max(w) / h.min(w)
        );
    }
    let mut h_bar = ((h / f).round_ties_even() as usize) * factor;
    let mut w_bar = ((w / f).round_ties_even() as usize) * factor;
    if h_bar * w_bar > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max(((h / beta / f).floor() as usize) * factor);
        w_bar = factor.max(((w / beta / f).floor() as usize) * factor);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = ((h * beta / f).ceil() as usize) * factor;
        w_bar = ((w * beta / f).ceil() as usize) * factor;
    }
    Ok((h_bar, w_bar))
}

/// The one place where the processor's bicubic resize is chosen.
///
/// The reference resizes with PIL's BICUBIC filter; `crate::io::resize::resize_rgb` reproduces Pillow
/// 13 byte for byte (fixed-point coefficients, pass order). For the record: `image`'s Catmull-Rom, the
/// obvious alternative, differs from PIL by up to 1 level in 0.02–10 % of the fixture images' values.
fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.width() == width && img.height() == height {
        // PIL returns an unchanged copy for a same-size resize.
        return img.clone();
    }
    crate::io::resize::resize_rgb(img, width, height, crate::io::resize::Filter::Bicubic)
}

/// `Qwen2VLImageProcessor` for still images.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub cfg: ProcessorConfig,
}

impl ImageProcessor {
    pub fn new(cfg: ProcessorConfig) -> Self {
        Self { cfg }
    }

    /// The resized `(height, width)` the processor will use for an image of `height × width`.
    pub fn target_size(&self, height: usize, width: usize) -> anyhow::Result<(usize, usize)> {
        let c = &self.cfg;
        if !c.do_resize {
            return Ok((height, width));
        }
        smart_resize(height, width, c.patch_size * c.merge_size, c.min_pixels, c.max_pixels)
    }

    /// The image resized to the processor's target size (unchanged when it already has that size).
    pub fn resized(&self, img: &RgbImage) -> anyhow::Result<RgbImage> {
        let (h, w) = self.target_size(img.height() as usize, img.width() as usize)?;
        Ok(resize_bicubic(img, w as u32, h as u32))
    }

    /// Preprocesses one RGB image into `pixel_values` and `grid_thw`.
    pub fn process_image(&self, img: &RgbImage) -> anyhow::Result<ProcessedImage> {
        let c = &self.cfg;
        let (h, w) = self.target_size(img.height() as usize, img.width() as usize)?;
        let (p, m, t) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        if h % (p * m) != 0 || w % (p * m) != 0 {
            anyhow::bail!(
                "image of {w}x{h} is not a multiple of patch_size·merge_size = {}",
                p * m
            );
        }
        let resized;
        let img = if (img.width() as usize, img.height() as usize) != (w, h) {
            resized = resize_bicubic(img, w as u32, h as u32);
            &resized
        } else {
            img
        };

        // Channel-first float planes [3, h, w] exactly as numpy computes them.
        let mut planes = vec![0f32; 3 * h * w];
        for (x, y, px) in img.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for ch in 0..3 {
                let v = px.0[ch];
                let mut f = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                if c.do_normalize {
                    f = (f - c.image_mean[ch] as f32) / c.image_std[ch] as f32;
                }
                planes[(ch * h + y) * w + x] = f;
            }
        }

        let (gh, gw) = (h / p, w / p);
        let row_len = 3 * t * p * p;
        let mut out = Vec::with_capacity(gh * gw * row_len);
        // Rows ordered (block_h, block_w, merge_h, merge_w); each row (C, T, P, P).
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let y0 = (bh * m + mh) * p;
                        let x0 = (bw * m + mw) * p;
                        for ch in 0..3 {
                            for _frame in 0..t {
                                for py in 0..p {
                                    let start = (ch * h + y0 + py) * w + x0;
                                    out.extend_from_slice(&planes[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        let pixel_values = Tensor::from_vec(out, (gh * gw, row_len), &Device::Cpu)?;
        Ok(ProcessedImage {
            pixel_values,
            grid_thw: [1, gh, gw],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_examples() {
        let f = |h, w| smart_resize(h, w, 28, 3136, 12845056).unwrap();
        assert_eq!(f(1024, 1024), (1036, 1036));
        assert_eq!(f(896, 1184), (896, 1176));
        assert_eq!(f(384, 384), (392, 392));
        assert_eq!(f(320, 448), (308, 448));
        // Half-way values round to even: 42/28 = 1.5 → 2, 70/28 = 2.5 → 2.
        assert_eq!(smart_resize(42, 70, 28, 1, 1 << 30).unwrap(), (56, 56));
        // Below min_pixels: scaled up with ceil.
        assert_eq!(smart_resize(10, 10, 28, 3136, 1 << 30).unwrap(), (56, 56));
        // Above max_pixels: scaled down with floor.
        assert_eq!(smart_resize(1000, 1000, 28, 1, 50176).unwrap(), (224, 224));
        assert!(smart_resize(10, 3000, 28, 1, 1 << 30).is_err());
    }
}
