//! cuDNN 9 fused attention and convolution (feature `cudnn`), through `kernels/cudnn_shim.cpp`.
//!
//! The shim builds cuDNN graphs with NVIDIA's cudnn-frontend, one plan per shape, cached for the life of
//! the process, and dlopens `libcudnn.so.9` at run time (`QWEN_EDIT_CUDNN_LIB` names another file): the
//! binary does not link cuDNN. [`sdpa`] and [`conv2d`] return `Ok(None)` when cuDNN cannot take the call
//! (library missing, no engine for the shape, unsupported dtype, ...); the caller then runs its own path.
//! Each such cause is logged once with `tracing::warn!`.
//!
//! Switches (read once): `QWEN_EDIT_NO_CUDNN=1` turns both paths off, `QWEN_EDIT_NO_CUDNN_SDPA=1` /
//! `QWEN_EDIT_NO_CUDNN_CONV=1` one of them; `QWEN_EDIT_CUDNN_HEUR=b` picks cuDNN's heuristics mode B
//! instead of A; `QWEN_EDIT_CUDNN_MAX_WORKSPACE_MB` bounds a plan's workspace (default 512).
//! Tests use [`set_enabled`] instead.
//!
//! Every call runs on candle's stream of the tensors' device: pointers are taken with cudarc's
//! `device_ptr`/`device_ptr_mut`, which order the stream after earlier writes and record this access.
//! The workspace is one buffer per candle device, grown on demand and reused.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use candle_core::cuda::{CudaStorage, CudaStorageSlice};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

/// Return codes of the shim.
const QE_OK: c_int = 0;
const QE_UNSUPPORTED: c_int = 1;
const QE_NOT_LOADED: c_int = 3;

/// Bytes of the shim's error messages.
const ERR_LEN: usize = 2048;
/// Pointer alignment the plans are built for (the frontend's default).
const ALIGN: u64 = 16;
/// Workspace growth step, so that a slightly larger plan does not reallocate.
const WORKSPACE_STEP: usize = 1 << 20;

/// `QeSdpaDesc` of the shim (all fields 8 bytes: no padding, the shim hashes the bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SdpaDesc {
    b: i64,
    h: i64,
    sq: i64,
    skv: i64,
    d: i64,
    q_stride: [i64; 4],
    k_stride: [i64; 4],
    v_stride: [i64; 4],
    o_stride: [i64; 4],
    dtype: i64,
    mask: i64,
    sm: i64,
    heur: i64,
    max_workspace: i64,
    scale: f64,
}

/// `QeConvDesc` of the shim.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvDesc {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    k: i64,
    r: i64,
    s: i64,
    pad_h: i64,
    pad_w: i64,
    stride_h: i64,
    stride_w: i64,
    out_h: i64,
    out_w: i64,
    dtype: i64,
    has_bias: i64,
    sm: i64,
    heur: i64,
    max_workspace: i64,
}

