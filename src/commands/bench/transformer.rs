//! `bench --component transformer`: the full-size transformer with random weights in each requested
//! configuration (weight format × resident or streamed), one after the other in one process: seconds per
//! forward, peak GPU memory from the driver, host-to-device GB/s and overlap when streamed, and with
//! `--psnr` the PSNR of 4 Euler steps against the bf16 weights of the same seed.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{is_finite, sync, time_ms, BenchResult};
use crate::cli::{BenchArgs, BenchConfig, BenchWeights};
use crate::models::offload::{watch, OffloadOptions};
use crate::models::presets;
use crate::models::quant::ggml::{GgmlLinears, GgmlSource};
use crate::models::quant::{transformer_fp8_select, WeightFormat};
use crate::models::random::{linear_shapes, probe_shapes, RandomWeights};
use crate::models::transformer::{QwenImageTransformer2DModel, TransformerConfig};
use crate::printer::Printer;

/// Seed of the device RNG for every configuration (same random weights in each, for `--psnr`).
const PSNR_SEED: u64 = 20_261_203;
/// Seed of the random GGML blocks.
const GGML_SEED: u64 = 7_919;
/// A transformer `config.json` to bench instead of the full-size preset.
const CONFIG_ENV: &str = "QWEN_EDIT_BENCH_TRANSFORMER_CONFIG";

/// What one configuration needs from the run's arguments.
struct Run<'a> {
    args: &'a BenchArgs,
    cfg: TransformerConfig,
    device: &'a Device,
    dtype: DType,
    printer: &'a Printer,
    /// Linear module → `[out, in]`, for the GGML formats (probed once).
    linears: Option<HashMap<String, (usize, usize)>>,
    /// 4-step latents of the bf16 weights, for `--psnr`.
    reference: Option<Tensor>,
}

/// Times every configuration of `--configs` (or the one of `--weights`/`--offload`).
pub(super) fn run(
    args: &BenchArgs,
    device: &Device,
    dtype: DType,
    printer: &Printer,
    results: &mut Vec<BenchResult>,
) -> anyhow::Result<()> {
    let configs = if args.configs.is_empty() {
        vec![BenchConfig {
            weights: args.weights,
            offload: args.offload,
        }]
    } else {
        args.configs.clone()
    };
    if args.psnr && !device.is_cuda() {
        anyhow::bail!("--psnr needs a CUDA device (the CPU random generator cannot be seeded)");
    }
    // The published config; tests point this at a tiny one to run the whole command on the CPU.
    let cfg = match std::env::var_os(CONFIG_ENV).map(std::path::PathBuf::from) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => serde_json::from_str(presets::TRANSFORMER_2511)?,
    };
    let mut run = Run {
        args,
        cfg,
        device,
        dtype,
        printer,
        linears: None,
        reference: None,
    };
    for c in configs {
        printer.status(format!(
            "transformer {c}: building the full-size model ({} layers) with random weights",
            run.cfg.num_layers
        ));
        match run.config(c, results) {
            Ok(()) => {}
            Err(e) => {
                // Out of memory under a cap is a result, not the end of the run.
                let e = crate::device::classify_error(e, device);
                printer.warn(format!("transformer {c}: {e:#}"));
                let _ = device.synchronize();
                results.push(BenchResult {
                    config: Some(c.to_string()),
                    error: Some(format!("{e:#}")),
                    ..BenchResult::named(format!("transformer_{c}"))
                });
            }
        }
    }
    Ok(())
}

