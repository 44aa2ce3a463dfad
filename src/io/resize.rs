//! PIL-exact resizing of 8-bit RGB images.
//!
//! The reference pipelines resize with Pillow (`Image.resize(size, LANCZOS)` for the VAE and condition
//! images, `BICUBIC` in the Qwen2-VL image processor), and the model sees the exact bytes, so this is an
//! independent implementation of Pillow 13's `libImaging/Resample.c` for 8-bit images, byte-identical
//! to it:
//!
//! - **Coefficients** (per output pixel, in f64): `scale = in / out`; `filterscale = max(scale, 1)`
//!   (the filter is stretched by the downscale factor, so downscaling antialiases); the window is
//!   `center ± support·filterscale` with `center = (i + 0.5)·scale`, its ends rounded by truncating
//!   `· + 0.5` and clamped to the image; each tap is `filter((j − center + 0.5) / filterscale)`, and
//!   the window is normalised to sum 1.
//! - **Fixed point**: coefficients become `i32` with 22 fractional bits (`PRECISION_BITS = 32 − 8 − 2`),
//!   rounded half away from zero; a pixel is `Σ value·coef` in `i32` starting from `1 << 21`, shifted
//!   right by 22 and clamped to `0..=255`.
//! - **Passes**: a horizontal and a vertical pass, each only when that dimension changes, with the
//!   8-bit rounding in between. The horizontal pass runs first unless the height shrinks by more than
//!   twice as many pixels as the width (`in_h − out_h > 2·(in_w − out_w)`), in which case the vertical
//!   pass runs first (Pillow does this for speed; it changes the rounding, so we follow it).
//! - Same size in and out returns a copy (Pillow's `Image.resize` shortcut).

use image::RgbImage;

/// Fractional bits of the fixed-point coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const CHANNELS: usize = 3;

/// The resampling filters the pipelines use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `Resampling.BICUBIC`: Keys cubic convolution with `a = −0.5`, support 2.
    Bicubic,
    /// Pillow `Resampling.LANCZOS`: 3-lobe Lanczos windowed sinc, support 3.
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Lanczos => lanczos(x),
        }
    }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Fixed-point coefficients of one pass: output pixel `i` reads input `first[i] .. first[i] + len[i]`
