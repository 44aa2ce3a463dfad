//! How much of the pipeline stays on the GPU between uses.
//!
//! In bf16 the text encoder (16.6 GB) and the transformer (40.9 GB) together need ~58 GB; one at a time,
//! the largest component. `high` keeps every component resident (fastest for many jobs); `low` holds one
//! large component at a time: the text encoder is loaded, encodes the prompts and is freed, then the
//! transformer is loaded, denoises and is freed before the VAE decodes (every job reloads them, from the
//! page cache when the machine has the RAM). `offload` keeps the transformer's 60 blocks in host memory
//! and streams them through a few device slots while it denoises ([`crate::models::offload`]; the text
//! encoder is loaded per job as in `low`): a 1024² edit then needs the text encoder's memory, or a few GB
//! for the transformer, whichever is larger. `auto` picks `high` when everything fits in the free GPU
//! memory with room for the activations, else `low` when the transformer fits alone, else `offload`.

use std::path::Path;

use candle_core::{DType, Device};

use crate::models::quant::gguf::GgufWeights;
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
    Offload,
}

/// What [`MemoryMode`] resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryPlan {
    /// Every component resident.
    High,
    /// One large component on the device at a time.
    Low,
    /// The transformer's blocks streamed from host memory; the text encoder loaded per job.
    Offload,
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
    Some(
        tensor_bytes(dir, file, dtype, format, select)?
            .iter()
            .map(|(_, b)| b)
            .sum(),
    )
}

/// Estimated device bytes of each tensor (name without any file prefix).
fn tensor_bytes(
    dir: &Path,
    file: Option<&Path>,
    dtype: DType,
    format: WeightFormat,
    select: fn(&str) -> bool,
) -> Option<Vec<(String, u64)>> {
    if let Some(f) = file.filter(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))) {
        return Some(GgufWeights::open(f).ok()?.tensor_bytes());
    }
    let w = match file {
        Some(f) => ComponentWeights::open_file(f).ok()?,
        None => ComponentWeights::open(dir).ok()?,
    };
    let mut out = Vec::new();
    for (name, stored) in w.tensor_dtypes() {
        let shape = w.shape(&name)?;
        let numel: usize = shape.iter().product();
        let quantized = stored == DType::F8E4M3
            || (format == WeightFormat::Fp8 && shape.len() == 2 && name.strip_suffix(".weight").is_some_and(select));
        let size = if quantized { 1 } else { dtype.size_in_bytes() };
        out.push((name, (numel * size) as u64));
    }
    Some(out)
}

/// The transformer's device bytes: all resident, and streamed with `prefetch` blocks ahead (the layers
/// outside the blocks plus `prefetch + 1` slots of the largest block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerBytes {
    pub resident: u64,
    pub streamed: u64,
}

/// [`TransformerBytes`] of the transformer in `dir` (or `file`).
pub fn estimate_transformer(
    dir: &Path,
    file: Option<&Path>,
    dtype: DType,
    format: WeightFormat,
    prefetch: usize,
) -> Option<TransformerBytes> {
    let tensors = tensor_bytes(dir, file, dtype, format, transformer_fp8_select)?;
    let mut blocks: std::collections::BTreeMap<usize, u64> = Default::default();
    let mut outside = 0u64;
    for (name, bytes) in &tensors {
        let block = name
            .strip_prefix("transformer_blocks.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        match block {
            Some(i) => *blocks.entry(i).or_default() += bytes,
            None => outside += bytes,
        }
    }
    let largest = blocks.values().copied().max().unwrap_or(0);
    let slots = (prefetch as u64 + 1).min(blocks.len() as u64);
    Some(TransformerBytes {
        resident: outside + blocks.values().sum::<u64>(),
        streamed: outside + slots * largest,
    })
}

/// Estimated device bytes of the pipeline's large components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineBytes {
    pub text_encoder: u64,
    pub transformer: TransformerBytes,
}

/// Estimated device bytes of the text encoder and the transformer.
pub fn estimate_pipeline(
    text_encoder: &Path,
    transformer: &Path,
    transformer_file: Option<&Path>,
    dtype: DType,
    format: WeightFormat,
    prefetch: usize,
) -> Option<PipelineBytes> {
    Some(PipelineBytes {
        text_encoder: estimate_bytes(text_encoder, None, dtype, format, text_encoder_fp8_select)?,
        transformer: estimate_transformer(transformer, transformer_file, dtype, format, prefetch)?,
    })
}

/// Free memory of the CUDA device `device` from the driver, if known.
pub fn free_device_memory(device: &Device) -> Option<u64> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    crate::cuda_probe::probe().ok()?.devices.into_iter().nth(gpu_id)?.free
}

