//! GGML block weights without a GGUF file: random but valid blocks (benchmarks at full size in
//! seconds), quantization of dense weights on the host in parallel (the `--psnr` comparison), and a
//! `VarBuilder` backend that serves either for the selected Linear layers of another backend, the same
//! way [`super::gguf::GgufWeights`] serves a file's blocks (`<module>.weight.ggml` / `.weight.ggml_type`).
//!
//! Layouts (ggml `block_q8_0` / `block_q4_K`, little endian): Q8_0 is 34 bytes per 32 weights,
//! `d: f16, q: [i8; 32]`, `w = d·q`; Q4_K is 144 bytes per 256 weights, `d: f16, dmin: f16,
//! scales: [u8; 12]` (eight 6-bit scale/min pairs), `q: [u8; 128]` (4-bit), `w = d·sc·q − dmin·m`.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::models::nn::linear::{ggml_type_id, GGML_DATA, GGML_TYPE};

/// A small, fast generator (splitmix64) for random block bytes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// The formats [`random_blocks`] makes.
pub const RANDOM_TYPES: [GgmlDType; 2] = [GgmlDType::Q8_0, GgmlDType::Q4K];

/// `d` (and `dmin`) of random blocks whose weights have standard deviation `std` and mean ≈ 0:
/// Q8_0 `q` uniform on −128..127 has std 73.9; Q4_K `sc·q − 7.5·m` with `sc, m` uniform 6-bit and `q`
/// uniform 4-bit has std 258 (with `dmin = 7.5·d` the mean is 0).
fn random_scales(ty: GgmlDType, std: f32) -> Result<(f32, f32)> {
    match ty {
        GgmlDType::Q8_0 => Ok((std / 73.9, 0.0)),
        GgmlDType::Q4K => {
            let d = std / 258.0;
            Ok((d, 7.5 * d))
        }
        _ => candle_core::bail!("random GGML blocks are made for Q8_0 and Q4_K, not {ty:?}"),
    }
}

/// The threads to split host work over.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `elems` weights of random but valid GGML blocks of `ty` (std `std`, mean ≈ 0), from `seed`.
/// Deterministic for a seed (each chunk of blocks has its own generator), made on all cores.
pub fn random_blocks(ty: GgmlDType, elems: usize, std: f32, seed: u64) -> Result<Vec<u8>> {
    let (d, dmin) = random_scales(ty, std)?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if elems % bs != 0 {
        candle_core::bail!("{elems} weights are not whole {ty:?} blocks of {bs}");
    }
    let blocks = elems / bs;
    let mut out = vec![0u8; blocks * ts];
    let per_chunk = blocks.div_ceil(threads() * 4).max(1);
    let (d, dmin) = (
        half::f16::from_f32(d).to_le_bytes(),
        half::f16::from_f32(dmin).to_le_bytes(),
    );
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per_chunk * ts).enumerate() {
            s.spawn(move || {
                SplitMix64(seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).fill(chunk);
                for block in chunk.chunks_mut(ts) {
                    block[0..2].copy_from_slice(&d);
                    if ty == GgmlDType::Q4K {
                        block[2..4].copy_from_slice(&dmin);
                    }
                }
            });
        }
    });
    Ok(out)
}

