//! `qwen-edit bench`: time the full-size networks with random weights on a device.
//!
//! Builds each component at its published size ([`crate::models::presets`]) with random weights
//! ([`crate::models::random`]) in the target dtype on the device, then times the transformer
//! forward at given sizes and reference counts, VAE encode/decode and prompt encoding. The shapes and
//! names match `bench/diffusers_bench.py`, which measures diffusers on the same card.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use crate::cli::{BenchArgs, BenchComponent, WeightsArg};
use crate::device::DeviceSpec;
use crate::models::presets;
use crate::models::quant::{text_encoder_fp8_select, transformer_fp8_select, WeightFormat};
use crate::models::random::RandomWeights;
use crate::models::text_encoder::text::{rope_index, MultimodalIds, TextModel};
use crate::models::text_encoder::vision::VisionModel;
use crate::models::text_encoder::Config as TextEncoderConfig;
use crate::models::transformer::{QwenImageTransformer2DModel, TransformerConfig};
use crate::models::vae::{AutoencoderKLQwenImage, VaeConfig};
use crate::models::weights;
use crate::printer::Printer;

#[derive(Debug, serde::Serialize)]
struct BenchResult {
    name: String,
    ms: f64,
    tokens: Option<usize>,
    build_s: f64,
    finite: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    psnr_db: Option<f64>,
}

/// Seed of the device RNG for the `--psnr` pair of models (same random weights in both).
const PSNR_SEED: u64 = 20_261_203;

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
    let format = match args.weights {
        WeightsArg::Stored => WeightFormat::Native,
        WeightsArg::Fp8 => WeightFormat::Fp8,
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
            name: "transformer_load".into(),
            ms: secs * 1e3,
            tokens: None,
            build_s: 0.0,
            finite: true,
            gb_per_s: Some(bytes as f64 / 1e9 / secs.max(1e-9)),
            psnr_db: None,
        });
        printer.status(format!(
            "loaded in {secs:.1} s ({:.2} GB/s)",
            bytes as f64 / 1e9 / secs.max(1e-9)
        ));
    }

    if want(BenchComponent::Transformer) {
        let cfg: TransformerConfig = serde_json::from_str(presets::TRANSFORMER_2511)?;
        printer.status(format!(
            "building the full-size transformer ({} layers) with random weights",
            cfg.num_layers
        ));
        let t0 = Instant::now();
        if args.psnr {
            device.set_seed(PSNR_SEED)?;
        }
        let model = QwenImageTransformer2DModel::new(
            &cfg,
            RandomWeights::var_builder_with(dtype, &device, format, transformer_fp8_select),
        )
        .map_err(anyhow::Error::from)
        .map_err(|e| crate::device::classify_error(e, &device))
        .context("building the transformer")?;
        sync(&device)?;
        let build_s = t0.elapsed().as_secs_f64();
        for &size in &args.sizes {
            for &refs in &args.refs {
                let g = size / 16;
                let shapes: Vec<(usize, usize, usize)> = (0..=refs).map(|_| (1, g, g)).collect();
                let s_img: usize = shapes.iter().map(|(f, h, w)| f * h * w).sum();
                let x = Tensor::randn(0f32, 1.0, (1, s_img, cfg.in_channels), &device)?.to_dtype(dtype)?;
                let c =
                    Tensor::randn(0f32, 1.0, (1, args.txt_len, cfg.joint_attention_dim), &device)?.to_dtype(dtype)?;
                let t = Tensor::new(&[0.5f32], &device)?.to_dtype(dtype)?;
                let mut last = None;
                let ms = time_ms(&device, args.warmup, args.iters, || {
                    last = Some(model.forward(&x, &c, None, &t, &shapes)?);
                    Ok(())
                })?;
                let finite = last.as_ref().map(is_finite).transpose()?.unwrap_or(false);
                results.push(BenchResult {
                    name: format!("transformer_{size}_{refs}ref"),
                    ms,
                    tokens: Some(s_img + args.txt_len),
                    build_s,
                    finite,
                    gb_per_s: None,
                    psnr_db: None,
                });
            }
        }
        if args.psnr {
            let (size, refs) = (args.sizes[0], args.refs[0]);
            let got = four_steps(&model, &cfg, size, refs, args.txt_len, dtype, &device)?;
            drop(model);
            device.set_seed(PSNR_SEED)?;
            let reference = QwenImageTransformer2DModel::new(&cfg, RandomWeights::var_builder(dtype, &device))
                .context("building the reference transformer")?;
            let want = four_steps(&reference, &cfg, size, refs, args.txt_len, dtype, &device)?;
            let db = psnr(&got, &want)?;
            printer.status(format!(
                "PSNR of the 4-step latents, {format:?} vs stored weights: {db:.1} dB"
            ));
            results.push(BenchResult {
                name: format!("transformer_{size}_{refs}ref_4step_psnr"),
                ms: 0.0,
                tokens: None,
                build_s: 0.0,
                finite: db.is_finite() || db == f64::INFINITY,
                gb_per_s: None,
                psnr_db: Some(db),
            });
        }
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
                gb_per_s: None,
                psnr_db: None,
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
                gb_per_s: None,
                psnr_db: None,
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
                gb_per_s: None,
                psnr_db: None,
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
        println!(
            "{:<28} {:>10} {:>8} {:>9} {:>7}",
            "name", "ms", "tokens", "build s", "finite"
        );
        for r in &results {
            let tokens = r.tokens.map(|t| t.to_string()).unwrap_or_default();
            println!(
                "{:<28} {:>10.2} {:>8} {:>9.1} {:>7}",
                r.name, r.ms, tokens, r.build_s, r.finite
            );
        }
    }
    Ok(if results.iter().all(|r| r.finite) { 0 } else { 1 })
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
