// Fused element-wise kernels of the transformer block (bf16 in/out, f32 math inside).
//
// Each kernel replaces a chain of candle ops with one read of every input and one write of the
// output. Launched from `src/models/nn/fused/cuda.rs` after `nvcc --ptx` (build.rs); the op-by-op
// candle code in `src/models/nn/fused.rs` is the reference each one is tested against.
//
// ---------------------------------------------------------------------------
// ENTRY POINTS (C linkage). `_v8` variants move 8 bf16 (16 bytes) per access and need every bf16
// pointer 16-byte aligned and every row length / row stride a multiple of 8 elements; `_v1`
// variants have no alignment needs. Rows are [B, S] flattened; all offsets are 64-bit.
//
//   layernorm_modulate_bf16_v{8,1}(x, y, shift_a, scale_a, shift_b, scale_b,
//                                  stride_shift_a, stride_scale_a, stride_shift_b, stride_scale_b,
//                                  S, D, n_split, eps)
//       y[b,s,:] = LN(x[b,s,:]) * (1 + scale[b,:]) + shift[b,:]   (LN without affine, two-pass f32)
//       (shift, scale) = (shift_a, scale_a) for s < n_split, else (shift_b, scale_b).
//       Parameter row b starts at ptr + b * stride (stride 0 broadcasts one row over the batch).
//       grid = (B*S), block = (T) with T a multiple of 32, <= 1024.
//
//   gate_residual_bf16_v{8,1}(x, y, bias, gate_a, gate_b, stride_gate_a, stride_gate_b, out,
//                             S, D, n_split)
//       out[b,s,:] = x[b,s,:] + gate[b,:] * (y[b,s,:] + bias[:])   (bias may be null)
//       gate = gate_a for s < n_split, else gate_b.  grid = (B*S), block = (T).
//
//   bias_gelu_tanh_bf16_v{8,1}(x, bias, y, N)
//       y[r,:] = gelu_tanh(x[r,:] + bias[:])   (bias may be null).  grid = (rows), block = (T).
//
//   heads_to_rows_bf16_v{8,1}(o, first, rest, H, S_total, D, s_first)
//       o [B, H, S_total, D] -> first [B, s_first, H*D] (tokens 0..s_first) and
//       rest [B, S_total - s_first, H*D] (the other tokens).  grid = (B*S_total), block = (T).
//       _v8 needs D % 8 == 0 (a vector never crosses a head).
//
//   qk_norm_rope_to_heads_bf16_p{2,1}(x, bias, weight, cos, sin, out, S, H, D, S_total, off, eps)
//       x [B, S, H*D] (a projection output without its bias) -> out [B, H, S_total, D] at tokens
//       off..off+S: v = x + bias; if weight: v = bf16(bf16(v * rsqrt(mean(v^2) + eps)) * weight)
//       (diffusers' RMSNorm: statistics in f32, cast to the weight dtype, then scaled);
//       if cos: interleaved-pair rotation with cos/sin [S, D/2] f32. bias, weight, cos/sin may be null.
//       One warp per (token, head); grid = (B*S), block = (32 * warps).
//       _p2: lane holds 4 consecutive channels (8-byte accesses): D % 4 == 0, D <= 128, x and out
//            8-byte aligned.  _p1: lane holds pairs at a stride of 64 channels: any even D <= 512.
// ---------------------------------------------------------------------------

#include <cuda_bf16.h>
#include <stdint.h>

namespace fused {

typedef __nv_bfloat16 bf16;

// Loads VEC consecutive bf16 as f32 (VEC == 8: one 16-byte access).
template <int VEC>
__device__ __forceinline__ void load(const bf16* __restrict__ p, float* v) {
  if constexpr (VEC == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = __bfloat162float(p[i]);
  }
}

// Rounds VEC f32 to bf16 (nearest even) and stores them (VEC == 8: one 16-byte access).
template <int VEC>
__device__ __forceinline__ void store(bf16* __restrict__ p, const float* v) {
  if constexpr (VEC == 8) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = __float2bfloat16_rn(v[i]);
  }
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (<= 1024) and
// every thread must call it. `sh` holds 32 floats; the leading barrier makes back-to-back calls safe.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < nwarps; ++i) t += sh[i];  // same order in every thread: one result
  return t;
}

// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as torch's gelu(approximate="tanh").
__device__ __forceinline__ float gelu_tanh(float x) {
  const float k_beta = 0.7978845608028654f;  // sqrt(2/pi)
  const float k_kappa = 0.044715f;
  const float inner = k_beta * (x + k_kappa * x * x * x);
  return 0.5f * x * (1.f + tanhf(inner));
}

template <int VEC>
__device__ void layernorm_modulate(const bf16* __restrict__ x, bf16* __restrict__ y,
                                   const bf16* __restrict__ shift_a, const bf16* __restrict__ scale_a,
                                   const bf16* __restrict__ shift_b, const bf16* __restrict__ scale_b,
                                   long long stride_shift_a, long long stride_scale_a,
                                   long long stride_shift_b, long long stride_scale_b, int S, int D,
                                   int n_split, float eps) {
  __shared__ float sh[32];
  const long long row = blockIdx.x;
  const long long b = row / S;
  const int s = (int)(row - b * S);
  const bf16* xr = x + row * D;
  bf16* yr = y + row * D;
  const int nv = D / VEC;

  float sum = 0.f;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    float v[VEC];
    load<VEC>(xr + (long long)i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += v[j];
  }
  const float mean = block_sum(sum, sh) / (float)D;

  // Second and third passes re-read the row (from L1/L2: one block's row is a few KB).
  float sq = 0.f;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    float v[VEC];
    load<VEC>(xr + (long long)i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float c = v[j] - mean;
      sq += c * c;
    }
  }
  const float rstd = 1.f / sqrtf(block_sum(sq, sh) / (float)D + eps);

  const bool first = s < n_split;
  const bf16* shift = first ? shift_a + b * stride_shift_a : shift_b + b * stride_shift_b;
  const bf16* scale = first ? scale_a + b * stride_scale_a : scale_b + b * stride_scale_b;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const long long e = (long long)i * VEC;
    float v[VEC], sf[VEC], sc[VEC];
    load<VEC>(xr + e, v);
    load<VEC>(shift + e, sf);
    load<VEC>(scale + e, sc);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = (v[j] - mean) * rstd * (1.f + sc[j]) + sf[j];
    store<VEC>(yr + e, v);
  }
}

template <int VEC>
__device__ void gate_residual(const bf16* __restrict__ x, const bf16* __restrict__ y,
                              const bf16* __restrict__ bias, const bf16* __restrict__ gate_a,
                              const bf16* __restrict__ gate_b, long long stride_gate_a,
                              long long stride_gate_b, bf16* __restrict__ out, int S, int D, int n_split) {
  const long long row = blockIdx.x;
  const long long b = row / S;
  const int s = (int)(row - b * S);
  const bf16* gate = s < n_split ? gate_a + b * stride_gate_a : gate_b + b * stride_gate_b;
  const long long base = row * D;
  const int nv = D / VEC;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const long long e = (long long)i * VEC;
    float xv[VEC], yv[VEC], g[VEC], bv[VEC];
    load<VEC>(x + base + e, xv);
    load<VEC>(y + base + e, yv);
    load<VEC>(gate + e, g);
    if (bias != nullptr) {
      load<VEC>(bias + e, bv);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) bv[j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) xv[j] += g[j] * (yv[j] + bv[j]);
    store<VEC>(out + base + e, xv);
  }
}

template <int VEC>
__device__ void bias_gelu_tanh(const bf16* __restrict__ x, const bf16* __restrict__ bias, bf16* __restrict__ y,
                               int N) {
  const long long base = (long long)blockIdx.x * N;
  const int nv = N / VEC;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const long long e = (long long)i * VEC;
    float v[VEC], bv[VEC];
    load<VEC>(x + base + e, v);
    if (bias != nullptr) {
      load<VEC>(bias + e, bv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] += bv[j];
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = gelu_tanh(v[j]);
    store<VEC>(y + base + e, v);
  }
}

