//! The one attention entry point used by every network (transformer, text encoder, vision tower, VAE).
//!
//! Layout is `[B, H, S, D]` for q, k and v. On the CPU (and as the reference for faster kernels) this
//! is a plain softmax(QKᵀ·scale + mask)·V computed in f32, chunked over the query axis so that the score
//! tensor never exceeds [`MAX_SCORE_ELEMENTS`] elements: candle's CUDA softmax indexes with i32 and
//! silently corrupts results above 2^31 elements (24 heads × 12.7k tokens with two references).
//!
//! On CUDA the fused paths run instead, first that applies: with the `cudnn` feature, cuDNN 9's fused
//! attention ([`super::cudnn::sdpa`]: bf16/f16, head dim a multiple of 8 up to 256, any mask kind here;
//! `QWEN_EDIT_NO_CUDNN=1` or `QWEN_EDIT_NO_CUDNN_SDPA=1` turns it off), then the flash kernel of
//! [`super::flash`] (bf16, head dims 128 or 80: every network of the family; no score tensor, 64-bit
//! indexing). `QWEN_EDIT_NAIVE_ATTENTION=1` turns both off (for comparisons).

use candle_core::{DType, Result, Tensor, D};

/// Upper bound on the number of elements of one score block `[B, H, q_chunk, S_kv]`.
pub const MAX_SCORE_ELEMENTS: usize = 1 << 28;

/// What the attention may see.
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Every query attends to every key.
    None,
    /// Key-padding mask `[B, S_kv]`: non-zero = attend, zero = masked out (any dtype).
    KeyPadding(&'a Tensor),
    /// Causal: query i attends to keys `0..=i` (requires `S_q == S_kv`).
    Causal,
}

/// Scaled dot-product attention. `q: [B, H, Sq, D]`, `k, v: [B, H, Skv, D]` (same H: expand GQA
/// heads before calling). Returns `[B, H, Sq, D]` in the dtype of `q`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: AttnMask<'_>, scale: f64) -> Result<Tensor> {
    attention_chunked(q, k, v, mask, scale, MAX_SCORE_ELEMENTS)
}

