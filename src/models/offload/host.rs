//! Capturing the tensors a block is built from, and packing them into one host buffer per block.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType, Device, Result, Shape, Storage, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::models::nn::linear::GGML_TYPE;

/// Byte alignment of each tensor in a host buffer.
const ALIGN: usize = 256;

type Log = Arc<Mutex<Option<Vec<(String, Tensor)>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A weight source that notes every tensor it serves while a [`Recording`] is running.
pub struct Recorder {
    inner: Box<dyn SimpleBackend>,
    log: Log,
}

/// Starts and ends the recordings of one [`Recorder`].
#[derive(Clone)]
pub struct Recording {
    log: Log,
}

impl Recorder {
    /// Wraps `inner`; the returned [`Recording`] captures what a block built from it reads.
    pub fn wrap(inner: Box<dyn SimpleBackend>) -> (Box<dyn SimpleBackend>, Recording) {
        let log: Log = Arc::new(Mutex::new(None));
        (
            Box::new(Self {
                inner,
                log: log.clone(),
            }),
            Recording { log },
        )
    }

    fn note(&self, name: &str, t: Result<Tensor>) -> Result<Tensor> {
        let t = t?;
        if let Some(items) = lock(&self.log).as_mut() {
            items.push((name.to_string(), t.clone()));
        }
        Ok(t)
    }
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.note(name, self.inner.get(s, name, h, dtype, dev))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.note(name, self.inner.get_unchecked(name, dtype, dev))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

impl Recording {
    /// Runs `build`, which builds the block whose weights sit under `prefix` from the recorder's
    /// `VarBuilder`, and returns the tensors it read, named relative to `prefix`, in the order read.
    pub fn capture(&self, prefix: &str, build: impl FnOnce() -> Result<()>) -> Result<Vec<(String, Tensor)>> {
        *lock(&self.log) = Some(Vec::new());
        let built = build();
        let items = lock(&self.log).take().unwrap_or_default();
        built?;
        let dotted = format!("{prefix}.");
        let mut out: Vec<(String, Tensor)> = Vec::with_capacity(items.len());
        for (name, t) in items {
            let Some(rel) = name.strip_prefix(&dotted) else {
                candle_core::bail!("block `{prefix}` reads `{name}`, outside its own weights: it cannot be streamed");
            };
            match out.iter().find(|(n, _)| n == rel) {
                Some((_, seen)) if seen.dtype() == t.dtype() && seen.shape() == t.shape() => {}
                Some((_, seen)) => candle_core::bail!(
                    "block `{prefix}` reads `{rel}` twice, as {:?} {:?} and as {:?} {:?}",
                    seen.dtype(),
                    seen.dims(),
                    t.dtype(),
                    t.dims()
                ),
                None => out.push((rel.to_string(), t)),
            }
        }
        if out.is_empty() {
            candle_core::bail!("block `{prefix}` reads no weights");
        }
        Ok(out)
    }
}

/// Where a captured tensor is served from when the block is rebuilt.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// Bytes `offset..offset + bytes` of the block's host buffer, copied into a device slot.
    Device { offset: usize, bytes: usize },
    /// Kept as a host tensor: values the layers read on the host (the GGML type ids).
    Host(Tensor),
}

/// One captured tensor.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    pub place: Place,
}

/// The host memory of one block.
pub(crate) enum HostBuf {
    Pageable(Vec<u8>),
    #[cfg(feature = "cuda")]
    Pinned(candle_core::cuda::cudarc::driver::PinnedHostSlice<u8>),
}

impl HostBuf {
    /// The whole buffer (every byte was written by [`HostBlock::pack`]).
    pub fn bytes(&self) -> Result<&[u8]> {
        match self {
            HostBuf::Pageable(v) => Ok(v),
            #[cfg(feature = "cuda")]
            HostBuf::Pinned(p) => {
                use candle_core::cuda::WrapErr;
                p.as_slice().w()
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            HostBuf::Pageable(v) => v.len(),
            #[cfg(feature = "cuda")]
            HostBuf::Pinned(p) => p.len(),
        }
    }

    fn as_mut_ptr(&mut self) -> Result<*mut u8> {
        match self {
            HostBuf::Pageable(v) => Ok(v.as_mut_ptr()),
            #[cfg(feature = "cuda")]
            HostBuf::Pinned(p) => {
                use candle_core::cuda::WrapErr;
                p.as_mut_ptr().w()
            }
        }
    }

    pub fn is_pinned(&self) -> bool {
        !matches!(self, HostBuf::Pageable(_))
    }
}

/// A block's captured tensors, packed into one host buffer.
pub struct HostBlock {
    pub(crate) entries: Vec<Entry>,
    pub(crate) buf: HostBuf,
}

impl std::fmt::Debug for HostBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBlock")
            .field("tensors", &self.entries.len())
            .field("bytes", &self.device_bytes())
            .field("pinned", &self.buf.is_pinned())
            .finish()
    }
}

/// Whether the layers read the tensor `name` on the host (it is not copied to the device).
fn read_on_host(name: &str) -> bool {
    name.ends_with(GGML_TYPE)
}