template <int VEC>
__device__ void heads_to_rows(const bf16* __restrict__ o, bf16* __restrict__ first, bf16* __restrict__ rest, int H,
                              int S_total, int D, int s_first) {
  const long long row = blockIdx.x;
  const long long b = row / S_total;
  const int s = (int)(row - b * S_total);
  const long long hd = (long long)H * D;
  bf16* dst = s < s_first ? first + (b * s_first + s) * hd : rest + (b * (S_total - s_first) + (s - s_first)) * hd;
  const int nv = (int)(hd / VEC);
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const int e = i * VEC;
    const int h = e / D;
    const int d = e - h * D;
    const bf16* src = o + ((b * H + h) * S_total + s) * D + d;
    float v[VEC];
    load<VEC>(src, v);
    store<VEC>(dst + e, v);
  }
}

// One warp per (token, head). A lane holds P consecutive channel pairs per chunk of 64·P channels,
// MAXCH chunks at most (D <= 64·P·MAXCH), so the head vector stays in registers between the norm's
// reduction and the write.
template <int P, int MAXCH>
__device__ void qk_norm_rope_to_heads(const bf16* __restrict__ x, const bf16* __restrict__ bias,
                                      const bf16* __restrict__ weight, const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, bf16* __restrict__ out, int S, int H,
                                      int D, int S_total, int off, float eps) {
  constexpr int W = 2 * P;  // channels per lane per chunk
  const long long row = blockIdx.x;
  const long long b = row / S;
  const int s = (int)(row - b * S);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  const int half = D / 2;
  for (int h = warp; h < H; h += nwarps) {
    const bf16* xr = x + row * ((long long)H * D) + (long long)h * D;
    bf16* orow = out + ((b * H + h) * S_total + off + s) * (long long)D;
    float v[MAXCH][W];
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < MAXCH; ++c) {
      const int e0 = c * 32 * W + lane * W;
#pragma unroll
      for (int j = 0; j < W; ++j) v[c][j] = 0.f;
      if (e0 < D) {
        if constexpr (P == 2) {
          const uint2 u = *reinterpret_cast<const uint2*>(xr + e0);
          const __nv_bfloat162* hv = reinterpret_cast<const __nv_bfloat162*>(&u);
          const float2 f0 = __bfloat1622float2(hv[0]);
          const float2 f1 = __bfloat1622float2(hv[1]);
          v[c][0] = f0.x;
          v[c][1] = f0.y;
          v[c][2] = f1.x;
          v[c][3] = f1.y;
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) v[c][j] = __bfloat162float(xr[e0 + j]);
        }
        if (bias != nullptr) {
#pragma unroll
          for (int j = 0; j < W; ++j) v[c][j] += __bfloat162float(bias[(long long)h * D + e0 + j]);
        }
#pragma unroll
        for (int j = 0; j < W; ++j) ss += v[c][j] * v[c][j];
      }
    }
    if (weight != nullptr) {
      const float rstd = 1.f / sqrtf(warp_sum(ss) / (float)D + eps);
#pragma unroll
      for (int c = 0; c < MAXCH; ++c) {
        const int e0 = c * 32 * W + lane * W;
        if (e0 < D) {
#pragma unroll
          for (int j = 0; j < W; ++j) {
            v[c][j] = round_bf16(round_bf16(v[c][j] * rstd) * __bfloat162float(weight[e0 + j]));
          }
        }
      }
    }
    if (cos_t != nullptr) {
#pragma unroll
      for (int c = 0; c < MAXCH; ++c) {
        const int e0 = c * 32 * W + lane * W;
        if (e0 < D) {
#pragma unroll
          for (int j = 0; j < P; ++j) {
            const long long k = (long long)s * half + e0 / 2 + j;
            const float cs = cos_t[k];
            const float sn = sin_t[k];
            const float a = v[c][2 * j];
            const float bb = v[c][2 * j + 1];
            v[c][2 * j] = a * cs - bb * sn;
            v[c][2 * j + 1] = a * sn + bb * cs;
          }
        }
      }
    }
