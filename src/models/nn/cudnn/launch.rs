//! Running a prepared cuDNN plan on candle tensors: the device's stream and context, device pointers
//! taken through cudarc (so candle's stream waits for earlier writes and records this access), the
//! output buffer, and the per-device workspace.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use candle_core::cuda::{CudaStorage, CudaStorageSlice, DeviceId};
use candle_core::{CudaDevice, DType, Layout, Result, Storage, Tensor};
use half::{bf16, f16};

use super::ffi::QE_OK;

/// Pointer alignment the plans are built for (the frontend's default).
pub const ALIGN: u64 = 16;
/// Workspace growth step, so that a slightly larger plan does not reallocate.
const WORKSPACE_STEP: usize = 1 << 20;

/// Tests: fill outputs with NaN bytes before cuDNN writes them.
pub static POISON: AtomicBool = AtomicBool::new(false);

/// What cuDNN needs from a candle device, with the device's context made current on this thread.
pub struct DeviceInfo {
    pub ordinal: c_int,
    /// Compute capability, major × 10 + minor.
    pub sm: i64,
    pub stream: Arc<CudaStream>,
}

pub fn device_info(dev: &CudaDevice) -> Result<DeviceInfo> {
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

/// The shim's dtype code.
pub fn dtype_code(dt: DType) -> Option<i64> {
    match dt {
        DType::BF16 => Some(0),
        DType::F16 => Some(1),
        DType::F32 => Some(2),
        _ => None,
    }
}

/// Contiguous, with its first element 16-byte aligned (copies when needed).
pub fn aligned_contiguous(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    let misaligned = {
        let (_, l) = t.storage_and_layout();
        (l.start_offset() * t.dtype().size_in_bytes()) as u64 % ALIGN != 0
    };
    if misaligned {
        t.force_contiguous()
    } else {
        Ok(t)
    }
}

/// Uninitialised output storage of `n` elements (the plan writes all of them).
pub fn alloc_out(dev: &CudaDevice, dtype: DType, n: usize) -> Result<CudaStorage> {
    // SAFETY (all arms): the buffer is fully written by the cuDNN plan before anything reads it.
    Ok(match dtype {
        DType::BF16 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<bf16>(n)? }, dev.clone()),
        DType::F16 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f16>(n)? }, dev.clone()),
        DType::F32 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<f32>(n)? }, dev.clone()),
        _ => candle_core::bail!("cudnn: unsupported output dtype {dtype:?}"),
    })
}

fn cuda_storage(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(cs) => Ok(cs),
        _ => candle_core::bail!("cudnn: tensor is not on a CUDA device"),
    }
}

/// Read pointer (with the layout's start offset) of a contiguous bf16, f16 or f32 CUDA tensor.
fn read_ptr<'a>(cs: &'a CudaStorage, l: &Layout, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
    let (base, sync, size) = match &cs.slice {
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
    Ok((base + (l.start_offset() * size) as u64, sync))
}

/// Write pointer and byte size of an output storage.
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

/// One workspace buffer per candle device, grown on demand.
fn workspaces() -> &'static Mutex<HashMap<DeviceId, CudaSlice<u8>>> {
    static WS: OnceLock<Mutex<HashMap<DeviceId, CudaSlice<u8>>>> = OnceLock::new();
    WS.get_or_init(Default::default)
}

/// Runs `f(workspace_ptr, workspace_bytes)` with at least `bytes` of workspace on `stream`; the buffer
/// stays locked until `f` has enqueued its work.
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
        // SAFETY: the workspace is cuDNN's scratch space; nothing reads it uninitialised.
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

/// How a launch ended (errors of candle itself are the `Err` of [`launch`]).
pub enum Outcome {
    Done,
    /// A pointer (input or output) is not [`ALIGN`]-byte aligned; nothing ran.
    Misaligned(u64),
    /// The shim's code.
    Failed(c_int),
}

/// Takes the device pointers of `inputs` (`None` → null) and of `out` on `stream`, fills `out` with
/// NaN bytes when [`POISON`] is on, and calls `exec(input_ptrs, out_ptr, workspace_ptr, workspace_bytes)`
/// with at least `workspace` bytes. Inputs must be contiguous bf16/f16/f32 CUDA tensors.
pub fn launch(
    dev: &CudaDevice,
    stream: &CudaStream,
    inputs: &[Option<&Tensor>],
    out: &mut CudaStorage,
    workspace: usize,
    exec: impl FnOnce(&[u64], u64, u64, usize) -> c_int,
) -> Result<Outcome> {
    let guards: Vec<_> = inputs.iter().map(|t| t.map(|t| t.storage_and_layout())).collect();
    let mut ptrs = Vec::with_capacity(guards.len());
    let mut syncs = Vec::with_capacity(guards.len());
    for g in &guards {
        match g {
            Some((s, l)) => {
                let (p, sync) = read_ptr(cuda_storage(s)?, l, stream)?;
                ptrs.push(p);
                syncs.push(sync);
            }
            None => ptrs.push(0),
        }
    }
    let (out_ptr, _out_sync, out_bytes) = write_ptr(out, stream)?;
    if let Some(&p) = ptrs.iter().chain([&out_ptr]).find(|&&p| p % ALIGN != 0) {
        return Ok(Outcome::Misaligned(p));
    }
    if POISON.load(Ordering::Relaxed) {
        // SAFETY: `out_ptr` starts a live allocation of `out_bytes` bytes on this context.
        unsafe { result::memset_d8_async(out_ptr, 0xFF, out_bytes, stream.cu_stream()) }
            .map_err(candle_core::Error::wrap)?;
    }
    let code = with_workspace(dev, stream, workspace, |ws, len| exec(&ptrs, out_ptr, ws, len))?;
    // The read/write records (`syncs`, `_out_sync`) drop here, after the work was enqueued.
    drop(syncs);
    Ok(if code == QE_OK {
        Outcome::Done
    } else {
        Outcome::Failed(code)
    })
}
