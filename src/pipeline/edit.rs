//! `EditPipeline`: `QwenImageEditPipeline` (Qwen-Image-Edit) and `QwenImageEditPlusPipeline`
//! (-2509, -2511) of diffusers 0.42.1, step by step (spec §1).
//!
//! The models are loaded once; [`EditPipeline::run`] takes one request at a time, so batch mode and
//! the worker reuse a loaded pipeline.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, D};
use image::RgbImage;

use crate::error::UserError;
use crate::io::resize::{resize_rgb, Filter};
use crate::models::lora::{AdapterReport, LoraFile, LoraMerge};
use crate::models::offload::{OffloadOptions, DEFAULT_PREFETCH};
use crate::models::quant::WeightFormat;
use crate::models::text_encoder::{PromptEmbeds, PromptEncoder};
use crate::models::transformer::{QwenImageTransformer2DModel, TransformerConfig, TransformerWeights};
use crate::models::vae::{self, AutoencoderKLQwenImage, TilingMode};
use crate::models::weights::{read_config, ComponentWeights};
use crate::pipeline::latents::{calculate_dimensions, pack, unpack, CONDITION_IMAGE_AREA, VAE_IMAGE_AREA};
use crate::pipeline::layout::{ModelFolder, PipelineKind};
use crate::pipeline::memory::{self, MemoryChoice, MemoryMode, MemoryPlan};
use crate::pipeline::noise::torch_randn;
use crate::pipeline::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};

/// The negative prompt of the model cards, used when CFG is on and none is given.
pub const DEFAULT_NEGATIVE_PROMPT: &str = " ";
/// The model cards' true CFG scale.
pub const DEFAULT_TRUE_CFG_SCALE: f64 = 4.0;

/// One edit.
#[derive(Debug, Clone)]
pub struct EditRequest {
    /// Input images, already decoded to RGB (1 for Edit, 1–3 for Plus).
    pub images: Vec<RgbImage>,
    pub prompt: String,
    /// `None`: the default `" "` (CFG on when the scale is > 1).
    pub negative_prompt: Option<String>,
    /// `None`: the model card's default for the pipeline.
    pub steps: Option<usize>,
    /// `None`: 4.0.
    pub true_cfg_scale: Option<f64>,
    pub seed: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Side in pixels of the square area the reference images are resized to for the VAE (and, for
    /// Qwen-Image-Edit, for the prompt encoder), aspect kept. `None`: 1024, as the reference pipelines.
    /// Smaller is faster and keeps less detail of the references; the output size is not affected.
    pub ref_size: Option<u32>,
}

/// Wall-clock seconds per stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub encode_prompt: f64,
    pub encode_images: f64,
    pub denoise: f64,
    pub decode: f64,
}

/// The result of one edit.
#[derive(Debug)]
pub struct EditOutput {
    /// Decoded image `[1, 3, H, W]` in [-1, 1] (f32).
    pub image: Tensor,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub true_cfg_scale: f64,
    pub cfg: bool,
    pub seed: u64,
    pub timings: Timings,
}

/// Observes the run (progress bars, the worker's progress updates, parity tests).
pub trait StepObserver {
    /// Called once the schedule is known.
    fn on_start(&mut self, _steps: usize) {}
    /// Called after each denoising step with the packed latents.
    fn on_step(&mut self, _step: usize, _latents: &Tensor) {}
}

impl StepObserver for () {}

/// What [`EditPipeline::load_with`] loads besides the model folder, and how.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// LoRAs merged into the transformer at load.
    pub loras: Vec<LoraFile>,
    /// Refuse LoRA keys that adapt nothing (default on).
    pub lora_strict: bool,
    /// fp8: the transformer's and the language model's Linear weights quantized at load.
    pub weights: WeightFormat,
    /// A single `.safetensors` / `.gguf` transformer file instead of the folder's weights.
    pub transformer_file: Option<PathBuf>,
    /// Which components stay on the device between uses.
    pub memory: MemoryMode,
    /// With [`MemoryPlan::Offload`]: transformer blocks copied ahead of use.
    pub offload_prefetch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            loras: Vec::new(),
            lora_strict: true,
            weights: WeightFormat::Native,
            transformer_file: None,
            memory: MemoryMode::Auto,
            offload_prefetch: DEFAULT_PREFETCH,
        }
    }
}

