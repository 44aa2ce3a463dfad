//! `qwen-edit bench`: time the full-size networks with random weights on a device.
//!
//! Builds each component at its published size ([`crate::models::presets`]) with random weights
//! ([`crate::models::random`]) in the target dtype on the device, then times the transformer
//! forward at given sizes and reference counts (in each weight format / offload configuration asked
//! for, see [`transformer`]), VAE encode/decode and prompt encoding. The shapes and names match
//! `bench/diffusers_bench.py`, which measures diffusers on the same card.

mod transformer;

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use crate::cli::{BenchArgs, BenchComponent, BenchWeights};
use crate::device::DeviceSpec;
use crate::models::presets;
use crate::models::quant::{text_encoder_fp8_select, WeightFormat};
use crate::models::random::RandomWeights;
use crate::models::text_encoder::text::{rope_index, MultimodalIds, TextModel};
use crate::models::text_encoder::vision::VisionModel;
use crate::models::text_encoder::Config as TextEncoderConfig;
use crate::models::transformer::{QwenImageTransformer2DModel, TransformerConfig};
use crate::models::vae::{AutoencoderKLQwenImage, VaeConfig};
use crate::models::weights;
use crate::printer::Printer;

#[derive(Debug, Default, serde::Serialize)]
struct BenchResult {
    name: String,
    /// Median wall time of one run (for the transformer: one forward = one denoising step).
    ms: f64,
    tokens: Option<usize>,
    build_s: f64,
    finite: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    psnr_db: Option<f64>,
    /// `--configs` entry (`bf16`, `q4_k+offload`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    /// Most GPU memory the configuration held (driver's free memory before the build minus its minimum,
    /// sampled after every block), GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_gpu_gb: Option<f64>,
    /// Streamed: blocks copied ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    prefetch: Option<usize>,
    /// Streamed: host-to-device GB/s of the block copies (copy stream busy time).
    #[serde(skip_serializing_if = "Option::is_none")]
    h2d_gb_per_s: Option<f64>,
    /// Streamed: copy stream busy time per forward.
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_ms: Option<f64>,
    /// Streamed: the forward with prefetch 0 (copies and compute alternate).
    #[serde(skip_serializing_if = "Option::is_none")]
    ms_prefetch0: Option<f64>,
    /// Streamed: share of the copy time hidden behind compute, `(ms_prefetch0 − ms) / copy_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    overlap: Option<f64>,
    /// Streamed: GB of blocks in host memory, and whether it is page-locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    host_gb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned: Option<bool>,
    /// Why the configuration failed (e.g. out of memory under `--max-gpu-memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl BenchResult {
    fn named(name: String) -> Self {
        Self {
            name,
            ..Default::default()
        }
    }
}

/// GPU memory held so that only `cap` bytes remain usable (`--max-gpu-memory`).
struct Ballast {
    _buffer: Option<Tensor>,
}

impl Ballast {
    fn take(device: &Device, cap: u64, printer: &Printer) -> anyhow::Result<Self> {
        let Some(free) = crate::pipeline::memory::free_device_memory(device) else {
            anyhow::bail!("--max-gpu-memory needs a CUDA device whose free memory the driver reports");
        };
        if free <= cap {
            printer.status(format!(
                "--max-gpu-memory {:.1} GB: only {:.1} GB free, no ballast",
                cap as f64 / 1e9,
                free as f64 / 1e9
            ));
            return Ok(Self { _buffer: None });
        }
        let bytes = (free - cap) as usize;
        let buffer = Tensor::zeros(bytes, DType::U8, device)?;
        device.synchronize()?;
        printer.status(format!(
            "--max-gpu-memory {:.1} GB: holding {:.1} GB of the {:.1} GB free",
            cap as f64 / 1e9,
            bytes as f64 / 1e9,
            free as f64 / 1e9
        ));
        Ok(Self { _buffer: Some(buffer) })
    }
}

