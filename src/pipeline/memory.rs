//! How much of the pipeline stays on the GPU between uses.
//!
//! In bf16 the text encoder (16.6 GB) and the transformer (40.9 GB) together need ~58 GB; one at a time,
//! the largest component. `high` keeps every component resident (fastest for many jobs); `low` holds one
//! large component at a time: the text encoder is loaded, encodes the prompts and is freed, then the
//! transformer is loaded, denoises and is freed before the VAE decodes (every job reloads them, from the
//! page cache when the machine has the RAM). `auto` picks `high` when everything fits in the free GPU
//! memory with room for the activations, else `low`.

use std::path::Path;

use candle_core::{DType, Device};

use crate::models::quant::{text_encoder_fp8_select, transformer_fp8_select, WeightFormat};
use crate::models::weights::ComponentWeights;

/// GPU memory kept free for activations, the VAE decode and the CUDA context (1024² edit with 3 refs).
pub const ACTIVATION_RESERVE: u64 = 8 << 30;

/// `--memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryMode {
    #[default]
    Auto,
    High,
    Low,
}

/// What [`MemoryMode`] resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPlan {
    /// Every component resident.
    High,
    /// One large component on the device at a time.
    Low,
}

/// The choice and why.
#[derive(Debug, Clone)]
pub struct MemoryChoice {
    pub plan: MemoryPlan,
    pub reason: String,
}

/// Estimated device bytes of the component in `dir` (or of `file` when given) held in `dtype`, with the
/// Linear weights `select` accepts in fp8 when `format` is fp8.
pub fn estimate_bytes(
    dir: &Path,
    file: Option<&Path>,
    dtype: DType,
    format: WeightFormat,
    select: fn(&str) -> bool,
) -> Option<u64> {
    if let Some(f) = file.filter(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))) {
        return std::fs::metadata(f).ok().map(|m| m.len());
    }
    let w = match file {
        Some(f) => ComponentWeights::open_file(f).ok()?,
        None => ComponentWeights::open(dir).ok()?,
    };
    let mut total = 0u64;
    for (name, stored) in w.tensor_dtypes() {
        let numel: usize = w.shape(&name)?.iter().product();
        let quantized = stored == DType::F8E4M3
            || (format == WeightFormat::Fp8
                && name
                    .strip_suffix(".weight")
                    .is_some_and(|m| select(m) && w.shape(&name).is_some_and(|s| s.len() == 2)));
        let size = if quantized { 1 } else { dtype.size_in_bytes() };
        total += (numel * size) as u64;
    }
    Some(total)
}

/// Estimated device bytes of the text encoder and the transformer.
pub fn estimate_pipeline(
    text_encoder: &Path,
    transformer: &Path,
    transformer_file: Option<&Path>,
    dtype: DType,
    format: WeightFormat,
) -> Option<(u64, u64)> {
    Some((
        estimate_bytes(text_encoder, None, dtype, format, text_encoder_fp8_select)?,
        estimate_bytes(transformer, transformer_file, dtype, format, transformer_fp8_select)?,
    ))
}

/// Free memory of the CUDA device `device` from the driver, if known.
pub fn free_device_memory(device: &Device) -> Option<u64> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    crate::cuda_probe::probe().ok()?.devices.into_iter().nth(gpu_id)?.free
}

/// Resolves `mode` for components of `sizes` (text encoder, transformer) bytes on a device with `free`
/// bytes (`None`: the CPU or unknown, where everything stays resident).
pub fn choose(mode: MemoryMode, sizes: Option<(u64, u64)>, free: Option<u64>) -> MemoryChoice {
    let gb = |b: u64| b as f64 / 1e9;
    match mode {
        MemoryMode::High => MemoryChoice {
            plan: MemoryPlan::High,
            reason: "--memory high".into(),
        },
        MemoryMode::Low => MemoryChoice {
            plan: MemoryPlan::Low,
            reason: "--memory low".into(),
        },
        MemoryMode::Auto => match (sizes, free) {
            (Some((te, tr)), Some(free)) => {
                let need = te + tr + ACTIVATION_RESERVE;
                if need <= free {
                    MemoryChoice {
                        plan: MemoryPlan::High,
                        reason: format!(
                            "text encoder {:.1} GB + transformer {:.1} GB + {:.0} GB for activations fit in {:.1} GB free",
                            gb(te),
                            gb(tr),
                            gb(ACTIVATION_RESERVE),
                            gb(free)
                        ),
                    }
                } else {
                    MemoryChoice {
                        plan: MemoryPlan::Low,
                        reason: format!(
                            "text encoder {:.1} GB + transformer {:.1} GB + {:.0} GB for activations exceed {:.1} GB free: \
                             one component at a time",
                            gb(te),
                            gb(tr),
                            gb(ACTIVATION_RESERVE),
                            gb(free)
                        ),
                    }
                }
            }
            _ => MemoryChoice {
                plan: MemoryPlan::High,
                reason: "free device memory unknown (CPU): every component resident".into(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_everything_when_it_fits() {
        let sizes = Some((16_600_000_000, 40_900_000_000));
        let c = choose(MemoryMode::Auto, sizes, Some(80 << 30));
        assert_eq!(c.plan, MemoryPlan::High, "{}", c.reason);
        let c = choose(MemoryMode::Auto, sizes, Some(47 << 30));
        assert_eq!(c.plan, MemoryPlan::Low, "{}", c.reason);
        assert!(c.reason.contains("one component at a time"));
        // fp8: 8.3 + 20.5 GB fit a 48 GB card.
        let c = choose(MemoryMode::Auto, Some((8_300_000_000, 20_500_000_000)), Some(47 << 30));
        assert_eq!(c.plan, MemoryPlan::High, "{}", c.reason);
        assert_eq!(choose(MemoryMode::Auto, sizes, None).plan, MemoryPlan::High);
        assert_eq!(choose(MemoryMode::Low, sizes, Some(1 << 40)).plan, MemoryPlan::Low);
        assert_eq!(choose(MemoryMode::High, sizes, Some(1 << 30)).plan, MemoryPlan::High);
    }

    #[test]
    fn estimates_follow_dtype_and_format() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-plus/transformer");
        let f32_bytes = estimate_bytes(&root, None, DType::F32, WeightFormat::Native, transformer_fp8_select).unwrap();
        let bf16_bytes =
            estimate_bytes(&root, None, DType::BF16, WeightFormat::Native, transformer_fp8_select).unwrap();
        let fp8_bytes = estimate_bytes(&root, None, DType::BF16, WeightFormat::Fp8, transformer_fp8_select).unwrap();
        assert_eq!(f32_bytes, 2 * bf16_bytes);
        assert!(
            fp8_bytes < bf16_bytes && fp8_bytes > bf16_bytes / 2,
            "{fp8_bytes} vs {bf16_bytes}"
        );
    }
}
