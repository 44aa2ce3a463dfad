//! `QwenImageDecoder3d` for single images.
//!
//! Keys (prefix `decoder.`): `conv_in` (`z_dim` → widest stage), `mid_block`, `up_blocks.{i}` with
//! `resnets.{0..=num_res_blocks}` and, except for the last stage, `upsamplers.0` (a `Resample` that
//! doubles the resolution and halves the channels, so stage `i > 0` starts at half the previous width),
//! `norm_out.gamma`, `conv_out` (→ `input_channels`). Upstream builds no attention in the up blocks,
//! whatever `attn_scales` says.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{CausalConv, MidBlock, Resample, ResidualBlock, RmsNorm};
use super::config::VaeConfig;

/// `QwenImageUpBlock`: `num_res_blocks + 1` residual blocks, then an optional up-sampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

impl UpBlock {
    fn new(in_dim: usize, out_dim: usize, num_res_blocks: usize, upsample: bool, vb: VarBuilder) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_res_blocks + 1);
        let mut current = in_dim;
        for j in 0..=num_res_blocks {
            resnets.push(ResidualBlock::new(current, out_dim, vb.pp("resnets").pp(j))?);
            current = out_dim;
        }
        // `upsample2d` and `upsample3d` share the spatial part; `time_conv` is unused here.
        let upsampler = if upsample {
            Some(Resample::up(out_dim, vb.pp("upsamplers").pp("0"))?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }
}

impl Module for UpBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&x),
            None => Ok(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: CausalConv,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv,
}

impl Decoder {
    /// `vb` is rooted at `decoder`.
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.decoder_dims();
        let conv_in = CausalConv::new(cfg.z_dim, dims[0], 3, vb.pp("conv_in"))?;
        let mid_block = MidBlock::new(dims[0], vb.pp("mid_block"))?;
        let mut up_blocks = Vec::with_capacity(dims.len() - 1);
        let mut width = dims[0];
        for (i, pair) in dims.windows(2).enumerate() {
            // The previous stage's up-sampler halved its channels.
            let in_dim = if i > 0 { pair[0] / 2 } else { pair[0] };
            let out = pair[1];
            let upsample = i + 1 != cfg.dim_mult.len();
            up_blocks.push(UpBlock::new(
                in_dim,
                out,
                cfg.num_res_blocks,
                upsample,
                vb.pp("up_blocks").pp(i),
            )?);
            width = out;
        }
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            norm_out: RmsNorm::new(width, false, vb.pp("norm_out"))?,
            conv_out: CausalConv::new(width, cfg.input_channels, 3, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    /// `[B, z_dim, h, w]` (after `post_quant_conv`) → `[B, input_channels, h * f, w * f]`, unclamped.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.mid_block.forward(&self.conv_in.forward(x)?)?;
        for b in &self.up_blocks {
            x = b.forward(&x)?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}