impl LoadOptions {
    fn transformer_weights(&self) -> TransformerWeights {
        TransformerWeights {
            loras: self.loras.clone(),
            lora_strict: self.lora_strict,
            format: self.weights,
            file: self.transformer_file.clone(),
            offload: None,
        }
    }
}

/// Defaults that replace the model card's: a scheduler config, a step count and a CFG scale (the
/// Lightning presets). A request's own `steps` / `true_cfg_scale` still win.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub scheduler: SchedulerConfig,
    pub steps: usize,
    pub true_cfg_scale: f64,
}

/// A loaded pipeline. With [`MemoryPlan::Low`] the text encoder and the transformer are loaded when a
/// run needs them and freed right after (one large component on the device at a time). With
/// [`MemoryPlan::Offload`] the transformer is loaded once with its blocks in host memory (streamed to
/// the device as it runs) and the text encoder is loaded per run.
pub struct EditPipeline {
    pub kind: PipelineKind,
    transformer: Mutex<Option<QwenImageTransformer2DModel>>,
    transformer_cfg: TransformerConfig,
    vae: AutoencoderKLQwenImage,
    text_encoder: Mutex<Option<PromptEncoder>>,
    memory: MemoryChoice,
    folder: ModelFolder,
    opts: LoadOptions,
    scheduler: SchedulerConfig,
    preset: Option<Preset>,
    loras: Vec<AdapterReport>,
    device: Device,
    dtype: DType,
}

impl EditPipeline {
    /// Loads every component of `folder` onto `device` in `dtype`.
    pub fn load(folder: &ModelFolder, device: &Device, dtype: DType) -> anyhow::Result<Self> {
        Self::load_with(folder, device, dtype, &LoadOptions::default())
    }

    /// [`Self::load`] with LoRAs merged into the transformer.
    pub fn load_with(folder: &ModelFolder, device: &Device, dtype: DType, opts: &LoadOptions) -> anyhow::Result<Self> {
        Self::load_inner(folder, device, dtype, opts).map_err(|e| crate::device::classify_error(e, device))
    }

    fn load_inner(folder: &ModelFolder, device: &Device, dtype: DType, opts: &LoadOptions) -> anyhow::Result<Self> {
        let scheduler = SchedulerConfig::from_dir(&folder.component("scheduler"))?;
        let transformer_dir = folder.component("transformer");
        let transformer_cfg: TransformerConfig =
            read_config(&transformer_dir).map_err(|e| UserError::model_missing(format!("{e:#}")))?;
        let sizes = memory::estimate_pipeline(
            &folder.component("text_encoder"),
            &transformer_dir,
            opts.transformer_file.as_deref(),
            dtype,
            opts.weights,
            opts.offload_prefetch,
        );
        let choice = memory::choose(opts.memory, sizes, memory::free_device_memory(device));
        tracing::info!("memory plan {:?}: {}", choice.plan, choice.reason);
        let vae = AutoencoderKLQwenImage::load(&folder.component("vae"), dtype, device).context("loading the VAE")?;
        let mut pipe = Self {
            kind: folder.kind,
            transformer: Mutex::new(None),
            transformer_cfg,
            vae,
            text_encoder: Mutex::new(None),
            memory: choice,
            folder: folder.clone(),
            opts: opts.clone(),
            scheduler,
            preset: None,
            loras: Vec::new(),
            device: device.clone(),
            dtype,
        };
        // The text encoder is loaded in every plan (Low and Offload free it after the first prompts); the
        // transformer in High and Offload (streamed). Low checks the LoRAs against the transformer's
        // weights now, so that a bad LoRA fails at load, not at the first job.
        *pipe.text_encoder.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(pipe.load_text_encoder()?);
        match pipe.memory.plan {
            MemoryPlan::High | MemoryPlan::Offload => {
                let (t, reports) = pipe.load_transformer()?;
                pipe.loras = reports;
                *pipe.transformer.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(t);
            }
            MemoryPlan::Low if !opts.loras.is_empty() => {
                let base = ComponentWeights::open(&transformer_dir)
                    .map_err(|e| UserError::model_missing(format!("cannot open the transformer weights: {e}")))?;
                pipe.loras = LoraMerge::new(&opts.loras, &base, opts.lora_strict)?.reports;
            }
            MemoryPlan::Low => {}
        }
        Ok(pipe)
    }

