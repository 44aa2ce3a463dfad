//! `qwen-edit doctor`: can this machine run `edit` on the GPU? Each check passes, warns or fails
//! with a one-line fix. The CUDA driver is opened at run time (`dlopen libcuda.so.1`), so the CPU
//! build reports on the GPUs too; the build with the `cuda` feature also runs a kernel and a bf16
//! matmul on each GPU through candle. The report goes to stdout (human, or `--json`); exit 0 when
//! `edit` can run on a GPU, 5 when it cannot.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::hub::{self, human_bytes};
use crate::printer::Printer;

/// GPU memory the bf16 pipeline needs: ~58 GB of weights (transformer 40.9 GB, text encoder
/// 16.6 GB, VAE 0.25 GB) plus room for activations at ~1 megapixel.
pub const REQUIRED_GPU_BYTES: u64 = 62_000_000_000;
/// The bf16 weights alone.
pub const PIPELINE_WEIGHT_BYTES: u64 = 57_700_000_000;
/// Disk a model download takes.
pub const MODEL_DOWNLOAD_BYTES: u64 = 57_700_000_000;
/// Below this much available RAM, loading is likely to swap.
const LOW_RAM_BYTES: u64 = 16_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

/// A GPU as the driver reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    /// `major.minor`, e.g. `9.0`.
    pub compute_capability: String,
    pub total_bytes: u64,
    pub free_bytes: Option<u64>,
    /// The candle kernel + bf16 matmul test (`cuda` builds only): `ok ...` or the error.
    pub compute_test: Option<String>,
    pub compute_ok: Option<bool>,
}

/// A line of `nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used`.
#[derive(Debug, Clone, Serialize)]
pub struct SmiGpu {
    pub name: String,
    pub driver_version: String,
    pub memory_total: String,
    pub memory_used: String,
}

/// A known model in the hub cache.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub shorthand: String,
    pub repo: String,
    pub cached: bool,
    pub complete: bool,
    pub snapshot: Option<PathBuf>,
    pub commit: Option<String>,
    pub refs: Vec<String>,
    pub missing: Vec<String>,
    pub bad_size: Vec<String>,
    pub bytes: u64,
    pub partial_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub version: String,
    pub cuda_feature: bool,
    pub cudnn_feature: bool,
}

/// The whole report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether `edit` can run on a GPU here.
    pub ok: bool,
    pub build: Build,
    /// The driver API version from `cuDriverGetVersion`, e.g. `13.0`.
    pub driver_version: Option<String>,
    pub checks: Vec<Check>,
    pub gpus: Vec<Gpu>,
    pub nvidia_smi: Vec<SmiGpu>,
    pub cache_dir: PathBuf,
    pub cache_free_bytes: Option<u64>,
    pub models: Vec<ModelReport>,
    /// LoRA files in the cache (safetensors of repos that are not pipelines).
    pub loras: Vec<hub::files::CachedFile>,
    pub ram_total_bytes: Option<u64>,
    pub ram_available_bytes: Option<u64>,
    /// Why `edit` cannot run on a GPU (the failed checks).
    pub reasons: Vec<String>,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
        fix: fix.map(str::to_string),
    }
}

pub fn run(args: DoctorArgs, printer: Printer) -> anyhow::Result<u8> {
    let report = collect(&hub::cache_dir(args.cache_dir.as_deref()));
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let color = printer.color && std::io::stdout().is_terminal();
        render::render(&mut out, &report, color)?;
    }
    Ok(if report.ok { 0 } else { 5 })
}