extern "C" {
    fn qe_cudnn_load(path: *const c_char, version: *mut i64, err: *mut c_char, n: usize) -> c_int;
    fn qe_sdpa_prepare(
        device: c_int,
        desc: *const SdpaDesc,
        workspace: *mut i64,
        built: *mut i32,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    fn qe_sdpa_execute(
        device: c_int,
        stream: *mut c_void,
        desc: *const SdpaDesc,
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        bias: *const c_void,
        o: *mut c_void,
        workspace: *mut c_void,
        workspace_size: i64,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    fn qe_conv_prepare(
        device: c_int,
        desc: *const ConvDesc,
        workspace: *mut i64,
        fused_bias: *mut i32,
        built: *mut i32,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    fn qe_conv_execute(
        device: c_int,
        stream: *mut c_void,
        desc: *const ConvDesc,
        x: *const c_void,
        w: *const c_void,
        bias: *const c_void,
        y: *mut c_void,
        workspace: *mut c_void,
        workspace_size: i64,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
}

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
}

/// 0: follow the environment, 1: forced on, 2: forced off ([`set_enabled`]).
static OVERRIDE: AtomicU8 = AtomicU8::new(0);
/// Set after an execution failure of that op: it stays off for the process.
static SDPA_BROKEN: AtomicBool = AtomicBool::new(false);
static CONV_BROKEN: AtomicBool = AtomicBool::new(false);
/// Tests: fill outputs with NaN before cuDNN writes them.
static POISON: AtomicBool = AtomicBool::new(false);

/// Turns the cuDNN paths on or off for the whole process (`None`: back to the environment switches).
pub fn set_enabled(on: Option<bool>) {
    OVERRIDE.store(
        match on {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        },
        Ordering::SeqCst,
    );
}

/// Tests: when on, every output buffer is filled with NaN bytes before cuDNN runs, so an element the
/// kernel does not write shows up as NaN.
#[doc(hidden)]
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn op_enabled(op: Op) -> bool {
    static ENV: OnceLock<HashMap<Op, bool>> = OnceLock::new();
    let broken = match op {
        Op::Sdpa => &SDPA_BROKEN,
        Op::Conv => &CONV_BROKEN,
    };
    if broken.load(Ordering::Relaxed) {
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

fn err_string(buf: &[c_char]) -> String {
    // SAFETY: the buffer is zero-initialised and the shim writes at most ERR_LEN bytes with snprintf,
    // which always NUL-terminates.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// The cuDNN version (e.g. 91300), loading the library on first use; `Err` says why it is unavailable.
pub fn version() -> std::result::Result<i64, String> {
    static LOADED: OnceLock<std::result::Result<i64, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var("QWEN_EDIT_CUDNN_LIB").unwrap_or_default();
            let path = CString::new(path).map_err(|_| "QWEN_EDIT_CUDNN_LIB contains a NUL byte".to_string())?;
            let mut err = vec![0 as c_char; ERR_LEN];
            let mut v = 0i64;
            // SAFETY: valid NUL-terminated path, out pointers to live locals, buffer of ERR_LEN bytes.
            let code = unsafe { qe_cudnn_load(path.as_ptr(), &mut v, err.as_mut_ptr(), ERR_LEN) };
            if code == QE_OK {
                tracing::debug!("cuDNN {v} loaded");
                Ok(v)
            } else {
                Err(err_string(&err))
            }
        })
        .clone()
}

/// Whether `op` may use cuDNN now: switched on and the library loads (warns once when it does not).
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
            .unwrap_or(512);
        mb.max(0) << 20
    })
}

/// What cuDNN needs from a candle device: its ordinal, compute capability and stream, with the
/// device's context made current on this thread.
struct DeviceInfo {
    ordinal: c_int,
    sm: i64,
    stream: std::sync::Arc<CudaStream>,
}

fn device_info(dev: &CudaDevice) -> Result<DeviceInfo> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    let (major, minor) = ctx.compute_capability().map_err(candle_core::Error::wrap)?;
    let ordinal = c_int::try_from(ctx.ordinal()).map_err(candle_core::Error::wrap)?;
    Ok(DeviceInfo {
        ordinal,
        sm: (major * 10 + minor) as i64,
        stream,
    })
}

fn dtype_code(dt: DType) -> Option<i64> {
    match dt {
        DType::BF16 => Some(0),
        DType::F16 => Some(1),
        DType::F32 => Some(2),
        _ => None,
    }
}

fn cuda_storage(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(cs) => Ok(cs),
        _ => candle_core::bail!("cudnn: tensor is not on a CUDA device"),
    }
}

/// Read pointer (with the layout's start offset) of a contiguous CUDA tensor of bf16, f16 or f32.
fn read_ptr<'a>(cs: &'a CudaStorage, l: &Layout, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
    let off = l.start_offset();
    let (base, guard, size) = match &cs.slice {
        CudaStorageSlice::BF16(s) => {
            let (p, g) = s.device_ptr(stream);
            (p, g, 2)
        }
        CudaStorageSlice::F16(s) => {
            let (p, g) = s.device_ptr(stream);
            (p, g, 2)
        }
        CudaStorageSlice::F32(s) => {
            let (p, g) = s.device_ptr(stream);
            (p, g, 4)
        }
        _ => candle_core::bail!("cudnn: unsupported storage dtype {:?}", cs.dtype()),
    };
    Ok((base + (off * size) as u64, guard))
}

