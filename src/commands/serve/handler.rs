//! One job: its `input` object in, its `output` object or an error that names the cause out.
//!
//! Order of work: the input is parsed and validated ([`crate::jobs`]), the output format checked,
//! every image source checked against the policy (local files only below an allowed folder) — all
//! before any image is read or the GPU is touched; then the images are read (URLs with size and time
//! limits, http(s) only) and decoded with the decoder's size limits, the pipeline runs, and the
//! image is encoded and returned as base64. A panic inside the pipeline is caught and reported as
//! that job's failure; after a GPU failure the device is probed, and a device that no longer works
//! makes the failure fatal (the worker stops, so that the platform replaces it).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use base64::Engine;
use image::RgbImage;

use crate::commands::common::{self, LoadedModel};
use crate::error::{exit_code, user_error, ErrorKind, UserError};
use crate::io::decode::{decode_image, DecodeLimits};
use crate::io::encode::{BitDepth, OutputFormat};
use crate::io::source::{classify, read_base64, read_source, FetchOptions, SourceKind};
use crate::jobs::JobInput;
use crate::pipeline::edit::{EditRequest, StepObserver};

/// The policy a job's inputs are read under.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Local files are read only below these (canonical) folders; none: no local files.
    pub allowed_roots: Vec<std::path::PathBuf>,
    /// Largest input image in bytes, for every kind of source.
    pub max_image_bytes: u64,
    /// Time allowed for one download attempt, body included.
    pub fetch_timeout: Duration,
}

/// Why a job failed.
#[derive(Debug, Clone)]
pub struct JobFailure {
    /// The error with its causes and hint, for the job's `error` field.
    pub message: String,
    /// The exit code `edit` would have given (3 bad input, 4 model, 5 GPU, 1 other).
    pub exit_code: u8,
    /// The device no longer works: stop serving after answering this job.
    pub fatal: bool,
}

/// The loaded model and the input policy.
pub struct Handler {
    pub model: LoadedModel,
    fetch: FetchOptions,
    config: HandlerConfig,
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(msg).into()
}

/// `err` as one line: the message, its causes, and the hint.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = format!("{err:#}");
    if let Some(hint) = user_error(err).and_then(|u| u.hint.as_deref()) {
        text.push_str(" (hint: ");
        text.push_str(hint);
        text.push(')');
    }
    text
}

impl Handler {
    pub fn new(model: LoadedModel, config: HandlerConfig) -> Self {
        let fetch = FetchOptions {
            connect_timeout: Duration::from_secs(10).min(config.fetch_timeout),
            read_timeout: Duration::from_secs(30).min(config.fetch_timeout),
            total_timeout: config.fetch_timeout,
            max_bytes: config.max_image_bytes,
            max_redirects: 5,
            retries: 2,
            backoff_base: Duration::from_millis(500),
            allowed_roots: Some(config.allowed_roots.clone()),
            allow_stdin: false,
        };
        Self { model, fetch, config }
    }

