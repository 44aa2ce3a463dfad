// Fused flash-attention-2 style forward kernel (bf16 in/out, f32 accumulation).
//
// Online softmax, no score matrix in memory. Tensor cores through inline PTX
// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`, operands from shared
// memory via `ldmatrix` (`.trans` for V), K/V tiles streamed with `cp.async`
// so that the V tile loads while Q·Kᵀ + softmax run and the next K tile loads
// while P·V runs (K and V have separate buffers). Runs on sm_80 and newer
// (built and measured on sm_90 / H200).
//
// ---------------------------------------------------------------------------
// ENTRY POINTS (plain C linkage, launch from cudarc after `nvcc --ptx`):
//
//   extern "C" __global__ void flash_attn_fwd_bf16_d128(
//       const __nv_bfloat16* q,   // [B, H, Sq,  128] contiguous
//       const __nv_bfloat16* k,   // [B, H, Skv, 128] contiguous
//       const __nv_bfloat16* v,   // [B, H, Skv, 128] contiguous
//       __nv_bfloat16*       o,   // [B, H, Sq,  128] contiguous (written fully)
//       const float*    key_bias, // [B, Skv] added to the scores (0 / -inf / -1e30), or nullptr
//       int B, int H, int Sq, int Skv,
//       float scale,              // softmax scale, e.g. 1/sqrt(D)
//       int causal);              // 0/1; 1 => query i sees keys 0..=i (top-left aligned; meant for Sq == Skv)
//
//   extern "C" __global__ void flash_attn_fwd_bf16_d80(...same arguments...)       // D = 80
//   extern "C" __global__ void flash_attn_fwd_bf16_d128_m128(...same arguments...) // D = 128, faster variant
//
// LAUNCH CONFIGURATION (compile-time defaults; FA_WARPS_D128 / FA_WARPS_D80 macros change them):
//   flash_attn_fwd_bf16_d128:   grid = ( ceil(Sq/128), H, B ), block = (256,1,1)  [8 warps x 16 query rows]
//                               dynamic smem = 0; static smem = 34,816 B (<= 48 KB: no attribute needed)
//   flash_attn_fwd_bf16_d80:    grid = ( ceil(Sq/64),  H, B ), block = (128,1,1)  [4 warps x 16 query rows]
//                               dynamic smem = 0; static smem = 22,528 B (<= 48 KB: no attribute needed)
//   flash_attn_fwd_bf16_d128_m128 (~11% faster at S >= 8k on H200, same at S ~ 4k):
//                               grid = ( ceil(Sq/128), H, B ), block = (128,1,1)  [4 warps x 32 query rows]
//                               dynamic smem = 69,632 B = (128 + 2*64) * (128 + 8) * 2  -> NEEDS, once:
//                               cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 69632)
//                               (runtime API: cudaFuncAttributeMaxDynamicSharedMemorySize); static smem = 0.
//   gridDim.y = H <= 65535 and gridDim.z = B <= 65535. Registers (ptxas, sm_90): d128 222, d80 168,
//   d128_m128 255 (+144 B spill), i.e. 1, 3 and 2 blocks per SM.
//
// REQUIREMENTS:
//   * q, k, v, o must be 16-byte aligned (cudaMalloc'd buffers and any offset that is a multiple of
//     8 elements are fine); rows are read/written with 16-byte vector accesses.
//   * Sq >= 1 and Skv >= 1. Sq and Skv are arbitrary (tails are masked; out-of-range K/V rows are
//     zero-filled in shared memory, out-of-range query rows are not stored).
//   * key_bias (if non-null): f32, [B, Skv] contiguous, 4-byte aligned. A row whose keys are all
//     -inf yields 0 output; with -1e30 it yields the uniform average (same as torch with that mask).
//   * All tensor offsets are computed in 64-bit (B*H*S*D may exceed 2^31).
//   * For causal launches blocks are scheduled heaviest-first (blockIdx.x reversed).
// ---------------------------------------------------------------------------

