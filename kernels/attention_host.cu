// Tiny extern "C" host launcher around kernels/attention.cu, for ctypes (bench_attention.py).
// Not needed from Rust: there the kernels are launched directly from the PTX via cudarc.
#include <cuda_runtime.h>
#include <stdlib.h>
#include "attention.cu"

extern "C" int fa_launch(const void* q, const void* k, const void* v, void* o, const float* key_bias, int B, int H,
                         int Sq, int Skv, int D, float scale, int causal, void* stream) {
  const char* var = getenv("FA_VARIANT");
  if (D == 128 && var && var[0] == 'm') {  // FA_VARIANT=m128: flash_attn_fwd_bf16_d128_m128
    const int smem = (128 + 2 * 64) * (128 + 8) * 2;
    static bool attr = false;
    if (!attr) {
      cudaError_t e = cudaFuncSetAttribute(flash_attn_fwd_bf16_d128_m128,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (e != cudaSuccess) return (int)e;
      attr = true;
    }
    flash_attn_fwd_bf16_d128_m128<<<dim3((Sq + 127) / 128, H, B), dim3(128), smem,
                                    reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<const __nv_bfloat16*>(q), reinterpret_cast<const __nv_bfloat16*>(k),
        reinterpret_cast<const __nv_bfloat16*>(v), reinterpret_cast<__nv_bfloat16*>(o), key_bias, B, H, Sq, Skv,
        scale, causal);
    return (int)cudaGetLastError();
  }
  const int warps = (D == 128) ? FA_WARPS_D128 : FA_WARPS_D80;
  const int br = 16 * warps;
  dim3 grid((Sq + br - 1) / br, H, B);
  dim3 block(32 * warps);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  auto Q = reinterpret_cast<const __nv_bfloat16*>(q);
  auto K = reinterpret_cast<const __nv_bfloat16*>(k);
  auto V = reinterpret_cast<const __nv_bfloat16*>(v);
  auto O = reinterpret_cast<__nv_bfloat16*>(o);
  if (D == 128)
    flash_attn_fwd_bf16_d128<<<grid, block, 0, s>>>(Q, K, V, O, key_bias, B, H, Sq, Skv, scale, causal);
  else if (D == 80)
    flash_attn_fwd_bf16_d80<<<grid, block, 0, s>>>(Q, K, V, O, key_bias, B, H, Sq, Skv, scale, causal);
  else
    return -1;
  return (int)cudaGetLastError();
}