/// Runs every check.
pub fn collect(cache: &std::path::Path) -> Report {
    let cuda_feature = cfg!(feature = "cuda");
    let mut checks = vec![if cuda_feature {
        check(
            "build",
            Status::Pass,
            format!(
                "built with the cuda feature{}",
                if cfg!(feature = "cudnn") { " and cuDNN" } else { "" }
            ),
            None,
        )
    } else {
        check(
            "build",
            Status::Fail,
            "this build has no CUDA support (built without the cuda feature): it runs on the CPU only",
            Some("rebuild with the CUDA toolkit installed: `cargo install --path . --features cuda`"),
        )
    }];

    let smi = nvidia_smi();
    let probe = cuda::probe();
    let mut gpus = Vec::new();
    let mut driver_version = None;
    match &probe {
        Err(e) => {
            checks.push(check(
                "cuda-driver",
                Status::Fail,
                format!("the CUDA driver cannot be used: {e}"),
                Some("install the NVIDIA driver (or put the folder of libcuda.so.1 on LD_LIBRARY_PATH; in a container, run it with the GPUs, e.g. --gpus all)"),
            ));
        }
        Ok(p) => {
            let v = format!("{}.{}", p.version / 1000, (p.version % 1000) / 10);
            let smi_driver = smi
                .as_ref()
                .ok()
                .and_then(|g| g.first())
                .map(|g| format!(", driver {}", g.driver_version))
                .unwrap_or_default();
            checks.push(check(
                "cuda-driver",
                Status::Pass,
                format!("{} loaded: CUDA {v}{smi_driver}", p.library),
                None,
            ));
            driver_version = Some(v);
            for (index, d) in p.devices.iter().enumerate() {
                gpus.push(Gpu {
                    index,
                    name: d.name.clone(),
                    compute_capability: format!("{}.{}", d.cc.0, d.cc.1),
                    total_bytes: d.total,
                    free_bytes: d.free,
                    compute_test: None,
                    compute_ok: None,
                });
            }
        }
    }
    if probe.is_ok() {
        checks.push(gpus_check(&gpus));
    }
    checks.push(match &smi {
        Ok(list) if !list.is_empty() => check(
            "nvidia-smi",
            Status::Pass,
            list.iter()
                .map(|g| format!("{} ({} MiB used of {})", g.name, g.memory_used, g.memory_total))
                .collect::<Vec<_>>()
                .join("; "),
            None,
        ),
        Ok(_) => check(
            "nvidia-smi",
            Status::Warn,
            "nvidia-smi lists no GPU",
            Some("check the driver installation with `nvidia-smi`"),
        ),
        Err(e) => check(
            "nvidia-smi",
            Status::Warn,
            e.clone(),
            Some("optional; it comes with the NVIDIA driver"),
        ),
    });

    if cuda_feature && !gpus.is_empty() {
        let mut failed = Vec::new();
        for g in &mut gpus {
            let r = candle_core::Device::new_cuda(g.index)
                .map_err(anyhow::Error::from)
                .and_then(|dev| compute_test(&dev));
            g.compute_ok = Some(r.is_ok());
            g.compute_test = Some(match r {
                Ok(s) => s,
                Err(e) => {
                    failed.push(format!("GPU {}: {e:#}", g.index));
                    format!("failed: {e:#}")
                }
            });
        }
        checks.push(if failed.is_empty() {
            check("gpu-compute", Status::Pass, format!("a kernel and a 256×256 bf16 matmul ran on {} GPU(s) and match the CPU", gpus.len()), None)
        } else {
            check("gpu-compute", Status::Fail, failed.join("; "), Some("check the driver/toolkit match (the binary's PTX needs a driver at least as new as its CUDA toolkit) and run `nvidia-smi`"))
        });
    } else if cuda_feature {
        checks.push(check(
            "gpu-compute",
            Status::Fail,
            "not run: no GPU",
            Some("see the cuda-driver / gpus checks"),
        ));
    } else {
        checks.push(check(
            "gpu-compute",
            Status::Warn,
            "not run: this build has no cuda feature",
            Some("see the build check"),
        ));
    }
    checks.push(memory_check(&gpus));

    let (ram_total, ram_avail) = meminfo();
    checks.push(match (ram_total, ram_avail) {
        (Some(t), Some(a)) if a < LOW_RAM_BYTES => check(
            "ram",
            Status::Warn,
            format!("{} available of {}", human_bytes(a), human_bytes(t)),
            Some("close other programs: loading the weights wants at least 16 GB of free RAM"),
        ),
        (Some(t), Some(a)) => check(
            "ram",
            Status::Pass,
            format!("{} available of {}", human_bytes(a), human_bytes(t)),
            None,
        ),
        _ => check("ram", Status::Warn, "cannot read /proc/meminfo", None),
    });

    let models = model_reports(cache);
    let free = hub::download::free_space(cache);
    let any_complete = models.iter().any(|m| m.complete);
    checks.push(match free {
        Some(f) if any_complete || f >= MODEL_DOWNLOAD_BYTES => check(
            "disk",
            Status::Pass,
            format!("{} free in {}", human_bytes(f), cache.display()),
            None,
        ),
        Some(f) => check(
            "disk",
            Status::Warn,
            format!(
                "{} free in {}: a model download needs ~{}",
                human_bytes(f),
                cache.display(),
                human_bytes(MODEL_DOWNLOAD_BYTES)
            ),
            Some("free some space, or point HF_HUB_CACHE / --cache-dir at a larger disk"),
        ),
        None => check(
            "disk",
            Status::Warn,
            format!("cannot tell the free space in {}", cache.display()),
            None,
        ),
    });
    checks.push(models_check(&models));

    let reasons: Vec<String> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    Report {
        ok: reasons.is_empty(),
        build: Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cuda_feature,
            cudnn_feature: cfg!(feature = "cudnn"),
        },
        driver_version,
        checks,
        gpus,
        nvidia_smi: smi.unwrap_or_default(),
        cache_dir: cache.to_path_buf(),
        cache_free_bytes: free,
        models,
        loras: hub::files::cached_safetensors(cache),
        ram_total_bytes: ram_total,
        ram_available_bytes: ram_avail,
        reasons,
    }
}

