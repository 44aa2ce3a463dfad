//! Conditioning embeddings: the sinusoidal timestep embedding + its MLP (`time_text_embed`), and the
//! multi-axis "MSRoPE" of `QwenEmbedRope` with its interleaved-pair rotation.
//!
//! Port of `QwenTimestepProjEmbeddings`, `embeddings.Timesteps`/`TimestepEmbedding`, `QwenEmbedRope`
//! and `apply_rotary_emb_qwen(use_real=False)` from diffusers 0.42.1
//! `models/transformers/transformer_qwenimage.py`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::models::nn::linear::{linear, Linear};

/// Channels of the sinusoidal timestep embedding (`Timesteps(num_channels=256)`).
pub const TIMESTEP_CHANNELS: usize = 256;
/// `Timesteps(scale=1000)`: the model receives σ ∈ [0, 1] and embeds 1000·σ.
pub const TIMESTEP_SCALE: f64 = 1000.0;
/// `max_period` of the sinusoid.
pub const TIMESTEP_MAX_PERIOD: f64 = 10000.0;
/// `downscale_freq_shift`.
pub const TIMESTEP_FREQ_SHIFT: f64 = 0.0;
/// RoPE base of `QwenEmbedRope(theta=10000)`.
pub const ROPE_THETA: f64 = 10000.0;
/// Rows of the reference's positive (0..4096) and negative (−4096..−1) frequency tables; positions
/// outside this range cannot be represented.
pub const ROPE_TABLE_ROWS: usize = 4096;

/// Sinusoidal embedding `[cos(1000·t·f_k) | sin(1000·t·f_k)]`, `f_k = exp(−ln(10000)·k/(half − shift))`
/// (`flip_sin_to_cos=True` puts cos first), as `embeddings.get_timestep_embedding`: frequencies,
/// arguments and sin/cos in f32 whatever the dtype of `t: [N]` (the model rounds t itself to its dtype
/// first). Returns `[N, dim]` f32.
pub fn timestep_sinusoid(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dims1()?;
    let half = dim / 2;
    let log_period = TIMESTEP_MAX_PERIOD.ln() as f32;
    let denom = (half as f64 - TIMESTEP_FREQ_SHIFT) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (-log_period * k as f32 / denom).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let t = t.to_dtype(DType::F32)?.reshape((n, 1))?;
    let arg = (t.broadcast_mul(&freqs)? * TIMESTEP_SCALE)?; // [N, half]
    let mut emb = Tensor::cat(&[arg.cos()?, arg.sin()?], 1)?; // [N, 2·half]
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

/// `time_text_embed`: sinusoid → `timestep_embedder.linear_1` → SiLU → `timestep_embedder.linear_2`.
#[derive(Debug, Clone)]
pub struct QwenTimestepProjEmbeddings {
    linear_1: Linear,
    linear_2: Linear,
}

impl QwenTimestepProjEmbeddings {
    /// `vb` points at `time_text_embed`.
    pub fn new(embedding_dim: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("timestep_embedder");
        Ok(Self {
            linear_1: linear(TIMESTEP_CHANNELS, embedding_dim, vb.pp("linear_1"))?,
            linear_2: linear(embedding_dim, embedding_dim, vb.pp("linear_2"))?,
        })
    }

    /// `t: [N]` (σ, already divided by 1000) in the model dtype → `temb [N, embedding_dim]`.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let proj = timestep_sinusoid(t, TIMESTEP_CHANNELS)?.to_dtype(t.dtype())?;
        self.linear_2.forward(&self.linear_1.forward(&proj)?.silu()?)
    }
}

/// Per-token RoPE angles as cos/sin tables `[S, head_dim/2]` (f32) for the image and text streams.
#[derive(Debug, Clone)]
pub struct RopeFreqs {
    pub img_cos: Tensor,
    pub img_sin: Tensor,
    pub txt_cos: Tensor,
    pub txt_sin: Tensor,
}

/// Positions of every token on the (frame, height, width) axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopePositions {
    /// Image tokens in `img_shapes` order, row-major (f, y, x) within an image: one vector per axis.
    pub img: [Vec<i64>; 3],
    /// Text token j sits at `txt_start + j` on all three axes.
    pub txt_start: i64,
}

