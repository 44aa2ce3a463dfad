//! Tiled encode/decode, exactly as `AutoencoderKLQwenImage.tiled_encode` / `tiled_decode` /
//! `blend_v` / `blend_h` of diffusers 0.42.1.
//!
//! Tiles start every `stride` pixels (or `stride / f` latents) and span `min` pixels (`min / f`
//! latents), clipped at the border. After all tiles are computed they are visited row by row; each is
//! blended with its (already blended) upper and left neighbours over `min - stride` rows/columns
//! (in latent units when encoding, in pixels when decoding), cropped to its first `stride` rows and
//! columns, and the crops are concatenated and cut to the output size. Upstream blends in place, so a
//! blended tile is what its lower and right neighbours later blend with; storing the blended tile back
//! into the grid reproduces that.

use candle_core::{bail, DType, Result, Tensor};

/// When [`super::AutoencoderKLQwenImage`] tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TilingMode {
    /// Never tile (the pipelines' behaviour: they never call `enable_tiling`).
    #[default]
    Off,
    /// The reference's behaviour after `enable_tiling()`: tile when the input is larger than the
    /// minimum tile along either axis.
    Auto,
}

/// Tile geometry in pixels (`enable_tiling`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSizes {
    pub min_height: usize,
    pub min_width: usize,
    pub stride_height: usize,
    pub stride_width: usize,
}

impl Default for TileSizes {
    /// Upstream defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            min_height: 256,
            min_width: 256,
            stride_height: 192,
            stride_width: 192,
        }
    }
}

impl TileSizes {
    /// Rejects geometries for which upstream would loop forever or leave gaps.
    pub fn validate(&self, scale_factor: usize) -> Result<()> {
        let ok = |min: usize, stride: usize| stride >= scale_factor && stride <= min;
        if !ok(self.min_height, self.stride_height) || !ok(self.min_width, self.stride_width) {
            bail!("vae tiling: need {scale_factor} <= stride <= tile size, got {self:?}");
        }
        Ok(())
    }
}

/// `blend_v`: the first `extent` rows of `b` fade from the last `extent` rows of `a` into `b`, with
/// weight `y / extent` on `b` at row `y`. `a` and `b` are `[B, C, H, W]` with equal `W`.
pub fn blend_v(a: &Tensor, b: &Tensor, extent: usize) -> Result<Tensor> {
    blend(a, b, extent, 2)
}

/// `blend_h`: as [`blend_v`] along the width.
pub fn blend_h(a: &Tensor, b: &Tensor, extent: usize) -> Result<Tensor> {
    blend(a, b, extent, 3)
}

fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (la, lb) = (a.dim(dim)?, b.dim(dim)?);
    let e = la.min(lb).min(extent);
    if e == 0 {
        return Ok(b.clone());
    }
    // Upstream: `a[-e + y] * (1 - y / e) + b[y] * (y / e)` with Python-float weights; each product is
    // rounded to the tensor dtype, then the sum.
    let mut shape = vec![1usize; 4];
    shape[dim] = e;
    let wb: Vec<f32> = (0..e).map(|y| (y as f64 / e as f64) as f32).collect();
    let wa: Vec<f32> = (0..e).map(|y| (1.0 - y as f64 / e as f64) as f32).collect();
    let wb = Tensor::from_vec(wb, shape.as_slice(), b.device())?;
    let wa = Tensor::from_vec(wa, shape.as_slice(), b.device())?;
    let dtype = b.dtype();
    let a_tail = a.narrow(dim, la - e, e)?.to_dtype(DType::F32)?;
    let b_head = b.narrow(dim, 0, e)?.to_dtype(DType::F32)?;
    let ta = a_tail.broadcast_mul(&wa)?.to_dtype(dtype)?;
    let tb = b_head.broadcast_mul(&wb)?.to_dtype(dtype)?;
    let head = (ta + tb)?;
    if e == lb {
        return Ok(head);
    }
    Tensor::cat(&[&head, &b.narrow(dim, e, lb - e)?], dim)
}

/// The start offsets `range(0, len, step)`.
fn starts(len: usize, step: usize) -> impl Iterator<Item = usize> {
    (0..len).step_by(step.max(1))
}

/// Blends a grid of tiles in place, crops each to `crop_h × crop_w` and assembles them, cut to
/// `out_h × out_w`.
fn assemble(
    mut rows: Vec<Vec<Tensor>>,
    blend_height: usize,
    blend_width: usize,
    crop: (usize, usize),
    out: (usize, usize),
) -> Result<Tensor> {
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut result_row = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend_v(&rows[i - 1][j], &tile, blend_height)?;
            }
            if j > 0 {
                tile = blend_h(&rows[i][j - 1], &tile, blend_width)?;
            }
            let (_, _, th, tw) = tile.dims4()?;
            result_row.push(tile.narrow(2, 0, crop.0.min(th))?.narrow(3, 0, crop.1.min(tw))?);
            rows[i][j] = tile;
        }
        result_rows.push(Tensor::cat(&result_row, 3)?);
    }
    let all = Tensor::cat(&result_rows, 2)?;
    let (_, _, h, w) = all.dims4()?;
    all.narrow(2, 0, out.0.min(h))?.narrow(3, 0, out.1.min(w))
}

