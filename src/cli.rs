//! The command-line surface: clap derive types only. The doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::io::encode::OutputFormat;

/// The model used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen-Image-Edit-2511";

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure
  2  usage error (bad flags or values)
  3  bad input (unreadable, undecodable or too large image; unreachable URL)
  4  model or weights missing or incomplete (run `qwen-edit fetch-models`)
  5  GPU/CUDA unavailable or failed (run `qwen-edit doctor`)";

/// Edit images with the Qwen-Image-Edit models (Edit, 2509, 2511) in-process on NVIDIA GPUs.
///
/// qwen-edit runs the diffusers Qwen-Image-Edit pipelines natively (Rust + candle): give it one to
/// three images and an instruction, get the edited image. Results go to files or stdout; logs and
/// progress go to stderr.
#[derive(Debug, Parser)]
#[command(name = "qwen-edit", version, propagate_version = true, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v: debug, -vv: trace). Hides progress bars.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// Only errors on stderr: no progress bars, no summary lines.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// When to use colours on stderr. `auto` honours NO_COLOR and whether stderr is a terminal.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN", help_heading = "Global options")]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Edit one to three images following a text instruction.
    ///
    /// Each IMAGE is a file path, an http(s) URL, a `data:image/...;base64,` URI, a bare base64
    /// string, or `-` for stdin. Qwen-Image-Edit takes one image; 2509 and 2511 take one to three
    /// (the output size follows the last one).
    #[command(after_long_help = AFTER_HELP)]
    Edit(EditArgs),

    /// Check whether this machine can run qwen-edit: CUDA, GPUs, memory, disk, cached models.
    #[command(after_long_help = AFTER_HELP)]
    Doctor(DoctorArgs),

    /// Download model weights from the Hugging Face Hub into the standard hub cache.
    #[command(after_long_help = AFTER_HELP)]
    FetchModels(FetchModelsArgs),

    /// Run many edits with one loaded model: JSON lines in, one JSON result line per job out.
    ///
    /// Each input line is a job: {"prompt", "image" | "image_url" | "image_base64" | "image_path" |
    /// "images": [...], "output", "negative_prompt", "seed", "steps", "true_cfg_scale", "width",
    /// "height", "output_format", "ref_size", "loras": [{"path" | "repo", "file", "scale"}]}. LoRAs
    /// are merged once at startup (--lora, --lightning): a job's `loras`, when given, must equal
    /// that set. Results go to stdout in input order; a failed job is reported and
    /// the batch goes on; the exit code is 1 if any job failed.
    #[command(after_long_help = AFTER_HELP)]
    Batch(BatchArgs),

    /// Serve edits: a RunPod serverless worker, a local HTTP API, or one test job.
    ///
    /// The mode is picked in this order: `--test-input` runs one job and prints its result; `--http
    /// ADDR` serves a local API in RunPod's shapes (POST /runsync, POST /run, GET /status/ID, GET
    /// /health); with RUNPOD_WEBHOOK_GET_JOB set (as on RunPod) it takes jobs from RunPod, posts the
    /// results and sends heartbeats; otherwise a `test_input.json` in the working directory is run as
    /// with `--test-input`. The model is loaded once, checked with a warm-up edit, and kept for every
    /// job. A job is the `input` object of a RunPod request, in the job schema of `batch` (without
    /// `output`); a failed job is answered with an error and the worker goes on.
    #[command(after_long_help = SERVE_HELP)]
    Serve(ServeArgs),

    /// Time the full-size networks with random weights on a device (for comparing hardware).
    ///
    /// Builds the transformer, the VAE and the prompt encoder at their published sizes with random
    /// weights in the compute dtype, then times transformer forwards (per size and reference count),
    /// VAE encode/decode and prompt encoding (vision tower + language model) for a 384² and a 1024²
    /// image; `--load DIR` also times loading a transformer checkpoint. `bench/diffusers_bench.py`
    /// measures diffusers on the same shapes.
    Bench(BenchArgs),

    /// Print a shell completion script to stdout.
    Completions(CompletionsArgs),
}

