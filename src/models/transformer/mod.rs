//! `QwenImageTransformer2DModel`: the MMDiT denoiser of Qwen-Image-Edit (Edit, 2509, 2511).
//!
//! Port of diffusers 0.42.1 `models/transformers/transformer_qwenimage.py`. The real model is 60
//! dual-stream blocks of width 3072 (24 heads × 128) over `[text, image]` joint attention; image tokens
//! are the packed 2×2 latent patches of the noise followed by those of each reference image, told apart
//! only by the frame axis of the 3-axis RoPE ("MSRoPE"). Edit-2511 (`zero_cond_t`) modulates the reference
//! tokens with the embedding of t = 0.
//!
//! - [`config`] parses `transformer/config.json`;
//! - [`embed`] holds the timestep embedding and the MSRoPE tables;
//! - [`block`] is one dual-stream block (modulation, joint attention, MLPs);
//! - [`model`] is the whole network, its loading and forward.

pub mod block;
pub mod config;
pub mod embed;
pub mod model;

pub use config::TransformerConfig;
pub use model::{Intermediates, QwenImageTransformer2DModel, TransformerWeights};
