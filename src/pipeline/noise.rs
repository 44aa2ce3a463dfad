//! Seeded Gaussian noise, bit-identical to PyTorch's CPU generator.
//!
//! The reference pipelines draw their initial latents with diffusers' `randn_tensor`, which on the CPU is
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)`. This module
//! reproduces that stream exactly (checked bitwise against torch 2.15 on x86-64), so a seed gives the same
//! image as the Python reference. What torch does, and what we mirror:
//!
//! - **Engine**: a 32-bit Mersenne Twister (mt19937). `manual_seed(s)` keeps the 64-bit seed but
//!   initialises the state from its low 32 bits only (`s = 2^32 + 7` and `s = 7` give the same stream).
//! - **Uniforms**: float-precision uniforms take the low 24 bits of one 32-bit draw times 2^-24;
//!   double-precision uniforms join two draws `(first << 32) | second` and take the low 53 bits times 2^-53.
//! - **Tensors with at least 16 elements** (`normal_fill`): uniforms in float, Box–Muller on 16-element
//!   blocks pairing element `j` with `j + 8` (`u1 = 1 − d[j]`, `u2 = d[j+8]`,
//!   `r = sqrt(−2·ln u1)`, `θ = 2π·u2`, `d[j] = r·cos θ`, `d[j+8] = r·sin θ`). A size that is not a
//!   multiple of 16 recomputes the last 16 elements from 16 fresh uniforms. For f32 all `n` uniforms are
//!   drawn first (then the 16 extra); for bf16/f16 each block draws its own 16, so the tail draws differ
//!   and the tail values are not the f32 tail rounded.
//! - **The transcendental functions are not libm's**: on x86 with AVX2 (torch's dispatch for any modern
//!   x86 CPU; its AVX-512 build does not register this kernel) torch uses the Cephes-style polynomial
//!   `log256_ps` / `sincos256_ps` of `avx_mathfun.h`, compiled by GCC with some multiply–adds contracted
//!   to fused FMAs. [`log_cephes`] and [`sincos_cephes`] reproduce those exact operation sequences,
//!   including which products are fused (read off the disassembly of `libtorch_cpu.so`).
//! - **Tensors with fewer than 16 elements**: the scalar `normal_distribution<double>` path: two double
//!   uniforms `u1, u2`, `r = sqrt(−2·log1p(−u2))`, `θ = 2π·u1`; it returns `r·cos θ` and caches `r·sin θ`
//!   in the generator for the next element. Values are cast double → float (→ bf16/f16).
//! - **bf16/f16**: computed in f32 as above, then rounded to nearest-even.
//!
//! torch on a CPU without AVX2 (or forced with `ATEN_CPU_CAPABILITY=default`; presumably also on ARM,
//! unchecked) runs the generic kernel instead, with libm's `logf`/`cosf`/`sinf` in the ≥ 16 path; its f32 values differ from the AVX2
//! ones by ~1e-6. [`NormalKernel::Generic`] reproduces that one. AVX-512 CPUs run the AVX2 kernel (torch
//! registers no AVX-512 normal kernel and falls back to AVX2; checked on an AVX-512 host).
//! The bf16 path described here is torch ≥ 2.15's; older torch (2.11 was checked) produces other bf16
//! values for the same seed.

use candle_core::{bail, DType, Device, Result, Tensor};
use half::{bf16, f16};

/// Block length of torch's vectorised normal fill.
const BLOCK: usize = 16;
const HALF_BLOCK: usize = BLOCK / 2;
const MT_N: usize = 624;
const MT_M: usize = 397;

/// Which of torch's CPU normal kernels to reproduce for tensors of at least 16 elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormalKernel {
    /// The AVX2 kernel (x86-64 with AVX2 or AVX-512): Cephes polynomial log/sincos.
    #[default]
    Avx2,
    /// The generic kernel (`ATEN_CPU_CAPABILITY=default`, x86 without AVX2): libm `logf`, `cosf`, `sinf`.
    Generic,
}

/// PyTorch's CPU random generator (`at::CPUGeneratorImpl`): mt19937 plus the cached second Box–Muller
/// value of the double-precision normal sampler.
#[derive(Debug, Clone)]
pub struct TorchGenerator {
    state: [u32; MT_N],
    left: usize,
    next: usize,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        // torch seeds the engine with the low 32 bits only.
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            left: 1,
            next: 0,
            next_double_normal: None,
        }
    }

    fn twist(u: u32, v: u32) -> u32 {
        let mixed = (u & 0x8000_0000) | (v & 0x7fff_ffff);
        (mixed >> 1) ^ if v & 1 == 1 { 0x9908_b0df } else { 0 }
    }

    fn regenerate(&mut self) {
        // In place, in index order: entries below k are already new, as in the reference's two loops.
        for k in 0..MT_N {
            let v = self.state[(k + 1) % MT_N];
            self.state[k] = self.state[(k + MT_M) % MT_N] ^ Self::twist(self.state[k], v);
        }
        self.left = MT_N;
        self.next = 0;
    }

    /// One 32-bit draw (`generator->random()`).
    pub fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// One 64-bit draw (`generator->random64()`): the first 32-bit draw is the high half.
    pub fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    /// Uniform in `[0, 1)` with 24 random bits (`uniform_real_distribution<float>(0, 1)`).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 random bits (`uniform_real_distribution<double>(0, 1)`).
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal from the scalar `normal_distribution<double>` sampler (with its cache).
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Fills `out` like `torch.randn` fills a contiguous float32 tensor of `out.len()` elements.
    pub fn fill_normal_f32(&mut self, out: &mut [f32], kernel: NormalKernel) {
        let n = out.len();
        if n < BLOCK {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        for block in out.chunks_exact_mut(BLOCK) {
            box_muller_16(block, kernel);
        }
        if n % BLOCK != 0 {
            let tail = &mut out[n - BLOCK..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail, kernel);
        }
    }

    /// Standard normals as torch computes them for a contiguous bf16/f16 tensor of `n` elements, before
    /// the final rounding to the narrow type.
    pub fn normal_reduced_precision(&mut self, n: usize, kernel: NormalKernel) -> Vec<f32> {
        if n < BLOCK {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut out = vec![0f32; n];
        let mut buf = [0f32; BLOCK];
        for block in out.chunks_exact_mut(BLOCK) {
            self.normal_block(&mut buf, kernel);
            block.copy_from_slice(&buf);
        }
        if n % BLOCK != 0 {
            self.normal_block(&mut buf, kernel);
            out[n - BLOCK..].copy_from_slice(&buf);
        }
        out
    }

    fn normal_block(&mut self, buf: &mut [f32; BLOCK], kernel: NormalKernel) {
        for v in buf.iter_mut() {
            *v = self.uniform_f32();
        }
        box_muller_16(buf, kernel);
    }
}

/// Box–Muller on one block of 16 uniforms, pairing `j` with `j + 8` (torch's `NormalFill16<float>`).
fn box_muller_16(d: &mut [f32], kernel: NormalKernel) {
    for j in 0..HALF_BLOCK {
        let u1 = 1.0 - d[j];
        let u2 = d[j + HALF_BLOCK];
        let (radius, sin, cos) = match kernel {
            NormalKernel::Avx2 => {
                // `2.0f * c10::pi<double>` is evaluated in double and narrowed into the vector constant.
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let (sin, cos) = sincos_cephes(two_pi * u2);
                ((-2.0f32 * log_cephes(u1)).sqrt(), sin, cos)
            }
            NormalKernel::Generic => {
                // Here the angle is computed in double and then stored as float.
                let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
                ((-2.0f32 * u1.ln()).sqrt(), theta.sin(), theta.cos())
            }
        };
        // fma(n, std = 1, mean = 0) is exact.
        d[j] = radius * cos;
        d[j + HALF_BLOCK] = radius * sin;
    }
}

/// Natural log of a positive float, with the operation sequence of torch's AVX2 `log256_ps`.
#[allow(clippy::excessive_precision)]
pub fn log_cephes(x: f32) -> f32 {
    // avx_mathfun.h spells these as double literals narrowed to float; `f64 as f32` rounds the same way.
    // `0.707106781186547524` in the C source is exactly this double.
    const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const P: [f32; 9] = [
        7.0376836292E-2_f64 as f32,
        -1.1514610310E-1_f64 as f32,
        1.1676998740E-1_f64 as f32,
        -1.2420140846E-1_f64 as f32,
        1.4249322787E-1_f64 as f32,
        -1.6668057665E-1_f64 as f32,
        2.0000714765E-1_f64 as f32,
        -2.4999993993E-1_f64 as f32,
        3.3333331174E-1_f64 as f32,
    ];
    const Q1: f32 = -2.12194440e-4_f64 as f32;
    const Q2: f32 = 0.693359375_f64 as f32;
    if x.is_nan() || x <= 0.0 {
        return f32::NAN;
    }
    // Cut off denormals, split into exponent and mantissa in [0.5, 1).
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;
    let z = m * m;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(m, p);
    }
    y *= m;
    // GCC fuses `y * z` with the add of the separately rounded `e * Q1`.
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    let s = m + y;
    e.mul_add(Q2, s)
}

/// `(sin x, cos x)` with the operation sequence of torch's AVX2 `sincos256_ps`.
#[allow(clippy::excessive_precision)]
pub fn sincos_cephes(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516_f64 as f32; // 4 / π
    const DP: [f32; 3] = [
        -0.78515625_f64 as f32,
        -2.4187564849853515625e-4_f64 as f32,
        -3.77489497744594108e-8_f64 as f32,
    ];
    const SINCOF: [f32; 3] = [
        -1.9515295891E-4_f64 as f32,
        8.3321608736E-3_f64 as f32,
        -1.6666654611E-1_f64 as f32,
    ];
    const COSCOF: [f32; 3] = [
        2.443315711809948E-005_f64 as f32,
        -1.388731625493765E-003_f64 as f32,
        4.166664568298827E-002_f64 as f32,
    ];
    let sign_in = x.to_bits() & 0x8000_0000;
    let mut a = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    // Octant j = (trunc(|x|·4/π) + 1) & !1 (the float→int conversion truncates; out-of-range gives i32::MIN).
    let scaled = a * FOPI;
    let mut j = if scaled < 2_147_483_648.0 {
        scaled as i32
    } else {
        i32::MIN
    };
    j = j.wrapping_add(1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let use_sin_poly = (j & 2) == 0;
    // Extended-precision range reduction, each step one fused multiply–add.
    for dp in DP {
        a = y.mul_add(dp, a);
    }
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sin;
    let z = a * a;
    let half_z = z * 0.5;
    let mut c = COSCOF[0].mul_add(z, COSCOF[1]).mul_add(z, COSCOF[2]);
    c *= z;
    c = c.mul_add(z, -half_z);
    c += 1.0;
    let mut s = SINCOF[0].mul_add(z, SINCOF[1]).mul_add(z, SINCOF[2]);
    s *= z;
    s = s.mul_add(a, a);
    // Select polynomials with masks, as the vector code does (keeps signed zeros identical).
    let sin_from_s = if use_sin_poly { s } else { 0.0 };
    let sin_from_c = if use_sin_poly { 0.0 } else { c };
    let cos_s = s - sin_from_s;
    let cos_c = c - sin_from_c;
    let sin = sin_from_c + sin_from_s;
    let cos = cos_c + cos_s;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)`, generated on
