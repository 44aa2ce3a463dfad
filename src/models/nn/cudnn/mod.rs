//! cuDNN 9 fused attention and convolution (feature `cudnn`), through `kernels/cudnn_shim.cpp`.
//!
//! The shim builds cuDNN graphs with NVIDIA's cudnn-frontend, one plan per shape, cached (up to 256
//! plans), and dlopens `libcudnn.so.9` at run time (`QWEN_EDIT_CUDNN_LIB` names another file): the binary
//! does not link cuDNN. [`sdpa`] and [`conv2d`] return `Ok(None)` when cuDNN cannot take a call (library
//! missing, no engine for the shape, unsupported dtype, ...); the caller then runs its own path. Each
//! kind of cause is logged once with `tracing::warn!`, later ones at debug level, as is each new plan.
//!
//! Switches (read once): `QWEN_EDIT_NO_CUDNN=1` turns both paths off, `QWEN_EDIT_NO_CUDNN_SDPA=1` /
//! `QWEN_EDIT_NO_CUDNN_CONV=1` one of them; `QWEN_EDIT_CUDNN_HEUR=b` picks cuDNN's heuristics mode B
//! instead of A; `QWEN_EDIT_CUDNN_MAX_WORKSPACE_MB` bounds a plan's workspace (default 1024: the 192→96 3×3
//! conv at 1024² needs 604 MB for an engine as fast as torch's; under 512 MB cuDNN picks one 10× slower);
//! `QWEN_EDIT_CUDNN_CONV_PLANS` (default 4) candidate conv plans are timed at their first call. Tests use
//! [`set_enabled`]. A failed execution turns that operation off for the rest of the process.
//!
//! Every call runs on candle's stream of the tensors' device (see [`launch`]); the workspace is one
//! buffer per candle device, grown on demand and reused.

mod ffi;
mod launch;

use std::collections::{HashMap, HashSet};
use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::op::BackpropOp;
use candle_core::{DType, Result, Shape, Storage, Tensor};

use ffi::{err_buf, err_string, ConvDesc, SdpaDesc, QE_ERROR, QE_NOT_LOADED, QE_OK, QE_UNSUPPORTED};
use launch::{aligned_contiguous, alloc_out, device_info, dtype_code, launch, Outcome};

/// The two operations, for the switches and the once-only warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Sdpa,
    Conv,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Sdpa => "SDPA",
            Op::Conv => "conv2d",
        }
    }

    fn fallback(self) -> &'static str {
        match self {
            Op::Sdpa => "the flash-attention kernel",
            Op::Conv => "candle's conv2d",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Op::Sdpa => "QWEN_EDIT_NO_CUDNN_SDPA",
            Op::Conv => "QWEN_EDIT_NO_CUDNN_CONV",
        }
    }

    /// Set after a failed execution: the op stays off for the process.
    fn broken(self) -> &'static AtomicBool {
        static SDPA: AtomicBool = AtomicBool::new(false);
        static CONV: AtomicBool = AtomicBool::new(false);
        match self {
            Op::Sdpa => &SDPA,
            Op::Conv => &CONV,
        }
    }
}