#include <cuda_bf16.h>
#include <stdint.h>

namespace fa {

constexpr int BC = 64;        // keys per K/V tile
constexpr float LOG2E = 1.4426950408889634f;

template <int D, int NWARPS>
struct Cfg {
  static_assert(D % 16 == 0, "D must be a multiple of 16");
  static constexpr int NTHREADS = NWARPS * 32;
  static constexpr int BR = NWARPS * 16;         // query rows per block (16 per warp)
  static constexpr int STRIDE = D + 8;           // smem row stride in elements (+16 B: conflict-free ldmatrix)
  static constexpr int TILE = BC * STRIDE;       // elements per K or V smem tile
  static constexpr int CHUNKS = D / 8;           // 16-byte chunks per row
  static_assert(BR <= 2 * BC, "Q staging uses the K and V tiles");
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int sz = pred ? 16 : 0;  // src-size 0 => 16 bytes of zeros written, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Copy rows [r0, r0+64) of a [S, D] matrix into a padded smem tile; rows >= S are zero-filled.
template <int D, int ROWS, int NTHREADS>
__device__ __forceinline__ void load_tile(__nv_bfloat16* s, const __nv_bfloat16* g, int r0, int S, int tid) {
  constexpr int CHUNKS = D / 8, STRIDE = D + 8, TOTAL = ROWS * CHUNKS;
#pragma unroll
  for (int i = 0; i < (TOTAL + NTHREADS - 1) / NTHREADS; ++i) {
    const int idx = tid + i * NTHREADS;
    if (TOTAL % NTHREADS != 0 && idx >= TOTAL) break;
    const int row = idx / CHUNKS;
    const int ch = idx % CHUNKS;
    const int gr = r0 + row;
    const bool ok = gr < S;
    const __nv_bfloat16* src = g + (int64_t)(ok ? gr : 0) * D + ch * 8;
    cp_async16(smem_u32(s + row * STRIDE + ch * 8), src, ok);
  }
}

template <int D, int NWARPS>
__device__ __forceinline__ void flash_fwd(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                          const __nv_bfloat16* __restrict__ v, __nv_bfloat16* __restrict__ o,
                                          const float* __restrict__ key_bias, int B, int H, int Sq, int Skv,
                                          float scale, int causal) {
  using C = Cfg<D, NWARPS>;
  constexpr int BR = C::BR, NTHREADS = C::NTHREADS;
  constexpr int KD = D / 16;   // k-steps of Q·Kᵀ
  constexpr int ND = D / 8;    // n-tiles of the output
  constexpr int NK = BC / 8;   // n-tiles of S (keys)
  constexpr int KC = BC / 16;  // k-steps of P·V

  __shared__ __align__(128) __nv_bfloat16 sKV[2 * C::TILE];
  __nv_bfloat16* const sK = sKV;
  __nv_bfloat16* const sV = sKV + C::TILE;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;  // row within the 8-row group
  const int t = lane & 3;   // column pair

  const int qb = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q0 = qb * BR;
  const int64_t bh = (int64_t)b * H + h;
  const __nv_bfloat16* qp = q + bh * (int64_t)Sq * D;
  const __nv_bfloat16* kp = k + bh * (int64_t)Skv * D;
  const __nv_bfloat16* vp = v + bh * (int64_t)Skv * D;
  __nv_bfloat16* op = o + bh * (int64_t)Sq * D;
  const float* bias = key_bias ? key_bias + (int64_t)b * Skv : nullptr;

  int n_kv = (Skv + BC - 1) / BC;
  if (causal) n_kv = min(n_kv, (q0 + BR + BC - 1) / BC);

  // ---- prologue: Q -> smem staging (sV if it fits, else sK+sV), K[0] -> sK
  uint32_t qf[KD][4];
  {
    __nv_bfloat16* const sQ = (BR <= BC) ? sV : sKV;
    load_tile<D, BR, NTHREADS>(sQ, qp, q0, Sq, tid);
    cp_async_commit();
    if (BR <= BC && n_kv > 0) load_tile<D, BC, NTHREADS>(sK, kp, 0, Skv, tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint32_t base = smem_u32(sQ + (warp * 16 + (lane & 15)) * C::STRIDE + (lane >> 4) * 8);
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], base + kk * 32);
    if (BR > BC) {
      __syncthreads();
      if (n_kv > 0) load_tile<D, BC, NTHREADS>(sK, kp, 0, Skv, tid);
      cp_async_commit();
    }
  }

