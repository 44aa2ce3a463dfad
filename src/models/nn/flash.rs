//! The fused flash-attention kernel of `kernels/attention.cu` behind [`super::attention::attention`]
//! on CUDA: bf16 q/k/v `[B, H, S, D]` with D = 128 or 80, an optional key-padding bias and causal
//! masking; online softmax in f32, no score tensor in memory. build.rs compiles the kernel to PTX
//! for `CUDA_COMPUTE_CAP` when the `cuda` feature is on.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{result, sys, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const MODULE: &str = "qwen_edit_attention";

/// Sequences from this length on use the 4-warp × 32-row variant (faster there, slower below).
const LONG_SEQ: usize = 8192;
/// Dynamic shared memory of `flash_attn_fwd_bf16_d128_m128`: (128 + 2·64) rows × (128 + 8) × 2 B.
const M128_SMEM: u32 = 69_632;

/// Whether the fused kernel can run `q [B, H, Sq, D]` against `k, v [B, H, Skv, D]`.
pub fn supported(q: &Tensor, k: &Tensor) -> bool {
    q.device().is_cuda()
        && q.dtype() == DType::BF16
        && k.dtype() == DType::BF16
        && matches!(q.dims().last(), Some(128) | Some(80))
}

struct FlashAttn {
    /// `[B, Skv]` f32, added to the scores (0 keep, −1e30 drop).
    key_bias: Option<Tensor>,
    scale: f32,
    causal: bool,
}

/// Fused attention. `key_bias`: additive f32 `[B, Skv]` or `None`.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: Option<&Tensor>,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let key_bias = key_bias
        .map(|b| b.to_dtype(DType::F32).and_then(|b| b.contiguous()))
        .transpose()?;
    let op = FlashAttn {
        key_bias,
        scale: scale as f32,
        causal,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

impl CustomOp3 for FlashAttn {
    fn name(&self) -> &'static str {
        "flash-attn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash-attn runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h, sq, d) = ql.shape().dims4()?;
        let (bk, hk, skv, dk) = kl.shape().dims4()?;
        if (bk, hk, dk) != (b, h, d) || vl.shape().dims4()? != (b, h, skv, d) {
            candle_core::bail!(
                "flash-attn: shape mismatch {:?} {:?} {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        for l in [ql, kl, vl] {
            if !l.is_contiguous() || l.start_offset() % 8 != 0 {
                candle_core::bail!("flash-attn needs contiguous, 16-byte aligned inputs");
            }
        }
        if sq == 0 || skv == 0 {
            candle_core::bail!("flash-attn: empty sequence");
        }
        if self.causal && sq != skv {
            candle_core::bail!("flash-attn: causal needs Sq == Skv, got {sq} vs {skv}");
        }
        let dev = qs.device().clone();
        let q = qs.as_cuda_slice::<bf16>()?.slice(ql.start_offset()..);
        let k = ks.as_cuda_slice::<bf16>()?.slice(kl.start_offset()..);
        let v = vs.as_cuda_slice::<bf16>()?.slice(vl.start_offset()..);
        let n = b * h * sq * d;
        // SAFETY: every element is written by the kernel (it covers all rows of every head).
        let out = unsafe { dev.alloc::<bf16>(n)? };

        let (name, rows, threads, smem) = match d {
            128 if sq.max(skv) >= LONG_SEQ && !self.causal => ("flash_attn_fwd_bf16_d128_m128", 128, 128, M128_SMEM),
            128 => ("flash_attn_fwd_bf16_d128", 128, 256, 0),
            80 => ("flash_attn_fwd_bf16_d80", 64, 128, 0),
            _ => candle_core::bail!("flash-attn: head dim {d} is not built (128 or 80)"),
        };
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        if smem > 0 {
            // SAFETY: the function was just loaded from our module; the attribute takes a byte count.
            unsafe {
                result::function::set_function_attribute(
                    func.cu_function(),
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .w()?;
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (sq.div_ceil(rows) as u32, h as u32, b as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let (b_i, h_i, sq_i, skv_i) = (b as i32, h as i32, sq as i32, skv as i32);
        let causal = self.causal as i32;
        let bias_guard;
        let bias_view;
        let null: u64 = 0;
        let mut launch = func.builder();
        launch.arg(&q).arg(&k).arg(&v).arg(&out);
        match &self.key_bias {
            Some(t) => {
                if t.dims2()? != (b, skv) {
                    candle_core::bail!("flash-attn: key bias {:?} does not match [{b}, {skv}]", t.shape());
                }
                let (st, l) = t.storage_and_layout();
                bias_guard = st;
                let Storage::Cuda(cs) = &*bias_guard else {
                    candle_core::bail!("flash-attn: the key bias is not on the GPU");
                };
                bias_view = cs.as_cuda_slice::<f32>()?.slice(l.start_offset()..);
                launch.arg(&bias_view);
            }
            None => {
                launch.arg(&null);
            }
        }
        launch
            .arg(&b_i)
            .arg(&h_i)
            .arg(&sq_i)
            .arg(&skv_i)
            .arg(&self.scale)
            .arg(&causal);
        // SAFETY: argument order and types follow the kernel's signature; the sizes were checked above.
        unsafe { launch.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((b, h, sq, d))))
    }
}