/// Options that pick and load the model (shared by edit and the other model commands).
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hub repo id (or `edit`, `2509`, `2511`) or a local folder in the diffusers layout.
    #[arg(long, env = "QWEN_EDIT_MODEL", default_value = DEFAULT_MODEL, value_name = "REPO_OR_DIR")]
    pub model: String,

    /// Hub revision (branch, tag or commit) of the model.
    #[arg(long, default_value = "main", value_name = "REV")]
    pub revision: String,

    /// Never touch the network: use only what is in the hub cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Device to run on: `cuda`, `cuda:N` or `cpu` (CPU is only practical for tiny test models).
    #[arg(long, default_value = "cuda", value_name = "DEVICE")]
    pub device: String,

    /// Compute dtype (default: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,

    #[command(flatten)]
    pub lora: LoraArgs,

    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// GPU memory: weight formats and which components stay resident.
#[derive(Debug, Clone, Args)]
pub struct MemoryArgs {
    /// Which components stay on the GPU: `high` keeps all (fastest for many jobs), `low` holds one
    /// large component at a time (text encoder, then transformer; each job reloads them), `offload`
    /// keeps the transformer's blocks in host memory and streams them to the GPU as it runs (24 GB
    /// cards; needs host RAM for the transformer), `auto` picks `high` when everything fits in the
    /// free GPU memory, else `low` when the transformer fits alone, else `offload`.
    #[arg(long, env = "QWEN_EDIT_MEMORY", value_enum, default_value_t = MemoryArg::Auto, help_heading = "Memory")]
    pub memory: MemoryArg,

    /// With `--memory offload`: transformer blocks copied to the GPU ahead of the one computing, on a
    /// second CUDA stream (0: copy, then compute, no overlap). Each costs one block of GPU memory
    /// (0.68 GB in bf16, 0.34 GB in fp8).
    #[arg(
        long,
        env = "QWEN_EDIT_OFFLOAD_PREFETCH",
        default_value_t = 2,
        value_name = "N",
        help_heading = "Memory"
    )]
    pub offload_prefetch: usize,

    /// Weight format on the GPU: `stored` as in the files, `fp8` quantizes the transformer's and the
    /// language model's Linear weights to float8 e4m3 (per-row scales) at load, halving their memory.
    #[arg(long, env = "QWEN_EDIT_WEIGHTS", value_enum, default_value_t = WeightsArg::Stored, help_heading = "Memory")]
    pub weights: WeightsArg,

    /// Transformer weights from one file instead of the model folder: a `.safetensors` (bf16, or
    /// ComfyUI "scaled fp8": e4m3 weights with `scale_weight`/`weight_scale`) or a `.gguf`
    /// (Q8_0, Q6_K, Q5_K, Q4_K, …). The config still comes from the model folder.
    #[arg(long, value_name = "FILE", help_heading = "Memory")]
    pub transformer_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum MemoryArg {
    #[default]
    Auto,
    High,
    Low,
    Offload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WeightsArg {
    #[default]
    Stored,
    Fp8,
}

/// LoRA adapters and the Lightning presets (merged into the transformer once, at load).
#[derive(Debug, Clone, Default, Args)]
pub struct LoraArgs {
    /// Merge a LoRA into the transformer (repeatable): a .safetensors file, or a hub repo
    /// `ORG/NAME` (its only .safetensors file) or `ORG/NAME:PATH/IN/REPO.safetensors`; `@SCALE`
    /// multiplies the update (default 1). Reads diffusers/PEFT, kohya, lightx2v and DiffSynth keys.
    #[arg(long = "lora", value_name = "PATH_OR_REPO[:FILE][@SCALE]", help_heading = "LoRA")]
    pub loras: Vec<String>,

    /// Merge what matches and skip (with a warning) LoRA keys that adapt nothing in the
    /// transformer. By default such keys, text-encoder keys included, are an error naming them.
    #[arg(long, help_heading = "LoRA")]
    pub no_lora_strict: bool,

    /// Few-step Lightning preset: merges the lightx2v Qwen-Image-Lightning LoRA for the loaded model
    /// (Edit, 2509 or 2511) and STEPS steps, uses its scheduler (static shift 3, no terminal
    /// stretch) and turns CFG off; --steps / --true-cfg-scale still override.
    #[arg(long, value_name = "STEPS", value_parser = lightning_steps(), help_heading = "LoRA")]
    pub lightning: Option<u32>,

    /// The Lightning LoRA to use instead of lightx2v's file for the model (a path or
    /// `ORG/NAME[:FILE]`, e.g. an fp32 variant or a local copy).
    #[arg(
        long,
        value_name = "PATH_OR_REPO[:FILE]",
        requires = "lightning",
        help_heading = "LoRA"
    )]
    pub lightning_lora: Option<String>,
}