  float acc[ND][4];
#pragma unroll
  for (int i = 0; i < ND; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY};
  float l_r[2] = {0.f, 0.f};
  const float sl2 = scale * LOG2E;

  // per-lane ldmatrix address offsets (bytes)
  const uint32_t sK_base = smem_u32(sK) + ((((lane >> 4) << 3) + (lane & 7)) * C::STRIDE + ((lane >> 3) & 1) * 8) * 2;
  const uint32_t sV_base = smem_u32(sV) + (((((lane >> 3) & 1) << 3) + (lane & 7)) * C::STRIDE + (lane >> 4) * 8) * 2;
  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0, row0 + 8

  for (int j = 0; j < n_kv; ++j) {
    const int k0 = j * BC;
    cp_async_wait<0>();  // K[j] landed (this thread's part)
    __syncthreads();     // ... everyone's part; also: all warps done with sV (Q or V[j-1])
    load_tile<D, BC, NTHREADS>(sV, vp, k0, Skv, tid);
    cp_async_commit();

    // ---- S = Q Kᵀ  (16 x 64 per warp)
    float s[NK][4];
#pragma unroll
    for (int i = 0; i < NK; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, sK_base + (np * 16 * C::STRIDE + kk * 16) * 2);
        mma16816(s[2 * np], qf[kk], b0, b1);
        mma16816(s[2 * np + 1], qf[kk], b2, b3);
      }
    }

    // ---- scale (log2 domain), bias, masks
    const bool tail = k0 + BC > Skv;
    const bool diag = causal && (k0 + BC - 1 > q0);
    if (bias != nullptr || tail || diag) {
#pragma unroll
      for (int n = 0; n < NK; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + n * 8 + 2 * t + (e & 1);
          const int row = row0 + (e >> 1) * 8;
          float x = s[n][e] * sl2;
          if (key < Skv) {
            if (bias != nullptr) x += __ldg(bias + key) * LOG2E;
          } else {
            x = -INFINITY;
          }
          if (diag && key > row) x = -INFINITY;
          s[n][e] = x;
        }
      }
    } else {
#pragma unroll
      for (int n = 0; n < NK; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] *= sl2;
      }
    }

    // ---- online softmax (each thread: rows g and g+8; a row is spread over the 4 lanes of a quad)
    float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
    for (int n = 0; n < NK; ++n) {
      mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
    }
    float m_use[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
      mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
      m_use[hh] = (mx[hh] == -INFINITY) ? 0.f : mx[hh];
      const float alpha = ex2(m_r[hh] - m_use[hh]);
      m_r[hh] = mx[hh];
      l_r[hh] *= alpha;
#pragma unroll
      for (int i = 0; i < ND; ++i) {
        acc[i][2 * hh] *= alpha;
        acc[i][2 * hh + 1] *= alpha;
      }
    }
    uint32_t pf[KC][4];
