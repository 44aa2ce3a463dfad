//! [`StreamedBlocks`]: the ring of device slots and the copy-ahead schedule.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::host::{storage_bytes_mut, HostBlock, Place};
use super::OffloadOptions;

/// Builds one block from a `VarBuilder` rooted at the block's weights.
pub type BuildBlock<B> = Box<dyn for<'a> Fn(VarBuilder<'a>) -> Result<B> + Send + Sync>;

/// One tensor of every slot: the largest of that name and dtype over the blocks.
#[derive(Debug, Clone)]
struct SlotTensor {
    dtype: DType,
    elems: usize,
}

/// What the last [`StreamedBlocks::run`] moved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct OffloadStats {
    /// Blocks copied ahead of use.
    pub prefetch: usize,
    /// Device slots (`prefetch + 1`, at most the block count).
    pub slots: usize,
    pub blocks: usize,
    /// Bytes copied to the device in the last run.
    pub bytes: u64,
    /// Time the copies took: the copy stream's busy time on CUDA (events), the copying itself on the CPU.
    pub copy_ms: f64,
    /// Bytes of the blocks in host memory.
    pub host_bytes: u64,
    /// Whether that memory is page-locked.
    pub pinned: bool,
    /// Device bytes of the slots.
    pub slot_bytes: u64,
}

impl OffloadStats {
    /// Host-to-device GB/s of the last run's copies.
    pub fn gb_per_s(&self) -> Option<f64> {
        (self.copy_ms > 0.0).then(|| self.bytes as f64 / 1e6 / self.copy_ms)
    }
}

/// The mutable part: slots, copy engine, statistics.
struct Ring {
    prefetch: usize,
    /// `[slot][slot tensor]`.
    slots: Vec<Vec<Tensor>>,
    #[cfg(feature = "cuda")]
    engine: Option<super::cuda::CopyEngine>,
    /// Bytes copied and CPU copy time of the last run.
    bytes: u64,
    cpu_copy_ms: f64,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The slots are freed in the compute stream's order; no copy may still be writing into them.
        self.synchronize();
    }
}

impl Ring {
    fn synchronize(&self) {
        #[cfg(feature = "cuda")]
        if let Some(e) = &self.engine {
            if let Err(e) = e.synchronize() {
                tracing::warn!("offload: {e}");
            }
        }
    }
}

/// A model's repeated blocks kept in host memory and streamed through device slots (see the module
/// docs of [`crate::models::offload`]).
pub struct StreamedBlocks<B> {
    /// First, so that it is dropped (copies waited for) before the host memory they read.
    ring: Mutex<Ring>,
    blocks: Vec<HostBlock>,
    layout: Vec<SlotTensor>,
    /// `[block][entry]` → index into `layout` (`None` for tensors served from the host).
    index: Vec<Vec<Option<usize>>>,
    build: BuildBlock<B>,
    dtype: DType,
    device: Device,
}

impl<B> Drop for StreamedBlocks<B> {
    fn drop(&mut self) {
        // No copy may still read the host buffers when they are freed.
        lock(&self.ring).synchronize();
    }
}