/// [`attention`] with an explicit bound on the score block (exposed for tests).
pub fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask<'_>,
    scale: f64,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, h, sq, d) = q.dims4()?;
    let (bk, hk, skv, dk) = k.dims4()?;
    if bk != b || hk != h || dk != d || v.dims4()? != (b, h, skv, d) {
        candle_core::bail!(
            "attention: shape mismatch q {:?} k {:?} v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if matches!(mask, AttnMask::Causal) && sq != skv {
        candle_core::bail!("attention: causal mask needs Sq == Skv, got {sq} vs {skv}");
    }
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() && !naive_forced() {
        let bias = match mask {
            AttnMask::KeyPadding(m) => Some(key_bias(m, b, skv)?),
            _ => None,
        };
        #[cfg(feature = "cudnn")]
        {
            use super::cudnn::{sdpa, SdpaMask};
            let cudnn_mask = match (mask, &bias) {
                (AttnMask::KeyPadding(_), Some(bias)) => SdpaMask::KeyBias(bias),
                (AttnMask::Causal, _) => SdpaMask::Causal,
                _ => SdpaMask::None,
            };
            if let Some(o) = sdpa(q, k, v, cudnn_mask, scale)? {
                return Ok(o);
            }
        }
        if super::flash::supported(q, k) {
            return super::flash::flash_attention(q, k, v, bias.as_ref(), scale, matches!(mask, AttnMask::Causal));
        }
    }
    let out_dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let kt = k.transpose(2, 3)?.contiguous()?; // [B, H, D, Skv]

    // Additive key mask [B, 1, 1, Skv] (0 or -1e30).
    let key_bias = match mask {
        AttnMask::KeyPadding(m) => Some(key_bias(m, b, skv)?.reshape((b, 1, 1, skv))?),
        _ => None,
    };

    let per_row = (b * h * skv).max(1);
    let chunk = (max_score_elements / per_row).clamp(1, sq.max(1));
    let mut outs = Vec::with_capacity(sq.div_ceil(chunk));
    let mut start = 0;
    while start < sq {
        let len = chunk.min(sq - start);
        let qc = q.narrow(2, start, len)?.contiguous()?;
        let mut scores = (qc.matmul(&kt)? * scale)?; // [B, H, len, Skv]
        if let Some(bias) = &key_bias {
            scores = scores.broadcast_add(bias)?;
        }
        if matches!(mask, AttnMask::Causal) {
            let dev = q.device();
            let rows = Tensor::arange(start as u32, (start + len) as u32, dev)?.reshape((len, 1))?;
            let cols = Tensor::arange(0u32, skv as u32, dev)?.reshape((1, skv))?;
            let allowed = cols.broadcast_le(&rows)?.to_dtype(DType::F32)?;
            let bias = ((allowed - 1.0)? * 1e30)?.reshape((1, 1, len, skv))?;
            scores = scores.broadcast_add(&bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.pop().unwrap_or_else(|| unreachable!())
    } else {
        Tensor::cat(&outs, 2)?
    };
    out.to_dtype(out_dtype)
}

/// The additive f32 bias `[B, Skv]` of a key-padding mask: 0 where the mask is non-zero, −1e30 elsewhere.
fn key_bias(m: &Tensor, b: usize, skv: usize) -> Result<Tensor> {
    let (mb, ms) = m.dims2()?;
    if mb != b || ms != skv {
        candle_core::bail!(
            "attention: key mask {:?} does not match {b} sequences of {skv} keys",
            m.shape()
        );
    }
    let keep = m.ne(0u32 as f64)?.to_dtype(DType::F32)?; // 1 keep, 0 drop
    (keep - 1.0)? * 1e30
}

/// `QWEN_EDIT_NAIVE_ATTENTION` set (and not `0`): use the unfused path everywhere.
#[cfg(feature = "cuda")]
fn naive_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("QWEN_EDIT_NAIVE_ATTENTION").is_ok_and(|v| v != "0"))
}

/// Softmax over the last dimension in f32 (shared helper for tests of the above).
pub fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>) -> Tensor {
        let mut s = (q.matmul(&k.transpose(2, 3).unwrap()).unwrap() * scale).unwrap();
        if let Some(b) = bias {
            s = s.broadcast_add(b).unwrap();
        }
        softmax_f32(&s).unwrap().matmul(v).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn chunked_equals_unchunked() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 37, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 29, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 29, 8), &dev).unwrap();
        let full = naive(&q, &k, &v, 0.3, None);
        // A bound of 2*3*29*5 elements forces chunks of 5 query rows (8 chunks).
        let got = attention_chunked(&q, &k, &v, AttnMask::None, 0.3, 2 * 3 * 29 * 5).unwrap();
        assert!(max_abs_diff(&full, &got) < 1e-6);
    }

    #[test]
    fn key_padding_and_causal() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 6, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 6, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 6, 4), &dev).unwrap();
        let m = Tensor::new(&[[1u8, 1, 1, 1, 0, 0]], &dev).unwrap();
        let got = attention_chunked(&q, &k, &v, AttnMask::KeyPadding(&m), 0.5, 2 * 6 * 2).unwrap();
        let want = naive(
            &q.clone(),
            &k.narrow(2, 0, 4).unwrap(),
            &v.narrow(2, 0, 4).unwrap(),
            0.5,
            None,
        );
        assert!(max_abs_diff(&want, &got) < 1e-6);
        let got = attention_chunked(&q, &k, &v, AttnMask::Causal, 0.5, 2 * 6).unwrap();
        for i in 0..6 {
            let want = naive(
                &q.narrow(2, i, 1).unwrap(),
                &k.narrow(2, 0, i + 1).unwrap(),
                &v.narrow(2, 0, i + 1).unwrap(),
                0.5,
                None,
            );
            assert!(max_abs_diff(&want, &got.narrow(2, i, 1).unwrap()) < 1e-6);
        }
    }
}