/// Resolves `mode` for components of `sizes` on a device with `free` bytes (`None`: the CPU or unknown,
/// where everything stays resident).
pub fn choose(mode: MemoryMode, sizes: Option<PipelineBytes>, free: Option<u64>) -> MemoryChoice {
    let gb = |b: u64| b as f64 / 1e9;
    let choice = |plan, reason: String| MemoryChoice { plan, reason };
    match mode {
        MemoryMode::High => choice(MemoryPlan::High, "--memory high".into()),
        MemoryMode::Low => choice(MemoryPlan::Low, "--memory low".into()),
        MemoryMode::Offload => choice(MemoryPlan::Offload, "--memory offload".into()),
        MemoryMode::Auto => match (sizes, free) {
            (Some(p), Some(free)) => {
                let (te, tr) = (p.text_encoder, p.transformer.resident);
                let reserve = gb(ACTIVATION_RESERVE);
                if te + tr + ACTIVATION_RESERVE <= free {
                    choice(
                        MemoryPlan::High,
                        format!(
                            "text encoder {:.1} GB + transformer {:.1} GB + {reserve:.0} GB for activations fit in \
                             {:.1} GB free",
                            gb(te),
                            gb(tr),
                            gb(free)
                        ),
                    )
                } else if te.max(tr) + ACTIVATION_RESERVE <= free {
                    choice(
                        MemoryPlan::Low,
                        format!(
                            "text encoder {:.1} GB + transformer {:.1} GB + {reserve:.0} GB for activations exceed \
                             {:.1} GB free: one component at a time",
                            gb(te),
                            gb(tr),
                            gb(free)
                        ),
                    )
                } else {
                    choice(
                        MemoryPlan::Offload,
                        format!(
                            "transformer {:.1} GB + {reserve:.0} GB for activations exceed {:.1} GB free: its blocks \
                             are streamed from host memory ({:.1} GB on the GPU), the text encoder ({:.1} GB) is \
                             loaded per job",
                            gb(tr),
                            gb(free),
                            gb(p.transformer.streamed),
                            gb(te)
                        ),
                    )
                }
            }
            _ => choice(
                MemoryPlan::High,
                "free device memory unknown (CPU): every component resident".into(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(te: u64, tr: u64, streamed: u64) -> Option<PipelineBytes> {
        Some(PipelineBytes {
            text_encoder: te,
            transformer: TransformerBytes { resident: tr, streamed },
        })
    }

    #[test]
    fn auto_keeps_everything_when_it_fits() {
        let bf16 = sizes(16_600_000_000, 40_900_000_000, 2_100_000_000);
        let c = choose(MemoryMode::Auto, bf16, Some(80 << 30));
        assert_eq!(c.plan, MemoryPlan::High, "{}", c.reason);
        // 48 GB card: the bf16 transformer alone (40.9 + 8) does not fit: streamed.
        let c = choose(MemoryMode::Auto, bf16, Some(47_000_000_000));
        assert_eq!(c.plan, MemoryPlan::Offload, "{}", c.reason);
        assert!(c.reason.contains("streamed from host memory"), "{}", c.reason);
        // 64 GB: one at a time.
        let c = choose(MemoryMode::Auto, bf16, Some(63_000_000_000));
        assert_eq!(c.plan, MemoryPlan::Low, "{}", c.reason);
        assert!(c.reason.contains("one component at a time"));
        // fp8: 8.3 + 20.5 GB fit a 48 GB card; on a 24 GB card the transformer is streamed.
        let fp8 = sizes(8_300_000_000, 20_500_000_000, 1_100_000_000);
        let c = choose(MemoryMode::Auto, fp8, Some(47_000_000_000));
        assert_eq!(c.plan, MemoryPlan::High, "{}", c.reason);
        assert_eq!(
            choose(MemoryMode::Auto, fp8, Some(23_000_000_000)).plan,
            MemoryPlan::Offload
        );
        assert_eq!(choose(MemoryMode::Auto, bf16, None).plan, MemoryPlan::High);
        assert_eq!(choose(MemoryMode::Low, bf16, Some(1 << 40)).plan, MemoryPlan::Low);
        assert_eq!(choose(MemoryMode::High, bf16, Some(1 << 30)).plan, MemoryPlan::High);
        assert_eq!(choose(MemoryMode::Offload, bf16, None).plan, MemoryPlan::Offload);
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
        // Streamed: everything outside the two blocks plus min(prefetch + 1, 2) blocks.
        let t = |prefetch| estimate_transformer(&root, None, DType::F32, WeightFormat::Native, prefetch).unwrap();
        assert_eq!(t(0).resident, f32_bytes);
        let block = t(1).streamed - t(0).streamed;
        assert!(block > 0 && t(0).streamed < f32_bytes, "{:?}", t(0));
        assert_eq!(t(0).streamed + block, t(1).resident);
        assert_eq!(t(5).streamed, t(1).streamed);
    }
}