fn gpus_check(gpus: &[Gpu]) -> Check {
    if gpus.is_empty() {
        return check(
            "gpus",
            Status::Fail,
            "the driver sees no CUDA GPU",
            Some("check CUDA_VISIBLE_DEVICES and `nvidia-smi`"),
        );
    }
    let list: Vec<String> = gpus
        .iter()
        .map(|g| {
            format!(
                "{}: {} (compute {}, {})",
                g.index,
                g.name,
                g.compute_capability,
                human_bytes(g.total_bytes)
            )
        })
        .collect();
    let old = gpus.iter().all(|g| {
        g.compute_capability
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m < 8)
    });
    if old {
        check(
            "gpus",
            Status::Fail,
            format!(
                "{}: bf16 needs compute capability 8.0 (Ampere) or newer",
                list.join("; ")
            ),
            Some("use an Ampere or newer GPU (A100, L40S, H100, H200)"),
        )
    } else {
        check("gpus", Status::Pass, list.join("; "), None)
    }
}

fn memory_check(gpus: &[Gpu]) -> Check {
    let need = format!(
        "{} with activations, {} of weights",
        human_bytes(REQUIRED_GPU_BYTES),
        human_bytes(PIPELINE_WEIGHT_BYTES)
    );
    let fix_small = "the bf16 pipeline needs ~58 GB of GPU memory plus activations: use an 80 GB card (A100/H100 80GB, H200); low-memory modes (offloading) are not available yet";
    let Some(best) = gpus.iter().max_by_key(|g| g.total_bytes) else {
        return check(
            "gpu-memory",
            Status::Fail,
            format!("no GPU to hold the bf16 pipeline (~{need})"),
            Some(fix_small),
        );
    };
    if best.total_bytes < REQUIRED_GPU_BYTES {
        return check(
            "gpu-memory",
            Status::Fail,
            format!(
                "the largest GPU has {}, the bf16 pipeline needs ~{need}",
                human_bytes(best.total_bytes)
            ),
            Some(fix_small),
        );
    }
    match gpus
        .iter()
        .filter(|g| g.total_bytes >= REQUIRED_GPU_BYTES)
        .find(|g| g.free_bytes.is_none_or(|f| f >= REQUIRED_GPU_BYTES))
    {
        Some(g) => check(
            "gpu-memory",
            Status::Pass,
            format!(
                "GPU {} has {} ({} free), the bf16 pipeline needs ~{need}",
                g.index,
                human_bytes(g.total_bytes),
                g.free_bytes.map(human_bytes).unwrap_or_else(|| "?".into())
            ),
            None,
        ),
        None => check(
            "gpu-memory",
            Status::Warn,
            format!(
                "GPU {} has {} but only {} free; the bf16 pipeline needs ~{need}",
                best.index,
                human_bytes(best.total_bytes),
                best.free_bytes.map(human_bytes).unwrap_or_default()
            ),
            Some("stop the other programs using the GPU (see `nvidia-smi`), or pick a free one with --device cuda:N"),
        ),
    }
}

fn model_reports(cache: &std::path::Path) -> Vec<ModelReport> {
    hub::KNOWN_MODELS
        .iter()
        .map(|(short, repo)| {
            let inv = hub::cache::inspect_repo(cache, repo);
            let best = inv.as_ref().and_then(|i| i.best());
            ModelReport {
                shorthand: short.to_string(),
                repo: repo.to_string(),
                cached: best.is_some(),
                complete: best.is_some_and(|s| s.complete),
                snapshot: best.map(|s| s.dir.clone()),
                commit: best.map(|s| s.commit.clone()),
                refs: best.map(|s| s.refs.clone()).unwrap_or_default(),
                missing: best.map(|s| s.missing.clone()).unwrap_or_default(),
                bad_size: best.map(|s| s.bad_size.clone()).unwrap_or_default(),
                bytes: best.map(|s| s.bytes).unwrap_or(0),
                partial_bytes: inv.as_ref().map(|i| i.partial_bytes).unwrap_or(0),
            }
        })
        .collect()
}

