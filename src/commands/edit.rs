//! `qwen-edit edit`: read and check every input, load the model, run the pipeline, write the result
//! atomically.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;

use crate::cli::EditArgs;
use crate::commands::common::{self, LoadedModel, OutputTarget};
use crate::device::DeviceSpec;
use crate::error::UserError;
use crate::io::encode::BitDepth;
use crate::io::source::FetchOptions;
use crate::pipeline::edit::{EditRequest, StepObserver};
use crate::printer::Printer;

pub fn run(args: EditArgs, printer: Printer) -> anyhow::Result<u8> {
    let started = Instant::now();
    // 1. Everything that can be checked without the model, first.
    let stdin_users = args.images.iter().filter(|s| s.as_str() == "-").count()
        + usize::from(args.prompt_file.as_deref() == Some(Path::new("-")));
    if stdin_users > 1 {
        return Err(UserError::bad_input("stdin (`-`) can be used by only one input").into());
    }
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => read_prompt_file(file)?,
        (None, None) => return Err(UserError::bad_input("no prompt: pass --prompt or --prompt-file").into()),
    };
    if prompt.trim().is_empty() {
        return Err(UserError::bad_input("the prompt is empty").into());
    }
    let path = match &args.output {
        Some(p) if p.as_os_str() == "-" => None,
        Some(p) => Some(p.clone()),
        None => Some(common::default_output_name(&args.images[0])),
    };
    if path.is_none() && args.json {
        return Err(UserError::bad_input("--json and `-o -` both want stdout: write the image to a file").into());
    }
    let bit_depth = if args.bit_depth == "16" {
        BitDepth::Sixteen
    } else {
        BitDepth::Eight
    };
    let target = OutputTarget::new(path, args.format, bit_depth, args.overwrite, args.mkdir)?;
    DeviceSpec::parse(&args.model.device)?;
    let mut stdin = std::io::stdin().lock();
    let images = common::read_images(&args.images, &FetchOptions::default(), Some(&mut stdin))?;
    drop(stdin);

    // 2. Model and device.
    let model = LoadedModel::load(&args.model, args.vae_tiling, &printer)?;

    // 3. Edit.
    let seed = args.seed.unwrap_or_else(common::random_seed);
    if args.seed.is_none() {
        printer.status(format!("seed: {seed}"));
    }
    let request = EditRequest {
        images,
        prompt: prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps.map(|s| s as usize),
        true_cfg_scale: args.true_cfg_scale,
        seed,
        width: args.width,
        height: args.height,
        ref_size: args.ref_size,
    };
    let mut bar = BarObserver { printer, bar: None };
    let out = model.pipeline.run(&request, &mut bar)?;
    if let Some(b) = bar.bar.take() {
        b.finish_and_clear();
    }

    // 4. Write.
    let t_write = Instant::now();
    target.write(&out, &prompt, &model.name, args.overwrite, args.mkdir)?;
    let write_s = t_write.elapsed().as_secs_f64();
    if let Some(path) = &target.path {
        printer.status(format!(
            "wrote {} ({}x{}, {} steps, seed {seed})",
            path.display(),
            out.width,
            out.height,
            out.steps
        ));
    }
    if args.json {
        let summary = serde_json::json!({
            "outputs": target.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "seed": seed,
            "width": out.width,
            "height": out.height,
            "steps": out.steps,
            "true_cfg_scale": out.true_cfg_scale,
            "cfg": out.cfg,
            "model": model.name,
            "pipeline": model.pipeline.kind.class_name(),
            "device": args.model.device,
            "dtype": format!("{:?}", model.dtype).to_lowercase(),
            "loras": model.pipeline.loras(),
            "timings": {
                "load": model.load_seconds,
                "encode_prompt": out.timings.encode_prompt,
                "encode_images": out.timings.encode_images,
                "denoise": out.timings.denoise,
                "decode": out.timings.decode,
                "write": write_s,
                "total": started.elapsed().as_secs_f64(),
            },
        });
        println!("{summary}");
    }
    Ok(0)
}

fn read_prompt_file(file: &Path) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from stdin")?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| UserError::bad_input(format!("cannot read the prompt file {}: {e}", file.display())))?
    };
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Drives the per-step progress bar.
struct BarObserver {
    printer: Printer,
    bar: Option<ProgressBar>,
}

impl StepObserver for BarObserver {
    fn on_start(&mut self, steps: usize) {
        self.bar = Some(self.printer.bar(steps as u64, "denoising"));
    }
    fn on_step(&mut self, _step: usize, _latents: &candle_core::Tensor) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
}