/// `4` or `8`.
fn lightning_steps() -> impl clap::builder::TypedValueParser<Value = u32> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["4", "8"]).map(|s| if s == "4" { 4 } else { 8 })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Bf16,
    F32,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// Input images (1 to 3): path, http(s) URL, data: URI, base64, or `-` for stdin.
    #[arg(required = true, num_args = 1..=3, value_name = "IMAGE")]
    pub images: Vec<String>,

    /// The edit instruction.
    #[arg(short, long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,

    /// Read the edit instruction from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,

    /// What the image should not look like (enables true CFG with --true-cfg-scale > 1). Default " ".
    #[arg(short = 'n', long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,

    /// Denoising steps (default: 50 for Qwen-Image-Edit, 40 for 2509/2511).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: Option<u32>,

    /// True classifier-free guidance scale; 1 disables CFG (one transformer pass per step). Default 4.
    #[arg(long, value_name = "SCALE")]
    pub true_cfg_scale: Option<f64>,

    /// Random seed; the same seed gives the same initial noise as diffusers with
    /// torch.Generator("cpu").manual_seed(SEED). Default: a random seed, reported.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Output width in pixels (floored to a multiple of 16). Default: from the input image.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=8192))]
    pub width: Option<u32>,

    /// Output height in pixels (floored to a multiple of 16). Default: from the input image.
    #[arg(long, value_parser = clap::value_parser!(u32).range(16..=8192))]
    pub height: Option<u32>,

    /// Resize the reference images to about PX×PX pixels (aspect kept) before encoding them
    /// (default 1024, as the reference pipelines). Smaller is faster and keeps less of their detail.
    #[arg(long, value_name = "PX")]
    pub ref_size: Option<u32>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Output file, or `-` for the encoded image on stdout. Default: `<first input>-edited.png`.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Output format (default: from the output file's extension, else png).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,

    /// Bits per channel: 16 for lossless downstream work (PNG and TIFF only).
    #[arg(long, default_value = "8", value_parser = ["8", "16"])]
    pub bit_depth: String,

    /// Replace the output file if it exists.
    #[arg(long)]
    pub overwrite: bool,

    /// Create missing parent folders of the output file.
    #[arg(long)]
    pub mkdir: bool,

    /// Decode/encode the VAE in tiles (256 px tiles, 192 px stride): less memory for large images.
    #[arg(long)]
    pub vae_tiling: bool,

    /// Print a JSON summary on stdout (outputs, seed, sizes, steps, model, timings).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Hub cache folder to inspect (default: the standard hub cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FetchModelsArgs {
    /// Hub repo id, or a shorthand: `edit`, `2509`, `2511`.
    #[arg(long, default_value = DEFAULT_MODEL, value_name = "REPO")]
    pub model: String,

    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main", value_name = "REV")]
    pub revision: String,

    /// Hub token for gated or private repos.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// List the files and the total size, download nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Don't touch the network: report whether the cache already holds a complete snapshot
    /// (exit 0) or not (exit 4). Also HF_HUB_OFFLINE=1.
    #[arg(long)]
    pub offline: bool,

    /// Files downloaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32), value_name = "N")]
    pub jobs: u16,

    /// Also fetch the Lightning LoRAs of the model (`4`, `8`, or both when no value is given).
    #[arg(long, value_name = "STEPS", num_args = 0..=1, default_missing_value = "all", value_parser = ["4", "8", "all"])]
    pub lightning: Option<String>,

    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// JSON-lines job file, or `-` (default) for stdin.
    #[arg(value_name = "FILE")]
    pub input: Option<String>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Folder for jobs without an `output` path (named `<line index>.png`).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Replace existing output files.
    #[arg(long)]
    pub overwrite: bool,

    /// Create missing output folders.
    #[arg(long)]
    pub mkdir: bool,

    /// Tiled VAE encode/decode.
    #[arg(long)]
    pub vae_tiling: bool,
}

const SERVE_HELP: &str = "\
Job input (the `input` object):
  prompt                      the edit instruction (required)
  image | image_url | image_base64 | image_path, or images: [..] (strings or {name, image})
  negative_prompt, seed (-1 or absent: random), steps | num_inference_steps,
  true_cfg_scale | guidance_scale, width, height, output_format (png, jpeg, webp, tiff), ref_size

