//! Configuration of the Qwen2.5-VL text encoder (`text_encoder/config.json`) and of its image processor
//! (`processor/preprocessor_config.json` or the `image_processor` part of `processor/processor_config.json`).
//!
//! Two `config.json` layouts exist and both are accepted:
//! - the flat hub layout written by transformers 4.x: the language-model fields (`hidden_size`,
//!   `num_hidden_layers`, `rope_theta`, `rope_scaling.mrope_section`, ...) sit at the top level next to
//!   `vision_config`;
//! - the nested transformers-5 layout: the language-model fields live in `text_config`, and RoPE is
//!   described by `rope_parameters` (`rope_theta`, `mrope_section`, `rope_type`).
//!
//! The multimodal token ids (`image_token_id`, `vision_start_token_id`, ...) are top-level fields in both.
//! Defaults are those of `Qwen2_5_VLConfig` / `Qwen2_5_VLTextConfig` / `Qwen2_5_VLVisionConfig` of
//! transformers 5.2.0, used only where a field is absent.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

macro_rules! default_fn {
    ($name:ident, $t:ty, $v:expr) => {
        fn $name() -> $t {
            $v
        }
    };
}

default_fn!(d_vocab_size, usize, 152064);
default_fn!(d_text_hidden, usize, 8192);
default_fn!(d_text_intermediate, usize, 29568);
default_fn!(d_text_layers, usize, 80);
default_fn!(d_text_heads, usize, 64);
default_fn!(d_act, String, "silu".to_string());
default_fn!(d_rms_eps, f64, 1e-5);
default_fn!(d_depth, usize, 32);
default_fn!(d_vis_hidden, usize, 3584);
default_fn!(d_vis_intermediate, usize, 3420);
default_fn!(d_vis_heads, usize, 16);
default_fn!(d_in_channels, usize, 3);
default_fn!(d_patch, usize, 14);
default_fn!(d_merge, usize, 2);
default_fn!(d_temporal_patch, usize, 2);
default_fn!(d_window, usize, 112);
default_fn!(d_out_hidden, usize, 3584);
default_fn!(d_fullatt, Vec<usize>, vec![7, 15, 23, 31]);
default_fn!(d_image_token, u32, 151655);
default_fn!(d_video_token, u32, 151656);
default_fn!(d_vision_start, u32, 151652);
default_fn!(d_vision_end, u32, 151653);

/// Default `rope_theta` of `Qwen2_5_VLTextConfig`.
const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;

/// `rope_scaling` (4.x) or `rope_parameters` (5.x).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// The language-model fields, wherever they are stored.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_text_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub head_dim: Option<usize>,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn rope(&self) -> Option<&RopeParameters> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// `rope_theta`: from `rope_parameters`, else the top-level field, else the class default.
    pub fn rope_theta(&self) -> f64 {
        self.rope()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The per-axis (t, h, w) split of the rotary frequencies.
    pub fn mrope_section(&self) -> anyhow::Result<&[usize]> {
        match self.rope().and_then(|r| r.mrope_section.as_deref()) {
            Some(s) => Ok(s),
            None => bail!("text encoder config has no `mrope_section` in `rope_scaling` / `rope_parameters`"),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let kv = self.num_kv_heads();
        if kv == 0 || self.num_attention_heads % kv != 0 {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            );
        }
        if let Some(hd) = self.head_dim {
            if hd != self.head_dim() {
                bail!(
                    "head_dim {hd} differs from hidden_size / num_attention_heads = {}",
                    self.head_dim()
                );
            }
        }
        let section = self.mrope_section()?;
        if section.len() != 3 || section.iter().sum::<usize>() * 2 != self.head_dim() {
            bail!(
                "mrope_section {section:?} must have 3 entries summing to head_dim / 2 = {}",
                self.head_dim() / 2
            );
        }
        if let Some(t) = self.rope().and_then(|r| r.rope_type.as_deref().or(r.type_.as_deref())) {
            if t != "default" && t != "mrope" {
                bail!("rope type `{t}` is not supported by the text encoder (only `default`)");
            }
        }
        if self.use_sliding_window {
            bail!("use_sliding_window = true is not supported by the text encoder");
        }
        Ok(())
    }
}

