//! Launchers of the VAE section of `kernels/fused.cu` and the two cuBLAS GEMMs of
//! [`pixel_attention`], with the conventions of the parent module: `Ok(None)` when the inputs are not
//! what the kernels take, raw device addresses of live tensors, fresh outputs written in full.

use std::sync::Arc;

use candle_core::cuda::cudarc::cublas::{result as cublas, sys as blas};
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{Result, Tensor};
use half::bf16;

use super::{
    addr, alloc, count_launch, cuda_device, is_bf16_cuda, row_config, row_threads, wrap, MAX_INT, MODULE, PTX,
};
use crate::models::nn::attention::MAX_SCORE_ELEMENTS;

/// Block of `channel_rms_norm_bf16_v*`: threads along the pixels × channel groups (as in the kernel).
const NORM_BLOCK: (u32, u32, u32) = (32, 8, 1);
/// Largest grid y (one image per y).
const MAX_GRID_Y: usize = 65535;

/// Device address of the first element of a slice of ours.
fn slice_addr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (a, _sync) = s.device_ptr(stream);
    a
}

pub(crate) fn channel_rms_norm(x: &Tensor, gamma: &Tensor, scale: f64, eps: f64, silu: bool) -> Result<Option<Tensor>> {
    let Ok((b, c, h, w)) = x.dims4() else {
        return Ok(None);
    };
    let hw = h * w;
    if !is_bf16_cuda(x) || !is_bf16_cuda(gamma) || gamma.elem_count() != c {
        return Ok(None);
    }
    if b == 0 || b > MAX_GRID_Y || c == 0 || c > MAX_INT || hw == 0 || hw.div_ceil(32) > MAX_INT {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let gamma = gamma.flatten_all()?.contiguous()?;
    let dev = cuda_device(&x)?;
    let (xa, ga) = (addr::<bf16>(&x)?, addr::<bf16>(&gamma)?);
    let mut out = alloc(&dev, b * c * hw)?;
    let oa = slice_addr(&out, &dev.cuda_stream());
    let vec = if hw % 4 == 0 && xa % 8 == 0 && oa % 8 == 0 {
        4
    } else {
        1
    };
    let func = dev.get_or_load_custom_func(&format!("channel_rms_norm_bf16_v{vec}"), MODULE, PTX)?;
    let cfg = LaunchConfig {
        grid_dim: ((hw / vec).div_ceil(32) as u32, b as u32, 1),
        block_dim: NORM_BLOCK,
        shared_mem_bytes: 0,
    };
    let (c_i, hw_i, scale_f, eps_f, silu_i) = (c as i32, hw as i64, scale as f32, eps as f32, silu as i32);
    let mut l = func.builder();
    l.arg(&xa).arg(&ga).arg(&mut out);
    l.arg(&c_i).arg(&hw_i).arg(&scale_f).arg(&eps_f).arg(&silu_i);
    // SAFETY: arguments follow the kernel's signature; x and out hold b·c·hw elements, gamma c; the
    // grid covers hw / vec pixel vectors (hw % vec == 0) of each of the b images, and every pixel's
    // c channels are written by the 8 channel groups of its block.
    unsafe { l.launch(cfg) }.w()?;
    count_launch();
    Ok(Some(wrap(out, &dev, (b, c, h, w))))
}

/// One strided-batched cuBLAS GEMM (column-major, f32 accumulation) over raw device addresses.
struct Gemm {
    trans: (blas::cublasOperation_t, blas::cublasOperation_t),
    mnk: (usize, usize, usize),
    alpha: f32,
    /// (address, element type, leading dimension, batch stride in elements) of A, B and C.
    a: (u64, blas::cudaDataType_t, usize, usize),
    b: (u64, blas::cudaDataType_t, usize, usize),
    c: (u64, blas::cudaDataType_t, usize, usize),
    batch: usize,
}

impl Gemm {
    fn run(&self, dev: &CudaDevice) -> Result<()> {
        let int = |v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("pixel_attention: {v} exceeds a cuBLAS int")))
        };
        let long = |v: usize| -> Result<i64> {
            i64::try_from(v).map_err(|_| candle_core::Error::Msg(format!("pixel_attention: stride {v} too large")))
        };
        let (m, n, k) = (int(self.mnk.0)?, int(self.mnk.1)?, int(self.mnk.2)?);
        let (lda, ldb, ldc) = (int(self.a.2)?, int(self.b.2)?, int(self.c.2)?);
        let (sa, sb, sc) = (long(self.a.3)?, long(self.b.3)?, long(self.c.3)?);
        let batch = int(self.batch)?;
        let beta = 0f32;
        let handle = dev.cublas_handle();
        // cuBLAS runs in the thread's current context; kernel launches bind it, raw calls do not.
        dev.cuda_stream().context().bind_to_thread().w()?;
        // SAFETY: the addresses point into live allocations sized by the caller for these shapes,
        // leading dimensions and batch strides; cuBLAS runs on candle's stream (the handle is bound
        // to it), in order with the kernels around it. beta = 0, so C is only written.
        unsafe {
            cublas::gemm_strided_batched_ex(
                *handle.handle(),
                self.trans.0,
                self.trans.1,
                m,
                n,
                k,
                (&self.alpha) as *const f32 as *const _,
                self.a.0 as *const _,
                self.a.1,
                lda,
                sa,
                self.b.0 as *const _,
                self.b.1,
                ldb,
                sb,
                (&beta) as *const f32 as *const _,
                self.c.0 as *mut _,
                self.c.1,
                ldc,
                sc,
                batch,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .w()
    }
}