impl HostBlock {
    /// Packs `tensors` (from [`Recording::capture`], on any device) for streaming to `device`; the
    /// buffer is page-locked when `pinned` and the driver allows it.
    pub fn pack(tensors: Vec<(String, Tensor)>, device: &Device, pinned: bool) -> Result<Self> {
        let mut entries = Vec::with_capacity(tensors.len());
        let mut total = 0usize;
        for (name, t) in &tensors {
            let place = if read_on_host(name) {
                Place::Host(t.to_device(&Device::Cpu)?)
            } else {
                let bytes = byte_len(t)?;
                let offset = total.div_ceil(ALIGN) * ALIGN;
                total = offset + bytes;
                Place::Device { offset, bytes }
            };
            entries.push(Entry {
                name: name.clone(),
                dtype: t.dtype(),
                shape: t.shape().clone(),
                place,
            });
        }
        let mut buf = alloc_host(device, total, pinned);
        if buf.len() < total {
            candle_core::bail!("offload: a {}-byte host buffer for {total} bytes", buf.len());
        }
        let base = buf.as_mut_ptr()?;
        let mut written = 0usize;
        for ((_, t), e) in tensors.iter().zip(&entries) {
            if let Place::Device { offset, bytes } = e.place {
                with_bytes(t, |src| {
                    if src.len() != bytes {
                        candle_core::bail!("offload: {} bytes for a {bytes}-byte entry", src.len());
                    }
                    // SAFETY: `written <= offset` and `offset + bytes <= total <= buf.len()`: both ranges
                    // lie in the buffer, and `src` is a separate host allocation.
                    unsafe {
                        std::ptr::write_bytes(base.add(written), 0, offset - written);
                        std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(offset), bytes);
                    }
                    Ok(())
                })?;
                written = offset + bytes;
            }
        }
        // SAFETY: `written <= buf.len()`; the tail is zeroed so that every byte is initialised.
        unsafe { std::ptr::write_bytes(base.add(written), 0, buf.len() - written) };
        Ok(Self { entries, buf })
    }

    /// Bytes copied to the device per use.
    pub fn device_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match e.place {
                Place::Device { bytes, .. } => bytes,
                Place::Host(_) => 0,
            })
            .sum()
    }

    pub fn is_pinned(&self) -> bool {
        self.buf.is_pinned()
    }
}

fn alloc_host(device: &Device, bytes: usize, pinned: bool) -> HostBuf {
    #[cfg(feature = "cuda")]
    if pinned && device.is_cuda() {
        if let Some(p) = super::cuda::alloc_pinned(device, bytes.max(1)) {
            return HostBuf::Pinned(p);
        }
    }
    let _ = (device, pinned);
    HostBuf::Pageable(vec![0u8; bytes])
}

/// Bytes of `t`'s elements.
pub(crate) fn byte_len(t: &Tensor) -> Result<usize> {
    match t.dtype() {
        DType::F6E2M3 | DType::F6E3M2 | DType::F4 | DType::F8E8M0 => {
            candle_core::bail!("tensors of {:?} cannot be streamed", t.dtype())
        }
        d => Ok(t.elem_count() * d.size_in_bytes()),
    }
}

/// The raw bytes of a plain-old-data slice.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: every element type of CpuStorage is plain old data (integers, IEEE and bf16/f16/e4m3
    // floats, all without padding), so its bytes are initialised and may be read as u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; moreover every bit pattern is a valid value of these types, so any
    // bytes written through the view leave valid elements.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// Calls `f` with the bytes of the elements of `t` (any device, any layout).
fn with_bytes<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?.to_device(&Device::Cpu)?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("offload: expected a host tensor");
    };
    let (start, n) = (layout.start_offset(), t.elem_count());
    let src = match cpu {
        CpuStorage::U8(v) => as_bytes(&v[start..start + n]),
        CpuStorage::U32(v) => as_bytes(&v[start..start + n]),
        CpuStorage::I16(v) => as_bytes(&v[start..start + n]),
        CpuStorage::I32(v) => as_bytes(&v[start..start + n]),
        CpuStorage::I64(v) => as_bytes(&v[start..start + n]),
        CpuStorage::BF16(v) => as_bytes(&v[start..start + n]),
        CpuStorage::F16(v) => as_bytes(&v[start..start + n]),
        CpuStorage::F32(v) => as_bytes(&v[start..start + n]),
        CpuStorage::F64(v) => as_bytes(&v[start..start + n]),
        CpuStorage::F8E4M3(v) => as_bytes(&v[start..start + n]),
        _ => candle_core::bail!("tensors of {:?} cannot be streamed", t.dtype()),
    };
    f(src)
}

/// The bytes of a whole host storage, for writing into it.
pub(crate) fn storage_bytes_mut(cpu: &mut CpuStorage) -> Result<&mut [u8]> {
    Ok(match cpu {
        CpuStorage::U8(v) => as_bytes_mut(v),
        CpuStorage::U32(v) => as_bytes_mut(v),
        CpuStorage::I16(v) => as_bytes_mut(v),
        CpuStorage::I32(v) => as_bytes_mut(v),
        CpuStorage::I64(v) => as_bytes_mut(v),
        CpuStorage::BF16(v) => as_bytes_mut(v),
        CpuStorage::F16(v) => as_bytes_mut(v),
        CpuStorage::F32(v) => as_bytes_mut(v),
        CpuStorage::F64(v) => as_bytes_mut(v),
        CpuStorage::F8E4M3(v) => as_bytes_mut(v),
        _ => candle_core::bail!("offload: unsupported slot dtype"),
    })
}
