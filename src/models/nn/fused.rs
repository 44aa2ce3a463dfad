//! Fused element-wise ops of the transformer block: each replaces a chain of candle ops (a full pass
//! over a `[tokens, dim]` tensor each, some with f32 round trips) with one kernel launch.
//!
//! | op | unfused chain it replaces |
//! |---|---|
//! | [`layernorm_modulate`] | LayerNorm → `· (1 + scale)` → `+ shift` (per token group) |
//! | [`gate_residual`] | Linear bias → `· gate` → `x +` |
//! | [`joint_heads`] | Linear bias → reshape → RMSNorm → transpose → f32 → RoPE → bf16 → `cat` text+image |
//! | [`heads_to_rows`] | transpose → reshape → `narrow().contiguous()` ×2 |
//! | [`bias_gelu_tanh`] | Linear bias → f32 → tanh-GELU → bf16 |
//! | [`channel_rms_norm`], [`pixel_attention`] | the VAE's channel RMSNorm (+ SiLU) and attention (see [`image`]) |
//!
//! On CUDA with bf16 tensors the kernels of `kernels/fused.cu` run (f32 math inside, one rounding at
//! the end, so slightly more accurate than the chain; only the QK RMSNorm keeps diffusers' two bf16
//! roundings, of the normalised value and of its product with the weight). Everywhere else (CPU, f32, f16, shapes the kernels
//! do not take) each function runs the unfused candle chain op by op, exactly as the model did before,
//! so f32 results are bit-identical to the unfused code. `QWEN_EDIT_NO_FUSED=1` (or [`set_enabled`])
//! forces the unfused chain on CUDA too, for comparisons.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Result, Tensor, D};

use super::norm::{LayerNormNoAffine, RmsNorm};

#[cfg(feature = "cuda")]
mod cuda;
pub mod image;

pub use image::{channel_rms_norm, pixel_attention};

/// Environment variable that turns the fused kernels off (any value but `0`).
pub const DISABLE_ENV: &str = "QWEN_EDIT_NO_FUSED";

const UNSET: u8 = 2;
static GLOBAL: AtomicU8 = AtomicU8::new(UNSET);

thread_local! {
    static OVERRIDE: Cell<Option<bool>> = const { Cell::new(None) };
    static LAUNCHES: Cell<usize> = const { Cell::new(0) };
}

/// Whether the fused kernels may run (on this thread): a [`with_enabled`] scope if inside one, else
/// [`set_enabled`], else `QWEN_EDIT_NO_FUSED` unset.
pub fn enabled() -> bool {
    if let Some(on) = OVERRIDE.with(Cell::get) {
        return on;
    }
    match GLOBAL.load(Ordering::Relaxed) {
        UNSET => {
            let on = !std::env::var(DISABLE_ENV).is_ok_and(|v| v != "0");
            GLOBAL.store(on as u8, Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// Turns the fused kernels on or off for the whole process (overrides `QWEN_EDIT_NO_FUSED`).
pub fn set_enabled(on: bool) {
    GLOBAL.store(on as u8, Ordering::Relaxed);
}

/// Runs `f` with the fused kernels on or off on this thread only (tests run in parallel threads).
pub fn with_enabled<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(on))));
    f()
}

/// Number of fused kernel launches made by this thread so far (lets tests check the kernel ran).
pub fn launches() -> usize {
    LAUNCHES.with(Cell::get)
}

#[cfg(feature = "cuda")]
fn count_launch() {
    LAUNCHES.with(|n| n.set(n.get() + 1));
}

/// Which parameter rows apply to which tokens of a `[B, S, dim]` sequence: one set for all tokens, or
/// (`zero_cond_t`) `head` for tokens `0..n` and `tail` for tokens `n..`.
#[derive(Debug, Clone, Copy)]
pub enum PerToken<T> {
    All(T),
    Split { n: usize, head: T, tail: T },
}

/// One `(shift, scale)` pair of a modulation, each `[Bt, dim]` (Bt = B, or 1 for the whole batch).
#[derive(Debug, Clone, Copy)]
pub struct ShiftScale<'a> {
    pub shift: &'a Tensor,
    pub scale: &'a Tensor,
}

/// Applies `f(params, tokens)` per token group of `x: [B, S, dim]` and reassembles the sequence.
fn per_group<T: Copy>(x: &Tensor, m: PerToken<T>, f: impl Fn(T, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match m {
        PerToken::All(p) => f(p, x),
        PerToken::Split { n, head, tail } => {
            let s = x.dim(1)?;
            let n = n.min(s);
            if n == s {
                return f(head, x);
            }
            let first = f(head, &x.narrow(1, 0, n)?)?;
            let rest = f(tail, &x.narrow(1, n, s - n)?)?;
            Tensor::cat(&[first, rest], 1)
        }
    }
}

/// `LN(x) · (1 + scale) + shift` over the last axis of `x: [B, S, dim]` (LayerNorm without affine,
/// statistics in f32), with the modulation of each token's group.
pub fn layernorm_modulate(x: &Tensor, eps: f64, m: PerToken<ShiftScale<'_>>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled() {
        if let Some(y) = cuda::layernorm_modulate(x, eps, m)? {
            return Ok(y);
        }
    }
    let normed = LayerNormNoAffine::new(x.dim(D::Minus1)?, eps, x.dtype(), x.device())?.forward(x)?;
    per_group(&normed, m, |p, x| {
        x.broadcast_mul(&(p.scale.unsqueeze(1)? + 1.0)?)?
            .broadcast_add(&p.shift.unsqueeze(1)?)
    })
}

