//! Launchers of `kernels/fused.cu` (build.rs compiles it to PTX). Each returns `Ok(None)` when its
//! inputs are not what the kernel takes (not bf16 on CUDA, other ranks or sizes), and the caller then
//! runs the unfused chain; real failures (a launch error) are errors.
//!
//! Pointers are passed as raw device addresses of the tensors' first elements: every tensor involved
//! is borrowed (or owned here) until the launch is queued, and candle frees device memory in stream
//! order, so the kernel always reads live memory. Outputs are fresh allocations written in full.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Result, Shape, Storage, Tensor};
use half::bf16;

use super::{count_launch, HeadsPart, PerToken, ShiftScale};

pub(super) mod image;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "qwen_edit_fused";

/// Threads per block of the row kernels (at most).
const MAX_THREADS: usize = 256;
/// Warps per block of `qk_norm_rope_to_heads` (at most; one head per warp at a time).
const MAX_HEAD_WARPS: usize = 8;
/// Largest head dim of `qk_norm_rope_to_heads_bf16_p1` (64 channels per chunk × 8 chunks).
const MAX_HEAD_DIM: usize = 512;
/// Largest head dim of `qk_norm_rope_to_heads_bf16_p2` (128 channels, one chunk).
const MAX_HEAD_DIM_P2: usize = 128;
/// Every size and count passed as a kernel `int` (and a grid's x) stays below this.
const MAX_INT: usize = i32::MAX as usize;

fn is_bf16_cuda(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::BF16
}

/// Device address of the first element of `t` (element type `T`).
fn addr<T: CudaDType>(t: &Tensor) -> Result<u64> {
    let (guard, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*guard else {
        candle_core::bail!("fused kernel: a tensor is not on the GPU");
    };
    let slice = cs.as_cuda_slice::<T>()?;
    let stream = cs.device().cuda_stream();
    let (base, _read) = slice.device_ptr(&stream);
    Ok(base + (layout.start_offset() * std::mem::size_of::<T>()) as u64)
}

fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    Ok(t.device().as_cuda_device()?.clone())
}

/// Uninitialised output; every launcher's kernel writes all `n` elements.
fn alloc(dev: &CudaDevice, n: usize) -> Result<CudaSlice<bf16>> {
    // SAFETY: the memory is fully written by the kernels before any read (see each launcher).
    unsafe { dev.alloc::<bf16>(n) }
}

