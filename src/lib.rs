//! qwen-edit: edit images with the Qwen-Image-Edit model family in-process, built on candle.
//!
//! Dependencies point one way: `commands` → `pipeline` → `models` → `models::nn`.

pub mod error;
pub mod io;
pub mod models;
pub mod pipeline;