Output: {\"images\": [{\"filename\", \"type\": \"base64\", \"data\"}], \"seed\", \"width\", \"height\",
  \"steps\", \"timings\"}; a failed job gives {\"error\": \"...\"}. S3 upload (BUCKET_ENDPOINT_URL) is
  not supported yet: images are always returned as base64.

Security: local files are read only below an --allow-path folder (none by default, so `image_path`
  is refused); URLs must be http(s), with size and time limits and no redirects to other schemes;
  every job is validated before its images are read or the GPU is touched.

RunPod environment:
  RUNPOD_WEBHOOK_GET_JOB, RUNPOD_WEBHOOK_POST_OUTPUT, RUNPOD_WEBHOOK_PING, RUNPOD_PING_INTERVAL (ms),
  RUNPOD_POD_ID, RUNPOD_AI_API_KEY (set by RunPod). SIGTERM or SIGINT: no new jobs; the running one
  is finished and posted, then exit 0.

Exit codes: 0 stopped by a signal; 2 no mode (no --http, --test-input, RunPod variables or
  test_input.json); 3, 4, 5 as for `edit` when the model cannot be loaded or warmed up (5 also when
  the GPU fails for good while serving); with --test-input, the job's exit code.";

/// `qwen-edit serve`: what to serve and how.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Run one job and print its result as JSON on stdout: a file, or the JSON text itself,
    /// in RunPod's request shape `{"input": {...}}`.
    #[arg(long, value_name = "FILE|JSON", conflicts_with = "http")]
    pub test_input: Option<String>,

    /// Serve a local HTTP API on ADDR (e.g. 127.0.0.1:8000): POST /runsync, POST /run,
    /// GET /status/ID, GET /health, also under /v2/ENDPOINT/.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,

    /// Require this key in the `Authorization` header (raw or `Bearer KEY`) of --http requests.
    #[arg(long, env = "QWEN_EDIT_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Allow jobs to read local image files below DIR (repeatable). None by default: paths are refused.
    #[arg(long = "allow-path", value_name = "DIR")]
    pub allow_paths: Vec<PathBuf>,

    /// Largest input image (file, download or decoded base64), in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096), value_name = "MIB")]
    pub max_image_mb: u64,

    /// Largest job or HTTP request body, in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096), value_name = "MIB")]
    pub max_request_mb: u64,

    /// Time allowed for downloading one image URL, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECS")]
    pub fetch_timeout: u64,

    /// Skip the warm-up edit at startup.
    #[arg(long)]
    pub no_warmup: bool,

    /// Tiled VAE encode/decode.
    #[arg(long)]
    pub vae_tiling: bool,

    /// Post an IN_PROGRESS update (step and steps) at most every SECS seconds while a job runs
    /// (RunPod worker mode; 0: never).
    #[arg(long, default_value_t = 0.0, value_name = "SECS", help_heading = "Worker tuning")]
    pub progress_interval: f64,

    /// How long one job request (a long poll) may wait for an answer, in seconds.
    #[arg(
        long,
        env = "QWEN_EDIT_POLL_TIMEOUT",
        default_value_t = 90.0,
        value_name = "SECS",
        help_heading = "Worker tuning"
    )]
    pub poll_timeout: f64,

    /// Time allowed for posting one result or progress update, in seconds.
    #[arg(
        long,
        env = "QWEN_EDIT_POST_TIMEOUT",
        default_value_t = 30.0,
        value_name = "SECS",
        help_heading = "Worker tuning"
    )]
    pub post_timeout: f64,

    /// Attempts at posting a result before it is given up (and logged as lost).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N", help_heading = "Worker tuning")]
    pub post_tries: u32,

    /// Wait after a "no job" answer and before the first retry of a failed request; doubled on each
    /// further failure, up to 60 s.
    #[arg(
        long,
        env = "QWEN_EDIT_BACKOFF_MS",
        default_value_t = 1000,
        value_name = "MS",
        help_heading = "Worker tuning"
    )]
    pub backoff_ms: u64,

    /// Jobs an --http server queues before it answers 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "N", help_heading = "Worker tuning")]
    pub queue_size: u32,
}

/// The transformer weight formats `bench` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BenchWeights {
    /// The compute dtype.
    #[default]
    #[value(alias = "bf16")]
    Stored,
    Fp8,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl BenchWeights {
    pub fn name(self) -> &'static str {
        match self {
            BenchWeights::Stored => "bf16",
            BenchWeights::Fp8 => "fp8",
            BenchWeights::Q8_0 => "q8_0",
            BenchWeights::Q4K => "q4_k",
        }
    }
}