/// `x + gate · (y + bias)`: the gated residual after a sub-layer whose Linear ran without its bias
/// (`bias: [dim]`, `None` if already added). `x, y: [B, S, dim]`, gates `[Bt, dim]`.
pub fn gate_residual(x: &Tensor, y: &Tensor, bias: Option<&Tensor>, gate: PerToken<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled() {
        if let Some(out) = cuda::gate_residual(x, y, bias, gate)? {
            return Ok(out);
        }
    }
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y.clone(),
    };
    let gated = per_group(&y, gate, |g, y| y.broadcast_mul(&g.unsqueeze(1)?))?;
    x + gated
}

/// One stream's part of a joint attention input: a projection output and what to apply to it.
#[derive(Debug, Clone, Copy)]
pub struct HeadsPart<'a> {
    /// `[B, S, H·D]`, the projection without its bias.
    pub x: &'a Tensor,
    /// The projection's bias `[H·D]`.
    pub bias: Option<&'a Tensor>,
    /// RMSNorm weight `[D]` (per head, eps of [`joint_heads`]).
    pub norm: Option<&'a Tensor>,
    /// RoPE `(cos, sin)`, each `[S, D/2]` f32, interleaved pairs.
    pub rope: Option<(&'a Tensor, &'a Tensor)>,
}

/// The joint `[B, H, ΣS, D]` attention input of `parts` in order (text first, then image): each part
/// gets its bias, per-head RMSNorm and RoPE and is written at its sequence offset.
pub fn joint_heads(parts: &[HeadsPart<'_>], heads: usize, head_dim: usize, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled() {
        if let Some(out) = cuda::joint_heads(parts, heads, head_dim, eps)? {
            return Ok(out);
        }
    }
    let mut outs = Vec::with_capacity(parts.len());
    for p in parts {
        let (b, s, hd) = p.x.dims3()?;
        if hd != heads * head_dim {
            candle_core::bail!("joint_heads: {hd} features are not {heads} heads × {head_dim}");
        }
        let y = match p.bias {
            Some(bias) => p.x.broadcast_add(bias)?,
            None => p.x.clone(),
        };
        let mut y = y.reshape((b, s, heads, head_dim))?; // [B, S, H, D]
        if let Some(w) = p.norm {
            y = RmsNorm::from_weight(w.clone(), eps).forward(&y)?;
        }
        let y = y.transpose(1, 2)?; // [B, H, S, D]
        outs.push(match p.rope {
            Some((cos, sin)) => rope_interleaved(&y, cos, sin)?,
            None => y.contiguous()?,
        });
    }
    Tensor::cat(&outs, 2)
}

/// Attention output `[B, H, S, D]` → rows `[B, s_first, H·D]` (tokens `0..s_first`) and
/// `[B, S − s_first, H·D]` (the rest), both contiguous.
pub fn heads_to_rows(o: &Tensor, s_first: usize) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if enabled() {
        if let Some(out) = cuda::heads_to_rows(o, s_first)? {
            return Ok(out);
        }
    }
    let (b, h, s, d) = o.dims4()?;
    if s_first > s {
        candle_core::bail!("heads_to_rows: split at {s_first} beyond {s} tokens");
    }
    let o = o.transpose(1, 2)?.reshape((b, s, h * d))?; // [B, S, H·D]
    Ok((
        o.narrow(1, 0, s_first)?.contiguous()?,
        o.narrow(1, s_first, s - s_first)?.contiguous()?,
    ))
}

/// `gelu_tanh(x + bias)` over the last axis (`bias: [N]`), evaluated in f32 (PyTorch's opmath for
/// half types) and rounded once to the dtype of `x`.
pub fn bias_gelu_tanh(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if enabled() {
        if let Some(y) = cuda::bias_gelu_tanh(x, bias)? {
            return Ok(y);
        }
    }
    let h = match bias {
        Some(b) => x.broadcast_add(b)?,
        None => x.clone(),
    };
    h.to_dtype(DType::F32)?.gelu()?.to_dtype(x.dtype())
}

/// `t.to_dtype(dtype)`, also where candle 0.11.1 cannot on CUDA: float8 e4m3 to and from other dtypes
/// (candle asks its PTX for `cast_*_f8e4m3` kernels it names `cast_*_f8_e4m3`, and fails with "named
/// symbol not found"). A correctness fix, not a fusion: the fused switch does not turn it off.
pub fn to_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if t.device().is_cuda() && t.dtype() != dtype && (t.dtype() == DType::F8E4M3 || dtype == DType::F8E4M3) {
        return cuda::cast_fp8(t, dtype);
    }
    t.to_dtype(dtype)
}

/// Interleaved-pair rotation (`apply_rotary_emb_qwen(use_real=False)`), in f32:
/// `out[2k] = x[2k]·cos − x[2k+1]·sin`, `out[2k+1] = x[2k]·sin + x[2k+1]·cos`.
/// `x: [B, H, S, D]`, `cos, sin: [S, D/2]` f32; the result has the dtype of `x`.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&x, cos, sin)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests;