    fn load_text_encoder(&self) -> anyhow::Result<PromptEncoder> {
        PromptEncoder::load_with_format(
            &self.folder.component("text_encoder"),
            &self.folder.component("processor"),
            self.dtype,
            &self.device,
            self.opts.weights,
        )
        .context("loading the text encoder")
    }

    fn load_transformer(&self) -> anyhow::Result<(QwenImageTransformer2DModel, Vec<AdapterReport>)> {
        let mut weights = self.opts.transformer_weights();
        if self.memory.plan == MemoryPlan::Offload {
            weights.offload = Some(OffloadOptions::with_prefetch(self.opts.offload_prefetch));
        }
        QwenImageTransformer2DModel::load_with(
            &self.folder.component("transformer"),
            self.dtype,
            &self.device,
            &weights,
        )
        .context("loading the transformer")
    }

    /// Which components stay resident, and why.
    pub fn memory(&self) -> &MemoryChoice {
        &self.memory
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Switches tiled VAE encode/decode on (reference defaults) or off.
    pub fn set_vae_tiling(&mut self, on: bool) {
        self.vae.set_tiling(if on { TilingMode::Auto } else { TilingMode::Off });
    }

    /// The step count used when a request gives none.
    pub fn default_steps(&self) -> usize {
        self.preset.as_ref().map_or(self.kind.default_steps(), |p| p.steps)
    }

    /// The true CFG scale used when a request gives none.
    pub fn default_true_cfg_scale(&self) -> f64 {
        self.preset
            .as_ref()
            .map_or(DEFAULT_TRUE_CFG_SCALE, |p| p.true_cfg_scale)
    }

    /// Replaces the scheduler config and the default steps / CFG scale (e.g. a Lightning preset);
    /// `None` goes back to the model folder's.
    pub fn set_preset(&mut self, preset: Option<Preset>) -> anyhow::Result<()> {
        if let Some(p) = &preset {
            p.scheduler.validate()?;
        }
        self.preset = preset;
        Ok(())
    }

    /// The scheduler config in use.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        self.preset.as_ref().map_or(&self.scheduler, |p| &p.scheduler)
    }

    /// What was merged from each LoRA at load.
    pub fn loras(&self) -> &[AdapterReport] {
        &self.loras
    }

    /// Runs one edit.
    pub fn run(&self, req: &EditRequest, observer: &mut dyn StepObserver) -> anyhow::Result<EditOutput> {
        self.run_inner(req, observer)
            .map_err(|e| crate::device::classify_error(e, &self.device))
    }

