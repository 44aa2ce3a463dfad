//! With the `cuda` feature, compiles `kernels/attention.cu` and `kernels/fused.cu` to PTX for `CUDA_COMPUTE_CAP`
//! (default 80; 90 and above build for sm_90) with the `nvcc` of `CUDA_ROOT`/`CUDA_PATH`/`CUDA_HOME` or `PATH`.
//! With the `cudnn` feature it also compiles `kernels/cudnn_shim.cpp` (C++17, one translation unit) into
//! a static library. The shim uses NVIDIA's header-only cudnn-frontend with dynamic loading, so nothing
//! links libcudnn: headers only, from `CUDNN_FRONTEND_INCLUDE` (PyPI `nvidia-cudnn-frontend`) and
//! `CUDNN_INCLUDE` (PyPI `nvidia-cudnn-cu13`), plus the CUDA headers of the toolkit.
//! Without features (the CPU build, CI) this does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel sources, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 2] = ["attention", "fused"];

/// The cudnn-frontend release the shim is written and tested against (PyPI `nvidia-cudnn-frontend`).
const CUDNN_FRONTEND_VERSION: &str = "1.32.0";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    build_kernel_ptx();
    if std::env::var_os("CARGO_FEATURE_CUDNN").is_some() {
        build_cudnn_shim();
    }
}

/// The toolkit root named by `CUDA_ROOT`, `CUDA_PATH` or `CUDA_HOME` (the first that has `bin/nvcc`).
fn cuda_root() -> Option<PathBuf> {
    ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .find(|root| root.join("bin/nvcc").exists())
}

fn build_kernel_ptx() {
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|s| s.trim().replace('.', "").parse().ok())
        .unwrap_or(80);
    let arch = if cap >= 90 { 90 } else { cap.max(80) };
    let nvcc = cuda_root()
        .map(|root| root.join("bin/nvcc"))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        let out = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=compute_{arch}"))
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (install the CUDA toolkit or set CUDA_ROOT): {e}",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}

/// The first of `env` (if set) and `candidates` that contains `file`.
fn find_include(env: &str, candidates: &[PathBuf], file: &str) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={env}");
    if let Some(dir) = std::env::var_os(env) {
        let dir = PathBuf::from(dir);
        if !dir.join(file).exists() {
            panic!("{env}={} does not contain {file}", dir.display());
        }
        return Some(dir);
    }
    candidates.iter().find(|d| d.join(file).exists()).cloned()
}

fn build_cudnn_shim() {
    println!("cargo:rerun-if-changed=kernels/cudnn_shim.cpp");
    let root = cuda_root();
    let frontend = find_include(
        "CUDNN_FRONTEND_INCLUDE",
        &[
            PathBuf::from("/opt/cudnn-frontend/include"),
            PathBuf::from("/usr/local/include"),
            PathBuf::from("/usr/include"),
        ],
        "cudnn_frontend.h",
    )
    .unwrap_or_else(|| {
        panic!(
            "the `cudnn` feature needs the cudnn-frontend headers: set CUDNN_FRONTEND_INCLUDE to the `include` \
             folder of the PyPI wheel `nvidia-cudnn-frontend=={CUDNN_FRONTEND_VERSION}` (e.g. \
             `pip download --no-deps nvidia-cudnn-frontend=={CUDNN_FRONTEND_VERSION} && unzip -o *.whl 'include/*'`)"
        )
    });
    let mut cudnn_candidates = vec![PathBuf::from("/opt/cuda13/cudnn/nvidia/cudnn/include")];
    if let Some(r) = &root {
        cudnn_candidates.push(r.join("include"));
    }
    cudnn_candidates.extend([
        PathBuf::from("/usr/include"),
        PathBuf::from("/usr/include/x86_64-linux-gnu"),
        PathBuf::from("/usr/local/cuda/include"),
    ]);
    let cudnn = find_include("CUDNN_INCLUDE", &cudnn_candidates, "cudnn_version.h").unwrap_or_else(|| {
        panic!(
            "the `cudnn` feature needs the cuDNN 9 headers: set CUDNN_INCLUDE to a folder with cudnn.h, e.g. \
             `nvidia/cudnn/include` of the PyPI wheel `nvidia-cudnn-cu13` (or `nvidia-cudnn-cu12`)"
        )
    });
    let cuda_include = root
        .map(|r| r.join("include"))
        .filter(|d| d.join("cuda_runtime_api.h").exists())
        .or_else(|| Some(PathBuf::from("/usr/local/cuda/include")).filter(|d| d.join("cuda_runtime_api.h").exists()))
        .unwrap_or_else(|| panic!("the `cudnn` feature needs the CUDA headers: set CUDA_ROOT to the toolkit"));

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .define("NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING", None);
    // -isystem: the frontend's own warnings are not ours.
    for dir in [&frontend, &cudnn, &cuda_include] {
        build.flag("-isystem").flag(path_str(dir));
    }
    build.file("kernels/cudnn_shim.cpp").compile("qe_cudnn_shim");
    // The frontend dlopens libcudnn (and, for a few features we do not use, libcudart) at run time.
    println!("cargo:rustc-link-lib=dl");
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("include path {} is not UTF-8", p.display()))
}
