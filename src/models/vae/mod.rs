//! `AutoencoderKLQwenImage`: the Qwen-Image VAE (single images, T = 1).
//!
//! Upstream: diffusers 0.42.1 `models/autoencoders/autoencoder_kl_qwenimage.py` (a fine-tuned Wan-2.1
//! video VAE). For one frame the causal 3-D network is exactly a 2-D one (see [`blocks`]), which is what
//! is implemented here. Checkpoint: the diffusers `vae/` folder (`config.json` + safetensors), keys as on
//! disk: `encoder.*`, `quant_conv` (`2z → 2z`, 1×1×1), `post_quant_conv` (`z → z`, 1×1×1), `decoder.*`.
//! Only the tensors used for images are read; `time_conv`s are never touched.
//!
//! Shipped config (`base_dim` 96, `dim_mult` [1, 2, 4, 4], 2 residual blocks, `z_dim` 16): encoder
//! 96→96→192→384→384 with three 2× down-samplers, a mid block (resnet, single-head attention, resnet),
//! `conv_out` to 32 channels (mean ‖ log-variance); decoder 384→384→384→192→96 with three 2× up-samplers
//! that halve channels. Spatial factor 8.
//!
//! - [`AutoencoderKLQwenImage::encode`] returns the posterior mean (`latent_dist.mode()`), before the
//!   pipelines' per-channel normalisation ([`AutoencoderKLQwenImage::normalize_latents`]).
//! - [`AutoencoderKLQwenImage::decode`] expects de-normalised latents
//!   ([`AutoencoderKLQwenImage::denormalize_latents`]) and clamps to [-1, 1] (the tiled path does not,
//!   as upstream).
//! - [`preprocess`] / [`postprocess_u8`] / [`postprocess_u16`] convert between pixels and tensors.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod pixels;
pub mod tiling;

use std::path::Path;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use self::blocks::CausalConv;
pub use self::config::VaeConfig;
use self::decoder::Decoder;
use self::encoder::Encoder;
pub use self::pixels::{postprocess_u16, postprocess_u8, preprocess_buffer};
pub use self::tiling::{TileSizes, TilingMode};
use crate::error::UserError;
use crate::models::weights::{read_config, ComponentWeights};

/// The Qwen-Image VAE.
#[derive(Debug, Clone)]
pub struct AutoencoderKLQwenImage {
    cfg: VaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv,
    post_quant_conv: CausalConv,
    decoder: Decoder,
    tiling: TilingMode,
    tiles: TileSizes,
    dtype: DType,
}

/// A candle error without the backtrace that `bail!` attaches when `RUST_BACKTRACE` is set.
fn plain_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain_message(inner),
        e => e.to_string(),
    }
}

