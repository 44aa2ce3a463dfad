//! qwen-edit: edit images with the Qwen-Image-Edit model family in-process, built on candle.
//!
//! Dependencies point one way: `commands` → `pipeline` → `models` → `models::nn`.

pub mod cli;
pub mod commands;
pub mod cuda_probe;
pub mod device;
pub mod docs;
pub mod error;
pub mod hub;
pub mod io;
pub mod jobs;
pub mod logging;
pub mod models;
pub mod pipeline;
pub mod printer;