/// `vision_config`.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_vis_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_vis_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_vis_heads")]
    pub num_heads: usize,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_temporal_patch")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_window")]
    pub window_size: usize,
    #[serde(default = "d_out_hidden")]
    pub out_hidden_size: usize,
    #[serde(default = "d_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Length of one flattened patch row: `C · T · P · P`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Side of an attention window in merged tokens (`window_size / merge / patch`, as the reference).
    pub fn merged_window(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 || self.head_dim() % 4 != 0 {
            bail!(
                "vision hidden_size {} / num_heads {} must give a head_dim divisible by 4",
                self.hidden_size,
                self.num_heads
            );
        }
        if self.spatial_merge_size == 0 || self.patch_size == 0 || self.merged_window() == 0 {
            bail!(
                "vision window_size {} is smaller than patch_size {} × spatial_merge_size {}",
                self.window_size,
                self.patch_size,
                self.spatial_merge_size
            );
        }
        Ok(())
    }
}

/// The whole `text_encoder/config.json`.
#[derive(Debug, Clone)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

#[derive(Deserialize)]
struct TopLevel {
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default = "d_image_token")]
    image_token_id: u32,
    #[serde(default = "d_video_token")]
    video_token_id: u32,
    #[serde(default = "d_vision_start")]
    vision_start_token_id: u32,
    #[serde(default = "d_vision_end")]
    vision_end_token_id: u32,
}

impl Config {
    /// Parses either layout from the JSON text of `config.json`.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let top: TopLevel = serde_json::from_value(value.clone())?;
        let text_cfg: TextConfig = match value.get("text_config") {
            Some(tc) if tc.is_object() => serde_json::from_value(tc.clone()).context("cannot parse `text_config`")?,
            _ => serde_json::from_value(value.clone())?,
        };
        let vision = match top.vision_config {
            Some(v) => v,
            None => serde_json::from_value(serde_json::json!({}))?,
        };
        text_cfg.validate()?;
        vision.validate()?;
        if vision.out_hidden_size != text_cfg.hidden_size {
            bail!(
                "vision out_hidden_size {} differs from the language model hidden_size {}",
                vision.out_hidden_size,
                text_cfg.hidden_size
            );
        }
        Ok(Self {
            text: text_cfg,
            vision,
            image_token_id: top.image_token_id,
            video_token_id: top.video_token_id,
            vision_start_token_id: top.vision_start_token_id,
            vision_end_token_id: top.vision_end_token_id,
        })
    }

    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("cannot parse {}", path.display()))
    }
}

default_fn!(d_min_pixels, usize, 56 * 56);
default_fn!(d_max_pixels, usize, 28 * 28 * 1280);
default_fn!(d_true, bool, true);
default_fn!(d_rescale, f64, 1.0 / 255.0);
default_fn!(d_mean, Vec<f64>, vec![0.48145466, 0.4578275, 0.40821073]);
default_fn!(d_std, Vec<f64>, vec![0.26862954, 0.26130258, 0.27577711]);
default_fn!(d_resample, u32, PIL_BICUBIC);

/// PIL's `Image.Resampling.BICUBIC`.
pub const PIL_BICUBIC: u32 = 3;

/// `size` of the image processor: `shortest_edge` = min pixels, `longest_edge` = max pixels.
#[derive(Debug, Clone, Deserialize)]
pub struct PixelBounds {
    pub shortest_edge: Option<usize>,
    pub longest_edge: Option<usize>,
}

/// The settings of `Qwen2VLImageProcessor`, as stored on disk.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessorConfigFile {
    #[serde(default)]
    pub min_pixels: Option<usize>,
    #[serde(default)]
    pub max_pixels: Option<usize>,
    #[serde(default)]
    pub size: Option<PixelBounds>,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_temporal_patch")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_merge")]
    pub merge_size: usize,
    #[serde(default = "d_mean")]
    pub image_mean: Vec<f64>,
    #[serde(default = "d_std")]
    pub image_std: Vec<f64>,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "d_true")]
    pub do_resize: bool,
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    #[serde(default = "d_resample")]
    pub resample: u32,
}

/// Resolved image-processor settings.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
}

