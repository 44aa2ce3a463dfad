//! The CUDA side of streaming: page-locked host memory, the copy stream, and the events that order
//! the copies against the compute stream.
//!
//! The copy stream is created with the driver API and wrapped as a borrowed cudarc stream, so cudarc
//! does not switch the context into its multi-stream mode (which would add event bookkeeping to every
//! kernel launch of the whole program). All ordering between the two streams is explicit:
//!
//! - `ready[s]`, recorded on the copy stream after slot `s` was filled; the compute stream waits on it
//!   before the block in slot `s` runs;
//! - `done[s]`, recorded on the compute stream after that block's kernels were enqueued; the copy stream
//!   waits on it before it overwrites slot `s` (an event never recorded counts as complete);
//! - one wait of the copy stream on the compute stream after the slots were allocated and zeroed.

use std::sync::{Arc, Once};

use candle_core::cuda::cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut, PinnedHostSlice,
};
use candle_core::cuda::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{Device, Result};

/// Page-locked host memory of `bytes`, or `None` (with one warning) when the driver refuses it.
pub(super) fn alloc_pinned(device: &Device, bytes: usize) -> Option<PinnedHostSlice<u8>> {
    let Device::Cuda(dev) = device else {
        return None;
    };
    let ctx = dev.cuda_stream().context().clone();
    // SAFETY: the memory starts uninitialised; `HostBlock::pack` writes every byte of it (tensors and
    // the padding between them) before anything reads it.
    match unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) } {
        Ok(p) => Some(p),
        Err(e) => {
            static WARN: Once = Once::new();
            WARN.call_once(|| {
                tracing::warn!(
                    "page-locked host memory refused ({e}); offloaded blocks use ordinary memory (copies will \
                     not overlap with compute)"
                )
            });
            None
        }
    }
}

/// The compute stream of `device` (candle's).
pub(super) fn compute_stream(device: &Device) -> Result<Arc<CudaStream>> {
    match device {
        Device::Cuda(dev) => Ok(dev.cuda_stream()),
        _ => candle_core::bail!("offload: not a CUDA device"),
    }
}

/// The copy stream and the events of one ring of slots.
pub(super) struct CopyEngine {
    ctx: Arc<CudaContext>,
    raw: sys::CUstream,
    copy: Arc<CudaStream>,
    ready: Vec<CudaEvent>,
    done: Vec<CudaEvent>,
    /// `(start, end)` of each block's copy, with timing, for the statistics.
    timing: Vec<(CudaEvent, CudaEvent)>,
}

// SAFETY: a CUstream handle may be used from any thread of the process (driver API guarantee); the other
// fields are Send + Sync already.
unsafe impl Send for CopyEngine {}
unsafe impl Sync for CopyEngine {}

