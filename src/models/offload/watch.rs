//! Peak device memory as the driver sees it: while a watch runs, the transformer's block loop samples
//! the free memory after every block and the minimum is kept (`bench` reports `free before − minimum`).
//! Free memory counts what candle's stream-ordered pool holds, so the peak is the pool's high-water mark
//! at the sampling points, like torch's `max_memory_reserved`.

use std::sync::Mutex;

use candle_core::Device;

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Watch {
    #[cfg(feature = "cuda")]
    ctx: std::sync::Arc<candle_core::cuda::cudarc::driver::CudaContext>,
    min_free: u64,
}

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

fn lock() -> std::sync::MutexGuard<'static, Option<Watch>> {
    WATCH.lock().unwrap_or_else(|p| p.into_inner())
}

/// `(free, total)` device memory from the driver; `None` on the CPU.
pub fn mem_info(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return dev
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(f, t)| (f as u64, t as u64));
    }
    let _ = device;
    None
}

/// Starts watching `device` (replacing any running watch); `false` where the free memory is unknown.
pub fn start(device: &Device) -> bool {
    let Some((free, _)) = mem_info(device) else {
        return false;
    };
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        *lock() = Some(Watch {
            ctx: dev.cuda_stream().context().clone(),
            min_free: free,
        });
        return true;
    }
    let _ = free;
    false
}

/// Notes the free memory now (no-op when no watch runs).
pub fn sample() {
    let mut w = lock();
    let Some(w) = w.as_mut() else {
        return;
    };
    #[cfg(feature = "cuda")]
    if let Ok((free, _)) = w.ctx.mem_get_info() {
        w.min_free = w.min_free.min(free as u64);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = w;
}

/// Ends the watch; the least free memory seen.
pub fn stop() -> Option<u64> {
    sample();
    lock().take().map(|w| w.min_free)
}

/// Waits for `device` and hands the memory its stream-ordered pool keeps after frees back to the driver,
/// so that the free memory read next is what is really free (between `bench` configurations).
pub fn trim(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use candle_core::cuda::cudarc::driver::sys;
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        if stream.synchronize().is_err() || !ctx.has_async_alloc() || ctx.bind_to_thread().is_err() {
            return;
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain driver queries on this context's device; `pool` is written by the first call and
        // used only when it succeeded. Trimming frees only memory no allocation holds.
        unsafe {
            if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::cudaError_enum::CUDA_SUCCESS {
                let _ = sys::cuMemPoolTrimTo(pool, 0);
            }
        }
    }
    let _ = device;
}
