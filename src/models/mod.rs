//! The networks of the Qwen-Image-Edit family, ported from diffusers 0.42.1 / transformers 5.2.0.
//!
//! Each component loads from its diffusers folder (`config.json` + safetensors, key names exactly as
//! on disk) and never sees the CLI, the hub or image files. Shared building blocks live in [`nn`].

pub mod lora;
pub mod nn;
pub mod offload;
pub mod presets;
pub mod quant;
pub mod random;
pub mod text_encoder;
pub mod transformer;
pub mod vae;
pub mod weights;