impl<B> std::fmt::Debug for StreamedBlocks<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedBlocks")
            .field("blocks", &self.blocks.len())
            .field("slot_tensors", &self.layout.len())
            .field("device", &self.device)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> StreamedBlocks<B> {
    /// Streams `blocks` (captured in order) to `device`; `build` makes a block from its weights. The
    /// slots are allocated at the first [`Self::run`].
    pub fn new(
        blocks: Vec<HostBlock>,
        build: BuildBlock<B>,
        dtype: DType,
        device: &Device,
        opts: OffloadOptions,
    ) -> Result<Self> {
        if blocks.is_empty() {
            candle_core::bail!("offload: no blocks to stream");
        }
        if !(device.is_cpu() || device.is_cuda()) {
            candle_core::bail!("offload runs on CUDA devices and the CPU, not on {device:?}");
        }
        let mut layout: Vec<SlotTensor> = Vec::new();
        let mut at: HashMap<(String, DType), usize> = HashMap::new();
        let mut index = Vec::with_capacity(blocks.len());
        for b in &blocks {
            let mut idx = Vec::with_capacity(b.entries.len());
            for e in &b.entries {
                if let Place::Host(_) = e.place {
                    idx.push(None);
                    continue;
                }
                let elems = e.shape.elem_count();
                let i = *at.entry((e.name.clone(), e.dtype)).or_insert_with(|| {
                    layout.push(SlotTensor {
                        dtype: e.dtype,
                        elems: 0,
                    });
                    layout.len() - 1
                });
                layout[i].elems = layout[i].elems.max(elems);
                idx.push(Some(i));
            }
            index.push(idx);
        }
        Ok(Self {
            ring: Mutex::new(Ring {
                prefetch: opts.prefetch,
                slots: Vec::new(),
                #[cfg(feature = "cuda")]
                engine: None,
                bytes: 0,
                cpu_copy_ms: 0.0,
            }),
            blocks,
            layout,
            index,
            build,
            dtype,
            device: device.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Bytes of one slot on the device.
    pub fn slot_bytes(&self) -> u64 {
        self.layout
            .iter()
            .map(|t| (t.elems * t.dtype.size_in_bytes()) as u64)
            .sum()
    }

    /// Bytes of all blocks in host memory.
    pub fn host_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.device_bytes() as u64).sum()
    }

    pub fn prefetch(&self) -> usize {
        lock(&self.ring).prefetch
    }

    /// Changes how many blocks are copied ahead; the slots are reallocated at the next run.
    pub fn set_prefetch(&self, prefetch: usize) {
        let mut ring = lock(&self.ring);
        if ring.prefetch != prefetch {
            ring.synchronize();
            ring.slots.clear();
            #[cfg(feature = "cuda")]
            {
                ring.engine = None;
            }
            ring.prefetch = prefetch;
        }
    }

    /// Frees the device slots (they are allocated again by the next run).
    pub fn release_slots(&self) {
        let mut ring = lock(&self.ring);
        ring.synchronize();
        ring.slots.clear();
        #[cfg(feature = "cuda")]
        {
            ring.engine = None;
        }
    }

    /// Runs `f(i, block_i)` for every block in order, each block streamed into a slot ahead of use.
    pub fn run(&self, mut f: impl FnMut(usize, &B) -> Result<()>) -> Result<()> {
        let mut ring = lock(&self.ring);
        let result = self.run_locked(&mut ring, &mut f);
        if result.is_err() {
            // Leave no copy in flight behind a failed run: the next one starts from a quiet ring.
            ring.synchronize();
            if let Err(e) = self.device.synchronize() {
                tracing::warn!("offload: {e}");
            }
        }
        result
    }

    fn run_locked(&self, ring: &mut Ring, f: &mut impl FnMut(usize, &B) -> Result<()>) -> Result<()> {
        self.ensure_slots(ring)?;
        let n = self.blocks.len();
        let k = ring.slots.len();
        ring.bytes = 0;
        ring.cpu_copy_ms = 0.0;
        for b in 0..k {
            self.upload(ring, b)?;
        }
        #[cfg(feature = "cuda")]
        let compute = if self.device.is_cuda() {
            Some(super::cuda::compute_stream(&self.device)?)
        } else {
            None
        };
        for b in 0..n {
            let s = b % k;
            #[cfg(feature = "cuda")]
            if let (Some(e), Some(c)) = (&ring.engine, &compute) {
                e.before_compute(s, c)?;
            }
            let ran = self.build_block(&ring.slots[s], b).and_then(|block| f(b, &block));
            #[cfg(feature = "cuda")]
            if let (Some(e), Some(c)) = (&ring.engine, &compute) {
                e.after_compute(s, c)?;
            }
            ran?;
            if b + k < n {
                self.upload(ring, b + k)?;
            }
        }
        Ok(())
    }

    /// Allocates `min(prefetch + 1, blocks)` slots if the ring has not got them.
    fn ensure_slots(&self, ring: &mut Ring) -> Result<()> {
        let k = (ring.prefetch + 1).min(self.blocks.len());
        if ring.slots.len() == k {
            return Ok(());
        }
        ring.synchronize();
        ring.slots.clear();
        #[cfg(feature = "cuda")]
        {
            ring.engine = None;
        }
        for _ in 0..k {
            let slot = self
                .layout
                .iter()
                .map(|t| Tensor::zeros(t.elems.max(1), t.dtype, &self.device))
                .collect::<Result<Vec<_>>>()?;
            ring.slots.push(slot);
        }
        #[cfg(feature = "cuda")]
        if self.device.is_cuda() {
            ring.engine = Some(super::cuda::CopyEngine::new(&self.device, k, self.blocks.len())?);
        }
        tracing::debug!(
            "offload: {k} slots of {:.2} GB for {} blocks",
            self.slot_bytes() as f64 / 1e9,
            self.blocks.len()
        );
        Ok(())
    }

    /// Copies block `b` into its slot.
    fn upload(&self, ring: &mut Ring, b: usize) -> Result<()> {
        let k = ring.slots.len();
        let s = b % k;
        let host = &self.blocks[b];
        let bytes = host.buf.bytes()?;
        let t0 = Instant::now();
        #[cfg(feature = "cuda")]
        if let Some(e) = &ring.engine {
            e.begin_copy(s, b)?;
        }
        for (e, idx) in host.entries.iter().zip(&self.index[b]) {
            if let (Place::Device { offset, bytes: len }, Some(i)) = (&e.place, idx) {
                let op = Upload {
                    src: &bytes[*offset..offset + len],
                    #[cfg(feature = "cuda")]
                    engine: ring.engine.as_ref(),
                };
                ring.slots[s][*i].inplace_op1(&op)?;
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(e) = &ring.engine {
            e.end_copy(s, b)?;
        }
        ring.cpu_copy_ms += t0.elapsed().as_secs_f64() * 1e3;
        ring.bytes += host.device_bytes() as u64;
        Ok(())
    }

    /// Builds block `b` from the tensors of `slot` (views, no copies).
    fn build_block(&self, slot: &[Tensor], b: usize) -> Result<B> {
        let host = &self.blocks[b];
        let mut map = HashMap::with_capacity(host.entries.len());
        for (e, idx) in host.entries.iter().zip(&self.index[b]) {
            let t = match (&e.place, idx) {
                (Place::Device { .. }, Some(i)) => {
                    slot[*i].narrow(0, 0, e.shape.elem_count())?.reshape(e.shape.clone())?
                }
                (Place::Host(t), _) => t.clone(),
                (Place::Device { .. }, None) => candle_core::bail!("offload: `{}` has no slot", e.name),
            };
            map.insert(e.name.clone(), t);
        }
        let vb = VarBuilder::from_backend(Box::new(Replay { tensors: map }), self.dtype, self.device.clone());
        (self.build)(vb)
    }

    /// What the last run copied; on CUDA this waits for its copies.
    pub fn stats(&self) -> Result<OffloadStats> {
        let ring = lock(&self.ring);
        #[allow(unused_mut)]
        let mut copy_ms = ring.cpu_copy_ms;
        #[cfg(feature = "cuda")]
        if let Some(e) = &ring.engine {
            copy_ms = if ring.bytes > 0 {
                e.copy_ms(0..self.blocks.len())?
            } else {
                0.0
            };
        }
        Ok(OffloadStats {
            prefetch: ring.prefetch,
            slots: ring.slots.len(),
            blocks: self.blocks.len(),
            bytes: ring.bytes,
            copy_ms,
            host_bytes: self.host_bytes(),
            pinned: self.blocks.iter().all(|b| b.is_pinned()),
            slot_bytes: self.slot_bytes() * ring.slots.len() as u64,
        })
    }
}

/// Copies host bytes into a slot tensor, in place.
struct Upload<'a> {
    src: &'a [u8],
    #[cfg(feature = "cuda")]
    engine: Option<&'a super::cuda::CopyEngine>,
}

impl InplaceOp1 for Upload<'_> {
    fn name(&self) -> &'static str {
        "offload-upload"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let start = layout.start_offset() * storage.dtype().size_in_bytes();
        let dst = storage_bytes_mut(storage)?;
        let end = start + self.src.len();
        if end > dst.len() {
            candle_core::bail!("offload: {} bytes overflow a {}-byte slot", self.src.len(), dst.len());
        }
        dst[start..end].copy_from_slice(self.src);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::cuda::CudaStorage, layout: &Layout) -> Result<()> {
        let Some(engine) = self.engine else {
            candle_core::bail!("offload: no copy stream for a CUDA slot");
        };
        let start = layout.start_offset() * storage.dtype().size_in_bytes();
        engine.upload(storage, start, self.src)
    }
}

/// Serves the tensors of one block, as captured.
struct Replay {
    tensors: HashMap<String, Tensor>,
}

impl Replay {
    fn tensor(&self, name: &str, dtype: DType) -> Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            candle_core::bail!("offload: the block asks for `{name}`, which it did not read when captured");
        };
        t.to_dtype(dtype)
    }
}

impl SimpleBackend for Replay {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, _: &Device) -> Result<Tensor> {
        let t = self.tensor(name, dtype)?;
        if t.shape() != &s {
            candle_core::bail!("offload: `{name}` is {:?}, the block expects {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> Result<Tensor> {
        self.tensor(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
