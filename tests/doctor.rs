//! `qwen-edit doctor` on this machine. Where there is no CUDA driver (CI, the dev boxes) it must
//! say so and exit 5, in both formats; with a driver the verdict must follow the failed checks.
//! The hub cache is a temporary folder holding one complete and one incomplete model.

use std::path::Path;
use std::process::{Command, Output};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A safetensors file whose header says it holds `n` f32 values.
fn safetensors(n: usize) -> Vec<u8> {
    let mut header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, 4 * n));
    out
}

/// A snapshot of `repo` in the hub layout (plain files; `main` points at it).
fn cached_model(cache: &Path, repo: &str, complete: bool) {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    write(&folder.join("refs/main"), COMMIT.as_bytes());
    let snap = folder.join("snapshots").join(COMMIT);
    write(
        &snap.join("model_index.json"),
        br#"{"_class_name":"QwenImageEditPlusPipeline"}"#,
    );
    write(&snap.join("scheduler/scheduler_config.json"), b"{}");
    for comp in ["transformer", "vae", "text_encoder"] {
        write(&snap.join(comp).join("config.json"), b"{}");
        let mut w = safetensors(16);
        if !complete && comp == "vae" {
            w.truncate(w.len() - 10); // an interrupted copy: shorter than its header says
        }
        write(&snap.join(comp).join("model.safetensors"), &w);
    }
    write(&snap.join("processor/tokenizer.json"), b"{}");
    if complete {
        write(&snap.join("processor/preprocessor_config.json"), b"{}");
    }
}

fn doctor(cache: &Path, json: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-edit"));
    c.arg("doctor").arg("--cache-dir").arg(cache).env_remove("NO_COLOR");
    if json {
        c.arg("--json");
    }
    c.output().unwrap()
}

fn no_driver_here() -> bool {
    // What the report says is checked against the file system: no libcuda anywhere usual.
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/lib/wsl/lib/libcuda.so.1",
    ]
    .iter()
    .all(|p| !Path::new(p).exists())
        && std::env::var_os("LD_LIBRARY_PATH")
            .is_none_or(|v| std::env::split_paths(&v).all(|d| !d.join("libcuda.so.1").exists()))
}

#[test]
fn json_report_states_what_this_machine_has() {
    let tmp = tempfile::tempdir().unwrap();
    cached_model(tmp.path(), "Qwen/Qwen-Image-Edit-2511", true);
    cached_model(tmp.path(), "Qwen/Qwen-Image-Edit-2509", false);
    let out = doctor(tmp.path(), true);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    let checks = r["checks"].as_array().unwrap();
    let status = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for c in checks {
        assert!(["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()), "{c}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
        if c["status"] != "pass" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c} has no fix");
        }
    }
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(r["ok"], failed.is_empty());
    assert_eq!(out.status.code(), Some(if failed.is_empty() { 0 } else { 5 }));
    assert_eq!(r["reasons"].as_array().unwrap().len(), failed.len());

    let cuda_build = cfg!(feature = "cuda");
    assert_eq!(r["build"]["cuda_feature"], cuda_build);
    assert_eq!(status("build"), if cuda_build { "pass" } else { "fail" });
    if no_driver_here() {
        assert_eq!(status("cuda-driver"), "fail");
        assert!(r["gpus"].as_array().unwrap().is_empty());
        assert_eq!(r["driver_version"], serde_json::Value::Null);
        assert_eq!(status("gpu-memory"), "fail");
        assert_eq!(out.status.code(), Some(5));
        assert_eq!(r["ok"], false);
        let reasons = r["reasons"].to_string();
        assert!(reasons.contains("libcuda.so.1"), "{reasons}");
    }

    // The cache: 2511 complete, 2509 incomplete (missing processor config, truncated VAE).
    assert_eq!(r["cache_dir"], tmp.path().to_str().unwrap());
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    let model = |short: &str| models.iter().find(|m| m["shorthand"] == short).unwrap();
    assert_eq!(model("2511")["complete"], true);
    assert_eq!(model("2511")["commit"], COMMIT);
    assert_eq!(model("2511")["refs"][0], "main");
    assert_eq!(model("2509")["cached"], true);
    assert_eq!(model("2509")["complete"], false);
    assert!(model("2509")["missing"]
        .to_string()
        .contains("processor/preprocessor_config.json"));
    assert!(model("2509")["bad_size"].to_string().contains("vae/model.safetensors"));
    assert_eq!(model("edit")["cached"], false);
    assert_eq!(status("models"), "warn");
    assert!(r["cache_free_bytes"].as_u64().is_some());
    assert!(r["ram_total_bytes"].as_u64().is_some());
}