/// Query rows per chunk so that one chunk's `[B, rows, N]` scores stay within
/// [`MAX_SCORE_ELEMENTS`]; a multiple of 8 when at least 8 (keeps the GEMM operands 16-byte aligned).
fn query_chunk(b: usize, n: usize) -> usize {
    let rows = (MAX_SCORE_ELEMENTS / (b * n).max(1)).clamp(1, n);
    if rows >= 8 && rows < n {
        rows / 8 * 8
    } else {
        rows
    }
}

/// `qkv [B, 3C, H, W]` (channel-first q | k | v, so each is a column-major `[N, C]` matrix with
/// leading dimension N = H·W) → `o [B, C, H, W]`, per chunk of queries `i0..i0+len`:
/// 1. `S[i, j] = scale · Σ_c q[c, i0+i] k[c, j]` as f32 rows `[len, N]` (GEMM, bf16 in, f32 out);
/// 2. `P = softmax(S)` per row, written as bf16 (kernel);
/// 3. `o[c, i0+i] = Σ_j P[i, j] v[c, j]` straight into the channel-first output (GEMM, bf16 out).
pub(crate) fn pixel_attention(qkv: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let Ok((b, c3, h, w)) = qkv.dims4() else {
        return Ok(None);
    };
    let (c, n) = (c3 / 3, h * w);
    if !is_bf16_cuda(qkv) || c3 % 3 != 0 || b == 0 || c == 0 || n == 0 || n > MAX_INT || c3 > MAX_INT || b > MAX_INT {
        return Ok(None);
    }
    let qkv = qkv.contiguous()?;
    let dev = cuda_device(&qkv)?;
    let stream = dev.cuda_stream();
    let plane = c * n; // elements of one of q, k, v per image
    let base = addr::<bf16>(&qkv)?;
    let elem = std::mem::size_of::<bf16>() as u64;
    let (q, k, v) = (base, base + plane as u64 * elem, base + 2 * plane as u64 * elem);
    let chunk = query_chunk(b, n);
    // SAFETY: every chunk's scores are written by the first GEMM before the softmax reads them.
    let scores = unsafe { dev.alloc::<f32>(b * chunk * n) }?;
    let probs = alloc(&dev, b * chunk * n)?;
    let out = alloc(&dev, b * plane)?;
    let (sa, pa, oa) = (
        slice_addr(&scores, &stream),
        slice_addr(&probs, &stream),
        slice_addr(&out, &stream),
    );
    let vec = if n % 4 == 0 && sa % 16 == 0 && pa % 8 == 0 {
        4
    } else {
        1
    };
    let softmax = dev.get_or_load_custom_func(&format!("softmax_rows_f32_bf16_v{vec}"), MODULE, PTX)?;
    let (bf, f32t) = (blas::cudaDataType_t::CUDA_R_16BF, blas::cudaDataType_t::CUDA_R_32F);
    let (op_n, op_t) = (
        blas::cublasOperation_t::CUBLAS_OP_N,
        blas::cublasOperation_t::CUBLAS_OP_T,
    );
    let n_i = n as i32;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let off = start as u64 * elem;
        // Column-major S' [N keys, len queries] (= row-major S [len, N]) = K [N, C] · Q[i0.., :]ᵀ.
        Gemm {
            trans: (op_n, op_t),
            mnk: (n, len, c),
            alpha: scale as f32,
            a: (k, bf, n, 3 * plane),
            b: (q + off, bf, n, 3 * plane),
            c: (sa, f32t, n, len * n),
            batch: b,
        }
        .run(&dev)?;
        let rows = b * len;
        let mut l = softmax.builder();
        l.arg(&sa).arg(&pa).arg(&n_i);
        // SAFETY: arguments follow the kernel's signature; `scores` and `probs` hold at least
        // rows·n elements (rows = b·len ≤ b·chunk), one block per row.
        unsafe { l.launch(row_config(rows, row_threads(n / vec))) }.w()?;
        count_launch();
        // Column-major O [len, C] with leading dimension N (= rows i0.. of the channel-first output)
        // = P [len, N] · V [N, C]; P is stored as column-major [N, len], hence transposed.
        Gemm {
            trans: (op_t, op_n),
            mnk: (len, c, n),
            alpha: 1.0,
            a: (pa, bf, n, len * n),
            b: (v, bf, n, 3 * plane),
            c: (oa + off, bf, n, plane),
            batch: b,
        }
        .run(&dev)?;
        start += len;
    }
    // `scores` and `probs` are freed in stream order, after the GEMMs that read them.
    drop((scores, probs));
    Ok(Some(wrap(out, &dev, (b, c, h, w))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_chunks_bound_the_scores() {
        // 1024² decode: 128² latents, one chunk of all 16384 queries (2^28 scores).
        assert_eq!(query_chunk(1, 16384), 16384);
        assert_eq!(query_chunk(2, 16384), 8192);
        assert_eq!(query_chunk(1, 65536), 4096);
        assert_eq!(query_chunk(1, 37), 37);
        assert_eq!(query_chunk(3, 1 << 27), 1);
        assert_eq!(query_chunk(1, (1 << 28) / 13), 8); // 13 rows, rounded down to 8
    }
}