#pragma unroll
    for (int c = 0; c < MAXCH; ++c) {
      const int e0 = c * 32 * W + lane * W;
      if (e0 < D) {
        if constexpr (P == 2) {
          uint2 u;
          __nv_bfloat162* hv = reinterpret_cast<__nv_bfloat162*>(&u);
          hv[0] = __floats2bfloat162_rn(v[c][0], v[c][1]);
          hv[1] = __floats2bfloat162_rn(v[c][2], v[c][3]);
          *reinterpret_cast<uint2*>(orow + e0) = u;
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) orow[e0 + j] = __float2bfloat16_rn(v[c][j]);
        }
      }
    }
  }
}

}  // namespace fused

#define LN_MOD(VEC)                                                                                          \
  extern "C" __global__ void __launch_bounds__(1024) layernorm_modulate_bf16_v##VEC(                        \
      const __nv_bfloat16* x, __nv_bfloat16* y, const __nv_bfloat16* shift_a, const __nv_bfloat16* scale_a, \
      const __nv_bfloat16* shift_b, const __nv_bfloat16* scale_b, long long stride_shift_a,                 \
      long long stride_scale_a, long long stride_shift_b, long long stride_scale_b, int S, int D,           \
      int n_split, float eps) {                                                                             \
    fused::layernorm_modulate<VEC>(x, y, shift_a, scale_a, shift_b, scale_b, stride_shift_a, stride_scale_a, \
                                   stride_shift_b, stride_scale_b, S, D, n_split, eps);                     \
  }
LN_MOD(8)
LN_MOD(1)

#define GATE_RES(VEC)                                                                                      \
  extern "C" __global__ void __launch_bounds__(1024) gate_residual_bf16_v##VEC(                           \
      const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* bias,                         \
      const __nv_bfloat16* gate_a, const __nv_bfloat16* gate_b, long long stride_gate_a,                  \
      long long stride_gate_b, __nv_bfloat16* out, int S, int D, int n_split) {                           \
    fused::gate_residual<VEC>(x, y, bias, gate_a, gate_b, stride_gate_a, stride_gate_b, out, S, D, n_split); \
  }
GATE_RES(8)
GATE_RES(1)

#define BIAS_GELU(VEC)                                                                                  \
  extern "C" __global__ void __launch_bounds__(1024) bias_gelu_tanh_bf16_v##VEC(                       \
      const __nv_bfloat16* x, const __nv_bfloat16* bias, __nv_bfloat16* y, int N) {                    \
    fused::bias_gelu_tanh<VEC>(x, bias, y, N);                                                         \
  }
BIAS_GELU(8)
BIAS_GELU(1)

#define HEADS_TO_ROWS(VEC)                                                                              \
  extern "C" __global__ void __launch_bounds__(1024) heads_to_rows_bf16_v##VEC(                        \
      const __nv_bfloat16* o, __nv_bfloat16* first, __nv_bfloat16* rest, int H, int S_total, int D,    \
      int s_first) {                                                                                   \
    fused::heads_to_rows<VEC>(o, first, rest, H, S_total, D, s_first);                                 \
  }
HEADS_TO_ROWS(8)
HEADS_TO_ROWS(1)

#define QK_ROPE(P, MAXCH)                                                                                  \
  extern "C" __global__ void __launch_bounds__(1024) qk_norm_rope_to_heads_bf16_p##P(                     \
      const __nv_bfloat16* x, const __nv_bfloat16* bias, const __nv_bfloat16* weight, const float* cos_t, \
      const float* sin_t, __nv_bfloat16* out, int S, int H, int D, int S_total, int off, float eps) {     \
    fused::qk_norm_rope_to_heads<P, MAXCH>(x, bias, weight, cos_t, sin_t, out, S, H, D, S_total, off, eps); \
  }
QK_ROPE(2, 1)
QK_ROPE(1, 8)

