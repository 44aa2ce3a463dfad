//! `transformer/config.json` of `QwenImageTransformer2DModel`.
//!
//! Field names are the config keys; defaults are the `__init__` defaults of diffusers 0.42.1
//! (`models/transformers/transformer_qwenimage.py`), which are also the Qwen-Image-Edit values.

/// The transformer's configuration, as stored in `transformer/config.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TransformerConfig {
    /// Side of the square latent patch packed into one token.
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Features of one packed input token (`16 · patch_size²` for the real model).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Latent channels predicted per patch position; `null` (or 0) means `in_channels`.
    #[serde(default = "default_out_channels")]
    pub out_channels: Option<usize>,
    /// Number of dual-stream blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the text encoder's hidden states.
    #[serde(default = "default_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Guidance-distilled variant (unsupported: no Edit checkpoint uses it).
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE channels of the (frame, height, width) axes; they sum to `attention_head_dim`.
    #[serde(default = "default_axes_dims_rope")]
    pub axes_dims_rope: [usize; 3],
    /// Edit-2511: reference-image tokens are modulated with the embedding of t = 0.
    #[serde(default)]
    pub zero_cond_t: bool,
    /// QwenImage-Layered only (unsupported).
    #[serde(default)]
    pub use_additional_t_cond: bool,
    /// QwenImage-Layered only (unsupported).
    #[serde(default)]
    pub use_layer3d_rope: bool,
}

fn default_patch_size() -> usize {
    2
}
fn default_in_channels() -> usize {
    64
}
fn default_out_channels() -> Option<usize> {
    Some(16)
}
fn default_num_layers() -> usize {
    60
}
fn default_attention_head_dim() -> usize {
    128
}
fn default_num_attention_heads() -> usize {
    24
}
fn default_joint_attention_dim() -> usize {
    3584
}
fn default_axes_dims_rope() -> [usize; 3] {
    [16, 56, 56]
}

impl Default for TransformerConfig {
    /// The Qwen-Image-Edit configuration.
    fn default() -> Self {
        Self {
            patch_size: default_patch_size(),
            in_channels: default_in_channels(),
            out_channels: default_out_channels(),
            num_layers: default_num_layers(),
            attention_head_dim: default_attention_head_dim(),
            num_attention_heads: default_num_attention_heads(),
            joint_attention_dim: default_joint_attention_dim(),
            guidance_embeds: false,
            axes_dims_rope: default_axes_dims_rope(),
            zero_cond_t: false,
            use_additional_t_cond: false,
            use_layer3d_rope: false,
        }
    }
}

impl TransformerConfig {
    /// Model width: `num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// `out_channels or in_channels`, as the reference resolves it.
    pub fn output_channels(&self) -> usize {
        match self.out_channels {
            Some(c) if c > 0 => c,
            _ => self.in_channels,
        }
    }

    /// Features of one output token: `patch_size² · output_channels`.
    pub fn proj_out_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.output_channels()
    }

    /// Checks that this port can run the configuration; the message says which key is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.guidance_embeds {
            return Err("guidance_embeds = true (guidance-distilled variant) is not supported".into());
        }
        if self.use_additional_t_cond || self.use_layer3d_rope {
            return Err("use_additional_t_cond / use_layer3d_rope (QwenImage-Layered) are not supported".into());
        }
        let sizes = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("num_layers", self.num_layers),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        let axes = self.axes_dims_rope;
        if axes.iter().any(|a| a % 2 != 0) {
            return Err(format!("axes_dims_rope {axes:?} must all be even"));
        }
        if axes.iter().sum::<usize>() != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {axes:?} sums to {}, but attention_head_dim is {}",
                axes.iter().sum::<usize>(),
                self.attention_head_dim
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_edit_config_and_defaults() {
        let text = r#"{"_class_name": "QwenImageTransformer2DModel", "_diffusers_version": "0.35.0.dev0",
            "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": false,
            "in_channels": 64, "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60,
            "out_channels": 16, "patch_size": 2}"#;
        let cfg: TransformerConfig = serde_json::from_str(text).unwrap();
        assert_eq!(cfg, TransformerConfig::default());
        assert_eq!(cfg.inner_dim(), 3072);
        assert_eq!(cfg.proj_out_dim(), 64);
        assert!(cfg.validate().is_ok());
        let cfg: TransformerConfig = serde_json::from_str(r#"{"zero_cond_t": true, "out_channels": null}"#).unwrap();
        assert!(cfg.zero_cond_t);
        assert_eq!(cfg.output_channels(), 64);
    }

    #[test]
    fn rejects_unsupported_configs() {
        let cfg = TransformerConfig {
            guidance_embeds: true,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("guidance_embeds"));
        let cfg = TransformerConfig {
            axes_dims_rope: [16, 56, 54],
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("axes_dims_rope"));
    }
}
