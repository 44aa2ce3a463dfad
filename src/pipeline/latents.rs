//! Sizes and latent packing, exactly as the reference pipelines compute them.

use candle_core::{Result, Tensor};

/// The VAE images' target area (~1 MP) and the Plus pipeline's condition images' area (384²).
pub const VAE_IMAGE_AREA: f64 = 1024.0 * 1024.0;
pub const CONDITION_IMAGE_AREA: f64 = 384.0 * 384.0;

/// `calculate_dimensions(target_area, ratio)`: `(width, height)` with the area of `target_area` and
/// aspect `ratio = w / h`, each rounded half-to-even (Python's `round`) to a multiple of 32.
pub fn calculate_dimensions(target_area: f64, ratio: f64) -> (u32, u32) {
    let width = (target_area * ratio).sqrt();
    let height = width / ratio;
    let w = (width / 32.0).round_ties_even() * 32.0;
    let h = (height / 32.0).round_ties_even() * 32.0;
    (w.max(32.0) as u32, h.max(32.0) as u32)
}

/// `_pack_latents`: `[B, C, H, W]` → `[B, (H/2)·(W/2), C·4]`; token index `i·(W/2)+j`, feature
/// index `c·4 + dy·2 + dx`.
pub fn pack(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("pack: latent size {h}x{w} must be even");
    }
    x.reshape((b, c, h / 2, 2, w / 2, 2))? // (b, c, i, dy, j, dx)
        .permute((0, 2, 4, 1, 3, 5))? // (b, i, j, c, dy, dx)
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

/// `_unpack_latents`: `[B, (h/2)·(w/2), C·4]` → `[B, C, h, w]` for a latent grid of `h × w`.
pub fn unpack(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, f) = x.dims3()?;
    if n != (h / 2) * (w / 2) || f % 4 != 0 {
        candle_core::bail!("unpack: {:?} does not fit a {h}x{w} latent grid", x.dims());
    }
    let c = f / 4;
    x.reshape((b, h / 2, w / 2, c, 2, 2))? // (b, i, j, c, dy, dx)
        .permute((0, 3, 1, 4, 2, 5))? // (b, c, i, dy, j, dx)
        .reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dimensions_match_the_reference() {
        // Worked examples of the spec (§1.1, §1.5).
        assert_eq!(calculate_dimensions(VAE_IMAGE_AREA, 1024.0 / 768.0), (1184, 896));
        assert_eq!(calculate_dimensions(VAE_IMAGE_AREA, 1.0), (1024, 1024));
        assert_eq!(calculate_dimensions(CONDITION_IMAGE_AREA, 1.0), (384, 384));
        assert_eq!(calculate_dimensions(CONDITION_IMAGE_AREA, 1024.0 / 768.0), (448, 320));
        // Half-to-even: sqrt(area·r)/32 = 20.5 exactly → 20 (not 21).
        let r = (20.5f64 * 32.0).powi(2) / 409600.0;
        assert_eq!(calculate_dimensions(409600.0, r).0, 640);
    }

    #[test]
    fn pack_layout_and_round_trip() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &dev)
            .unwrap()
            .reshape((2, 3, 4, 6))
            .unwrap();
        let p = pack(&x).unwrap();
        assert_eq!(p.dims(), &[2, 6, 12]);
        // token i·(W/2)+j = 1·3+2 of batch 0, feature c=2, dy=1, dx=0 → x[0, 2, 3, 4]
        let v = p
            .get(0)
            .unwrap()
            .get(5)
            .unwrap()
            .get(2 * 4 + 2)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = x
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .get(3)
            .unwrap()
            .get(4)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(v, want);
        let back = unpack(&p, 4, 6).unwrap();
        let diff = (back - &x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}
