//! `vae/config.json` of `AutoencoderKLQwenImage`.
//!
//! Field names are the config keys; defaults are the constructor defaults of diffusers 0.42.1
//! (`models/autoencoders/autoencoder_kl_qwenimage.py`, `AutoencoderKLQwenImage.__init__`), which are also
//! the values shipped with the Qwen-Image family VAE.

use candle_core::{bail, Result};

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_input_channels() -> usize {
    3
}
fn default_latents_mean() -> Vec<f64> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
        -0.9497, 0.2503, -0.2921,
    ]
}
fn default_latents_std() -> Vec<f64> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
        2.8251, 1.9160,
    ]
}

/// The configuration of [`super::AutoencoderKLQwenImage`] (`vae/config.json`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct VaeConfig {
    /// Channels of the first encoder stage (and of the last decoder stage).
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// Latent channels (the encoder produces `2 * z_dim`: mean and log-variance).
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    /// Channel multiplier of each stage; there is one 2× down/up-sampler between consecutive stages.
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more per stage).
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    /// Encoder scales (1.0, 0.5, …) after whose residual blocks a spatial attention block is inserted.
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Which down-samplers also halve time (irrelevant for single images; its length sets the spatial factor).
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    /// Unused at inference.
    #[serde(default)]
    pub dropout: f64,
    /// Image channels (3 = RGB).
    #[serde(default = "default_input_channels")]
    pub input_channels: usize,
    /// Per-channel latent mean used by the pipelines to normalise latents.
    #[serde(default = "default_latents_mean")]
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation used by the pipelines to normalise latents.
    #[serde(default = "default_latents_std")]
    pub latents_std: Vec<f64>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            base_dim: default_base_dim(),
            z_dim: default_z_dim(),
            dim_mult: default_dim_mult(),
            num_res_blocks: default_num_res_blocks(),
            attn_scales: Vec::new(),
            temperal_downsample: default_temperal_downsample(),
            dropout: 0.0,
            input_channels: default_input_channels(),
            latents_mean: default_latents_mean(),
            latents_std: default_latents_std(),
        }
    }
}

impl VaeConfig {
    /// Checks what the reference constructor would reject (or crash on) before any weight is read.
    pub fn validate(&self) -> Result<()> {
        if self.base_dim == 0 || self.z_dim == 0 || self.input_channels == 0 {
            bail!(
                "vae config: base_dim ({}), z_dim ({}) and input_channels ({}) must be positive",
                self.base_dim,
                self.z_dim,
                self.input_channels
            );
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            bail!(
                "vae config: dim_mult {:?} must be a non-empty list of positive multipliers",
                self.dim_mult
            );
        }
        // The encoder reads `temperal_downsample[i]` for every stage but the last.
        if self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            bail!(
                "vae config: temperal_downsample has {} entries but dim_mult {:?} needs {}",
                self.temperal_downsample.len(),
                self.dim_mult,
                self.dim_mult.len() - 1
            );
        }
        Ok(())
    }

    /// `2 ** len(temperal_downsample)`: pixels per latent along each spatial axis.
    pub fn spatial_scale_factor(&self) -> usize {
        1usize << self.temperal_downsample.len()
    }

    /// Encoder stage widths: `base_dim * [1] + dim_mult`.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|m| self.base_dim * m)
            .collect()
    }

    /// Decoder stage widths: `base_dim * [dim_mult[-1]] + reversed(dim_mult)`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = self.dim_mult.last().copied().unwrap_or(1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| self.base_dim * m)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_shipped_config() {
        let cfg: VaeConfig = serde_json::from_str(r#"{"_class_name": "AutoencoderKLQwenImage"}"#).unwrap();
        assert_eq!(cfg, VaeConfig::default());
        assert_eq!(cfg.encoder_dims(), vec![96, 96, 192, 384, 384]);
        assert_eq!(cfg.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(cfg.spatial_scale_factor(), 8);
        assert_eq!(cfg.latents_mean.len(), 16);
        cfg.validate().unwrap();
    }

    #[test]
    fn rejects_short_temperal_downsample() {
        let cfg = VaeConfig {
            temperal_downsample: vec![false],
            ..VaeConfig::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("temperal_downsample"));
    }
}