#pragma unroll
    for (int n = 0; n < NK; ++n) {
      const float p0 = ex2(s[n][0] - m_use[0]);
      const float p1 = ex2(s[n][1] - m_use[0]);
      const float p2 = ex2(s[n][2] - m_use[1]);
      const float p3 = ex2(s[n][3] - m_use[1]);
      l_r[0] += p0 + p1;
      l_r[1] += p2 + p3;
      pf[n >> 1][(n & 1) * 2 + 0] = pack_bf16(p0, p1);
      pf[n >> 1][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
    }

    cp_async_wait<0>();  // V[j] landed
    __syncthreads();     // everyone's V; all warps done reading sK
    if (j + 1 < n_kv) load_tile<D, BC, NTHREADS>(sK, kp, k0 + BC, Skv, tid);
    cp_async_commit();

    // ---- O += P V
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, sV_base + (kc * 16 * C::STRIDE + dp * 16) * 2);
        mma16816(acc[2 * dp], pf[kc], b0, b1);
        mma16816(acc[2 * dp + 1], pf[kc], b2, b3);
      }
    }
  }

  // ---- epilogue: normalise, stage through smem, 16-byte coalesced stores
  float inv[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float l = l_r[hh];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    inv[hh] = l > 0.f ? 1.f / l : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();  // all warps done with sK / sV
#pragma unroll
  for (int i = 0; i < ND; ++i) {
    const int col = i * 8 + 2 * t;
    *reinterpret_cast<uint32_t*>(sKV + (warp * 16 + g) * C::STRIDE + col) =
        pack_bf16(acc[i][0] * inv[0], acc[i][1] * inv[0]);
    *reinterpret_cast<uint32_t*>(sKV + (warp * 16 + g + 8) * C::STRIDE + col) =
        pack_bf16(acc[i][2] * inv[1], acc[i][3] * inv[1]);
  }
  __syncthreads();
  constexpr int OTOTAL = BR * C::CHUNKS;
#pragma unroll
  for (int i = 0; i < (OTOTAL + NTHREADS - 1) / NTHREADS; ++i) {
    const int idx = tid + i * NTHREADS;
    if (OTOTAL % NTHREADS != 0 && idx >= OTOTAL) break;
    const int row = idx / C::CHUNKS;
    const int ch = idx % C::CHUNKS;
    if (q0 + row < Sq) {
      *reinterpret_cast<uint4*>(op + (int64_t)(q0 + row) * D + ch * 8) =
          *reinterpret_cast<const uint4*>(sKV + row * C::STRIDE + ch * 8);
    }
  }
}

