//! With the `cuda` feature, compiles `kernels/attention.cu` and `kernels/fused.cu` to PTX for
//! `CUDA_COMPUTE_CAP` (default 80; 90 and above build for sm_90) with the `nvcc` of
//! `CUDA_ROOT`/`CUDA_PATH`/`CUDA_HOME` or `PATH`. Without it (the CPU build, CI) this does nothing.

use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 2] = ["attention", "fused"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|s| s.trim().replace('.', "").parse().ok())
        .unwrap_or(80);
    let arch = if cap >= 90 { 90 } else { cap.max(80) };
    let nvcc = ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .find(|p| p.exists())
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