/// the CPU as torch's AVX2 kernel does (any x86-64 CPU from the last decade) and then moved to `device`.
/// Supports f32, bf16 and f16.
pub fn torch_randn(seed: u64, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    torch_randn_with_kernel(seed, shape, dtype, device, NormalKernel::Avx2)
}

/// [`torch_randn`] reproducing a chosen torch CPU kernel.
pub fn torch_randn_with_kernel(
    seed: u64,
    shape: &[usize],
    dtype: DType,
    device: &Device,
    kernel: NormalKernel,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut generator = TorchGenerator::new(seed);
    let cpu = Device::Cpu;
    let tensor = match dtype {
        DType::F32 => {
            let mut data = vec![0f32; n];
            generator.fill_normal_f32(&mut data, kernel);
            Tensor::from_vec(data, shape, &cpu)?
        }
        DType::BF16 => {
            let data: Vec<bf16> = generator
                .normal_reduced_precision(n, kernel)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            Tensor::from_vec(data, shape, &cpu)?
        }
        DType::F16 => {
            let data: Vec<f16> = generator
                .normal_reduced_precision(n, kernel)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            Tensor::from_vec(data, shape, &cpu)?
        }
        other => bail!("torch_randn: dtype {other:?} is not supported (use f32, bf16 or f16), shape {shape:?}"),
    };
    tensor.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_sequence() {
        // The reference mt19937 with seed 5489 yields 3499211612 first and 4123659995 as its 10000th draw.
        let mut g = TorchGenerator::new(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        for _ in 1..9999 {
            g.next_u32();
        }
        assert_eq!(g.next_u32(), 4_123_659_995);
    }

    #[test]
    fn seed_uses_low_32_bits() {
        let mut a = TorchGenerator::new((1u64 << 32) + 7);
        let mut b = TorchGenerator::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }

    #[test]
    fn cephes_functions_are_accurate() {
        for i in 1..10_000 {
            let x = i as f32 / 10_000.0;
            assert!((log_cephes(x) - x.ln()).abs() <= 4.0 * f32::EPSILON * x.ln().abs().max(1.0));
            let t = x * std::f32::consts::TAU;
            let (s, c) = sincos_cephes(t);
            assert!((s - t.sin()).abs() < 1e-6 && (c - t.cos()).abs() < 1e-6, "sincos({t})");
        }
    }

    #[test]
    fn scalar_path_caches_second_value() {
        let mut g = TorchGenerator::new(0);
        let first = g.normal_f64();
        let second = g.normal_f64();
        // torch.randn(2, dtype=float64, generator=manual_seed(0))
        assert_eq!(first, 1.540_996_108_244_043_3);
        assert_eq!(second, -0.293_428_905_760_946_4);
    }
}