/// One transformer configuration of `bench --configs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    pub weights: BenchWeights,
    pub offload: bool,
}

impl std::fmt::Display for BenchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}",
            self.weights.name(),
            if self.offload { "+offload" } else { "" }
        )
    }
}

/// `bf16`, `fp8+offload`, `q4_k`, … (see [`BenchArgs::configs`]).
pub fn parse_bench_config(s: &str) -> Result<BenchConfig, String> {
    let t = s.trim().to_ascii_lowercase();
    let (w, offload) = match t.split_once('+') {
        Some((w, "offload")) => (w, true),
        Some((_, other)) => return Err(format!("`{s}`: unknown option `+{other}` (only `+offload`)")),
        None => (t.as_str(), false),
    };
    let weights = match w {
        "bf16" | "stored" => BenchWeights::Stored,
        "fp8" => BenchWeights::Fp8,
        "q8_0" | "q8" => BenchWeights::Q8_0,
        "q4_k" | "q4k" => BenchWeights::Q4K,
        _ => return Err(format!("`{s}`: unknown weights `{w}` (bf16, fp8, q8_0 or q4_k)")),
    };
    Ok(BenchConfig { weights, offload })
}

/// `24G`, `48GB`, `20GiB`, `512M`, or bytes: decimal units for G/GB/M/MB, binary for GiB/MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 24G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit `{u}` (use G, GB, GiB, M, MB or MiB)")),
    };
    Ok((n * mult) as u64)
}

/// A component `bench` can time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchComponent {
    Transformer,
    Vae,
    #[value(alias = "text_encoder")]
    TextEncoder,
    All,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Components to time (repeatable; default: all three, or none when `--load` is given).
    #[arg(long = "component", value_name = "NAME", value_enum)]
    pub components: Vec<BenchComponent>,

    /// Square image sizes in pixels.
    #[arg(long = "size", default_values_t = [1024usize, 512])]
    pub sizes: Vec<usize>,

    /// Reference image counts for the transformer.
    #[arg(long = "refs", default_values_t = [1usize, 2])]
    pub refs: Vec<usize>,

    /// Text tokens for the transformer.
    #[arg(long, default_value_t = 230)]
    pub txt_len: usize,

    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,

    /// Device: `cuda`, `cuda:N` or `cpu`.
    #[arg(long, default_value = "cuda")]
    pub device: String,

    /// Compute dtype (default: bf16 on CUDA, f32 on CPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,

    /// Also time loading a transformer folder (config.json + safetensors) onto the device.
    #[arg(long, value_name = "DIR")]
    pub load: Option<PathBuf>,

    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Weight format of the transformer's blocks (and, for fp8, the language model's layers): `stored`
    /// (the dtype; also `bf16`), `fp8` (e4m3, per-row scales, quantized as the random weights are
    /// made), `q8_0` or `q4_k` (GGML blocks, random but valid; with `--psnr` quantized on the host from
    /// the seeded random weights instead).
    #[arg(long, value_enum, default_value_t = BenchWeights::Stored)]
    pub weights: BenchWeights,

    /// Stream the transformer's blocks from host memory (as `--memory offload`); also reports the
    /// host-to-device GB/s and the overlap against `--offload-prefetch 0`.
    #[arg(long)]
    pub offload: bool,

    /// Blocks copied ahead with offload.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub offload_prefetch: usize,

    /// Transformer configurations timed one after the other in this run, comma-separated
    /// `WEIGHTS[+offload]` (WEIGHTS: bf16, fp8, q8_0, q4_k), e.g.
    /// `bf16,fp8,q8_0,q4_k,bf16+offload,q4_k+offload`. Each is built, timed (peak GPU memory, seconds
    /// per forward) and dropped before the next; replaces `--weights`/`--offload` for the transformer.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_bench_config)]
    pub configs: Vec<BenchConfig>,

    /// Run under a self-imposed GPU memory cap (`24G`, `48GB`, `20GiB`): a ballast buffer takes the
    /// rest of the free memory first, so anything over the cap fails with out of memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_gpu_memory: Option<u64>,

    /// With the transformer: also run 4 Euler steps from the same noise with `--weights` and with
    /// the stored dtype (same random weights, seeded) and report the PSNR of the final latents.
    #[arg(long)]
    pub psnr: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The clap command (for completions, man pages and tests).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