/// Four flow-matching Euler steps (σ 1 → 0, shift-free) of `model` from seeded noise; the final latents.
fn four_steps(
    model: &QwenImageTransformer2DModel,
    cfg: &TransformerConfig,
    size: usize,
    refs: usize,
    txt_len: usize,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let g = size / 16;
    let shapes: Vec<(usize, usize, usize)> = (0..=refs).map(|_| (1, g, g)).collect();
    let n_out = g * g;
    let cpu = Device::Cpu;
    let noise = crate::pipeline::noise::torch_randn(1, &[1, n_out, cfg.in_channels], DType::F32, &cpu)?;
    let refs_lat = crate::pipeline::noise::torch_randn(2, &[1, n_out * refs, cfg.in_channels], DType::F32, &cpu)?;
    let c = crate::pipeline::noise::torch_randn(3, &[1, txt_len, cfg.joint_attention_dim], DType::F32, &cpu)?;
    let refs_lat = refs_lat.to_device(device)?.to_dtype(dtype)?;
    let c = c.to_device(device)?.to_dtype(dtype)?;
    let mut x = noise.to_device(device)?.to_dtype(dtype)?;
    let sigmas = [1.0f64, 0.75, 0.5, 0.25, 0.0];
    for w in sigmas.windows(2) {
        let t = Tensor::new(&[w[0] as f32], device)?.to_dtype(dtype)?;
        let inp = Tensor::cat(&[&x, &refs_lat], 1)?;
        let v = model.forward(&inp, &c, None, &t, &shapes)?.narrow(1, 0, n_out)?;
        x = (x.to_dtype(DType::F32)? + (v.to_dtype(DType::F32)? * (w[1] - w[0]))?)?.to_dtype(dtype)?;
    }
    Ok(x.to_dtype(DType::F32)?)
}

/// PSNR in dB of `got` against `want`, peak = the range of `want`.
fn psnr(got: &Tensor, want: &Tensor) -> anyhow::Result<f64> {
    let mse = (got - want)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    let w = want.flatten_all()?;
    let range = (w.max(0)?.to_scalar::<f32>()? - w.min(0)?.to_scalar::<f32>()?) as f64;
    Ok(10.0 * (range * range / mse.max(1e-30)).log10())
}

pub fn run(args: BenchArgs, printer: Printer) -> anyhow::Result<u8> {
    let spec = DeviceSpec::parse(&args.device)?;
    let device = spec.open()?;
    let dtype = spec.dtype(args.dtype);
    // With `--load` alone only the load is timed.
    let all = args.components.contains(&BenchComponent::All) || (args.components.is_empty() && args.load.is_none());
    let want = |c: BenchComponent| all || args.components.contains(&c);
    let mut results = Vec::new();
    // The text encoder has no GGML form: q8_0 / q4_k time it in the dtype.
    let format = match args.weights {
        BenchWeights::Fp8 => WeightFormat::Fp8,
        BenchWeights::Stored | BenchWeights::Q8_0 | BenchWeights::Q4K => WeightFormat::Native,
    };
    let _ballast = match args.max_gpu_memory {
        Some(cap) => Some(Ballast::take(&device, cap, &printer)?),
        None => None,
    };

    if let Some(dir) = &args.load {
        let bytes = weights::weight_bytes(std::slice::from_ref(dir));
        printer.status(format!("loading {} ({:.1} GB)", dir.display(), bytes as f64 / 1e9));
        let t0 = Instant::now();
        let model = QwenImageTransformer2DModel::load(dir, dtype, &device)?;
        sync(&device)?;
        let secs = t0.elapsed().as_secs_f64();
        drop(model);
        results.push(BenchResult {
            ms: secs * 1e3,
            finite: true,
            gb_per_s: Some(bytes as f64 / 1e9 / secs.max(1e-9)),
            ..BenchResult::named("transformer_load".into())
        });
        printer.status(format!(
            "loaded in {secs:.1} s ({:.2} GB/s)",
            bytes as f64 / 1e9 / secs.max(1e-9)
        ));
    }

    if want(BenchComponent::Transformer) {
        transformer::run(&args, &device, dtype, &printer, &mut results)?;
    }
    if want(BenchComponent::Vae) {
        let cfg: VaeConfig = serde_json::from_str(presets::VAE)?;
        let t0 = Instant::now();
        let vae = AutoencoderKLQwenImage::new(&cfg, RandomWeights::var_builder(dtype, &device))
            .context("building the VAE")?;
        sync(&device)?;
        let build_s = t0.elapsed().as_secs_f64();
        for &size in &args.sizes {
            let f = vae.spatial_scale_factor();
            let img = Tensor::rand(-1f32, 1.0, (1, 3, size, size), &device)?.to_dtype(dtype)?;
            let z = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, size / f, size / f), &device)?.to_dtype(dtype)?;
            let mut last = None;
            let ms = time_ms(&device, args.warmup, args.iters, || {
                last = Some(vae.encode(&img)?);
                Ok(())
            })?;
            let finite = last.take().as_ref().map(is_finite).transpose()?.unwrap_or(false);
            results.push(BenchResult {
                name: format!("vae_encode_{size}"),
                ms,
                tokens: None,
                build_s,
                finite,
                ..Default::default()
            });
            let ms = time_ms(&device, args.warmup, args.iters, || {
                last = Some(vae.decode(&z)?);
                Ok(())
            })?;
            let finite = last.take().as_ref().map(is_finite).transpose()?.unwrap_or(false);
            results.push(BenchResult {
                name: format!("vae_decode_{size}"),
                ms,
                tokens: None,
                build_s,
                finite,
                ..Default::default()
            });
        }
    }

    if want(BenchComponent::TextEncoder) {
        let cfg = TextEncoderConfig::from_json(presets::TEXT_ENCODER)?;
        printer.status(format!(
            "building the full-size prompt encoder ({} vision + {} text layers) with random weights",
            cfg.vision.depth, cfg.text.num_hidden_layers
        ));
        let t0 = Instant::now();
        let vb = RandomWeights::var_builder_with(dtype, &device, format, text_encoder_fp8_select);
        let vision = VisionModel::new(&cfg.vision, vb.pp("visual")).context("building the vision tower")?;
        let text = TextModel::new(&cfg.text, vb.pp("model")).context("building the language model")?;
        sync(&device)?;
        let build_s = t0.elapsed().as_secs_f64();
        // 384²: the condition image of 2509/2511 (392² after smart_resize); 1024²: Edit v1's (1008²).
        for (name, side) in [("prompt_encode_384", 392usize), ("prompt_encode_1024", 1008)] {
            let p = cfg.vision.patch_size;
            let grid = [1usize, side / p, side / p];
            let patches = grid[1] * grid[2];
            let n_img = patches / (cfg.vision.spatial_merge_size * cfg.vision.spatial_merge_size);
            let pixels = Tensor::randn(0f32, 1.0, (patches, cfg.vision.patch_dim()), &device)?;
            let ids = bench_prompt_ids(&cfg, n_img);
            let mm = MultimodalIds {
                image_token_id: cfg.image_token_id,
                video_token_id: cfg.video_token_id,
                vision_start_token_id: cfg.vision_start_token_id,
            };
            let positions = rope_index(&ids, &[grid], mm, cfg.vision.spatial_merge_size)?;
            let mut last = None;
            let ms = time_ms(&device, args.warmup, args.iters, || {
                let vis = vision.forward(&pixels, &[grid])?;
                let embeds = text.embed(&ids, Some(&vis), cfg.image_token_id)?;
                last = Some(text.forward(&embeds, &positions)?);
                Ok(())
            })?;
            let finite = last.take().as_ref().map(is_finite).transpose()?.unwrap_or(false);
            results.push(BenchResult {
                name: name.to_string(),
                ms,
                tokens: Some(ids.len()),
                build_s,
                finite,
                ..Default::default()
            });
        }
    }

    if args.json {
        let out = serde_json::json!({
            "device": args.device,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "results": results,
        });
        println!("{out}");
    } else {
        print_table(&results);
    }
    Ok(if results.iter().all(|r| r.finite) { 0 } else { 1 })
}