impl AutoencoderKLQwenImage {
    /// Loads the diffusers `vae/` folder `dir` in `dtype` on `device`. A missing folder, config or
    /// tensor, or a tensor whose shape disagrees with `config.json`, is a [`UserError`] (model missing)
    /// naming the file or tensor.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        let cfg: VaeConfig = read_config(dir).map_err(|e| {
            UserError::model_missing(format!("cannot load the VAE config from {}: {e:#}", dir.display()))
        })?;
        let weights = ComponentWeights::open(dir)
            .map_err(|e| UserError::model_missing(format!("cannot open the VAE weights: {e}")))?;
        let model = Self::new(&cfg, weights.into_var_builder(dtype, device)).map_err(|e| {
            UserError::model_missing(format!(
                "cannot load the VAE from {}: {}",
                dir.display(),
                plain_message(&e)
            ))
        })?;
        tracing::debug!(dir = %dir.display(), ?dtype, "loaded the VAE");
        Ok(model)
    }

    /// Builds the model from `cfg`, reading the weights from `vb` (rooted at the folder's key space).
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z2 = 2 * cfg.z_dim;
        Ok(Self {
            encoder: Encoder::new(cfg, z2, vb.pp("encoder"))?,
            quant_conv: CausalConv::new(z2, z2, 1, vb.pp("quant_conv"))?,
            post_quant_conv: CausalConv::new(cfg.z_dim, cfg.z_dim, 1, vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            tiling: TilingMode::Off,
            tiles: TileSizes::default(),
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// The dtype the weights were loaded in (inputs are cast to it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `2 ** len(temperal_downsample)`: pixels per latent along each spatial axis.
    pub fn spatial_scale_factor(&self) -> usize {
        self.cfg.spatial_scale_factor()
    }

    /// Chooses whether encode/decode tile (default [`TilingMode::Off`]).
    pub fn set_tiling(&mut self, mode: TilingMode) {
        self.tiling = mode;
    }

    pub fn tiling(&self) -> TilingMode {
        self.tiling
    }

    /// Changes the tile geometry used by [`TilingMode::Auto`] (default: [`TileSizes::default`]).
    pub fn set_tile_sizes(&mut self, tiles: TileSizes) -> Result<()> {
        tiles.validate(self.spatial_scale_factor())?;
        self.tiles = tiles;
        Ok(())
    }

    /// Encoder + `quant_conv` + posterior mean on one (tile of an) image.
    fn encode_untiled(&self, x: &Tensor) -> Result<Tensor> {
        let enc = self.quant_conv.forward(&self.encoder.forward(x)?)?; // [B, 2z, h, w]
        enc.narrow(1, 0, self.cfg.z_dim) // mean ‖ logvar -> mean
    }

    /// `post_quant_conv` + decoder, unclamped.
    fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(z)?)
    }

    /// Images `[B, input_channels, H, W]` in [-1, 1] → posterior means `[B, z_dim, H / f, W / f]`
    /// (`vae.encode(x).latent_dist.mode()`), in the model dtype.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.cfg.input_channels {
            bail!(
                "vae encode: expected {} channels, got an input of shape {:?}",
                self.cfg.input_channels,
                x.shape()
            );
        }
        let x = x.to_dtype(self.dtype)?;
        let t = &self.tiles;
        if self.tiling == TilingMode::Auto && (w > t.min_width || h > t.min_height) {
            return tiling::tiled_encode(&x, t, self.spatial_scale_factor(), |tile| self.encode_untiled(tile));
        }
        self.encode_untiled(&x)
    }

    /// Latents `[B, z_dim, h, w]` (de-normalised) → images `[B, input_channels, h * f, w * f]`, clamped
    /// to [-1, 1] unless tiled (upstream's tiled decode skips the clamp), in the model dtype.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = z.dims4()?;
        if c != self.cfg.z_dim {
            bail!(
                "vae decode: expected {} latent channels, got a latent of shape {:?}",
                self.cfg.z_dim,
                z.shape()
            );
        }
        let z = z.to_dtype(self.dtype)?;
        let f = self.spatial_scale_factor();
        let t = &self.tiles;
        if self.tiling == TilingMode::Auto && (w > t.min_width / f || h > t.min_height / f) {
            return tiling::tiled_decode(&z, t, f, |tile| self.decode_unclamped(tile));
        }
        self.decode_unclamped(&z)?.clamp(-1f32, 1f32)
    }

    /// Per-channel `[1, C, 1, 1]` tensor of `values` (read as f32, as `torch.tensor(list)`), in `dtype`.
    fn channel_tensor(values: &[f64], name: &str, z: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
        let c = z.dim(1)?;
        if values.len() != c {
            bail!(
                "vae config: {name} has {} entries but the latent {:?} has {c} channels",
                values.len(),
                z.shape()
            );
        }
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, (1, c, 1, 1), device)?.to_dtype(dtype)
    }

    /// After encode: `(z - latents_mean) / latents_std`, in the dtype of `z` (as the pipelines'
    /// `_encode_vae_image`).
    pub fn normalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        let (dtype, dev) = (z.dtype(), z.device());
        let mean = Self::channel_tensor(&self.cfg.latents_mean, "latents_mean", z, dtype, dev)?;
        let std = Self::channel_tensor(&self.cfg.latents_std, "latents_std", z, dtype, dev)?;
        z.broadcast_sub(&mean)?.broadcast_div(&std)
    }

    /// Before decode, the pipelines' exact de-normalisation in the model dtype:
    /// `latents.to(vae.dtype) / (1.0 / std.to(vae.dtype)) + mean.to(vae.dtype)`.
    ///
    /// Upstream writes `1.0 / torch.tensor(std).view(..).to(device, dtype)`: the cast binds first, so
    /// the reciprocal is of the rounded std and is itself rounded to the model dtype (in bf16 this
    /// differs from `bf16(1 / std)` for 6 of the 16 shipped channels).
    pub fn denormalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype)?;
        let mean = Self::channel_tensor(&self.cfg.latents_mean, "latents_mean", &z, self.dtype, z.device())?;
        // The reciprocal on the host in f32 of the dtype-rounded std, then rounded to the dtype.
        let std = Self::channel_tensor(&self.cfg.latents_std, "latents_std", &z, self.dtype, &Device::Cpu)?;
        let inv = std
            .to_dtype(DType::F32)?
            .recip()?
            .to_dtype(self.dtype)?
            .to_device(z.device())?;
        z.broadcast_div(&inv)?.broadcast_add(&mean)
    }
}

/// An RGB image → `[1, 3, H, W]` f32 in [-1, 1] (`VaeImageProcessor.preprocess` after resizing).
pub fn preprocess(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    preprocess_buffer(img.as_raw(), h as usize, w as usize, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn key_layout_with_encoder_attention() {
        // Upstream state dict of this config: 123 tensors, 4 of them `time_conv`s.
        let cfg = VaeConfig {
            base_dim: 4,
            z_dim: 2,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_scales: vec![0.5],
            temperal_downsample: vec![false, true],
            latents_mean: vec![0.0; 2],
            latents_std: vec![1.0; 2],
            ..VaeConfig::default()
        };
        let vm = VarMap::new();
        let vae = AutoencoderKLQwenImage::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let data = vm.data().lock().unwrap();
        let mut keys: Vec<&str> = data.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys.len(), 119, "{keys:?}");
        let want = [
            "encoder.down_blocks.1.resample.1.weight",
            "encoder.down_blocks.3.to_qkv.weight",
            "encoder.down_blocks.4.resample.1.weight",
            "encoder.mid_block.attentions.0.to_qkv.weight",
            "decoder.mid_block.attentions.0.to_qkv.weight",
            "decoder.up_blocks.0.upsamplers.0.resample.1.weight",
            "decoder.up_blocks.1.upsamplers.0.resample.1.weight",
        ];
        let got: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| k.ends_with("to_qkv.weight") || k.ends_with("resample.1.weight"))
            .collect();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(got, want);
        drop(data);
        let z = vae
            .encode(&Tensor::zeros((1, 3, 16, 12), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(z.dims(), &[1, 2, 4, 3]);
        assert_eq!(vae.decode(&z).unwrap().dims(), &[1, 3, 16, 12]);
    }
}