fn models_check(models: &[ModelReport]) -> Check {
    let complete: Vec<String> = models
        .iter()
        .filter(|m| m.complete)
        .map(|m| format!("{} ({})", m.shorthand, human_bytes(m.bytes)))
        .collect();
    let broken: Vec<String> = models
        .iter()
        .filter(|m| (m.cached && !m.complete) || m.partial_bytes > 0)
        .map(|m| {
            let mut what = Vec::new();
            if !m.missing.is_empty() {
                what.push(format!("{} missing", m.missing.len()));
            }
            if !m.bad_size.is_empty() {
                what.push(format!("{} truncated", m.bad_size.len()));
            }
            if m.partial_bytes > 0 {
                what.push(format!("{} partly downloaded", human_bytes(m.partial_bytes)));
            }
            format!("{} incomplete ({})", m.shorthand, what.join(", "))
        })
        .collect();
    let fix = broken
        .first()
        .map(|_| "run `qwen-edit fetch-models --model <shorthand>` to complete (it resumes)")
        .unwrap_or("run `qwen-edit fetch-models --model 2511` (or let `edit` download it on first use)");
    match (complete.is_empty(), broken.is_empty()) {
        (false, true) => check(
            "models",
            Status::Pass,
            format!("complete: {}", complete.join(", ")),
            None,
        ),
        (false, false) => check(
            "models",
            Status::Warn,
            format!("complete: {}; {}", complete.join(", "), broken.join("; ")),
            Some(fix),
        ),
        (true, false) => check("models", Status::Warn, broken.join("; "), Some(fix)),
        (true, true) => check(
            "models",
            Status::Warn,
            "no Qwen-Image-Edit model in the hub cache",
            Some(fix),
        ),
    }
}

/// Runs a tiny kernel and a 256×256 bf16 matmul on `device`, compared with the CPU in f32.
pub fn compute_test(device: &candle_core::Device) -> anyhow::Result<String> {
    use candle_core::{DType, Device, Tensor};
    let t0 = Instant::now();
    let n = 1024u32;
    let x = Tensor::arange(0u32, n, device)?.to_dtype(DType::F32)?;
    let sum = x.affine(2.0, 1.0)?.sum_all()?.to_scalar::<f32>()?;
    let want = (n * n) as f32; // Σ (2i + 1) for i < n
    if (sum - want).abs() > 1e-3 * want {
        anyhow::bail!("a kernel computed {sum}, expected {want}");
    }
    let k = 256usize;
    let a: Vec<f32> = (0..k * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let b: Vec<f32> = (0..k * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
    let a = Tensor::from_vec(a, (k, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
    let b = Tensor::from_vec(b, (k, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
    let reference = a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?;
    let got = a
        .to_device(device)?
        .matmul(&b.to_device(device)?)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let err = (&got - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    if !err.is_finite() || err > 1e-2 * scale {
        anyhow::bail!("the bf16 matmul is off by {err} (values up to {scale})");
    }
    Ok(format!(
        "ok: kernel and bf16 matmul match the CPU (max error {err:.2e} of {scale:.1}) in {} ms",
        t0.elapsed().as_millis()
    ))
}

/// `nvidia-smi --query-gpu=...`, given at most 15 s.
fn nvidia_smi() -> Result<Vec<SmiGpu>, String> {
    let mut child = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total,memory.used",
            "--format=csv,noheader",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("nvidia-smi cannot be run: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("nvidia-smi did not answer within 15 s".into());
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("nvidia-smi failed ({})", out.status));
    }
    Ok(parse_smi(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_smi(text: &str) -> Vec<SmiGpu> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() == 4).then(|| SmiGpu {
                name: f[0].to_string(),
                driver_version: f[1].to_string(),
                memory_total: f[2].to_string(),
                memory_used: f[3].to_string(),
            })
        })
        .collect()
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
fn meminfo() -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

use crate::cuda_probe as cuda;
mod render;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_test_passes_on_the_cpu() {
        let msg = compute_test(&candle_core::Device::Cpu).unwrap();
        assert!(msg.starts_with("ok"), "{msg}");
    }

    #[test]
    fn smi_lines_are_parsed() {
        let g = parse_smi("NVIDIA H200, 580.159.03, 143771 MiB, 0 MiB\n");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].driver_version, "580.159.03");
        assert_eq!(g[0].memory_total, "143771 MiB");
    }

    #[test]
    fn memory_verdicts() {
        let gpu = |total: u64, free: u64| Gpu {
            index: 0,
            name: "g".into(),
            compute_capability: "9.0".into(),
            total_bytes: total,
            free_bytes: Some(free),
            compute_test: None,
            compute_ok: None,
        };
        assert_eq!(memory_check(&[]).status, Status::Fail);
        assert_eq!(
            memory_check(&[gpu(48_000_000_000, 47_000_000_000)]).status,
            Status::Fail
        );
        assert_eq!(
            memory_check(&[gpu(85_000_000_000, 84_000_000_000)]).status,
            Status::Pass
        );
        assert_eq!(
            memory_check(&[gpu(85_000_000_000, 10_000_000_000)]).status,
            Status::Warn
        );
    }
}
