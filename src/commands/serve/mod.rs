//! `qwen-edit serve`: one loaded model answering many jobs, as a RunPod serverless worker
//! ([`runpod`]), as a local HTTP API in RunPod's shapes ([`http`]), or for one test job.
//!
//! The mode is picked as the RunPod SDK picks it: `--test-input`, else `--http`, else the worker when
//! `RUNPOD_WEBHOOK_GET_JOB` is set, else `test_input.json` in the working directory. Everything that
//! can be checked without the model (the mode, the test job's JSON, the allowed folders, the listen
//! address) is checked before the model is loaded. Jobs run one at a time on the thread that holds
//! the model; [`handler`] turns one job input into its result or an error that names the cause.
//! Logs go to stderr through `tracing`; stdout carries only the `--test-input` result.

pub mod handler;
pub mod http;
pub mod runpod;
mod signal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::commands::common::LoadedModel;
use crate::error::UserError;
use crate::printer::Printer;

use handler::{Handler, HandlerConfig};

/// What `serve` was asked to do.
enum Mode {
    /// One job, from `--test-input` or `test_input.json`.
    TestInput(serde_json::Value),
    Http(String),
    Worker(runpod::RunpodEnv),
}

pub fn run(args: ServeArgs, printer: Printer) -> anyhow::Result<u8> {
    let Some(mode) = pick_mode(&args)? else {
        printer.warn("nothing to serve: not on RunPod (RUNPOD_WEBHOOK_GET_JOB is not set), no --http, no --test-input and no test_input.json here");
        eprintln!("hint: run `qwen-edit serve --http 127.0.0.1:8000` for a local API, or `qwen-edit serve --test-input '{{\"input\": {{...}}}}'`");
        return Ok(2);
    };
    let config = handler_config(&args)?;
    let worker = worker_options(&args)?;
    let http_opts = http_options(&args);
    if std::env::var_os("BUCKET_ENDPOINT_URL").is_some() {
        tracing::warn!("BUCKET_ENDPOINT_URL is set, but S3 upload is not supported yet: images are returned as base64");
    }
    // Bind before the (slow) model load so that a taken port fails at once.
    let server = match &mode {
        Mode::Http(addr) => Some(http::bind(addr)?),
        _ => None,
    };
    let model = LoadedModel::load(&args.model, args.vae_tiling, &printer)?;
    let handler = Handler::new(model, config);
    match mode {
        Mode::TestInput(request) => Ok(test_input(&handler, &request)),
        Mode::Http(_) => {
            warm_up(&handler, &args)?;
            let server = server.expect("bound above");
            // From here on SIGTERM/SIGINT finish the running job first (before, they end the process).
            let stop = signal::install();
            http::serve(&handler, server, &http_opts, stop)
        }
        Mode::Worker(env) => {
            warm_up(&handler, &args)?;
            let stop = signal::install();
            runpod::run_worker(&handler, &env, &worker, stop)
        }
    }
}

fn pick_mode(args: &ServeArgs) -> anyhow::Result<Option<Mode>> {
    if let Some(arg) = &args.test_input {
        return Ok(Some(Mode::TestInput(read_test_input(arg)?)));
    }
    if let Some(addr) = &args.http {
        return Ok(Some(Mode::Http(addr.clone())));
    }
    if let Some(env) = runpod::RunpodEnv::from_env()? {
        return Ok(Some(Mode::Worker(env)));
    }
    let local = Path::new("test_input.json");
    if local.is_file() {
        tracing::info!("RUNPOD_WEBHOOK_GET_JOB is not set: running the job in test_input.json");
        return Ok(Some(Mode::TestInput(read_test_input("test_input.json")?)));
    }
    Ok(None)
}

/// `--test-input`: JSON text (starting with `{`) or a file holding it; `{"input": {...}}`.
fn read_test_input(arg: &str) -> anyhow::Result<serde_json::Value> {
    let (text, what) = if arg.trim_start().starts_with('{') {
        (arg.to_string(), "the --test-input JSON".to_string())
    } else {
        let text = std::fs::read_to_string(arg)
            .map_err(|e| UserError::bad_input(format!("cannot read the test input {arg}: {e}")))?;
        (text, arg.to_string())
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| UserError::bad_input(format!("{what} is not valid JSON: {e}")))?;
    if value.get("input").is_none() {
        return Err(UserError::bad_input(format!("{what} has no `input` object"))
            .with_hint(r#"a test input looks like {"input": {"prompt": "...", "image": "..."}}"#)
            .into());
    }
    Ok(value)
}

fn handler_config(args: &ServeArgs) -> anyhow::Result<HandlerConfig> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for dir in &args.allow_paths {
        let resolved = std::fs::canonicalize(dir)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| UserError::bad_input(format!("--allow-path {}: no such folder", dir.display())))?;
        roots.push(resolved);
    }
    Ok(HandlerConfig {
        allowed_roots: roots,
        max_image_bytes: args.max_image_mb * 1024 * 1024,
        fetch_timeout: Duration::from_secs(args.fetch_timeout),
    })
}

fn secs(s: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| UserError::bad_input(format!("{name} must be ≥ 0 seconds, got {s}")).into())
}

fn positive_secs(s: f64, name: &str) -> anyhow::Result<Duration> {
    let d = secs(s, name)?;
    if d.is_zero() {
        return Err(UserError::bad_input(format!("{name} must be more than 0 seconds, got {s}")).into());
    }
    Ok(d)
}

fn worker_options(args: &ServeArgs) -> anyhow::Result<runpod::WorkerOptions> {
    Ok(runpod::WorkerOptions {
        poll_timeout: positive_secs(args.poll_timeout, "--poll-timeout")?,
        post_timeout: positive_secs(args.post_timeout, "--post-timeout")?,
        post_tries: args.post_tries,
        backoff: Duration::from_millis(args.backoff_ms),
        progress_interval: Some(secs(args.progress_interval, "--progress-interval")?).filter(|d| !d.is_zero()),
        max_job_bytes: args.max_request_mb * 1024 * 1024,
    })
}

fn http_options(args: &ServeArgs) -> http::HttpOptions {
    http::HttpOptions {
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_request_mb * 1024 * 1024,
        queue_size: args.queue_size as usize,
    }
}

fn warm_up(handler: &Handler, args: &ServeArgs) -> anyhow::Result<()> {
    if args.no_warmup {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    handler.warm_up()?;
    tracing::info!("warm-up edit done in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the test job, prints `{"id", "status", "output"|"error"}` and returns the exit code: 0, or
/// the failure's.
fn test_input(handler: &Handler, request: &serde_json::Value) -> u8 {
    let id = request
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("local_test")
        .to_string();
    let outcome = handler.run(&request["input"], &mut ());
    let (body, code) = match outcome {
        Ok(output) => (
            serde_json::json!({"id": id, "status": "COMPLETED", "output": output}),
            0,
        ),
        Err(failure) => {
            tracing::error!("job {id} failed: {}", failure.message);
            (
                serde_json::json!({"id": id, "status": "FAILED", "error": failure.message}),
                failure.exit_code,
            )
        }
    };
    println!("{body}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_inputs_need_an_input_object() {
        assert!(read_test_input(r#"{"input": {"prompt": "x"}}"#).is_ok());
        let err = read_test_input(r#"{"prompt": "x"}"#).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 3);
        let err = read_test_input("{not json").unwrap_err();
        assert!(format!("{err}").contains("not valid JSON"), "{err}");
        let err = read_test_input("/no/such/test_input.json").unwrap_err();
        assert!(format!("{err}").contains("cannot read"), "{err}");
    }
}