/// 0: follow the environment, 1: forced on, 2: forced off ([`set_enabled`]).
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Turns the cuDNN paths on or off for the whole process (`None`: back to the environment switches).
pub fn set_enabled(on: Option<bool>) {
    let v = match on {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    OVERRIDE.store(v, Ordering::SeqCst);
}

/// Tests: when on, every output buffer is filled with NaN bytes before cuDNN runs, so an element the
/// plan does not write shows up as NaN.
#[doc(hidden)]
pub fn set_poison_outputs(on: bool) {
    launch::POISON.store(on, Ordering::SeqCst);
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn op_enabled(op: Op) -> bool {
    static ENV: OnceLock<HashMap<Op, bool>> = OnceLock::new();
    if op.broken().load(Ordering::Relaxed) {
        return false;
    }
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *ENV
            .get_or_init(|| {
                let all_off = env_flag("QWEN_EDIT_NO_CUDNN");
                [Op::Sdpa, Op::Conv]
                    .into_iter()
                    .map(|o| (o, !all_off && !env_flag(o.env())))
                    .collect()
            })
            .get(&op)
            .unwrap_or(&false),
    }
}

/// Whether cuDNN attention is switched on (environment or [`set_enabled`]); does not load the library.
pub fn sdpa_switched_on() -> bool {
    op_enabled(Op::Sdpa)
}

/// Whether cuDNN convolutions are switched on; does not load the library.
pub fn conv_switched_on() -> bool {
    op_enabled(Op::Conv)
}

/// Logs `msg` as a warning the first time `key` is seen, at debug level afterwards.
fn warn_once(key: String, msg: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = SEEN
        .get_or_init(Default::default)
        .lock()
        .map(|mut s| s.insert(key))
        .unwrap_or(false);
    if first {
        tracing::warn!("{msg}");
    } else {
        tracing::debug!("{msg}");
    }
}

/// Logs why cuDNN did not take a call (warning once per op and kind of cause).
fn not_taken(op: Op, code: c_int, shape: &str, why: &str) {
    let kind = match code {
        QE_UNSUPPORTED => "unsupported",
        QE_NOT_LOADED => "not loaded",
        _ => "error",
    };
    warn_once(
        format!("{}:{kind}", op.name()),
        &format!(
            "cuDNN {} not used for {shape} ({kind}: {why}); using {}",
            op.name(),
            op.fallback()
        ),
    );
}

/// The cuDNN version (e.g. 91300), loading the library on first use; `Err` says why it is unavailable.
pub fn version() -> std::result::Result<i64, String> {
    static LOADED: OnceLock<std::result::Result<i64, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var("QWEN_EDIT_CUDNN_LIB").unwrap_or_default();
            let path = CString::new(path).map_err(|_| "QWEN_EDIT_CUDNN_LIB contains a NUL byte".to_string())?;
            let mut err = err_buf();
            let mut v = 0i64;
            // SAFETY: a NUL-terminated path, an out pointer to a local, a buffer of ERR_LEN bytes.
            let code = unsafe { ffi::qe_cudnn_load(path.as_ptr(), &mut v, err.as_mut_ptr(), ffi::ERR_LEN) };
            if code == QE_OK {
                tracing::debug!("cuDNN {v} loaded");
                Ok(v)
            } else {
                Err(err_string(&err))
            }
        })
        .clone()
}

/// Whether `op` may use cuDNN now: switched on, and the library loads (warns once when it does not).
fn available(op: Op) -> bool {
    if !op_enabled(op) {
        return false;
    }
    match version() {
        Ok(_) => true,
        Err(e) => {
            warn_once(
                "load".into(),
                &format!("cuDNN is unavailable ({e}); using the flash-attention kernel and candle's conv2d"),
            );
            false
        }
    }
}

fn heuristics_mode() -> i64 {
    static MODE: OnceLock<i64> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("QWEN_EDIT_CUDNN_HEUR").as_deref() {
        Ok("b") | Ok("B") => 1,
        _ => 0,
    })
}

fn max_workspace() -> i64 {
    static MAX: OnceLock<i64> = OnceLock::new();
    *MAX.get_or_init(|| {
        let mb = std::env::var("QWEN_EDIT_CUDNN_MAX_WORKSPACE_MB")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(1024);
        mb.clamp(0, 1 << 20) << 20
    })
}

fn contiguous_strides(dims: [usize; 4]) -> [i64; 4] {
    let [_, d1, d2, d3] = dims.map(|d| d as i64);
    [d1 * d2 * d3, d2 * d3, d3, 1]
}

/// Logs a freshly built plan (the shim's description is in `note`).
fn log_plan(op: Op, built: i32, shape: impl FnOnce() -> String, note: &str, workspace: i64, started: Instant) {
    if built != 0 {
        tracing::debug!(
            "cuDNN {} plan for {}: {note}, workspace {workspace} B, built in {:.1?}",
            op.name(),
            shape(),
            started.elapsed()
        );
    }
}

/// Handles a launch that did not complete: logs it; a failed execution also turns `op` off.
fn launch_failed(op: Op, outcome: Outcome, shape: &str, err: &str) {
    match outcome {
        Outcome::Done => {}
        Outcome::Misaligned(p) => not_taken(op, QE_ERROR, shape, &format!("pointer {p:#x} is not 16-byte aligned")),
        Outcome::Failed(code) => {
            op.broken().store(true, Ordering::Relaxed);
            not_taken(
                op,
                code,
                shape,
                &format!("execution failed, cuDNN {} turned off: {err}", op.name()),
            );
        }
    }
}

/// What the attention may see, for [`sdpa`].
#[derive(Debug, Clone, Copy)]
pub enum SdpaMask<'a> {
    None,
    /// Query i attends to keys `0..=i` (`Sq == Skv`).
    Causal,
    /// Additive bias `[B, Skv]` (e.g. 0 keep, −1e30 drop), any float dtype.
    KeyBias(&'a Tensor),
}

/// The largest head dim handed to cuDNN's fused attention (its limit on Hopper).
pub const SDPA_MAX_HEAD_DIM: usize = 256;