impl ProcessorConfig {
    /// Resolves the file's fields the way `Qwen2VLImageProcessor.__init__` does: `min_pixels` /
    /// `max_pixels` override `size.shortest_edge` / `size.longest_edge`, which override the defaults.
    pub fn from_file(f: ProcessorConfigFile) -> anyhow::Result<Self> {
        let size = f.size.as_ref();
        let min_pixels = f
            .min_pixels
            .or(size.and_then(|s| s.shortest_edge))
            .unwrap_or_else(d_min_pixels);
        let max_pixels = f
            .max_pixels
            .or(size.and_then(|s| s.longest_edge))
            .unwrap_or_else(d_max_pixels);
        if f.resample != PIL_BICUBIC {
            bail!(
                "image processor resample {} is not supported (only 3 = bicubic)",
                f.resample
            );
        }
        let three = |v: &[f64], what: &str| -> anyhow::Result<[f64; 3]> {
            match v {
                [a, b, c] => Ok([*a, *b, *c]),
                [a] => Ok([*a, *a, *a]),
                _ => bail!("image processor {what} must have 1 or 3 entries, got {}", v.len()),
            }
        };
        if f.patch_size == 0 || f.merge_size == 0 || f.temporal_patch_size == 0 {
            bail!("image processor patch_size, merge_size and temporal_patch_size must be positive");
        }
        if min_pixels > max_pixels {
            bail!("image processor min_pixels {min_pixels} exceeds max_pixels {max_pixels}");
        }
        Ok(Self {
            min_pixels,
            max_pixels,
            patch_size: f.patch_size,
            temporal_patch_size: f.temporal_patch_size,
            merge_size: f.merge_size,
            image_mean: three(&f.image_mean, "image_mean")?,
            image_std: three(&f.image_std, "image_std")?,
            rescale_factor: f.rescale_factor,
            do_resize: f.do_resize,
            do_rescale: f.do_rescale,
            do_normalize: f.do_normalize,
        })
    }

    /// Reads `processor/preprocessor_config.json`, else the `image_processor` object of
    /// `processor/processor_config.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let proc = dir.join("processor_config.json");
        let file: ProcessorConfigFile = if pre.is_file() {
            let text = std::fs::read_to_string(&pre).with_context(|| format!("cannot read {}", pre.display()))?;
            serde_json::from_str(&text).with_context(|| format!("cannot parse {}", pre.display()))?
        } else if proc.is_file() {
            let text = std::fs::read_to_string(&proc).with_context(|| format!("cannot read {}", proc.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("cannot parse {}", proc.display()))?;
            match value.get("image_processor") {
                Some(ip) => serde_json::from_value(ip.clone())
                    .with_context(|| format!("cannot parse `image_processor` of {}", proc.display()))?,
                None => bail!("{} has no `image_processor` entry", proc.display()),
            }
        } else {
            bail!("neither {} nor {} exists", pre.display(), proc.display());
        };
        Self::from_file(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_layouts() {
        let flat = r#"{"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "default", "mrope_section": [1, 1, 2]}, "image_token_id": 7,
            "vision_config": {"depth": 2, "hidden_size": 16, "num_heads": 2, "out_hidden_size": 16}}"#;
        let c = Config::from_json(flat).unwrap();
        assert_eq!(c.text.hidden_size, 16);
        assert_eq!(c.text.num_kv_heads(), 1);
        assert_eq!(c.text.mrope_section().unwrap(), &[1, 1, 2]);
        assert_eq!(c.image_token_id, 7);
        assert_eq!(c.vision_start_token_id, 151652);
        assert_eq!(c.vision.fullatt_block_indexes, vec![7, 15, 23, 31]);

        let nested = r#"{"hidden_size": 999, "text_config": {"hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "rope_parameters": {"rope_theta": 5000.0, "mrope_section": [1, 1, 2],
            "rope_type": "default"}}, "vision_config": {"hidden_size": 16, "num_heads": 2, "out_hidden_size": 16}}"#;
        let c = Config::from_json(nested).unwrap();
        assert_eq!(c.text.hidden_size, 16);
        assert_eq!(c.text.rope_theta(), 5000.0);
        assert_eq!(c.text.num_kv_heads(), 2);
    }

    #[test]
    fn bad_mrope_section_is_rejected() {
        let cfg = r#"{"hidden_size": 16, "num_attention_heads": 2, "rope_scaling": {"mrope_section": [1, 1, 1]},
            "vision_config": {"hidden_size": 16, "num_heads": 2, "out_hidden_size": 16}}"#;
        assert!(Config::from_json(cfg).is_err());
    }

    #[test]
    fn processor_pixel_bounds() {
        let f: ProcessorConfigFile =
            serde_json::from_str(r#"{"size": {"shortest_edge": 100, "longest_edge": 1000}, "max_pixels": 900}"#)
                .unwrap();
        let p = ProcessorConfig::from_file(f).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (100, 900));
        let f: ProcessorConfigFile = serde_json::from_str("{}").unwrap();
        let p = ProcessorConfig::from_file(f).unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (3136, 1003520));
    }
}