    fn run_inner(&self, req: &EditRequest, observer: &mut dyn StepObserver) -> anyhow::Result<EditOutput> {
        let n_images = req.images.len();
        if n_images == 0 || n_images > self.kind.max_images() {
            return Err(UserError::bad_input(format!(
                "{} takes 1 to {} input image(s), got {n_images}",
                self.kind.class_name(),
                self.kind.max_images()
            ))
            .with_hint(if self.kind == PipelineKind::Edit {
                "use Qwen-Image-Edit-2509 or -2511 (`--model 2511`) for several reference images"
            } else {
                "pass at most 3 images"
            })
            .into());
        }
        if req.prompt.trim().is_empty() {
            return Err(UserError::bad_input("the prompt is empty").into());
        }
        let mut timings = Timings::default();
        let vsf = self.vae.spatial_scale_factor() as u32;
        let multiple_of = vsf * 2;

        // 1. Sizes: output from image[0] (Edit) or the last image (Plus).
        let size_src = match self.kind {
            PipelineKind::Edit => &req.images[0],
            PipelineKind::EditPlus => &req.images[n_images - 1],
        };
        let (calc_w, calc_h) = calculate_dimensions(VAE_IMAGE_AREA, size_src.width() as f64 / size_src.height() as f64);
        let width = req.width.unwrap_or(calc_w) / multiple_of * multiple_of;
        let height = req.height.unwrap_or(calc_h) / multiple_of * multiple_of;
        if width == 0 || height == 0 {
            return Err(UserError::bad_input(format!(
                "output size {width}x{height} is too small (minimum {multiple_of})"
            ))
            .into());
        }

        // 2. Images: condition images for the VL encoder and ~1 MP images for the VAE.
        let mut condition_images = Vec::with_capacity(n_images);
        let mut vae_images = Vec::with_capacity(n_images);
        let ref_area = match req.ref_size {
            None => VAE_IMAGE_AREA,
            Some(s) if (multiple_of..=8192).contains(&s) => s as f64 * s as f64,
            Some(s) => {
                return Err(UserError::bad_input(format!(
                    "reference size {s} is out of range ({multiple_of}..=8192 pixels)"
                ))
                .into())
            }
        };
        for img in &req.images {
            let ratio = img.width() as f64 / img.height() as f64;
            let (vw, vh) = calculate_dimensions(ref_area, ratio);
            let vae_img = resize_rgb(img, vw, vh, Filter::Lanczos);
            match self.kind {
                PipelineKind::Edit => condition_images.push(vae_img.clone()),
                PipelineKind::EditPlus => {
                    let (cw, ch) = calculate_dimensions(CONDITION_IMAGE_AREA, ratio);
                    condition_images.push(resize_rgb(img, cw, ch, Filter::Lanczos));
                }
            }
            vae_images.push(vae_img);
        }

        // 3. Prompt embeddings (the negative prompt sees the same images).
        let true_cfg_scale = req.true_cfg_scale.unwrap_or(self.default_true_cfg_scale());
        let negative = req
            .negative_prompt
            .clone()
            .unwrap_or_else(|| DEFAULT_NEGATIVE_PROMPT.to_string());
        let do_cfg = true_cfg_scale > 1.0;
        let low = self.memory.plan == MemoryPlan::Low;
        let text_encoder_per_run = self.memory.plan != MemoryPlan::High;
        if low {
            // One large component at a time: the transformer of the previous job goes first.
            *lock(&self.transformer) = None;
        }
        let t0 = Instant::now();
        let (cond, uncond) = {
            let mut slot = lock(&self.text_encoder);
            if slot.is_none() {
                *slot = Some(self.load_text_encoder()?);
            }
            let te = slot.as_ref().expect("loaded above");
            let encode = |prompt: &str| -> anyhow::Result<PromptEmbeds> {
                Ok(match self.kind {
                    PipelineKind::Edit => te.encode_edit(prompt, &condition_images[0])?,
                    PipelineKind::EditPlus => te.encode_plus(prompt, &condition_images)?,
                })
            };
            let cond = encode(&req.prompt).context("encoding the prompt")?;
            let uncond = if do_cfg {
                Some(encode(&negative).context("encoding the negative prompt")?)
            } else {
                None
            };
            if text_encoder_per_run {
                *slot = None;
            }
            (cond, uncond)
        };
        timings.encode_prompt = t0.elapsed().as_secs_f64();

        // 4. Latents: seeded noise (as torch.randn on a CPU generator) and the packed image latents.
        let t0 = Instant::now();
        let channels = self.transformer_cfg.in_channels / 4;
        let lh = 2 * (height / multiple_of) as usize;
        let lw = 2 * (width / multiple_of) as usize;
        let noise = torch_randn(req.seed, &[1, 1, channels, lh, lw], self.dtype, &self.device)?;
        let mut latents = pack(&noise.reshape((1, channels, lh, lw))?)?;
        let n_out = latents.dim(1)?;
        let mut img_shapes = vec![(1usize, lh / 2, lw / 2)];
        let mut image_latents = Vec::with_capacity(n_images);
        for img in &vae_images {
            let x = vae::preprocess(img, &self.device)?.to_dtype(self.dtype)?;
            let z = self.vae.normalize_latents(&self.vae.encode(&x)?)?;
            let (_, _, zh, zw) = z.dims4()?;
            img_shapes.push((1, zh / 2, zw / 2));
            image_latents.push(pack(&z)?);
        }
        let image_latents = Tensor::cat(&image_latents, 1)?;
        timings.encode_images = t0.elapsed().as_secs_f64();

        // 5. Timesteps: mu from the noise tokens only.
        let steps = req.steps.unwrap_or(self.default_steps());
        let scheduler_cfg = self.scheduler_config();
        let mut scheduler = FlowMatchEulerScheduler::new(scheduler_cfg.clone());
        let mu = scheduler_cfg.mu(n_out);
        scheduler.set_timesteps(steps, mu)?;
        let timesteps: Vec<f32> = scheduler.timesteps().to_vec();
        observer.on_start(timesteps.len());

        // 6. Denoising loop.
        let t0 = Instant::now();
        let mut slot = lock(&self.transformer);
        if slot.is_none() {
            *slot = Some(self.load_transformer()?.0);
        }
        let transformer = slot.as_ref().expect("loaded above");
        for (i, &t) in timesteps.iter().enumerate() {
            let x_in = Tensor::cat(&[&latents, &image_latents], 1)?;
            let timestep = Tensor::new(&[model_timestep(t, self.dtype)], &self.device)?.to_dtype(self.dtype)?;
            let forward = |emb: &PromptEmbeds| -> anyhow::Result<Tensor> {
                let out = transformer.forward(&x_in, &emb.embeds, emb.mask.as_ref(), &timestep, &img_shapes)?;
                Ok(out.narrow(1, 0, n_out)?)
            };
            let mut pred = forward(&cond)?;
            if let Some(uncond) = &uncond {
                let neg = forward(uncond)?;
                pred = cfg_combine(&pred, &neg, true_cfg_scale)?;
            }
            latents = scheduler.step(&pred, i, &latents)?;
            check_finite(&latents, i)?;
            observer.on_step(i, &latents);
        }
        if low {
            *slot = None;
        }
        drop(slot);
        timings.denoise = t0.elapsed().as_secs_f64();

        // 7. Decode.
        let t0 = Instant::now();
        let z = unpack(&latents, lh, lw)?;
        let z = self.vae.denormalize_latents(&z)?;
        let image = self.vae.decode(&z)?.to_dtype(DType::F32)?;
        timings.decode = t0.elapsed().as_secs_f64();

        Ok(EditOutput {
            image,
            width,
            height,
            steps: timesteps.len(),
            true_cfg_scale,
            cfg: do_cfg,
            seed: req.seed,
            timings,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The timestep handed to the transformer: `t` rounded through the latent dtype, divided by 1000 in
/// that dtype (the reference does `t.to(latents.dtype) / 1000`).
pub fn model_timestep(t: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => {
            let tb = half::bf16::from_f32(t).to_f32();
            half::bf16::from_f32(tb / 1000.0).to_f32()
        }
        DType::F16 => {
            let th = half::f16::from_f32(t).to_f32();
            half::f16::from_f32(th / 1000.0).to_f32()
        }
        _ => t / 1000.0,
    }
}

/// True CFG with the per-token norm rescale: `comb = neg + s·(cond − neg)`, then
/// `comb · ‖cond‖ / ‖comb‖` (L2 over the feature axis).
pub fn cfg_combine(cond: &Tensor, neg: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dtype = cond.dtype();
    let c = cond.to_dtype(DType::F32)?;
    let n = neg.to_dtype(DType::F32)?;
    let comb = (&n + ((&c - &n)? * scale)?)?;
    let c_norm = c.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    let comb_norm = comb.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    comb.broadcast_mul(&(c_norm / comb_norm)?)?.to_dtype(dtype)
}

fn check_finite(latents: &Tensor, step: usize) -> anyhow::Result<()> {
    let s = latents.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
    if !s.is_finite() {
        anyhow::bail!(
            "the latents became NaN/inf at step {} (numerical failure in the model)",
            step + 1
        );
    }
    Ok(())
}