/// cuDNN fused attention: `q [B, H, Sq, D]`, `k, v [B, H, Skv, D]` in bf16 or f16 on a CUDA device, D a
/// multiple of 8 up to [`SDPA_MAX_HEAD_DIM`]. Returns `[B, H, Sq, D]` (f32 softmax and accumulation), or
/// `None` when cuDNN cannot run it.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: SdpaMask<'_>, scale: f64) -> Result<Option<Tensor>> {
    let dtype = q.dtype();
    if !q.device().is_cuda() || !matches!(dtype, DType::BF16 | DType::F16) || k.dtype() != dtype || v.dtype() != dtype {
        return Ok(None);
    }
    let (b, h, sq, d) = q.dims4()?;
    let (bk, hk, skv, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != (b, h, skv, d) {
        candle_core::bail!(
            "sdpa: shape mismatch q {:?} k {:?} v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let causal_mismatch = matches!(mask, SdpaMask::Causal) && sq != skv;
    if b * h * sq * skv * d == 0
        || d % 8 != 0
        || d > SDPA_MAX_HEAD_DIM
        || causal_mismatch
        || scale.is_nan()
        || scale <= 0.0
    {
        return Ok(None);
    }
    if !available(Op::Sdpa) {
        return Ok(None);
    }
    let bias = match mask {
        SdpaMask::KeyBias(t) => {
            if t.dims2()? != (b, skv) {
                candle_core::bail!("sdpa: key bias {:?} does not match [{b}, {skv}]", t.shape());
            }
            Some(aligned_contiguous(&t.to_dtype(dtype)?)?)
        }
        _ => None,
    };
    let (q, k, v) = (aligned_contiguous(q)?, aligned_contiguous(k)?, aligned_contiguous(v)?);
    let dev = q.device().as_cuda_device()?.clone();
    let info = device_info(&dev)?;
    let desc = SdpaDesc {
        b: b as i64,
        h: h as i64,
        sq: sq as i64,
        skv: skv as i64,
        d: d as i64,
        q_stride: contiguous_strides([b, h, sq, d]),
        k_stride: contiguous_strides([b, h, skv, d]),
        v_stride: contiguous_strides([b, h, skv, d]),
        o_stride: contiguous_strides([b, h, sq, d]),
        dtype: dtype_code(dtype).unwrap_or(0),
        mask: match mask {
            SdpaMask::None => 0,
            SdpaMask::Causal => 1,
            SdpaMask::KeyBias(_) => 2,
        },
        sm: info.sm,
        heur: heuristics_mode(),
        max_workspace: max_workspace(),
        scale,
    };
    let shape = || format!("B{b} H{h} Sq{sq} Skv{skv} D{d} {dtype:?} mask {}", desc.mask);
    let mut err = err_buf();
    let (mut ws_bytes, mut built) = (0i64, 0i32);
    let started = Instant::now();
    // SAFETY: the descriptor and the out pointers are live locals; the buffer has ERR_LEN bytes.
    let code = unsafe {
        ffi::qe_sdpa_prepare(
            info.ordinal,
            &desc,
            &mut ws_bytes,
            &mut built,
            err.as_mut_ptr(),
            ffi::ERR_LEN,
        )
    };
    if code != QE_OK {
        not_taken(Op::Sdpa, code, &shape(), &err_string(&err));
        return Ok(None);
    }
    log_plan(Op::Sdpa, built, shape, &err_string(&err), ws_bytes, started);

    let mut out = alloc_out(&dev, dtype, b * h * sq * d)?;
    let stream = info.stream.as_ref();
    let inputs = [Some(&q), Some(&k), Some(&v), bias.as_ref()];
    let outcome = launch(
        &dev,
        stream,
        &inputs,
        &mut out,
        ws_bytes.max(0) as usize,
        |p, o, ws, ws_len| {
            // SAFETY: q, k, v (and the bias) are live, contiguous, 16-byte aligned device buffers of the
            // sizes the descriptor states (checked above), `o` is a fresh buffer of b·h·sq·d elements, the
            // stream is candle's stream of this device with its context current, and the workspace holds
            // at least the prepared size.
            unsafe {
                ffi::qe_sdpa_execute(
                    info.ordinal,
                    stream.cu_stream() as *mut c_void,
                    &desc,
                    p[0] as *const c_void,
                    p[1] as *const c_void,
                    p[2] as *const c_void,
                    p[3] as *const c_void,
                    o as *mut c_void,
                    ws as *mut c_void,
                    ws_len as i64,
                    err.as_mut_ptr(),
                    ffi::ERR_LEN,
                )
            }
        },
    )?;
    if !matches!(outcome, Outcome::Done) {
        launch_failed(Op::Sdpa, outcome, &shape(), &err_string(&err));
        return Ok(None);
    }
    let o = Tensor::from_storage(
        Storage::Cuda(out),
        Shape::from((b, h, sq, d)),
        BackpropOp::none(),
        false,
    );
    Ok(Some(o))
}

/// cuDNN 2-D cross-correlation of NCHW `x [N, C, H, W]` with `w [K, C, R, S]` (one group, no dilation),
/// symmetric `padding` and `stride`, plus `bias [K]`, in bf16, f16 or f32 (f32 keeps f32 math: no TF32).
/// Returns `[N, K, OH, OW]` in the dtype of `x`, or `None` when cuDNN cannot run it.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize, stride: usize) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let Some(dtype_code) = dtype_code(dtype) else {
        return Ok(None);
    };
    if !x.device().is_cuda() || w.dtype() != dtype {
        return Ok(None);
    }
    let (n, c, h, wd) = x.dims4()?;
    let (k, cw, r, s) = w.dims4()?;
    if cw != c {
        candle_core::bail!(
            "conv2d: input {:?} and kernel {:?} disagree on channels",
            x.shape(),
            w.shape()
        );
    }
    if stride == 0 || h + 2 * padding < r || wd + 2 * padding < s || n * c * h * wd * k == 0 {
        return Ok(None);
    }
    if !available(Op::Conv) {
        return Ok(None);
    }
    let out_h = (h + 2 * padding - r) / stride + 1;
    let out_w = (wd + 2 * padding - s) / stride + 1;
    let bias = match bias {
        Some(t) => {
            if t.dims1()? != k {
                candle_core::bail!("conv2d: bias {:?} does not match {k} output channels", t.shape());
            }
            Some(aligned_contiguous(&t.to_dtype(dtype)?)?)
        }
        None => None,
    };
    let (x, w) = (aligned_contiguous(x)?, aligned_contiguous(w)?);
    let dev = x.device().as_cuda_device()?.clone();
    let info = device_info(&dev)?;
    let desc = ConvDesc {
        n: n as i64,
        c: c as i64,
        h: h as i64,
        w: wd as i64,
        k: k as i64,
        r: r as i64,
        s: s as i64,
        pad_h: padding as i64,
        pad_w: padding as i64,
        stride_h: stride as i64,
        stride_w: stride as i64,
        out_h: out_h as i64,
        out_w: out_w as i64,
        dtype: dtype_code,
        has_bias: bias.is_some() as i64,
        sm: info.sm,
        heur: heuristics_mode(),
        max_workspace: max_workspace(),
    };
    let shape = || format!("x [{n}, {c}, {h}, {wd}] w [{k}, {c}, {r}, {s}] pad {padding} stride {stride} {dtype:?}");
    let mut err = err_buf();
    let (mut ws_bytes, mut fused, mut built) = (0i64, 0i32, 0i32);
    let started = Instant::now();
    // SAFETY: the descriptor and the out pointers are live locals; the buffer has ERR_LEN bytes.
    let code = unsafe {
        ffi::qe_conv_prepare(
            info.ordinal,
            &desc,
            &mut ws_bytes,
            &mut fused,
            &mut built,
            err.as_mut_ptr(),
            ffi::ERR_LEN,
        )
    };
    if code != QE_OK {
        not_taken(Op::Conv, code, &shape(), &err_string(&err));
        return Ok(None);
    }
    log_plan(Op::Conv, built, shape, &err_string(&err), ws_bytes, started);

    let mut out = alloc_out(&dev, dtype, n * k * out_h * out_w)?;
    let stream = info.stream.as_ref();
    // The bias goes to cuDNN only when its plan adds it.
    let inputs = [Some(&x), Some(&w), bias.as_ref().filter(|_| fused != 0)];
    let outcome = launch(
        &dev,
        stream,
        &inputs,
        &mut out,
        ws_bytes.max(0) as usize,
        |p, y, ws, ws_len| {
            // SAFETY: as in `sdpa`: live, contiguous, aligned buffers of the sizes the descriptor states,
            // a fresh output of n·k·out_h·out_w elements, candle's stream of this device, enough workspace.
            unsafe {
                ffi::qe_conv_execute(
                    info.ordinal,
                    stream.cu_stream() as *mut c_void,
                    &desc,
                    p[0] as *const c_void,
                    p[1] as *const c_void,
                    p[2] as *const c_void,
                    y as *mut c_void,
                    ws as *mut c_void,
                    ws_len as i64,
                    err.as_mut_ptr(),
                    ffi::ERR_LEN,
                )
            }
        },
    )?;
    if !matches!(outcome, Outcome::Done) {
        launch_failed(Op::Conv, outcome, &shape(), &err_string(&err));
        return Ok(None);
    }
    let y = Tensor::from_storage(
        Storage::Cuda(out),
        Shape::from((n, k, out_h, out_w)),
        BackpropOp::none(),
        false,
    );
    match (&bias, fused) {
        (Some(b), 0) => Ok(Some(y.broadcast_add(&b.reshape((1, k, 1, 1))?)?)),
        _ => Ok(Some(y)),
    }
}