fn wrap(out: CudaSlice<bf16>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// Block size for a row of `nvec` vectors: a multiple of 32, at most [`MAX_THREADS`], with the
/// vectors spread evenly over the loop iterations.
fn row_threads(nvec: usize) -> u32 {
    let iters = nvec.div_ceil(MAX_THREADS).max(1);
    (nvec.div_ceil(iters).div_ceil(32) * 32).clamp(32, MAX_THREADS) as u32
}

fn row_config(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether 16-byte (8 × bf16) accesses are valid: every address 16-byte aligned and every row length
/// or stride (in elements) a multiple of 8.
fn vec8_ok(addrs: &[u64], lens: &[usize]) -> bool {
    addrs.iter().all(|a| a % 16 == 0) && lens.iter().all(|l| l % 8 == 0)
}

/// Parameter rows `[Bt, d]` for a batch of `b` (Bt = b, or 1 for all) as a tensor with unit-stride rows
/// (a view when possible, e.g. a chunk of a modulation output) and the row stride to pass: 0 when one
/// row serves the whole batch. `None` when `t` does not fit.
fn param_rows(t: &Tensor, b: usize, d: usize) -> Result<Option<(Tensor, usize)>> {
    let Ok((bt, dt)) = t.dims2() else {
        return Ok(None);
    };
    if dt != d || (bt != b && bt != 1) || !is_bf16_cuda(t) {
        return Ok(None);
    }
    let t = if t.stride()[1] == 1 { t.clone() } else { t.contiguous()? };
    let stride = if bt == 1 { 0 } else { t.stride()[0] };
    if stride > MAX_INT {
        return Ok(None);
    }
    Ok(Some((t, stride)))
}

/// A `[n]` bf16 vector (bias, norm weight) on CUDA, contiguous; `None` when it does not fit.
fn vector(t: &Tensor, n: usize) -> Result<Option<Tensor>> {
    if !is_bf16_cuda(t) || t.dims1().ok() != Some(n) {
        return Ok(None);
    }
    Ok(Some(t.contiguous()?))
}

/// `(head, tail, n_split)` for the kernels: tokens `s < n_split` take `head`.
fn split_params<T: Copy>(m: PerToken<T>, s: usize) -> (T, T, usize) {
    match m {
        PerToken::All(p) => (p, p, s),
        PerToken::Split { n, head, tail } => (head, tail, n.min(s)),
    }
}

/// `[B, S, D]` of a bf16 CUDA tensor with `B·S` rows and `D` both within kernel ints; else `None`.
fn rows3(x: &Tensor) -> Option<(usize, usize, usize)> {
    let (b, s, d) = x.dims3().ok()?;
    let ok = is_bf16_cuda(x) && b * s > 0 && d > 0 && b * s <= MAX_INT && d <= MAX_INT;
    ok.then_some((b, s, d))
}

pub(super) fn layernorm_modulate(x: &Tensor, eps: f64, m: PerToken<ShiftScale<'_>>) -> Result<Option<Tensor>> {
    let Some((b, s, d)) = rows3(x) else {
        return Ok(None);
    };
    let (head, tail, n_split) = split_params(m, s);
    let mut params = Vec::with_capacity(4);
    for t in [head.shift, head.scale, tail.shift, tail.scale] {
        match param_rows(t, b, d)? {
            Some(p) => params.push(p),
            None => return Ok(None),
        }
    }
    let x = x.contiguous()?;
    let dev = cuda_device(&x)?;
    let xa = addr::<bf16>(&x)?;
    let pa = params
        .iter()
        .map(|(t, _)| addr::<bf16>(t))
        .collect::<Result<Vec<_>>>()?;
    let strides: Vec<usize> = params.iter().map(|&(_, st)| st).collect();
    let mut addrs = vec![xa];
    addrs.extend(&pa);
    let mut lens = vec![d];
    lens.extend(&strides);
    let vec = if vec8_ok(&addrs, &lens) { 8 } else { 1 };
    let mut out = alloc(&dev, b * s * d)?;
    let func = dev.get_or_load_custom_func(&format!("layernorm_modulate_bf16_v{vec}"), MODULE, PTX)?;
    let [st0, st1, st2, st3] = [strides[0], strides[1], strides[2], strides[3]].map(|v| v as i64);
    let (s_i, d_i, n_i, eps_f) = (s as i32, d as i32, n_split as i32, eps as f32);
    let mut l = func.builder();
    l.arg(&xa).arg(&mut out);
    for a in &pa {
        l.arg(a);
    }
    l.arg(&st0).arg(&st1).arg(&st2).arg(&st3);
    l.arg(&s_i).arg(&d_i).arg(&n_i).arg(&eps_f);
    // SAFETY: arguments follow the kernel's signature; one block per row of `x` (b·s rows of d),
    // parameter rows b′ < Bt of d elements at the given strides; `out` has b·s·d elements.
    unsafe { l.launch(row_config(b * s, row_threads(d / vec))) }.w()?;
    count_launch();
    Ok(Some(wrap(out, &dev, (b, s, d))))
}

pub(super) fn gate_residual(
    x: &Tensor,
    y: &Tensor,
    bias: Option<&Tensor>,
    gate: PerToken<&Tensor>,
) -> Result<Option<Tensor>> {
    let Some((b, s, d)) = rows3(x) else {
        return Ok(None);
    };
    if y.dims() != x.dims() || !is_bf16_cuda(y) {
        return Ok(None);
    }
    let bias = match bias {
        Some(t) => match vector(t, d)? {
            Some(t) => Some(t),
            None => return Ok(None),
        },
        None => None,
    };
    let (head, tail, n_split) = split_params(gate, s);
    let (Some((ga, sa)), Some((gb, sb))) = (param_rows(head, b, d)?, param_rows(tail, b, d)?) else {
        return Ok(None);
    };
    let x = x.contiguous()?;
    let y = y.contiguous()?;
    let dev = cuda_device(&x)?;
    let (xa, ya) = (addr::<bf16>(&x)?, addr::<bf16>(&y)?);
    let (gaa, gba) = (addr::<bf16>(&ga)?, addr::<bf16>(&gb)?);
    let ba = bias.as_ref().map(addr::<bf16>).transpose()?;
    let mut addrs = vec![xa, ya, gaa, gba];
    addrs.extend(ba);
    let vec = if vec8_ok(&addrs, &[d, sa, sb]) { 8 } else { 1 };
    let mut out = alloc(&dev, b * s * d)?;
    let func = dev.get_or_load_custom_func(&format!("gate_residual_bf16_v{vec}"), MODULE, PTX)?;
    let null = 0u64;
    let (sa, sb) = (sa as i64, sb as i64);
    let (s_i, d_i, n_i) = (s as i32, d as i32, n_split as i32);
    let mut l = func.builder();
    l.arg(&xa).arg(&ya);
    match &ba {
        Some(a) => l.arg(a),
        None => l.arg(&null),
    };
    l.arg(&gaa).arg(&gba).arg(&sa).arg(&sb).arg(&mut out);
    l.arg(&s_i).arg(&d_i).arg(&n_i);
    // SAFETY: arguments follow the kernel's signature; x, y and out hold b·s·d elements, the bias d,
    // gate rows b′ < Bt of d elements at the given strides.
    unsafe { l.launch(row_config(b * s, row_threads(d / vec))) }.w()?;
    count_launch();
    Ok(Some(wrap(out, &dev, (b, s, d))))
}

pub(super) fn bias_gelu_tanh(x: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Some(&n) = x.dims().last() else {
        return Ok(None);
    };
    let total = x.elem_count();
    if !is_bf16_cuda(x) || n == 0 || total == 0 || n > MAX_INT || total / n > MAX_INT {
        return Ok(None);
    }
    let rows = total / n;
    let bias = match bias {
        Some(t) => match vector(t, n)? {
            Some(t) => Some(t),
            None => return Ok(None),
        },
        None => None,
    };
    let x = x.contiguous()?;
    let dev = cuda_device(&x)?;
    let xa = addr::<bf16>(&x)?;
    let ba = bias.as_ref().map(addr::<bf16>).transpose()?;
    let mut addrs = vec![xa];
    addrs.extend(ba);
    let vec = if vec8_ok(&addrs, &[n]) { 8 } else { 1 };
    let mut out = alloc(&dev, total)?;
    let func = dev.get_or_load_custom_func(&format!("bias_gelu_tanh_bf16_v{vec}"), MODULE, PTX)?;
    let null = 0u64;
    let n_i = n as i32;
    let mut l = func.builder();
    l.arg(&xa);
    match &ba {
        Some(a) => l.arg(a),
        None => l.arg(&null),
    };
    l.arg(&mut out).arg(&n_i);
    // SAFETY: arguments follow the kernel's signature; one block per row of n elements, rows·n = total.
    unsafe { l.launch(row_config(rows, row_threads(n / vec))) }.w()?;
    count_launch();
    Ok(Some(wrap(out, &dev, x.shape().clone())))
}

pub(super) fn heads_to_rows(o: &Tensor, s_first: usize) -> Result<Option<(Tensor, Tensor)>> {
    let Ok((b, h, s, d)) = o.dims4() else {
        return Ok(None);
    };
    let hd = h * d;
    if !is_bf16_cuda(o) || b == 0 || s_first == 0 || s_first >= s || b * s > MAX_INT || hd == 0 || hd > MAX_INT {
        return Ok(None);
    }
    let o = o.contiguous()?;
    let dev = cuda_device(&o)?;
    let oa = addr::<bf16>(&o)?;
    let vec = if vec8_ok(&[oa], &[d]) { 8 } else { 1 };
    let mut first = alloc(&dev, b * s_first * hd)?;
    let mut rest = alloc(&dev, b * (s - s_first) * hd)?;
    let func = dev.get_or_load_custom_func(&format!("heads_to_rows_bf16_v{vec}"), MODULE, PTX)?;
    let (h_i, s_i, d_i, f_i) = (h as i32, s as i32, d as i32, s_first as i32);
    let mut l = func.builder();
    l.arg(&oa).arg(&mut first).arg(&mut rest);
    l.arg(&h_i).arg(&s_i).arg(&d_i).arg(&f_i);
    // SAFETY: arguments follow the kernel's signature; one block per (b, token) of the b·s rows, each
    // copying h·d elements into `first` (tokens < s_first) or `rest`, sized for exactly those rows.
    unsafe { l.launch(row_config(b * s, row_threads(hd / vec))) }.w()?;
    count_launch();
    Ok(Some((
        wrap(first, &dev, (b, s_first, hd)),
        wrap(rest, &dev, (b, s - s_first, hd)),
    )))
}

/// One part of [`joint_heads`], checked and made contiguous.
struct Part {
    x: Tensor,
    s: usize,
    bias: Option<Tensor>,
    norm: Option<Tensor>,
    rope: Option<(Tensor, Tensor)>,
}

impl Part {
    fn new(p: &HeadsPart<'_>, b: usize, h: usize, d: usize) -> Result<Option<Self>> {
        let Some((pb, s, hd)) = p.x.dims3().ok() else {
            return Ok(None);
        };
        if pb != b || hd != h * d || !is_bf16_cuda(p.x) || b * s > MAX_INT {
            return Ok(None);
        }
        let mut part = Part {
            x: p.x.contiguous()?,
            s,
            bias: None,
            norm: None,
            rope: None,
        };
        if let Some(t) = p.bias {
            match vector(t, hd)? {
                Some(t) => part.bias = Some(t),
                None => return Ok(None),
            }
        }
        if let Some(t) = p.norm {
            match vector(t, d)? {
                Some(t) => part.norm = Some(t),
                None => return Ok(None),
            }
        }
        if let Some((cos, sin)) = p.rope {
            let fits =
                |t: &Tensor| t.device().is_cuda() && t.dtype() == DType::F32 && t.dims2().ok() == Some((s, d / 2));
            if !fits(cos) || !fits(sin) {
                return Ok(None);
            }
            part.rope = Some((cos.contiguous()?, sin.contiguous()?));
        }
        Ok(Some(part))
    }
}

pub(super) fn joint_heads(parts: &[HeadsPart<'_>], h: usize, d: usize, eps: f64) -> Result<Option<Tensor>> {
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let Ok(b) = first.x.dim(0) else {
        return Ok(None);
    };
    if b == 0 || d == 0 || d % 2 != 0 || d > MAX_HEAD_DIM || h == 0 || h * d > MAX_INT {
        return Ok(None);
    }
    let mut checked = Vec::with_capacity(parts.len());
    for p in parts {
        match Part::new(p, b, h, d)? {
            Some(p) => checked.push(p),
            None => return Ok(None),
        }
    }
    let s_total: usize = checked.iter().map(|p| p.s).sum();
    if s_total == 0 || s_total > MAX_INT {
        return Ok(None);
    }
    let xs = checked.iter().map(|p| addr::<bf16>(&p.x)).collect::<Result<Vec<_>>>()?;
    // p2: 4 channels per lane with 8-byte accesses (x rows and `out` offsets are multiples of d).
    let p2 = d % 4 == 0 && d <= MAX_HEAD_DIM_P2 && xs.iter().all(|a| a % 8 == 0);
    let dev = cuda_device(first.x)?;
    let mut out = alloc(&dev, b * h * s_total * d)?;
    let func = dev.get_or_load_custom_func(
        if p2 {
            "qk_norm_rope_to_heads_bf16_p2"
        } else {
            "qk_norm_rope_to_heads_bf16_p1"
        },
        MODULE,
        PTX,
    )?;
    let threads = (32 * h.min(MAX_HEAD_WARPS)) as u32;
    let null = 0u64;
    let (h_i, d_i, st_i, eps_f) = (h as i32, d as i32, s_total as i32, eps as f32);
    let mut off = 0usize;
    for (p, xa) in checked.iter().zip(&xs) {
        if p.s == 0 {
            continue;
        }
        let ba = p.bias.as_ref().map(addr::<bf16>).transpose()?.unwrap_or(null);
        let wa = p.norm.as_ref().map(addr::<bf16>).transpose()?.unwrap_or(null);
        let (ca, sa) = match &p.rope {
            Some((c, s)) => (addr::<f32>(c)?, addr::<f32>(s)?),
            None => (null, null),
        };
        let (s_i, off_i) = (p.s as i32, off as i32);
        let mut l = func.builder();
        l.arg(xa).arg(&ba).arg(&wa).arg(&ca).arg(&sa).arg(&mut out);
        l.arg(&s_i).arg(&h_i).arg(&d_i).arg(&st_i).arg(&off_i).arg(&eps_f);
        // SAFETY: arguments follow the kernel's signature; one block per (b, token) of this part, each
        // head written to tokens off..off+s of the [b, h, s_total, d] output; the parts tile s_total, so
        // every output element is written once.
        unsafe { l.launch(row_config(b * p.s, threads)) }.w()?;
        count_launch();
        off += p.s;
    }
    Ok(Some(wrap(out, &dev, (b, h, s_total, d))))
}

/// float8 e4m3 casts on the GPU (see [`super::to_dtype`]): e4m3 → bf16 / f32 exactly, f32 → e4m3 rounded to
/// nearest even; other pairs go through f32 with candle's own casts.
pub(super) fn cast_fp8(t: &Tensor, dtype: DType) -> Result<Tensor> {
    use float8::F8E4M3;
    match (t.dtype(), dtype) {
        (DType::F8E4M3, DType::BF16) => cast::<F8E4M3, bf16>(t, "cast_fp8e4m3_to_bf16"),
        (DType::F8E4M3, DType::F32) => cast::<F8E4M3, f32>(t, "cast_fp8e4m3_to_f32"),
        (DType::F8E4M3, _) => cast_fp8(t, DType::F32)?.to_dtype(dtype),
        (DType::F32, DType::F8E4M3) => cast::<f32, F8E4M3>(t, "cast_f32_to_fp8e4m3"),
        (_, DType::F8E4M3) => cast_fp8(&t.to_dtype(DType::F32)?, dtype),
        _ => t.to_dtype(dtype),
    }
}

/// One element-wise cast kernel `name(const S* in, D* out, long long n)` over all of `t`.
fn cast<S: CudaDType, D: CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr>(
    t: &Tensor,
    name: &str,
) -> Result<Tensor> {
    let t = t.contiguous()?;
    let n = t.elem_count();
    let dev = cuda_device(&t)?;
    // SAFETY: every one of the n elements is written by the grid-stride loop below before any read.
    let out = unsafe { dev.alloc::<D>(n.max(1))? };
    if n > 0 {
        let src = addr::<S>(&t)?;
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(65_535 * 8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n_i = n as i64;
        let mut b = func.builder();
        b.arg(&src).arg(&out).arg(&n_i);
        // SAFETY: the kernel reads n elements of `src` (contiguous, live until the launch is queued) and
        // writes n elements of `out`, matching its signature.
        unsafe { b.launch(cfg) }.w()?;
    }
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev));
    Ok(Tensor::from_storage(
        storage,
        t.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}
