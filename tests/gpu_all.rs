//! Every GPU test in one binary (what the lent GPU machine runs: one binary travels instead of four).
//! Each module is also its own test target; build this one with
//! `cargo test --release --features cudnn --test gpu_all --no-run`.
#![cfg(feature = "cuda")]

#[path = "gpu.rs"]
mod gpu;
#[cfg(feature = "cudnn")]
#[path = "gpu_cudnn.rs"]
mod gpu_cudnn;
#[path = "gpu_fused.rs"]
mod gpu_fused;
#[path = "gpu_vae.rs"]
mod gpu_vae;
#[path = "offload_gpu.rs"]
mod offload_gpu;