// Variant "m128": 4 warps x 32 query rows (two m16 tiles per warp), Q kept in shared memory and re-read
// with ldmatrix every K tile (as flash-attention 2 does); each K/V fragment feeds two MMAs, halving the
// shared-memory traffic per FLOP. Dynamic shared memory: (128 + 2*64) * (D + 8) * 2 bytes.
template <int D>
__device__ __forceinline__ void flash_fwd_m2(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
                                             const __nv_bfloat16* __restrict__ v, __nv_bfloat16* __restrict__ o,
                                             const float* __restrict__ key_bias, int B, int H, int Sq, int Skv,
                                             float scale, int causal) {
  constexpr int NTHREADS = 128, MT = 2, BR = 128;
  constexpr int STRIDE = D + 8, CHUNKS = D / 8;
  constexpr int KD = D / 16, ND = D / 8, NK = BC / 8, KC = BC / 16;

  extern __shared__ __align__(128) unsigned char fa_dyn_smem[];
  __nv_bfloat16* const sQ = reinterpret_cast<__nv_bfloat16*>(fa_dyn_smem);
  __nv_bfloat16* const sK = sQ + BR * STRIDE;
  __nv_bfloat16* const sV = sK + BC * STRIDE;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  const int qb = causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q0 = qb * BR;
  const int64_t bh = (int64_t)b * H + h;
  const __nv_bfloat16* qp = q + bh * (int64_t)Sq * D;
  const __nv_bfloat16* kp = k + bh * (int64_t)Skv * D;
  const __nv_bfloat16* vp = v + bh * (int64_t)Skv * D;
  __nv_bfloat16* op = o + bh * (int64_t)Sq * D;
  const float* bias = key_bias ? key_bias + (int64_t)b * Skv : nullptr;

  int n_kv = (Skv + BC - 1) / BC;
  if (causal) n_kv = min(n_kv, (q0 + BR + BC - 1) / BC);

  load_tile<D, BR, NTHREADS>(sQ, qp, q0, Sq, tid);
  if (n_kv > 0) load_tile<D, BC, NTHREADS>(sK, kp, 0, Skv, tid);
  cp_async_commit();

  float acc[MT][ND][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < ND; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  float m_r[MT][2], l_r[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_r[mt][0] = m_r[mt][1] = -INFINITY, l_r[mt][0] = l_r[mt][1] = 0.f;
  const float sl2 = scale * LOG2E;

  const uint32_t sQ_base = smem_u32(sQ + (warp * 32 + (lane & 15)) * STRIDE + (lane >> 4) * 8);
  const uint32_t sK_base = smem_u32(sK) + ((((lane >> 4) << 3) + (lane & 7)) * STRIDE + ((lane >> 3) & 1) * 8) * 2;
  const uint32_t sV_base = smem_u32(sV) + (((((lane >> 3) & 1) << 3) + (lane & 7)) * STRIDE + (lane >> 4) * 8) * 2;
  const int row0 = q0 + warp * 32 + g;  // rows: row0 + mt*16 + hh*8

  for (int j = 0; j < n_kv; ++j) {
    const int k0 = j * BC;
    cp_async_wait<0>();
    __syncthreads();
    load_tile<D, BC, NTHREADS>(sV, vp, k0, Skv, tid);
    cp_async_commit();

    float s[MT][NK][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < NK; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldsm_x4(qa[mt][0], qa[mt][1], qa[mt][2], qa[mt][3], sQ_base + (mt * 16 * STRIDE + kk * 16) * 2);
#pragma unroll
      for (int np = 0; np < NK / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, sK_base + (np * 16 * STRIDE + kk * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], qa[mt], b0, b1);
          mma16816(s[mt][2 * np + 1], qa[mt], b2, b3);
        }
      }
    }

    const bool tail = k0 + BC > Skv;
    const bool diag = causal && (k0 + BC - 1 > q0);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (bias != nullptr || tail || diag) {
#pragma unroll
        for (int n = 0; n < NK; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + n * 8 + 2 * t + (e & 1);
            const int row = row0 + mt * 16 + (e >> 1) * 8;
            float x = s[mt][n][e] * sl2;
            if (key < Skv) {
              if (bias != nullptr) x += __ldg(bias + key) * LOG2E;
            } else {
              x = -INFINITY;
            }
            if (diag && key > row) x = -INFINITY;
            s[mt][n][e] = x;
          }
        }
      } else {
#pragma unroll
        for (int n = 0; n < NK; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][n][e] *= sl2;
      }
    }

    uint32_t pf[MT][KC][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {m_r[mt][0], m_r[mt][1]};
#pragma unroll
      for (int n = 0; n < NK; ++n) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mt][n][0], s[mt][n][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mt][n][2], s[mt][n][3]));
      }
      float m_use[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
        mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
        m_use[hh] = (mx[hh] == -INFINITY) ? 0.f : mx[hh];
        const float alpha = ex2(m_r[mt][hh] - m_use[hh]);
        m_r[mt][hh] = mx[hh];
        l_r[mt][hh] *= alpha;
#pragma unroll
        for (int i = 0; i < ND; ++i) {
          acc[mt][i][2 * hh] *= alpha;
          acc[mt][i][2 * hh + 1] *= alpha;
        }
      }
#pragma unroll
      for (int n = 0; n < NK; ++n) {
        const float p0 = ex2(s[mt][n][0] - m_use[0]);
        const float p1 = ex2(s[mt][n][1] - m_use[0]);
        const float p2 = ex2(s[mt][n][2] - m_use[1]);
        const float p3 = ex2(s[mt][n][3] - m_use[1]);
        l_r[mt][0] += p0 + p1;
        l_r[mt][1] += p2 + p3;
        pf[mt][n >> 1][(n & 1) * 2 + 0] = pack_bf16(p0, p1);
        pf[mt][n >> 1][(n & 1) * 2 + 1] = pack_bf16(p2, p3);
      }
    }

    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_kv) load_tile<D, BC, NTHREADS>(sK, kp, k0 + BC, Skv, tid);
    cp_async_commit();