/// Write pointer of a freshly allocated output storage.
fn write_ptr<'a>(cs: &'a mut CudaStorage, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>, usize)> {
    Ok(match &mut cs.slice {
        CudaStorageSlice::BF16(s) => {
            let n = s.num_bytes();
            let (p, g) = s.device_ptr_mut(stream);
            (p, g, n)
        }
        CudaStorageSlice::F16(s) => {
            let n = s.num_bytes();
            let (p, g) = s.device_ptr_mut(stream);
            (p, g, n)
        }
        CudaStorageSlice::F32(s) => {
            let n = s.num_bytes();
            let (p, g) = s.device_ptr_mut(stream);
            (p, g, n)
        }
        _ => candle_core::bail!("cudnn: unsupported output dtype"),
    })
}

/// Uninitialised output storage of `n` elements (cuDNN writes all of them).
fn alloc_out(dev: &CudaDevice, dtype: DType, n: usize) -> Result<CudaStorage> {
    // SAFETY (all arms): the buffer is fully written by the cuDNN plan before anything reads it.
    Ok(match dtype {
        DType::BF16 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<bf16>(n)? }, dev.clone()),
        DType::F16 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f16>(n)? }, dev.clone()),
        DType::F32 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f32>(n)? }, dev.clone()),
        _ => candle_core::bail!("cudnn: unsupported output dtype {dtype:?}"),
    })
}

/// Contiguous, with its first element 16-byte aligned (copies when needed).
fn aligned_contiguous(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    let (_, l) = t.storage_and_layout();
    let misaligned = (l.start_offset() * t.dtype().size_in_bytes()) as u64 % ALIGN != 0;
    if misaligned {
        t.force_contiguous()
    } else {
        Ok(t)
    }
}

/// One workspace buffer per candle device, grown on demand.
fn workspaces() -> &'static Mutex<HashMap<candle_core::cuda::DeviceId, CudaSlice<u8>>> {
    static WS: OnceLock<Mutex<HashMap<candle_core::cuda::DeviceId, CudaSlice<u8>>>> = OnceLock::new();
    WS.get_or_init(Default::default)
}

/// Runs `f(workspace_ptr, workspace_bytes)` with at least `bytes` of workspace on `dev`'s stream; the
/// buffer stays locked until `f` has enqueued its work.
fn with_workspace<R>(
    dev: &CudaDevice,
    stream: &CudaStream,
    bytes: usize,
    f: impl FnOnce(u64, usize) -> R,
) -> Result<R> {
    if bytes == 0 {
        return Ok(f(0, 0));
    }
    let mut map = workspaces()
        .lock()
        .map_err(|_| candle_core::Error::Msg("cudnn: workspace lock poisoned".into()))?;
    let key = dev.id();
    if map.get(&key).is_none_or(|w| w.len() < bytes) {
        // The old buffer (if any) is freed in stream order after its last use.
        map.remove(&key);
        // SAFETY: workspace contents are scratch for cuDNN; nothing reads them uninitialised.
        let ws = unsafe { dev.alloc::<u8>(bytes.next_multiple_of(WORKSPACE_STEP))? };
        map.insert(key, ws);
    }
    let Some(ws) = map.get_mut(&key) else {
        candle_core::bail!("cudnn: workspace vanished")
    };
    let len = ws.len();
    let (ptr, _sync) = ws.device_ptr_mut(stream);
    Ok(f(ptr, len))
}

/// Poisons (tests) an output buffer in stream order.
fn maybe_poison(ptr: u64, bytes: usize, stream: &CudaStream) -> Result<()> {
    if POISON.load(Ordering::Relaxed) {
        // SAFETY: `ptr` is the start of a live allocation of at least `bytes` bytes on this context.
        unsafe { result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }.map_err(candle_core::Error::wrap)?;
    }
    Ok(())
}