/// The MSRoPE positions for images of packed grids `img_shapes` (`(frames, h, w)`, noise first) and
/// `s_txt` text tokens. Image `idx` has frame positions `idx + f`, and centred height/width positions
/// `y − (h − h/2)`, `x − (w − w/2)`; text starts at the largest `max(h/2, w/2)` over all images. Fails if a
/// position falls outside the reference's 4096-row tables.
pub fn rope_positions(img_shapes: &[(usize, usize, usize)], s_txt: usize) -> Result<RopePositions> {
    let rows = ROPE_TABLE_ROWS as i64;
    let mut img: [Vec<i64>; 3] = Default::default();
    let mut txt_start = 0i64;
    for (idx, &(f, h, w)) in img_shapes.iter().enumerate() {
        let (fi, hi, wi) = (f as i64, h as i64, w as i64);
        let (h_lo, w_lo) = (hi - hi / 2, wi - wi / 2);
        if idx as i64 + fi > rows || h_lo > rows || hi / 2 > rows || w_lo > rows || wi / 2 > rows {
            candle_core::bail!(
                "image {idx} of packed grid (frames {f}, h {h}, w {w}) exceeds the {ROPE_TABLE_ROWS}-position RoPE tables"
            );
        }
        for fr in 0..fi {
            for y in 0..hi {
                for x in 0..wi {
                    img[0].push(idx as i64 + fr);
                    img[1].push(y - h_lo);
                    img[2].push(x - w_lo);
                }
            }
        }
        txt_start = txt_start.max(hi / 2).max(wi / 2);
    }
    if txt_start + s_txt as i64 > rows {
        candle_core::bail!(
            "{s_txt} text tokens starting at RoPE position {txt_start} exceed the {ROPE_TABLE_ROWS}-position tables \
             (shorten the prompt or use smaller images)"
        );
    }
    Ok(RopePositions { img, txt_start })
}

/// `QwenEmbedRope(theta=10000, axes_dim, scale_rope=True)`: cos/sin tables for positions −4096..4095 of
/// each axis, computed once; [`QwenEmbedRope::forward`] gathers the rows of one call's tokens.
#[derive(Debug, Clone)]
pub struct QwenEmbedRope {
    axes_dim: [usize; 3],
    /// Per axis `[2·4096, axis_dim/2]` f32; row r holds position `r − 4096`.
    cos: [Tensor; 3],
    sin: [Tensor; 3],
}

