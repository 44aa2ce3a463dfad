//! Streaming offload of a network's repeated blocks: the blocks' weights live in host memory and are
//! copied to the GPU ahead of use, so a model larger than the card runs with a few blocks on it.
//!
//! How it works (the transformer's 60 blocks are the user; see
//! [`crate::models::transformer::QwenImageTransformer2DModel::new_streamed`]):
//!
//! 1. **Capture** ([`Recorder`], [`HostBlock`]): each block is built once through the usual weight
//!    source (safetensors, fp8 quantizer, GGUF, LoRA merge, random weights), with a backend that records
//!    every tensor the block asks for. The recorded tensors (bf16 weights, e4m3 weights and their scales,
//!    raw GGML blocks) are packed into one host buffer per block — page-locked ("pinned") on CUDA when
//!    the driver allows — and the device copy is dropped.
//! 2. **Slots** ([`StreamedBlocks`]): a ring of `prefetch + 1` device slots, each holding one tensor per
//!    recorded name, sized for the largest block, allocated once (no allocation per step).
//! 3. **Streaming**: block `b` is copied into slot `b mod (prefetch + 1)` on a second CUDA stream; the
//!    compute stream waits on the event recorded after that copy, builds the block from the slot's tensors
//!    (cheap: the layers hold views of the slot) and runs it, then records an event that the copy stream
//!    waits on before it overwrites the slot with block `b + prefetch + 1`. With `prefetch` 0 there is
//!    one slot and copies and compute alternate (no overlap: the baseline the overlap is measured against).
//!
//! Dense and fp8 weights are used in place (the layers hold views of the slot). A GGML weight is copied
//! from its slot into a `QTensor` of its own when the block is built (device to device, see
//! [`crate::models::quant::ggml::qtensor_from_device`]): candle's quantized tensors cannot view memory
//! they do not own, so those blocks cost one allocation and one on-device copy per use.
//!
//! On the CPU the same ring runs with synchronous copies, so the tests check the capture, the packing,
//! the slot layout and the schedule against the resident model, bit for bit.
//!
//! Environment: `QWEN_EDIT_OFFLOAD_PINNED=0` keeps the host copies in ordinary (pageable) memory;
//! copies are then staged by the driver and do not overlap with compute.

mod host;
mod stream;
pub mod watch;

#[cfg(feature = "cuda")]
mod cuda;

pub use host::{HostBlock, Recorder, Recording};
pub use stream::{OffloadStats, StreamedBlocks};

/// Blocks copied ahead of the one computing, by default.
pub const DEFAULT_PREFETCH: usize = 2;

/// How the blocks of a streamed model are held and copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadOptions {
    /// Blocks copied ahead of use (0: copy, then compute, no overlap).
    pub prefetch: usize,
    /// Page-locked host memory (where the driver allows); else ordinary memory.
    pub pinned: bool,
}

impl Default for OffloadOptions {
    fn default() -> Self {
        Self {
            prefetch: DEFAULT_PREFETCH,
            pinned: pinned_from_env(),
        }
    }
}

impl OffloadOptions {
    pub fn with_prefetch(prefetch: usize) -> Self {
        Self {
            prefetch,
            ..Default::default()
        }
    }
}

/// `QWEN_EDIT_OFFLOAD_PINNED=0` (or `false`/`off`) turns page-locked host memory off.
fn pinned_from_env() -> bool {
    !matches!(
        std::env::var("QWEN_EDIT_OFFLOAD_PINNED").as_deref(),
        Ok("0") | Ok("false") | Ok("off") | Ok("no")
    )
}
