//! Pieces shared by `edit`, `batch` and the worker: loading the model once, reading input images,
//! and writing a result.

use std::path::{Path, PathBuf};

use candle_core::DType;
use image::RgbImage;

use crate::cli::{MemoryArg, ModelArgs, WeightsArg};
use crate::device::DeviceSpec;
use crate::error::UserError;
use crate::io::decode::{decode_image, DecodeLimits};
use crate::io::encode::{encode_image, write_atomic, write_stdout, BitDepth, OutputFormat, OutputPixels};
use crate::io::source::{read_source, FetchOptions};
use crate::jobs::Job;
use crate::models::quant::WeightFormat;
use crate::models::{vae, weights};
use crate::pipeline::edit::{EditOutput, EditPipeline, EditRequest, LoadOptions};
use crate::pipeline::memory::{MemoryMode, MemoryPlan};
use crate::printer::Printer;

/// A pipeline loaded once for many jobs.
pub struct LoadedModel {
    pub pipeline: EditPipeline,
    /// `--model` as given (recorded in outputs).
    pub name: String,
    pub dtype: DType,
    pub load_seconds: f64,
    /// The LoRAs merged at load (the Lightning one first), as given.
    pub loras: Vec<super::lora::LoraSpec>,
}

impl LoadedModel {
    pub fn load(args: &ModelArgs, vae_tiling: bool, printer: &Printer) -> anyhow::Result<Self> {
        let spec = DeviceSpec::parse(&args.device)?;
        let folder = super::model::resolve(args, printer)?;
        let device = spec.open()?;
        let dtype = spec.dtype(args.dtype);
        printer.status(format!(
            "loading {} from {}",
            folder.kind.class_name(),
            folder.root.display()
        ));
        let (lora_specs, loras, preset) = super::lora::from_args(args, &folder, printer)?;
        let t0 = std::time::Instant::now();
        let dirs: Vec<PathBuf> = ["text_encoder", "transformer", "vae"]
            .iter()
            .map(|c| folder.component(c))
            .collect();
        let bytes = weights::weight_bytes(&dirs);
        let opts = LoadOptions {
            loras,
            lora_strict: !args.lora.no_lora_strict,
            weights: match args.memory.weights {
                WeightsArg::Stored => WeightFormat::Native,
                WeightsArg::Fp8 => WeightFormat::Fp8,
            },
            transformer_file: args.memory.transformer_file.clone(),
            memory: match args.memory.memory {
                MemoryArg::Auto => MemoryMode::Auto,
                MemoryArg::High => MemoryMode::High,
                MemoryArg::Low => MemoryMode::Low,
                MemoryArg::Offload => MemoryMode::Offload,
            },
            offload_prefetch: args.memory.offload_prefetch,
        };
        if let Some(f) = &opts.transformer_file {
            if !f.is_file() {
                return Err(UserError::bad_input(format!("--transformer-file {} does not exist", f.display())).into());
            }
        }
        let bar = printer.bytes_bar(bytes, "loading weights");
        let tracking = weights::track_loading(bar.clone());
        let loaded = EditPipeline::load_with(&folder, &device, dtype, &opts);
        drop(tracking);
        bar.finish_and_clear();
        let read = bar.position();
        let mut pipeline = loaded?;
        pipeline.set_vae_tiling(vae_tiling);
        pipeline.set_preset(preset)?;
        let secs = t0.elapsed().as_secs_f64();
        printer.status(format!(
            "loaded {:.2} GB in {secs:.1} s ({:.2} GB/s) on {} as {dtype:?}{}",
            read as f64 / 1e9,
            read as f64 / 1e9 / secs.max(1e-9),
            args.device,
            if opts.weights == WeightFormat::Fp8 {
                ", Linear weights in fp8"
            } else {
                ""
            }
        ));
        let m = pipeline.memory();
        printer.status(format!(
            "memory: {} ({})",
            match m.plan {
                MemoryPlan::High => "high, every component resident",
                MemoryPlan::Low => "low, one large component at a time (reloaded per job)",
                MemoryPlan::Offload =>
                    "offload, transformer blocks streamed from host memory, text encoder loaded per job",
            },
            m.reason
        ));
        for r in pipeline.loras() {
            printer.status(format!(
                "LoRA {} @ {}: {} modules merged ({} layout)",
                r.label, r.scale, r.modules, r.layout
            ));
            if !r.skipped.is_empty() {
                printer.warn(format!(
                    "LoRA {}: skipped {} key(s) that adapt nothing, e.g. {}",
                    r.label,
                    r.skipped.len(),
                    r.skipped[0]
                ));
            }
        }
        Ok(Self {
            pipeline,
            name: args.model.clone(),
            dtype,
            load_seconds: secs,
            loras: lora_specs,
        })
    }
}