/// `tiled_encode`: `encode_tile` maps a pixel tile `[B, C, h, w]` to its latent tile (encoder followed
/// by `quant_conv`; channel selection commutes with blending). `f` is the spatial scale factor.
pub fn tiled_encode(
    x: &Tensor,
    tiles: &TileSizes,
    f: usize,
    encode_tile: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    let (latent_h, latent_w) = (height / f, width / f);
    let (min_lh, min_lw) = (tiles.min_height / f, tiles.min_width / f);
    let (stride_lh, stride_lw) = (tiles.stride_height / f, tiles.stride_width / f);
    let mut rows = Vec::new();
    for i in starts(height, tiles.stride_height) {
        let mut row = Vec::new();
        for j in starts(width, tiles.stride_width) {
            let th = tiles.min_height.min(height - i);
            let tw = tiles.min_width.min(width - j);
            row.push(encode_tile(&x.narrow(2, i, th)?.narrow(3, j, tw)?)?);
        }
        rows.push(row);
    }
    assemble(
        rows,
        min_lh - stride_lh,
        min_lw - stride_lw,
        (stride_lh, stride_lw),
        (latent_h, latent_w),
    )
}

/// `tiled_decode`: `decode_tile` maps a latent tile to pixels (`post_quant_conv` then the decoder,
/// no clamp: upstream's tiled path does not clamp).
pub fn tiled_decode(
    z: &Tensor,
    tiles: &TileSizes,
    f: usize,
    decode_tile: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, height, width) = z.dims4()?;
    let (sample_h, sample_w) = (height * f, width * f);
    let (min_lh, min_lw) = (tiles.min_height / f, tiles.min_width / f);
    let (stride_lh, stride_lw) = (tiles.stride_height / f, tiles.stride_width / f);
    let mut rows = Vec::new();
    for i in starts(height, stride_lh) {
        let mut row = Vec::new();
        for j in starts(width, stride_lw) {
            let th = min_lh.min(height - i);
            let tw = min_lw.min(width - j);
            row.push(decode_tile(&z.narrow(2, i, th)?.narrow(3, j, tw)?)?);
        }
        rows.push(row);
    }
    assemble(
        rows,
        tiles.min_height - tiles.stride_height,
        tiles.min_width - tiles.stride_width,
        (tiles.stride_height, tiles.stride_width),
        (sample_h, sample_w),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The reference loop, element by element.
    fn blend_v_slow(a: &[Vec<f32>], b: &[Vec<f32>], extent: usize) -> Vec<Vec<f32>> {
        let e = a.len().min(b.len()).min(extent);
        let mut out = b.to_vec();
        for y in 0..e {
            for x in 0..b[0].len() {
                let wa = (1.0 - y as f64 / e as f64) as f32;
                let wb = (y as f64 / e as f64) as f32;
                out[y][x] = a[a.len() - e + y][x] * wa + b[y][x] * wb;
            }
        }
        out
    }

    #[test]
    fn blend_v_matches_the_reference_loop() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (1, 1, 7, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (1, 1, 6, 5), &dev).unwrap();
        let av: Vec<Vec<f32>> = a.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let bv: Vec<Vec<f32>> = b.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        for extent in [0, 3, 6, 9] {
            let got: Vec<Vec<f32>> = blend_v(&a, &b, extent)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(got, blend_v_slow(&av, &bv, extent), "extent {extent}");
        }
        // blend_h is blend_v on the transposed tiles.
        let at = a.transpose(2, 3).unwrap();
        let bt = b.transpose(2, 3).unwrap().contiguous().unwrap();
        let h = blend_h(&at, &bt, 3).unwrap();
        let v = blend_v(&a, &b, 3).unwrap().transpose(2, 3).unwrap();
        assert_eq!(
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn tiling_an_identity_reassembles_the_input() {
        // With an identity "codec" (f = 1) blending equal overlaps returns the input exactly up to rounding.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 2, 23, 17), &dev).unwrap();
        let tiles = TileSizes {
            min_height: 8,
            min_width: 6,
            stride_height: 6,
            stride_width: 4,
        };
        let y = tiled_encode(&x, &tiles, 1, |t| Ok(t.clone())).unwrap();
        assert_eq!(y.dims(), x.dims());
        let d = (y - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }
}