// ===========================================================================
// Qwen-Image VAE kernels (channel-first images, bf16 in/out, f32 math inside). Launched from
// `src/models/nn/fused/cuda/image.rs`; the reference is the candle chain of
// `src/models/nn/fused/image.rs`.
//
//   channel_rms_norm_bf16_v{4,1}(x, gamma, y, C, HW, scale, eps, silu)
//       x, y [B, C, HW] (NCHW, pixels flattened), gamma [C]. Per pixel p of image b:
//       n = max(sqrt(sum_c x[b,c,p]^2), eps) in f32, then
//       y = bf16(bf16(bf16(x / n) * scale) * gamma[c])
//       (diffusers' QwenImageRMS_norm on bf16 input: F.normalize in f32 then cast, and each of the
//       two products rounded), and if silu != 0: y = bf16(y / (1 + exp(-y))) (nn.SiLU in bf16).
//       block = (32, 8): 32 threads along the pixels (VEC consecutive pixels each, so a warp reads
//       32·VEC consecutive pixels of one channel) by 8 channel groups (group g takes channels
//       g, g + 8, ...); grid = (ceil(HW / (32·VEC)), B). The sums of the 8 groups meet in shared
//       memory; the second pass re-reads x (mostly from L2).
//       _v4 needs HW % 4 == 0 and x, y 8-byte aligned; _v1 has no needs.
//
//   softmax_rows_f32_bf16_v{4,1}(s, p, N)
//       p[r,:] = softmax(s[r,:]) for rows of N f32 scores, written as bf16: one pass for the
//       running max and sum (online rescaling), one for the output. grid = (rows), block = (T)
//       with T a multiple of 32, <= 1024. _v4 needs N % 4 == 0, s 16-byte and p 8-byte aligned.
// ===========================================================================

namespace fused_image {

typedef __nv_bfloat16 bf16;

constexpr int NORM_TX = 32;  // threads along the pixels (one warp)
constexpr int NORM_TY = 8;   // channel groups

// Loads VEC consecutive bf16 pixels as f32 (VEC == 4: one 8-byte access).
template <int VEC>
__device__ __forceinline__ void load_px(const bf16* __restrict__ p, float* v) {
  if constexpr (VEC == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
    const float2 a = __bfloat1622float2(h[0]);
    const float2 b = __bfloat1622float2(h[1]);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = b.x;
    v[3] = b.y;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = __bfloat162float(p[i]);
  }
}

// Rounds VEC f32 to bf16 (nearest even) and stores them (VEC == 4: one 8-byte access).
template <int VEC>
__device__ __forceinline__ void store_px(bf16* __restrict__ p, const float* v) {
  if constexpr (VEC == 4) {
    uint2 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
    h[0] = __floats2bfloat162_rn(v[0], v[1]);
    h[1] = __floats2bfloat162_rn(v[2], v[3]);
    *reinterpret_cast<uint2*>(p) = u;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = __float2bfloat16_rn(v[i]);
  }
}

// Loads VEC consecutive f32 (VEC == 4: one 16-byte access).
template <int VEC>
__device__ __forceinline__ void load_f32(const float* __restrict__ p, float* v) {
  if constexpr (VEC == 4) {
    const float4 u = *reinterpret_cast<const float4*>(p);
    v[0] = u.x;
    v[1] = u.y;
    v[2] = u.z;
    v[3] = u.w;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = p[i];
  }
}

template <int VEC>
__device__ void channel_rms_norm(const bf16* __restrict__ x, const bf16* __restrict__ gamma, bf16* __restrict__ y,
                                 int C, long long HW, float scale, float eps, int silu) {
  __shared__ float part[NORM_TY][NORM_TX * VEC];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const long long p = ((long long)blockIdx.x * NORM_TX + tx) * VEC;
  // HW % VEC == 0, so a thread's VEC pixels are all inside the image or all outside.
  const bool active = p < HW;
  const long long base = (long long)blockIdx.y * C * HW + p;

  float ss[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) ss[j] = 0.f;
  if (active) {
#pragma unroll 4
    for (int c = ty; c < C; c += NORM_TY) {
      float v[VEC];
      load_px<VEC>(x + base + (long long)c * HW, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) ss[j] += v[j] * v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) part[ty][tx * VEC + j] = ss[j];
  __syncthreads();
  if (!active) return;  // no barrier follows

  float n[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    float t = 0.f;
#pragma unroll
    for (int g = 0; g < NORM_TY; ++g) t += part[g][tx * VEC + j];  // same order in every group
    n[j] = fmaxf(sqrtf(t), eps);
  }

#pragma unroll 4
  for (int c = ty; c < C; c += NORM_TY) {
    const long long off = base + (long long)c * HW;
    const float g = __bfloat162float(gamma[c]);
    float v[VEC];
    load_px<VEC>(x + off, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float u = fused::round_bf16(v[j] / n[j]);
      u = fused::round_bf16(u * scale);
      u *= g;
      if (silu) {
        u = fused::round_bf16(u);
        u = u / (1.f + expf(-u));
      }
      v[j] = u;
    }
    store_px<VEC>(y + off, v);
  }
}

// Merges the softmax state (m2, s2) into (m, s): s is the sum of exp(x - m) over the values seen.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;  // both empty
  s = s * expf(m - mm) + s2 * expf(m2 - mm);
  m = mm;
}

template <int VEC>
__device__ void softmax_rows(const float* __restrict__ s, bf16* __restrict__ p, int N) {
  __shared__ float sh_m[32];
  __shared__ float sh_s[32];
  const long long row = blockIdx.x;
  const float* in = s + row * N;
  bf16* out = p + row * N;
  const int nv = N / VEC;

  float m = -INFINITY;
  float sum = 0.f;
  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    float v[VEC];
    load_f32<VEC>(in + (long long)i * VEC, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (v[j] > m) {
        sum = sum * expf(m - v[j]) + 1.f;
        m = v[j];
      } else {
        sum += expf(v[j] - m);
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, sum, o);
    softmax_merge(m, sum, m2, s2);
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = sum;
  }
  __syncthreads();
  m = -INFINITY;
  sum = 0.f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) softmax_merge(m, sum, sh_m[w], sh_s[w]);  // same order everywhere
  const float inv = 1.f / sum;

