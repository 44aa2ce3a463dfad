//! `qwen-edit batch [FILE|-]`: many edits with one loaded model. Reads JSON lines (the job schema of
//! [`crate::jobs`], plus an `output` path per job), writes one JSON result line per job to stdout in
//! input order, continues past failures, and exits 1 if any job failed.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::Context;

use crate::cli::BatchArgs;
use crate::commands::common::{self, LoadedModel, OutputTarget};
use crate::commands::lora::check_job;
use crate::error::{exit_code, UserError};
use crate::io::encode::{BitDepth, OutputFormat};
use crate::jobs::JobInput;
use crate::printer::Printer;

pub fn run(args: BatchArgs, printer: Printer) -> anyhow::Result<u8> {
    let reader: Box<dyn BufRead> = match args.input.as_deref() {
        None | Some("-") => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(path) => {
            Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(|e| {
                UserError::bad_input(format!("cannot open the job file {path}: {e}"))
            })?))
        }
    };
    let model = LoadedModel::load(&args.model, args.vae_tiling, &printer)?;
    let mut stdout = std::io::stdout().lock();
    let (mut ok, mut failed) = (0usize, 0usize);
    for (index, line) in reader.lines().enumerate() {
        let line = line.context("reading the job lines")?;
        if line.trim().is_empty() {
            continue;
        }
        let started = Instant::now();
        let result = run_line(&model, &line, &args, index);
        let value = match result {
            Ok(mut v) => {
                ok += 1;
                v["index"] = index.into();
                v["ok"] = true.into();
                v["seconds"] = started.elapsed().as_secs_f64().into();
                v
            }
            Err(err) => {
                failed += 1;
                printer.warn(format!("job {index} failed: {err:#}"));
                serde_json::json!({
                    "index": index,
                    "ok": false,
                    "error": format!("{err:#}"),
                    "exit_code": exit_code(&err),
                })
            }
        };
        writeln!(stdout, "{value}")?;
        stdout.flush()?;
    }
    printer.status(format!("batch: {ok} succeeded, {failed} failed"));
    Ok(if failed == 0 { 0 } else { 1 })
}

fn run_line(model: &LoadedModel, line: &str, args: &BatchArgs, index: usize) -> anyhow::Result<serde_json::Value> {
    let job = JobInput::parse(line)?.validate()?;
    check_job(&job, &model.loras)?;
    let output = job
        .output
        .clone()
        .or_else(|| args.output_dir.as_ref().map(|d| d.join(format!("{index:05}.png"))))
        .ok_or_else(|| UserError::bad_input("the job has no `output` path (or pass --output-dir)"))?;
    let format = match job.output_format.as_deref() {
        None => None,
        Some(name) => Some(
            <OutputFormat as clap::ValueEnum>::from_str(name, true)
                .map_err(|_| UserError::bad_input(format!("unknown output_format `{name}` (png, jpeg, webp, tiff)")))?,
        ),
    };
    let target = OutputTarget::new(
        Some(output.clone()),
        format,
        BitDepth::Eight,
        args.overwrite,
        args.mkdir,
    )?;
    let images = common::read_images(&job.images, &common::job_fetch_options(), None)?;
    let request = common::request_from(&job, images);
    let out = model.pipeline.run(&request, &mut ())?;
    target.write(&out, &request.prompt, &model.name, args.overwrite, args.mkdir)?;
    Ok(serde_json::json!({
        "output": output.display().to_string(),
        "seed": out.seed,
        "width": out.width,
        "height": out.height,
        "steps": out.steps,
        "timings": out.timings,
    }))
}