#[test]
fn human_report_lists_checks_and_the_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    cached_model(tmp.path(), "Qwen/Qwen-Image-Edit-2511", true);
    let out = doctor(tmp.path(), false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\x1b'),
        "no colours when stdout is not a terminal:\n{text}"
    );
    for name in [
        "build",
        "cuda-driver",
        "nvidia-smi",
        "gpu-compute",
        "gpu-memory",
        "ram",
        "disk",
        "models",
    ] {
        assert!(
            text.lines().any(|l| l.split_whitespace().nth(1) == Some(name)),
            "no {name} line:\n{text}"
        );
    }
    assert!(
        text.contains("Qwen/Qwen-Image-Edit-2511") && text.contains("complete"),
        "{text}"
    );
    if no_driver_here() {
        assert_eq!(out.status.code(), Some(5), "{text}");
        assert!(text.contains("FAIL  cuda-driver"), "{text}");
        assert!(text.contains("cannot run `qwen-edit edit` on the GPU"), "{text}");
        assert!(text.contains("fix: "), "{text}");
    } else {
        assert!(matches!(out.status.code(), Some(0 | 5)), "{text}");
    }
}

/// A stand-in `libcuda.so.1` (built with the C compiler) exporting the driver calls doctor makes:
/// two GPUs, CUDA 13.0, compute 9.0 and 8.6, 150 GB / 24 GB. `cuInit` returns `$STANDIN_CUINIT`.
const STANDIN_DRIVER: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
static void *current;
int cuGetErrorName(int e, const char **s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }
int cuInit(unsigned f) { const char *v = getenv("STANDIN_CUINIT"); return v ? atoi(v) : 0; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuDeviceGetCount(int *n) { *n = 2; return 0; }
int cuDeviceGet(int *d, int o) { *d = o; return 0; }
int cuDeviceGetName(char *b, int len, int d) { snprintf(b, len, "Stand-in GPU %d", d); return 0; }
int cuDeviceGetAttribute(int *v, int a, int d) { *v = a == 75 ? (d == 0 ? 9 : 8) : a == 76 ? (d == 0 ? 0 : 6) : 0; return 0; }
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = d == 0 ? 150000000000ULL : 24000000000ULL; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)(size_t)(d + 1); return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxPushCurrent_v2(void *c) { current = c; return 0; }
int cuCtxPopCurrent_v2(void **c) { *c = current; current = 0; return 0; }
int cuMemGetInfo_v2(size_t *f, size_t *t) {
  *t = current == (void *)1 ? 150000000000ULL : 24000000000ULL;
  *f = current == (void *)1 ? 140000000000ULL : 1000000000ULL;
  return 0;
}
"#;

/// Builds the stand-in driver into `dir`; `None` when no C compiler is installed.
fn standin_driver(dir: &Path) -> Option<()> {
    let src = dir.join("cuda.c");
    std::fs::write(&src, STANDIN_DRIVER).unwrap();
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(&src)
        .status()
        .ok()?
        .success();
    ok.then_some(())
}

#[test]
fn gpus_are_read_from_the_driver_library() {
    let tmp = tempfile::tempdir().unwrap();
    if standin_driver(tmp.path()).is_none() {
        eprintln!("skipped: no C compiler to build the stand-in libcuda.so.1");
        return;
    }
    let run = |cuinit: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-edit"));
        c.args(["doctor", "--json", "--cache-dir"])
            .arg(tmp.path())
            .env("LD_LIBRARY_PATH", tmp.path());
        if let Some(v) = cuinit {
            c.env("STANDIN_CUINIT", v);
        }
        let out = c.output().unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), r)
    };
    let status = |r: &serde_json::Value, name: &str| {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["status"]
            .clone()
    };

    let (code, r) = run(None);
    assert_eq!(r["driver_version"], "13.0");
    assert_eq!(status(&r, "cuda-driver"), "pass");
    assert_eq!(status(&r, "gpus"), "pass");
    let gpus = r["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["name"], "Stand-in GPU 0");
    assert_eq!(gpus[0]["compute_capability"], "9.0");
    assert_eq!(gpus[1]["compute_capability"], "8.6");
    assert_eq!(gpus[0]["total_bytes"], 150_000_000_000u64);
    assert_eq!(gpus[0]["free_bytes"], 140_000_000_000u64);
    assert_eq!(gpus[1]["free_bytes"], 1_000_000_000u64);
    // GPU 0 holds the pipeline.
    assert_eq!(status(&r, "gpu-memory"), "pass");
    if !cfg!(feature = "cuda") {
        // The CPU build still cannot run edit on the GPU.
        assert_eq!(code, Some(5));
        assert_eq!(r["reasons"].as_array().unwrap().len(), 1, "{}", r["reasons"]);
    }

    // A driver without devices: cuInit fails with CUDA_ERROR_NO_DEVICE.
    let (code, r) = run(Some("100"));
    assert_eq!(code, Some(5));
    assert_eq!(status(&r, "cuda-driver"), "fail");
    let detail = r["checks"][1]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("CUDA_ERROR_NO_DEVICE") && detail.contains("CUDA 13.0"),
        "{detail}"
    );
    assert!(r["gpus"].as_array().unwrap().is_empty());
}