#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_t(b0, b1, b2, b3, sV_base + (kc * 16 * STRIDE + dp * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(acc[mt][2 * dp], pf[mt][kc], b0, b1);
          mma16816(acc[mt][2 * dp + 1], pf[mt][kc], b2, b3);
        }
      }
    }
  }

  cp_async_wait<0>();
  __syncthreads();  // all warps done with sQ / sK / sV
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float inv[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = l_r[mt][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[hh] = l > 0.f ? 1.f / l : 0.f;
    }
    const int r = warp * 32 + mt * 16 + g;
#pragma unroll
    for (int i = 0; i < ND; ++i) {
      const int col = i * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(sQ + r * STRIDE + col) = pack_bf16(acc[mt][i][0] * inv[0], acc[mt][i][1] * inv[0]);
      *reinterpret_cast<uint32_t*>(sQ + (r + 8) * STRIDE + col) =
          pack_bf16(acc[mt][i][2] * inv[1], acc[mt][i][3] * inv[1]);
    }
  }
  __syncthreads();
  constexpr int OTOTAL = BR * CHUNKS;
#pragma unroll
  for (int i = 0; i < (OTOTAL + NTHREADS - 1) / NTHREADS; ++i) {
    const int idx = tid + i * NTHREADS;
    if (OTOTAL % NTHREADS != 0 && idx >= OTOTAL) break;
    const int row = idx / CHUNKS;
    const int ch = idx % CHUNKS;
    if (q0 + row < Sq) {
      *reinterpret_cast<uint4*>(op + (int64_t)(q0 + row) * D + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + row * STRIDE + ch * 8);
    }
  }
}

}  // namespace fa

// Warps per block (16 query rows each) and min blocks/SM for each head dim.
#ifndef FA_WARPS_D128
#define FA_WARPS_D128 8
#endif
#ifndef FA_MIN_BLOCKS_D128
#define FA_MIN_BLOCKS_D128 (FA_WARPS_D128 == 8 ? 1 : 2)
#endif
#ifndef FA_WARPS_D80
#define FA_WARPS_D80 4
#endif
#ifndef FA_MIN_BLOCKS_D80
#define FA_MIN_BLOCKS_D80 3
#endif

extern "C" __global__ void __launch_bounds__(FA_WARPS_D128 * 32, FA_MIN_BLOCKS_D128)
    flash_attn_fwd_bf16_d128(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             __nv_bfloat16* o, const float* key_bias, int B, int H, int Sq, int Skv, float scale,
                             int causal) {
  fa::flash_fwd<128, FA_WARPS_D128>(q, k, v, o, key_bias, B, H, Sq, Skv, scale, causal);
}

extern "C" __global__ void __launch_bounds__(FA_WARPS_D80 * 32, FA_MIN_BLOCKS_D80)
    flash_attn_fwd_bf16_d80(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                            __nv_bfloat16* o, const float* key_bias, int B, int H, int Sq, int Skv, float scale,
                            int causal) {
  fa::flash_fwd<80, FA_WARPS_D80>(q, k, v, o, key_bias, B, H, Sq, Skv, scale, causal);
}

// Needs cudaFuncSetAttribute(flash_attn_fwd_bf16_d128_m128, cudaFuncAttributeMaxDynamicSharedMemorySize, 69632)
// and a launch with grid (ceil(Sq/128), H, B), block 128, dynamic smem 69632 bytes.
extern "C" __global__ void __launch_bounds__(128, 2)
    flash_attn_fwd_bf16_d128_m128(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                  __nv_bfloat16* o, const float* key_bias, int B, int H, int Sq, int Skv, float scale,
                                  int causal) {
  fa::flash_fwd_m2<128>(q, k, v, o, key_bias, B, H, Sq, Skv, scale, causal);
}