/// Angles `position · θ^(−2k/dim)` in f32 for positions −4096..4095, as (cos, sin) `[8192, dim/2]`.
fn axis_table(dim: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = dim / 2;
    // 1 / theta^(arange(0, dim, 2) / dim), each step in f32 as in `rope_params`.
    let inv: Vec<f32> = (0..half)
        .map(|k| {
            let e = (2 * k) as f32 / dim as f32;
            1.0f32 / (ROPE_THETA.powf(e as f64) as f32)
        })
        .collect();
    let n = 2 * ROPE_TABLE_ROWS;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for r in 0..n {
        let pos = r as f32 - ROPE_TABLE_ROWS as f32;
        for &f in &inv {
            let angle = (pos * f) as f64; // the f32 product, evaluated exactly below
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

impl QwenEmbedRope {
    pub fn new(axes_dim: [usize; 3], device: &Device) -> Result<Self> {
        if axes_dim.iter().any(|a| a % 2 != 0) {
            candle_core::bail!("RoPE axes {axes_dim:?} must be even");
        }
        let t0 = axis_table(axes_dim[0], device)?;
        let t1 = axis_table(axes_dim[1], device)?;
        let t2 = axis_table(axes_dim[2], device)?;
        Ok(Self {
            axes_dim,
            cos: [t0.0, t1.0, t2.0],
            sin: [t0.1, t1.1, t2.1],
        })
    }

    /// Channels rotated per head (`sum(axes_dim)`).
    pub fn head_dim(&self) -> usize {
        self.axes_dim.iter().sum()
    }

    /// Gathers the cos/sin rows of all tokens: `[S_img, head_dim/2]` and `[s_txt, head_dim/2]`.
    pub fn forward(&self, img_shapes: &[(usize, usize, usize)], s_txt: usize) -> Result<RopeFreqs> {
        let pos = rope_positions(img_shapes, s_txt)?;
        let device = self.cos[0].device();
        let offset = ROPE_TABLE_ROWS as i64;
        let mut img_cos = Vec::with_capacity(3);
        let mut img_sin = Vec::with_capacity(3);
        let mut txt_cos = Vec::with_capacity(3);
        let mut txt_sin = Vec::with_capacity(3);
        let txt_row = (pos.txt_start + offset) as usize;
        for axis in 0..3 {
            // Row indices are in 0..8192 by construction of `rope_positions`.
            let rows: Vec<u32> = pos.img[axis].iter().map(|p| (p + offset) as u32).collect();
            let rows = Tensor::from_vec(rows, pos.img[axis].len(), device)?;
            img_cos.push(self.cos[axis].index_select(&rows, 0)?);
            img_sin.push(self.sin[axis].index_select(&rows, 0)?);
            txt_cos.push(self.cos[axis].narrow(0, txt_row, s_txt)?);
            txt_sin.push(self.sin[axis].narrow(0, txt_row, s_txt)?);
        }
        Ok(RopeFreqs {
            img_cos: Tensor::cat(&img_cos, 1)?.contiguous()?,
            img_sin: Tensor::cat(&img_sin, 1)?.contiguous()?,
            txt_cos: Tensor::cat(&txt_cos, 1)?.contiguous()?,
            txt_sin: Tensor::cat(&txt_sin, 1)?.contiguous()?,
        })
    }
}

/// Interleaved-pair rotation (`apply_rotary_emb_qwen(use_real=False)`), in f32:
/// `out[2k] = x[2k]·cos − x[2k+1]·sin`, `out[2k+1] = x[2k]·sin + x[2k+1]·cos`.
/// `x: [B, H, S, D]`, `cos, sin: [S, D/2]` f32; the result has the dtype of `x`. The blocks apply it
/// inside [`crate::models::nn::fused::joint_heads`] (fused with the QK norm on CUDA).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::models::nn::fused::rope_interleaved(x, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn positions_are_centred_and_framed_per_image() {
        let p = rope_positions(&[(1, 2, 3), (1, 5, 1)], 2).unwrap();
        // Image 0: h 2 → y −1..0, w 3 → x −2..0; image 1: frame 1, h 5 → y −3..1, w 1 → x −1.
        assert_eq!(p.img[0], vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(p.img[1], vec![-1, -1, -1, 0, 0, 0, -3, -2, -1, 0, 1]);
        assert_eq!(p.img[2], vec![-2, -1, 0, -2, -1, 0, -1, -1, -1, -1, -1]);
        // max over images of max(h/2, w/2) = max(1, 1, 2, 0) = 2.
        assert_eq!(p.txt_start, 2);
    }

    #[test]
    fn positions_out_of_table_are_rejected() {
        let err = rope_positions(&[(1, 64, 64)], 4096 - 31).unwrap_err().to_string();
        assert!(err.contains("4096"), "{err}");
        assert!(rope_positions(&[(1, 64, 64)], 4096 - 32).is_ok());
        assert!(rope_positions(&[(1, 8194, 2)], 1).is_err());
    }

    #[test]
    fn timestep_sinusoid_values() {
        let t = Tensor::new(&[0.5f32, 0.0], &Device::Cpu).unwrap();
        let e = timestep_sinusoid(&t, 8).unwrap().to_vec2::<f32>().unwrap();
        // half 4: f_k = 10000^(-k/4) = 1, 0.1, 0.01, 0.001; arg = 500·f_k.
        let arg = [500f64, 50., 5., 0.5];
        let want: Vec<f32> = arg
            .iter()
            .map(|a| a.cos() as f32)
            .chain(arg.iter().map(|a| a.sin() as f32))
            .collect();
        assert!(close(&e[0], &want, 2e-4), "{:?} vs {want:?}", e[0]);
        assert_eq!(e[1], vec![1., 1., 1., 1., 0., 0., 0., 0.]);
    }

    #[test]
    fn timestep_sinusoid_matches_diffusers_256() {
        // Values from diffusers `get_timestep_embedding(torch.tensor([0.7]), 256, flip_sin_to_cos=True,
        // downscale_freq_shift=0, scale=1000)` at channels 0, 1, 5, 127, 128, 129, 200, 255.
        let t = Tensor::new(&[0.7f32], &Device::Cpu).unwrap();
        let e = timestep_sinusoid(&t, 256).unwrap().to_vec2::<f32>().unwrap();
        let idx = [0usize, 1, 5, 127, 128, 129, 200, 255];
        let got: Vec<f32> = idx.iter().map(|&i| e[0][i]).collect();
        let want = REF_SINUSOID_0_7;
        assert!(close(&got, &want, 2e-5), "{got:?} vs {want:?}");
    }

    #[test]
    fn timestep_sinusoid_keeps_f32_frequencies_for_half_timesteps() {
        // embeddings.get_timestep_embedding multiplies `t.float()` by f32 frequencies: a bf16 t only
        // rounds t (0.73 → 0.73046875), never the frequencies.
        let dev = Device::Cpu;
        let t16 = Tensor::new(&[0.73f32], &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let got = timestep_sinusoid(&t16, 256).unwrap().to_vec2::<f32>().unwrap();
        let t32 = Tensor::new(&[0.73046875f32], &dev).unwrap();
        let want = timestep_sinusoid(&t32, 256).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn rope_tables_match_diffusers() {
        // diffusers QwenEmbedRope(10000, [8, 12, 12], scale_rope=True) for img_shapes [(1,3,4),(1,2,2)] and
        // 3 text tokens: (token, pair, cos, sin) of selected entries.
        let rope = QwenEmbedRope::new([8, 12, 12], &Device::Cpu).unwrap();
        let f = rope.forward(&[(1, 3, 4), (1, 2, 2)], 3).unwrap();
        assert_eq!(f.img_cos.dims(), &[16, 16]);
        assert_eq!(f.txt_cos.dims(), &[3, 16]);
        let ic = f.img_cos.to_vec2::<f32>().unwrap();
        let is = f.img_sin.to_vec2::<f32>().unwrap();
        let tc = f.txt_cos.to_vec2::<f32>().unwrap();
        let ts = f.txt_sin.to_vec2::<f32>().unwrap();
        for &(tok, pair, c, sn) in REF_IMG_ANGLES {
            assert!(
                (ic[tok][pair] - c).abs() < 1e-6 && (is[tok][pair] - sn).abs() < 1e-6,
                "img token {tok} pair {pair}"
            );
        }
        for &(tok, pair, c, sn) in REF_TXT_ANGLES {
            assert!(
                (tc[tok][pair] - c).abs() < 1e-6 && (ts[tok][pair] - sn).abs() < 1e-6,
                "txt token {tok} pair {pair}"
            );
        }
    }

    #[test]
    fn rope_rotates_interleaved_pairs() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[1f32, 2., 3., 4.], &dev)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let (a, b) = (0.3f32, -1.1f32);
        let cos = Tensor::new(&[[a.cos(), b.cos()]], &dev).unwrap();
        let sin = Tensor::new(&[[a.sin(), b.sin()]], &dev).unwrap();
        let y = apply_rope(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = [
            1. * a.cos() - 2. * a.sin(),
            1. * a.sin() + 2. * a.cos(),
            3. * b.cos() - 4. * b.sin(),
            3. * b.sin() + 4. * b.cos(),
        ];
        assert!(close(&y, &want, 1e-6), "{y:?} vs {want:?}");
    }

    // Generated with /work/venv-ref (diffusers 0.42.1).
    const REF_SINUSOID_0_7: [f32; 8] = [
        -0.8391043,
        -0.46185458,
        -0.036265403,
        0.9971721,
        0.5439705,
        -0.8869557,
        -0.7137206,
        0.07515161,
    ];
    const REF_IMG_ANGLES: &[(usize, usize, f32, f32)] = &[
        (0, 0, 1.0, 0.0),
        (0, 3, 1.0, 0.0),
        (0, 4, -0.41614684, -0.9092974),
        (0, 9, 0.9999996, -0.0009283178),
        (0, 10, -0.41614684, -0.9092974),
        (0, 15, 0.9999996, -0.0009283178),
        (5, 5, 0.9768817, -0.21378064),
        (7, 13, 0.99995, 0.009999833),
        (11, 8, 1.0, 0.0),
        (12, 0, 0.5403023, 0.84147096),
        (12, 2, 0.99995, 0.009999833),
        (13, 6, 0.998923, -0.04639922),
        (15, 15, 1.0, 0.0),
        (14, 11, 0.9768817, -0.21378064),
    ];
    const REF_TXT_ANGLES: &[(usize, usize, f32, f32)] = &[
        (0, 0, -0.41614684, 0.9092974),
        (0, 5, 0.9085957, 0.4176768),
        (1, 1, 0.9553365, 0.29552022),
        (1, 12, 0.9903207, 0.13879809),
        (2, 3, 0.999992, 0.0039999895),
        (2, 15, 0.9999983, 0.0018566347),
    ];
}