fn contiguous_strides(dims: [usize; 4]) -> [i64; 4] {
    let [_, d1, d2, d3] = dims.map(|d| d as i64);
    [d1 * d2 * d3, d2 * d3, d3, 1]
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

/// The largest head dim cuDNN's fused attention takes on the GPUs we target.
pub const SDPA_MAX_HEAD_DIM: usize = 256;

/// cuDNN fused attention: `q [B, H, Sq, D]`, `k, v [B, H, Skv, D]` in bf16 or f16 on a CUDA device.
/// Returns `[B, H, Sq, D]`, or `None` when cuDNN cannot run it (the caller falls back).
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: SdpaMask<'_>, scale: f64) -> Result<Option<Tensor>> {
    let dtype = q.dtype();
    if !q.device().is_cuda()
        || !matches!(dtype, DType::BF16 | DType::F16)
        || k.dtype() != dtype
        || v.dtype() != dtype
        || !available(Op::Sdpa)
    {
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
    if b * h * sq * skv * d == 0 || d % 8 != 0 || d > SDPA_MAX_HEAD_DIM || scale.is_nan() || scale <= 0.0 {
        return Ok(None);
    }
    if matches!(mask, SdpaMask::Causal) && sq != skv {
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
    let shape_note = format!("B{b} H{h} Sq{sq} Skv{skv} D{d} {dtype:?} mask {}", desc.mask);
    let mut err = vec![0 as c_char; ERR_LEN];
    let mut ws_bytes = 0i64;
    let mut built = 0i32;
    let started = std::time::Instant::now();
    // SAFETY: desc and out pointers are live; the error buffer has ERR_LEN bytes.
    let code = unsafe {
        qe_sdpa_prepare(
            info.ordinal,
            &desc,
            &mut ws_bytes,
            &mut built,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    if code != QE_OK {
        not_taken(Op::Sdpa, code, &shape_note, &err_string(&err));
        return Ok(None);
    }
    if built != 0 {
        tracing::debug!(
            "cuDNN SDPA plan for {shape_note}: {}, workspace {ws_bytes} B, built in {:.1?}",
            err_string(&err),
            started.elapsed()
        );
    }

    let n = b * h * sq * d;
    let mut out = alloc_out(&dev, dtype, n)?;
    let stream = &info.stream;
    let code = {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (q_ptr, _q_sync) = read_ptr(cuda_storage(&qs)?, ql, stream)?;
        let (k_ptr, _k_sync) = read_ptr(cuda_storage(&ks)?, kl, stream)?;
        let (v_ptr, _v_sync) = read_ptr(cuda_storage(&vs)?, vl, stream)?;
        let bias_guard = bias.as_ref().map(|t| t.storage_and_layout());
        let (bias_ptr, _bias_sync) = match &bias_guard {
            Some((s, l)) => {
                let (p, g) = read_ptr(cuda_storage(s)?, l, stream)?;
                (p, Some(g))
            }
            None => (0, None),
        };
        let (o_ptr, _o_sync, o_bytes) = write_ptr(&mut out, stream)?;
        for p in [q_ptr, k_ptr, v_ptr, o_ptr] {
            if p % ALIGN != 0 {
                candle_core::bail!("sdpa: pointer {p:#x} is not {ALIGN}-byte aligned");
            }
        }
        if bias.is_some() && bias_ptr % ALIGN != 0 {
            candle_core::bail!("sdpa: bias pointer {bias_ptr:#x} is not {ALIGN}-byte aligned");
        }
        maybe_poison(o_ptr, o_bytes, stream)?;
        with_workspace(&dev, stream, ws_bytes.max(0) as usize, |ws, ws_len| {
            // SAFETY: every pointer addresses a live device buffer of the size the descriptor implies
            // (shapes checked above, contiguous, aligned); the stream is candle's stream of this device,
            // whose context is current; the error buffer has ERR_LEN bytes.
            unsafe {
                qe_sdpa_execute(
                    info.ordinal,
                    stream.cu_stream() as *mut c_void,
                    &desc,
                    q_ptr as *const c_void,
                    k_ptr as *const c_void,
                    v_ptr as *const c_void,
                    bias_ptr as *const c_void,
                    o_ptr as *mut c_void,
                    ws as *mut c_void,
                    ws_len as i64,
                    err.as_mut_ptr(),
                    ERR_LEN,
                )
            }
        })?
    };
    if code != QE_OK {
        SDPA_BROKEN.store(true, Ordering::Relaxed);
        not_taken(
            Op::Sdpa,
            code,
            &shape_note,
            &format!("execution failed: {}", err_string(&err)),
        );
        return Ok(None);
    }
    Ok(Some(Tensor::from_storage(
        Storage::Cuda(out),
        Shape::from((b, h, sq, d)),
        BackpropOp::none(),
        false,
    )))
}

/// Logs why cuDNN did not take a call (once per op and cause kind).
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

/// cuDNN 2-D cross-correlation of NCHW `x [N, C, H, W]` with `w [K, C, R, S]` (one group, no dilation),
/// symmetric `padding` and `stride`, plus `bias [K]`. bf16, f16 or f32 (f32 keeps f32 math: no TF32).
/// Returns `[N, K, OH, OW]` in the dtype of `x`, or `None` when cuDNN cannot run it.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize, stride: usize) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let Some(dtype_code) = dtype_code(dtype) else {
        return Ok(None);
    };
    if !x.device().is_cuda() || w.dtype() != dtype || !available(Op::Conv) {
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
    let shape_note = format!(
        "x {:?} w {:?} pad {padding} stride {stride} {dtype:?}",
        x.dims(),
        w.dims()
    );
    let mut err = vec![0 as c_char; ERR_LEN];
    let mut ws_bytes = 0i64;
    let mut fused = 0i32;
    let mut built = 0i32;
    let started = std::time::Instant::now();
    // SAFETY: desc and out pointers are live; the error buffer has ERR_LEN bytes.
    let code = unsafe {
        qe_conv_prepare(
            info.ordinal,
            &desc,
            &mut ws_bytes,
            &mut fused,
            &mut built,
            err.as_mut_ptr(),
            ERR_LEN,
        )
    };
    if code != QE_OK {
        not_taken(Op::Conv, code, &shape_note, &err_string(&err));
        return Ok(None);
    }
    if built != 0 {
        tracing::debug!(
            "cuDNN conv plan for {shape_note}: {}, workspace {ws_bytes} B, built in {:.1?}",
            err_string(&err),
            started.elapsed()
        );
    }

    let mut out = alloc_out(&dev, dtype, n * k * out_h * out_w)?;
    let stream = &info.stream;
    let code = {
        let (xs, xl) = x.storage_and_layout();
        let (ws_, wl) = w.storage_and_layout();
        let (x_ptr, _x_sync) = read_ptr(cuda_storage(&xs)?, xl, stream)?;
        let (w_ptr, _w_sync) = read_ptr(cuda_storage(&ws_)?, wl, stream)?;
        let bias_guard = bias.as_ref().filter(|_| fused != 0).map(|t| t.storage_and_layout());
        let (bias_ptr, _bias_sync) = match &bias_guard {
            Some((st, l)) => {
                let (p, g) = read_ptr(cuda_storage(st)?, l, stream)?;
                (p, Some(g))
            }
            None => (0, None),
        };
        let (y_ptr, _y_sync, y_bytes) = write_ptr(&mut out, stream)?;
        for p in [x_ptr, w_ptr, y_ptr] {
            if p % ALIGN != 0 {
                candle_core::bail!("conv2d: pointer {p:#x} is not {ALIGN}-byte aligned");
            }
        }
        if bias_guard.is_some() && bias_ptr % ALIGN != 0 {
            candle_core::bail!("conv2d: bias pointer {bias_ptr:#x} is not {ALIGN}-byte aligned");
        }
        maybe_poison(y_ptr, y_bytes, stream)?;
        with_workspace(&dev, stream, ws_bytes.max(0) as usize, |ws, ws_len| {
            // SAFETY: as in `sdpa`: live, aligned, contiguous buffers of the described sizes on candle's
            // stream of this device; the error buffer has ERR_LEN bytes.
            unsafe {
                qe_conv_execute(
                    info.ordinal,
                    stream.cu_stream() as *mut c_void,
                    &desc,
                    x_ptr as *const c_void,
                    w_ptr as *const c_void,
                    bias_ptr as *const c_void,
                    y_ptr as *mut c_void,
                    ws as *mut c_void,
                    ws_len as i64,
                    err.as_mut_ptr(),
                    ERR_LEN,
                )
            }
        })?
    };
    if code != QE_OK {
        CONV_BROKEN.store(true, Ordering::Relaxed);
        not_taken(
            Op::Conv,
            code,
            &shape_note,
            &format!("execution failed: {}", err_string(&err)),
        );
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

/// Whether cuDNN is switched on for attention (environment or [`set_enabled`]); does not load it.
pub fn sdpa_switched_on() -> bool {
    op_enabled(Op::Sdpa)
}

/// Whether cuDNN is switched on for convolutions; does not load it.
pub fn conv_switched_on() -> bool {
    op_enabled(Op::Conv)
}