    /// Runs one job; every failure, a panic included, comes back as a [`JobFailure`].
    pub fn run(
        &self,
        input: &serde_json::Value,
        observer: &mut dyn StepObserver,
    ) -> Result<serde_json::Value, JobFailure> {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run_job(input, observer)));
        let err = match outcome {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(err)) => err,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                anyhow::anyhow!("internal error while running the job: {what}")
            }
        };
        let fatal = user_error(&err).is_some_and(|u| u.kind == ErrorKind::Device) && !self.device_works();
        if fatal {
            tracing::error!("the device no longer works after this failure: the worker will stop");
        }
        Err(JobFailure {
            message: error_text(&err),
            exit_code: exit_code(&err),
            fatal,
        })
    }

    /// Whether the device still computes (after a GPU failure: out of memory leaves it usable, a
    /// sticky CUDA error does not).
    fn device_works(&self) -> bool {
        let device = self.model.pipeline.device();
        let probe = || -> candle_core::Result<f32> {
            device.synchronize()?;
            candle_core::Tensor::ones(16, candle_core::DType::F32, device)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        match probe() {
            Ok(16.0) => true,
            Ok(v) => {
                tracing::error!("device probe computed {v} instead of 16");
                false
            }
            Err(e) => {
                tracing::error!("device probe failed: {e}");
                false
            }
        }
    }

    /// A small edit of a synthetic image: checks the whole pipeline on the device before serving.
    pub fn warm_up(&self) -> anyhow::Result<()> {
        let image = RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
        let request = EditRequest {
            images: vec![image],
            prompt: "warm-up".into(),
            negative_prompt: None,
            // Two steps: schedulers with `shift_terminal` need at least two.
            steps: Some(2),
            true_cfg_scale: Some(1.0),
            seed: 0,
            width: Some(64),
            height: Some(64),
            ref_size: Some(64),
        };
        let out = self
            .model
            .pipeline
            .run(&request, &mut ())
            .map_err(|e| e.context("the warm-up edit failed"))?;
        common::encode_result(&out, "warm-up", &self.model.name, OutputFormat::Png, BitDepth::Eight)?;
        Ok(())
    }

    fn run_job(&self, input: &serde_json::Value, observer: &mut dyn StepObserver) -> anyhow::Result<serde_json::Value> {
        let started = Instant::now();
        if !input.is_object() {
            return Err(bad(format!(
                "the job `input` must be a JSON object, not {}",
                json_kind(input)
            )));
        }
        let job_input: JobInput =
            serde_json::from_value(input.clone()).map_err(|e| bad(format!("invalid job input: {e}")))?;
        let declared_base64 = job_input.image_base64.clone();
        let job = job_input.validate()?;
        crate::commands::lora::check_job(&job, &self.model.loras)?;
        if job.output.is_some() {
            return Err(UserError::bad_input("`output` (a file path) is for `qwen-edit batch`")
                .with_hint("leave it out: the image is returned in the result")
                .into());
        }
        let format = match job.output_format.as_deref() {
            Some(name) => OutputFormat::from_name(name)?,
            None => OutputFormat::Png,
        };
        for src in &job.images {
            self.check_source(src)?;
        }

        let t0 = Instant::now();
        let limits = DecodeLimits::default();
        let mut images = Vec::with_capacity(job.images.len());
        for src in &job.images {
            let bytes = if declared_base64.as_deref() == Some(src.as_str()) {
                read_base64(src, &self.fetch)?
            } else {
                read_source(src, &self.fetch, &mut std::io::empty())?
            };
            images.push(decode_image(&bytes.bytes, &limits, &bytes.label)?);
        }
        let fetch_s = t0.elapsed().as_secs_f64();

        let request = common::request_from(&job, images);
        let out = self.model.pipeline.run(&request, observer)?;
        let t0 = Instant::now();
        let bytes = common::encode_result(&out, &request.prompt, &self.model.name, format, BitDepth::Eight)?;
        let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let encode_s = t0.elapsed().as_secs_f64();
        Ok(serde_json::json!({
            "images": [{
                "filename": format!("edited-{}.{}", out.seed, format.extension()),
                "type": "base64",
                "data": data,
            }],
            "seed": out.seed,
            "width": out.width,
            "height": out.height,
            "steps": out.steps,
            "true_cfg_scale": out.true_cfg_scale,
            "timings": {
                "fetch": fetch_s,
                "encode_prompt": out.timings.encode_prompt,
                "encode_images": out.timings.encode_images,
                "denoise": out.timings.denoise,
                "decode": out.timings.decode,
                "encode": encode_s,
                "total": started.elapsed().as_secs_f64(),
            },
        }))
    }

    /// Refuses a local path before touching the filesystem when no folder is allowed.
    fn check_source(&self, src: &str) -> anyhow::Result<()> {
        if classify(src) == SourceKind::Path && self.config.allowed_roots.is_empty() {
            let shown: String = src.chars().take(80).collect();
            return Err(UserError::bad_input(format!(
                "reading local files is not allowed here (`{shown}`{})",
                if shown.len() < src.len() { "…" } else { "" }
            ))
            .with_hint("send the image as a URL or base64, or start the worker with --allow-path DIR")
            .into());
        }
        Ok(())
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