/// The GGML blocks of `w [rows, cols]` (any device and float dtype) quantized to `ty` on the host,
/// rows split over all cores (ggml's own quantizers, via candle).
pub fn quantize(w: &Tensor, ty: GgmlDType) -> Result<Vec<u8>> {
    let (rows, cols) = w.dims2()?;
    if cols % ty.block_size() != 0 {
        candle_core::bail!("rows of {cols} are not whole {ty:?} blocks of {}", ty.block_size());
    }
    // Copied in the stored dtype (bf16: half the bytes), widened to f32 per thread.
    let w = w.to_device(&Device::Cpu)?;
    let per_chunk = rows.div_ceil(threads()).max(1);
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..rows)
            .step_by(per_chunk)
            .map(|r0| {
                let w = &w;
                s.spawn(move || -> Result<Vec<u8>> {
                    // A tensor of its own: candle's quantizer reads the whole storage, not a view.
                    let n = per_chunk.min(rows - r0);
                    let part = w
                        .narrow(0, r0, n)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let part = Tensor::from_vec(part, (n, cols), &Device::Cpu)?;
                    Ok(QTensor::quantize(&part, ty)?.data()?.into_owned())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| candle_core::bail!("a quantizer thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(parts.concat())
}

/// A GGML weight as a `QTensor` on the CUDA device of `data`, whose raw blocks (`u8`) are already on
/// that device: the blocks are copied device to device (no round trip through the host). This is how a
/// streamed block's GGML Linear weights come out of their slot.
#[cfg(feature = "cuda")]
pub fn qtensor_from_device(data: &Tensor, ty: GgmlDType, shape: (usize, usize)) -> Result<QTensor> {
    use candle_core::cuda::cudarc::driver::{result, DevicePtr};
    use candle_core::cuda::WrapErr;
    use candle_core::quantized::{cuda::QCudaStorage, QStorage};
    use candle_core::Storage;

    let Device::Cuda(dev) = data.device() else {
        candle_core::bail!("GGML blocks: expected a CUDA tensor");
    };
    let elems = shape.0 * shape.1;
    if elems % ty.block_size() != 0 {
        candle_core::bail!("{shape:?} is not whole {ty:?} blocks");
    }
    let bytes = elems / ty.block_size() * ty.type_size();
    if data.dtype() != DType::U8 || data.elem_count() != bytes {
        candle_core::bail!(
            "GGML blocks of {shape:?} {ty:?} are {bytes} bytes, got {:?} {:?}",
            data.dtype(),
            data.dims()
        );
    }
    let data = data.contiguous()?;
    let storage = QCudaStorage::zeros(dev, elems, ty)?;
    let stream = dev.cuda_stream();
    {
        let (guard, layout) = data.storage_and_layout();
        let Storage::Cuda(cs) = &*guard else {
            candle_core::bail!("GGML blocks: expected CUDA storage");
        };
        let start = layout.start_offset();
        let src = cs.as_cuda_slice::<u8>()?.slice(start..start + bytes);
        let (src_ptr, _record) = src.device_ptr(&stream);
        let dst = storage.device_ptr()? as u64;
        // SAFETY: `dst` holds at least `bytes` (the zeroed blocks plus padding), `src` is `bytes` long
        // (checked above); both live on this device and the copy is ordered on candle's stream, after the
        // zeroing and before any use of the QTensor.
        unsafe { result::memcpy_dtod_async(dst, src_ptr, bytes, stream.cu_stream()) }.w()?;
    }
    QTensor::new(QStorage::Cuda(storage), shape)
}

#[cfg(not(feature = "cuda"))]
pub fn qtensor_from_device(data: &Tensor, _: GgmlDType, _: (usize, usize)) -> Result<QTensor> {
    candle_core::bail!("GGML blocks on {:?}: this build has no CUDA", data.device())
}

/// Where [`GgmlLinears`] gets each selected weight's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlSource {
    /// Random valid blocks (std [`crate::models::random::WEIGHT_STD`]), seeded by module name.
    Random { seed: u64 },
    /// The inner backend's dense weight (read in the model dtype), quantized on the host.
    Quantize,
}

/// Serves the selected Linear weights of `inner` as GGML blocks of one type; everything else as
/// `inner` has it. Needs each module's `[out, in]` (e.g. from [`crate::models::random::probe_shapes`]).
pub struct GgmlLinears {
    inner: Box<dyn SimpleBackend>,
    ty: GgmlDType,
    /// module → `[out, in]`, for the modules served as blocks.
    shapes: HashMap<String, (usize, usize)>,
    source: GgmlSource,
    dtype: DType,
}

impl GgmlLinears {
    /// `linears`: every Linear module with its `[out, in]`; those `select` accepts and whose rows are whole
    /// blocks are served as `ty`. `dtype`: the dtype the inner weights are read in before quantizing.
    pub fn new(
        inner: Box<dyn SimpleBackend>,
        ty: GgmlDType,
        linears: &HashMap<String, (usize, usize)>,
        select: fn(&str) -> bool,
        source: GgmlSource,
        dtype: DType,
    ) -> Result<Self> {
        if let GgmlSource::Random { .. } = source {
            random_scales(ty, 1.0)?;
        }
        let shapes = linears
            .iter()
            .filter(|(m, &(_, i))| select(m) && i % ty.block_size() == 0)
            .map(|(m, &s)| (m.clone(), s))
            .collect();
        Ok(Self {
            inner,
            ty,
            shapes,
            source,
            dtype,
        })
    }

    /// The modules served as blocks.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// `(module, is_data)` when `name` is one of the virtual names of a served module.
    fn target<'a>(&self, name: &'a str) -> Option<(&'a str, bool)> {
        let (m, data) = match name.strip_suffix(&format!(".{GGML_DATA}")) {
            Some(m) => (m, true),
            None => (name.strip_suffix(&format!(".{GGML_TYPE}"))?, false),
        };
        self.shapes.contains_key(m).then_some((m, data))
    }

    fn blocks(&self, module: &str, dev: &Device) -> Result<Tensor> {
        let (out, inp) = self.shapes[module];
        let bytes = match self.source {
            GgmlSource::Random { seed } => {
                let std = crate::models::random::WEIGHT_STD as f32;
                random_blocks(self.ty, out * inp, std, seed ^ name_hash(module))?
            }
            GgmlSource::Quantize => {
                let w = self.inner.get(
                    Shape::from((out, inp)),
                    &format!("{module}.weight"),
                    candle_nn::Init::Const(0.),
                    self.dtype,
                    dev,
                )?;
                quantize(&w, self.ty)?
            }
        };
        let n = bytes.len();
        Tensor::from_vec(bytes, n, &Device::Cpu)
    }
}

/// FNV-1a of a module name (per-module seeds).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

impl SimpleBackend for GgmlLinears {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.target(name) {
            Some(_) => self.get_unchecked(name, dtype, dev),
            None => self.inner.get(s, name, h, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.target(name) {
            Some((m, true)) => self.blocks(m, dev),
            Some((_, false)) => Tensor::new(&[ggml_type_id(self.ty)], &Device::Cpu),
            None => self.inner.get_unchecked(name, dtype, dev),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.target(name).is_some() || self.inner.contains_tensor(name)
    }
}