  for (int i = threadIdx.x; i < nv; i += blockDim.x) {
    const long long e = (long long)i * VEC;
    float v[VEC];
    load_f32<VEC>(in + e, v);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = expf(v[j] - m) * inv;
    store_px<VEC>(out + e, v);
  }
}

}  // namespace fused_image

#define CHANNEL_RMS_NORM(VEC)                                                                                  \
  extern "C" __global__ void __launch_bounds__(256) channel_rms_norm_bf16_v##VEC(                             \
      const __nv_bfloat16* x, const __nv_bfloat16* gamma, __nv_bfloat16* y, int C, long long HW, float scale, \
      float eps, int silu) {                                                                                  \
    fused_image::channel_rms_norm<VEC>(x, gamma, y, C, HW, scale, eps, silu);                                 \
  }
CHANNEL_RMS_NORM(4)
CHANNEL_RMS_NORM(1)

#define SOFTMAX_ROWS(VEC)                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) softmax_rows_f32_bf16_v##VEC(const float* s,        \
                                                                                  __nv_bfloat16* p, int N) { \
    fused_image::softmax_rows<VEC>(s, p, N);                                                             \
  }
SOFTMAX_ROWS(4)
SOFTMAX_ROWS(1)

// ---------------------------------------------------------------------------
// float8 e4m3 casts. candle 0.11.1's own are unreachable on CUDA: it asks for kernels named
// `cast_f32_f8e4m3` while its PTX defines `cast_f32_f8_e4m3` ("named symbol not found").
//
//   cast_fp8e4m3_to_bf16(in, out, n), cast_fp8e4m3_to_f32(in, out, n): exact (e4m3 ⊂ bf16 ⊂ f32).
//   cast_f32_to_fp8e4m3(in, out, n): round to nearest even, saturating to ±448 (NaN stays NaN).
//   Any n (64-bit), grid-stride loops; grid and block free.
// ---------------------------------------------------------------------------

#include <cuda_fp8.h>

extern "C" __global__ void cast_fp8e4m3_to_bf16(const __nv_fp8_e4m3* __restrict__ in,
                                                __nv_bfloat16* __restrict__ out, long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = __float2bfloat16_rn(static_cast<float>(in[i]));
}

extern "C" __global__ void cast_fp8e4m3_to_f32(const __nv_fp8_e4m3* __restrict__ in, float* __restrict__ out,
                                               long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = static_cast<float>(in[i]);
}

extern "C" __global__ void cast_f32_to_fp8e4m3(const float* __restrict__ in, __nv_fp8_e4m3* __restrict__ out,
                                               long long n) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = __nv_fp8_e4m3(in[i]);
}