/// The results as a table on stdout (`-` where a column does not apply).
fn print_table(results: &[BenchResult]) {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{:<40} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
        "name", "ms", "tokens", "build s", "peak GB", "H2D GB/s", "overlap", "PSNR dB", "finite", "error"
    );
    for r in results {
        let tokens = r.tokens.map(|t| t.to_string()).unwrap_or_default();
        println!(
            "{:<40} {:>10.2} {:>8} {:>8.1} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
            r.name,
            r.ms,
            tokens,
            r.build_s,
            opt(r.peak_gpu_gb, 2),
            opt(r.h2d_gb_per_s, 1),
            r.overlap.map_or("-".to_string(), |o| format!("{:.0}%", o * 100.0)),
            opt(r.psnr_db, 1),
            r.finite,
            if r.error.is_some() { "yes" } else { "" }
        );
    }
    for r in results.iter().filter(|r| r.error.is_some()) {
        eprintln!("{}: {}", r.name, r.error.as_deref().unwrap_or_default());
    }
}

/// A chat-template-shaped prompt: 64 text tokens, the image (`n_img` pad tokens between the vision
/// start/end markers), then 48 text tokens (an instruction of a few dozen words).
fn bench_prompt_ids(cfg: &TextEncoderConfig, n_img: usize) -> Vec<u32> {
    let text = |n: usize, seed: u32| (0..n as u32).map(move |i| (i * 7919 + seed) % 150_000);
    let mut ids: Vec<u32> = text(64, 11).collect();
    ids.push(cfg.vision_start_token_id);
    ids.extend(std::iter::repeat_n(cfg.image_token_id, n_img));
    ids.push(cfg.vision_end_token_id);
    ids.extend(text(48, 5));
    ids
}

fn sync(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    Ok(())
}

fn is_finite(t: &Tensor) -> candle_core::Result<bool> {
    let s = t.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}

/// Median wall time of `iters` runs after `warmup` runs, synchronising the device around each.
fn time_ms(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    sync(device)?;
    let mut ts = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        sync(device)?;
        let t0 = Instant::now();
        f()?;
        sync(device)?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}