/// Reads and decodes every image source (`stdin` serves a `-`; `None` refuses it).
pub fn read_images(
    sources: &[String],
    fetch: &FetchOptions,
    mut stdin: Option<&mut dyn std::io::Read>,
) -> anyhow::Result<Vec<RgbImage>> {
    let limits = DecodeLimits::default();
    let mut empty = std::io::empty();
    let mut images = Vec::with_capacity(sources.len());
    for src in sources {
        let reader: &mut dyn std::io::Read = match (src.as_str(), stdin.as_deref_mut()) {
            ("-", Some(r)) => r,
            ("-", None) => return Err(UserError::bad_input("`-` (stdin) is not available for job inputs").into()),
            _ => &mut empty,
        };
        let input = read_source(src, fetch, reader)?;
        images.push(decode_image(&input.bytes, &limits, &input.label)?);
    }
    Ok(images)
}

/// Fetch options for batch and worker jobs: no stdin.
pub fn job_fetch_options() -> FetchOptions {
    FetchOptions {
        allow_stdin: false,
        ..FetchOptions::default()
    }
}

/// The pipeline request for a validated job (a random seed when it gives none).
pub fn request_from(job: &Job, images: Vec<RgbImage>) -> EditRequest {
    EditRequest {
        images,
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        steps: job.steps,
        true_cfg_scale: job.true_cfg_scale,
        seed: job.seed.unwrap_or_else(random_seed),
        width: job.width,
        height: job.height,
        ref_size: job.ref_size,
    }
}

/// Where and how a result is written; checked before any work is done.
#[derive(Debug, Clone)]
pub struct OutputTarget {
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    pub format: OutputFormat,
    pub bit_depth: BitDepth,
}

impl OutputTarget {
    /// Checks the target: format from `format` or the extension, 16 bits only for PNG/TIFF, an
    /// existing file only with `overwrite`, a missing folder only with `mkdir`.
    pub fn new(
        path: Option<PathBuf>,
        format: Option<OutputFormat>,
        bit_depth: BitDepth,
        overwrite: bool,
        mkdir: bool,
    ) -> anyhow::Result<Self> {
        let format = match (format, &path) {
            (Some(f), _) => f,
            (None, Some(p)) => OutputFormat::from_extension(p).unwrap_or(OutputFormat::Png),
            (None, None) => OutputFormat::Png,
        };
        if bit_depth == BitDepth::Sixteen && !matches!(format, OutputFormat::Png | OutputFormat::Tiff) {
            return Err(
                UserError::bad_input(format!("16 bits per channel needs PNG or TIFF output, not {format:?}")).into(),
            );
        }
        if let Some(p) = &path {
            if p.exists() && !overwrite {
                return Err(UserError::bad_input(format!("{} already exists", p.display()))
                    .with_hint("pass --overwrite to replace it, or choose another output path")
                    .into());
            }
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() && !mkdir {
                    return Err(
                        UserError::bad_input(format!("the output folder {} does not exist", dir.display()))
                            .with_hint("pass --mkdir to create it")
                            .into(),
                    );
                }
            }
        }
        Ok(Self {
            path,
            format,
            bit_depth,
        })
    }

    /// Encodes `out` (with the prompt, seed, steps and model as text chunks) and writes it.
    pub fn write(
        &self,
        out: &EditOutput,
        prompt: &str,
        model: &str,
        overwrite: bool,
        mkdir: bool,
    ) -> anyhow::Result<()> {
        let bytes = encode_result(out, prompt, model, self.format, self.bit_depth)?;
        match &self.path {
            None => write_stdout(&bytes),
            Some(path) => write_atomic(path, &bytes, overwrite, mkdir),
        }
    }
}

/// The encoded image of `out` in `format`.
pub fn encode_result(
    out: &EditOutput,
    prompt: &str,
    model: &str,
    format: OutputFormat,
    bit_depth: BitDepth,
) -> anyhow::Result<Vec<u8>> {
    let (_, _, h, w) = out.image.dims4()?;
    let (w, h) = (w as u32, h as u32);
    let size_err = || anyhow::anyhow!("decoded image buffer does not match {w}x{h}");
    let pixels = match bit_depth {
        BitDepth::Eight => {
            OutputPixels::Rgb8(RgbImage::from_raw(w, h, vae::postprocess_u8(&out.image)?).ok_or_else(size_err)?)
        }
        BitDepth::Sixteen => OutputPixels::Rgb16(
            image::ImageBuffer::from_raw(w, h, vae::postprocess_u16(&out.image)?).ok_or_else(size_err)?,
        ),
    };
    let text = vec![
        ("prompt".to_string(), prompt.to_string()),
        ("seed".to_string(), out.seed.to_string()),
        ("steps".to_string(), out.steps.to_string()),
        ("true_cfg_scale".to_string(), out.true_cfg_scale.to_string()),
        ("model".to_string(), model.to_string()),
        (
            "software".to_string(),
            format!("qwen-edit {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    encode_image(&pixels, format, &text)
}

/// `<stem of the first input>-edited.png` for file inputs, else `edited.png`.
pub fn default_output_name(first: &str) -> PathBuf {
    let p = Path::new(first);
    let stem = if p.is_file() {
        p.file_stem().and_then(|s| s.to_str())
    } else {
        None
    };
    PathBuf::from(match stem {
        Some(s) => format!("{s}-edited.png"),
        None => "edited.png".to_string(),
    })
}

/// A seed from the OS's randomness (the std hasher's random keys), below 2^53 so JSON readers keep it exact.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.finish() >> 11
}