impl CopyEngine {
    /// A copy stream with events for `slots` slots and `blocks` blocks, ordered after everything enqueued
    /// on `device`'s compute stream so far (the slots' allocation and zeroing).
    pub fn new(device: &Device, slots: usize, blocks: usize) -> Result<Self> {
        let compute = compute_stream(device)?;
        let ctx = compute.context().clone();
        ctx.bind_to_thread().w()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking).w()?;
        // SAFETY: `raw` was just created in this context and is destroyed only in `Drop`, after every
        // clone of the wrapper (held by this struct alone) is gone.
        let copy = unsafe { ctx.wrap_borrowed_stream(raw) };
        let event = |timed: bool| {
            ctx.new_event(Some(if timed {
                sys::CUevent_flags::CU_EVENT_DEFAULT
            } else {
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
            }))
            .w()
        };
        let mut engine = Self {
            ctx: ctx.clone(),
            raw,
            copy,
            ready: Vec::with_capacity(slots),
            done: Vec::with_capacity(slots),
            timing: Vec::with_capacity(blocks),
        };
        for _ in 0..slots {
            engine.ready.push(event(false)?);
            engine.done.push(event(false)?);
        }
        for _ in 0..blocks {
            engine.timing.push((event(true)?, event(true)?));
        }
        let allocated = event(false)?;
        allocated.record(&compute).w()?;
        engine.copy.wait(&allocated).w()?;
        Ok(engine)
    }

    /// Before filling `slot` with `block`: wait until the block that used the slot last has run.
    pub fn begin_copy(&self, slot: usize, block: usize) -> Result<()> {
        self.copy.wait(&self.done[slot]).w()?;
        self.timing[block].0.record(&self.copy).w()
    }

    /// After filling `slot` with `block`.
    pub fn end_copy(&self, slot: usize, block: usize) -> Result<()> {
        self.timing[block].1.record(&self.copy).w()?;
        self.ready[slot].record(&self.copy).w()
    }

    /// Before the block in `slot` runs on `compute`.
    pub fn before_compute(&self, slot: usize, compute: &CudaStream) -> Result<()> {
        compute.wait(&self.ready[slot]).w()
    }

    /// After the block in `slot` was enqueued on `compute`.
    pub fn after_compute(&self, slot: usize, compute: &CudaStream) -> Result<()> {
        self.done[slot].record(compute).w()
    }

    /// Enqueues the copy of `src` to byte `offset` of `dst` on the copy stream.
    pub fn upload(&self, dst: &mut CudaStorage, offset: usize, src: &[u8]) -> Result<()> {
        match &mut dst.slice {
            CudaStorageSlice::U8(s)
            | CudaStorageSlice::F6E2M3(s)
            | CudaStorageSlice::F6E3M2(s)
            | CudaStorageSlice::F4(s)
            | CudaStorageSlice::F8E8M0(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::U32(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::I16(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::I32(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::I64(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::BF16(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::F16(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::F32(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::F64(s) => self.copy_into(s, offset, src),
            CudaStorageSlice::F8E4M3(s) => self.copy_into(s, offset, src),
        }
    }

    fn copy_into<T>(&self, dst: &mut CudaSlice<T>, offset: usize, src: &[u8]) -> Result<()> {
        let capacity = dst.num_bytes();
        if offset.checked_add(src.len()).is_none_or(|end| end > capacity) {
            candle_core::bail!(
                "offload: {} bytes at {offset} overflow a {capacity}-byte slot",
                src.len()
            );
        }
        if src.is_empty() {
            return Ok(());
        }
        let (ptr, _record) = dst.device_ptr_mut(&self.copy);
        // SAFETY: `ptr + offset .. + src.len()` lies inside the slot (checked above). The slot is not read
        // before `ready[slot]` (recorded after this copy) is waited on, nor written while a block reads it
        // (`begin_copy` waited on `done[slot]`). `src` is host memory that lives, unchanged, as long as
        // the streamed model, which synchronises this stream before it frees anything.
        unsafe { result::memcpy_htod_async(ptr + offset as u64, src, self.raw) }.w()?;
        Ok(())
    }

    /// Milliseconds the copies of `blocks` took on the copy stream (waits for them).
    pub fn copy_ms(&self, blocks: std::ops::Range<usize>) -> Result<f64> {
        let mut ms = 0f64;
        for (start, end) in &self.timing[blocks] {
            ms += start.elapsed_ms(end).w()? as f64;
        }
        Ok(ms)
    }

    /// Waits for every copy enqueued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.copy.synchronize().w()
    }
}

impl Drop for CopyEngine {
    fn drop(&mut self) {
        if let Err(e) = self.copy.synchronize() {
            tracing::warn!("offload: copy stream failed: {e}");
        }
        // SAFETY: the stream was created in `new`, its work is complete, and the borrowed wrapper never
        // destroys it; nothing uses `raw` after this.
        if let Err(e) = self
            .ctx
            .bind_to_thread()
            .and_then(|_| unsafe { result::stream::destroy(self.raw) })
        {
            tracing::warn!("offload: cannot destroy the copy stream: {e}");
        }
    }
}