impl Run<'_> {
    fn linears(&mut self) -> anyhow::Result<&HashMap<String, (usize, usize)>> {
        if self.linears.is_none() {
            let cfg = self.cfg.clone();
            let shapes = probe_shapes(self.dtype, |vb| QwenImageTransformer2DModel::new(&cfg, vb).map(drop))?;
            self.linears = Some(linear_shapes(&shapes));
        }
        Ok(self.linears.as_ref().expect("probed above"))
    }

    /// The weight source of `weights` (seeded random weights; GGML blocks quantized from them with
    /// `--psnr`, else random blocks).
    fn backend(&mut self, weights: BenchWeights) -> anyhow::Result<Box<dyn SimpleBackend>> {
        let mut ggml = |ty| -> anyhow::Result<Box<dyn SimpleBackend>> {
            let source = if self.args.psnr {
                GgmlSource::Quantize
            } else {
                GgmlSource::Random { seed: GGML_SEED }
            };
            let dtype = self.dtype;
            let linears = self.linears()?;
            let b = GgmlLinears::new(
                Box::new(RandomWeights),
                ty,
                linears,
                transformer_fp8_select,
                source,
                dtype,
            )?;
            Ok(Box::new(b))
        };
        match weights {
            BenchWeights::Stored => Ok(RandomWeights::backend(WeightFormat::Native, transformer_fp8_select)),
            BenchWeights::Fp8 => Ok(RandomWeights::backend(WeightFormat::Fp8, transformer_fp8_select)),
            BenchWeights::Q8_0 => ggml(GgmlDType::Q8_0),
            BenchWeights::Q4K => ggml(GgmlDType::Q4K),
        }
    }

    /// Builds the model of `c` from the seeded random weights.
    fn build(&mut self, c: BenchConfig) -> anyhow::Result<QwenImageTransformer2DModel> {
        if self.device.is_cuda() {
            self.device.set_seed(PSNR_SEED)?;
        }
        let backend = self.backend(c.weights)?;
        let model = if c.offload {
            let opts = OffloadOptions::with_prefetch(self.args.offload_prefetch);
            QwenImageTransformer2DModel::new_streamed(&self.cfg, backend, self.dtype, self.device, opts)
        } else {
            QwenImageTransformer2DModel::new(
                &self.cfg,
                VarBuilder::from_backend(backend, self.dtype, self.device.clone()),
            )
        };
        let model = model.with_context(|| format!("building the transformer ({c})"))?;
        sync(self.device)?;
        Ok(model)
    }

    fn config(&mut self, c: BenchConfig, results: &mut Vec<BenchResult>) -> anyhow::Result<()> {
        let (args, device, dtype) = (self.args, self.device, self.dtype);
        watch::trim(device);
        let free_before = watch::mem_info(device).map(|(free, _)| free);
        watch::start(device);
        let t0 = Instant::now();
        let built = self.build(c);
        let build_s = t0.elapsed().as_secs_f64();
        let model = match built {
            Ok(m) => m,
            Err(e) => {
                watch::stop();
                return Err(e);
            }
        };
        watch::sample();
        let mut first = true;
        for &size in &args.sizes {
            for &refs in &args.refs {
                let g = size / 16;
                let shapes: Vec<(usize, usize, usize)> = (0..=refs).map(|_| (1, g, g)).collect();
                let s_img: usize = shapes.iter().map(|(f, h, w)| f * h * w).sum();
                let x = Tensor::randn(0f32, 1.0, (1, s_img, self.cfg.in_channels), device)?.to_dtype(dtype)?;
                let txt = (1, args.txt_len, self.cfg.joint_attention_dim);
                let ctx = Tensor::randn(0f32, 1.0, txt, device)?.to_dtype(dtype)?;
                let t = Tensor::new(&[0.5f32], device)?.to_dtype(dtype)?;
                let mut last = None;
                let mut forward = || -> anyhow::Result<()> {
                    last = Some(model.forward(&x, &ctx, None, &t, &shapes)?);
                    Ok(())
                };
                let ms = time_ms(device, args.warmup, args.iters, &mut forward)?;
                let mut r = BenchResult {
                    ms,
                    tokens: Some(s_img + args.txt_len),
                    build_s,
                    config: Some(c.to_string()),
                    ..BenchResult::named(format!("transformer_{size}_{refs}ref_{c}"))
                };
                if let Some(stats) = model.offload_stats()? {
                    r.h2d_gb_per_s = stats.gb_per_s();
                    r.copy_ms = Some(stats.copy_ms);
                    r.host_gb = Some(stats.host_bytes as f64 / 1e9);
                    r.pinned = Some(stats.pinned);
                    r.prefetch = Some(stats.prefetch);
                    if first && stats.prefetch > 0 {
                        // The same forward with copies and compute alternating: what prefetch hides.
                        model.set_offload_prefetch(0);
                        let serial = time_ms(device, 1, args.iters.min(2), &mut forward)?;
                        model.set_offload_prefetch(stats.prefetch);
                        r.ms_prefetch0 = Some(serial);
                        r.overlap = (stats.copy_ms > 0.0).then(|| ((serial - ms) / stats.copy_ms).clamp(0.0, 1.0));
                    }
                }
                r.finite = last.as_ref().map(is_finite).transpose()?.unwrap_or(false);
                first = false;
                results.push(r);
            }
        }
        let psnr = if args.psnr {
            let (size, refs) = (args.sizes[0], args.refs[0]);
            Some(super::four_steps(
                &model,
                &self.cfg,
                size,
                refs,
                args.txt_len,
                dtype,
                device,
            )?)
        } else {
            None
        };
        drop(model);
        sync(device)?;
        let min_free = watch::stop();
        let peak = free_before.zip(min_free).map(|(b, m)| b.saturating_sub(m) as f64 / 1e9);
        let name = c.to_string();
        let ours = results
            .iter_mut()
            .rev()
            .take_while(|r| r.config.as_deref() == Some(name.as_str()));
        for r in ours {
            r.peak_gpu_gb = peak;
        }
        if let Some(latents) = psnr {
            self.psnr(c, latents, results)?;
        }
        Ok(())
    }

    /// Records the PSNR of `latents` against the bf16 weights' (the first bf16 configuration's, else a
    /// streamed bf16 model built for it).
    fn psnr(&mut self, c: BenchConfig, latents: Tensor, results: &mut Vec<BenchResult>) -> anyhow::Result<()> {
        let (args, device, dtype) = (self.args, self.device, self.dtype);
        let (size, refs) = (args.sizes[0], args.refs[0]);
        if self.reference.is_none() {
            if c.weights == BenchWeights::Stored {
                self.reference = Some(latents.clone());
            } else {
                let bf16 = BenchConfig {
                    weights: BenchWeights::Stored,
                    offload: device.is_cuda(),
                };
                self.printer
                    .status(format!("building the {bf16} reference for the PSNR"));
                let model = self.build(bf16)?;
                let want = super::four_steps(&model, &self.cfg, size, refs, args.txt_len, dtype, device)?;
                drop(model);
                sync(device)?;
                self.reference = Some(want);
            }
        }
        let want = self.reference.as_ref().expect("set above");
        let db = super::psnr(&latents, want)?;
        self.printer.status(format!(
            "transformer {c}: PSNR of the 4-step latents vs bf16 weights: {db:.1} dB"
        ));
        results.push(BenchResult {
            finite: !db.is_nan(),
            psnr_db: Some(db),
            config: Some(c.to_string()),
            ..BenchResult::named(format!("transformer_{size}_{refs}ref_{c}_4step_psnr"))
        });
        Ok(())
    }
}