/// with weights `weights[i * stride ..][.. len[i]]`.
struct Coeffs {
    stride: usize,
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Coeffs {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        // Pillow passes the box edges as f32 and subtracts them in f32; sizes are exact integers.
        let scale = (in_size as f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut first = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * stride];
        let mut taps = vec![0f64; stride];
        for (i, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // C casts truncate toward zero.
            let lo = ((center - support + 0.5) as i64).max(0);
            let hi = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (hi - lo).clamp(0, stride as i64) as usize;
            let lo = lo as usize;
            let mut sum = 0.0;
            for (j, tap) in taps[..n].iter_mut().enumerate() {
                let w = filter.eval(((j + lo) as f64 - center + 0.5) * inv_filterscale);
                *tap = w;
                sum += w;
            }
            if sum != 0.0 {
                for tap in taps[..n].iter_mut() {
                    *tap /= sum;
                }
            }
            for (dst, &w) in row.iter_mut().zip(&taps[..n]) {
                *dst = to_fixed(w);
            }
            first.push(lo);
            len.push(n);
        }
        Self {
            stride,
            first,
            len,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let start = i * self.stride;
        (self.first[i], &self.weights[start..start + self.len[i]])
    }
}

/// Round half away from zero to 22 fractional bits (`(int)(±0.5 + w·2^22)`).
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// `clip8`: drop the fractional bits and clamp to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// A packed RGB raster.
struct Raster {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

fn resample_horizontal(src: &Raster, out_width: usize, coeffs: &Coeffs) -> Raster {
    let mut data = vec![0u8; out_width * src.height * CHANNELS];
    let in_row = src.width * CHANNELS;
    for (src_row, dst_row) in src
        .data
        .chunks_exact(in_row)
        .zip(data.chunks_exact_mut(out_width * CHANNELS))
    {
        for (x, dst) in dst_row.chunks_exact_mut(CHANNELS).enumerate() {
            let (first, taps) = coeffs.taps(x);
            let mut acc = [ROUNDING; CHANNELS];
            let window = &src_row[first * CHANNELS..(first + taps.len()) * CHANNELS];
            for (px, &k) in window.chunks_exact(CHANNELS).zip(taps) {
                for c in 0..CHANNELS {
                    acc[c] = acc[c].wrapping_add(i32::from(px[c]).wrapping_mul(k));
                }
            }
            for c in 0..CHANNELS {
                dst[c] = clip8(acc[c]);
            }
        }
    }
    Raster {
        width: out_width,
        height: src.height,
        data,
    }
}

fn resample_vertical(src: &Raster, out_height: usize, coeffs: &Coeffs) -> Raster {
    let row_len = src.width * CHANNELS;
    let mut data = vec![0u8; row_len * out_height];
    let mut acc = vec![0i32; row_len];
    for (y, dst_row) in data.chunks_exact_mut(row_len).enumerate() {
        let (first, taps) = coeffs.taps(y);
        acc.fill(ROUNDING);
        for (j, &k) in taps.iter().enumerate() {
            let src_row = &src.data[(first + j) * row_len..(first + j + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(src_row) {
                *a = a.wrapping_add(i32::from(v).wrapping_mul(k));
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Raster {
        width: src.width,
        height: out_height,
        data,
    }
}

/// Resizes `img` to `width × height` exactly as Pillow 13's `Image.resize((width, height), filter)`
/// does for an RGB image. A zero target size gives an empty image, an empty source a black one.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) || out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return if (in_w, in_h) == (out_w, out_h) {
            img.clone()
        } else {
            RgbImage::new(width, height)
        };
    }
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let horizontal_first = !(in_h > out_h && (in_h - out_h) as i64 > (in_w as i64 - out_w as i64) * 2);
    let mut raster = Raster {
        width: in_w,
        height: in_h,
        data: img.as_raw().clone(),
    };
    let horizontal = |r: &Raster| resample_horizontal(r, out_w, &Coeffs::new(in_w, out_w, filter));
    let vertical = |r: &Raster| resample_vertical(r, out_h, &Coeffs::new(in_h, out_h, filter));
    if horizontal_first {
        // Pillow limits this pass to the rows the vertical pass reads; those rows come out the same.
        if need_horizontal {
            raster = horizontal(&raster);
        }
        if need_vertical {
            raster = vertical(&raster);
        }
    } else {
        if need_vertical {
            raster = vertical(&raster);
        }
        if need_horizontal {
            raster = horizontal(&raster);
        }
    }
    let mut out = RgbImage::new(width, height);
    out.copy_from_slice(&raster.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(37, 74), (300, 97), (23, 5), (5, 23)] {
            for f in [Filter::Bicubic, Filter::Lanczos] {
                let c = Coeffs::new(i, o, f);
                for x in 0..o {
                    let s: i32 = c.taps(x).1.iter().sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= c.stride as i32,
                        "{i}->{o} {f:?} at {x}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(31, 17, image::Rgb([10, 128, 250]));
        for (w, h) in [(62, 34), (7, 5), (31, 40), (90, 17), (1, 1)] {
            for f in [Filter::Bicubic, Filter::Lanczos] {
                let out = resize_rgb(&img, w, h, f);
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{w}x{h} {f:?}");
            }
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = RgbImage::new(4, 4);
        assert_eq!(resize_rgb(&img, 0, 3, Filter::Lanczos).dimensions(), (0, 3));
        assert_eq!(
            resize_rgb(&RgbImage::new(0, 0), 2, 2, Filter::Bicubic).dimensions(),
            (2, 2)
        );
        assert_eq!(resize_rgb(&img, 4, 4, Filter::Bicubic), img);
    }
}
