//! `QwenImageEncoder3d` for single images.
//!
//! Keys (prefix `encoder.`): `conv_in`, a flat `down_blocks.{i}` list (per stage: `num_res_blocks`
//! residual blocks, each followed by an attention block when the stage's scale is in `attn_scales`, then
//! a `Resample` between stages), `mid_block`, `norm_out.gamma`, `conv_out` (to `2 * z_dim` channels).
//!
//! With a non-empty `attn_scales` upstream builds attention blocks into `down_blocks` but its `_encode`
//! cannot run them (it passes the feature cache to `QwenImageAttentionBlock.forward`, a `TypeError` in
//! diffusers 0.42.1); here they are applied where they sit, as their position in the list says. No
//! shipped checkpoint uses them.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{AttentionBlock, CausalConv, MidBlock, Resample, ResidualBlock, RmsNorm};
use super::config::VaeConfig;

/// One entry of `down_blocks`.
#[derive(Debug, Clone)]
enum DownLayer {
    Res(ResidualBlock),
    Attn(AttentionBlock),
    Resample(Resample),
}

impl Module for DownLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Res(m) => m.forward(x),
            Self::Attn(m) => m.forward(x),
            Self::Resample(m) => m.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: CausalConv,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv,
}

impl Encoder {
    /// `vb` is rooted at `encoder`. Produces `out_dim` (= `2 * z_dim`) channels.
    pub fn new(cfg: &VaeConfig, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let dims = cfg.encoder_dims();
        let conv_in = CausalConv::new(cfg.input_channels, dims[0], 3, vb.pp("conv_in"))?;
        let vbd = vb.pp("down_blocks");
        let mut down_blocks = Vec::new();
        let mut scale = 1.0f64;
        let mut width = dims[0];
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out) = (pair[0], pair[1]);
            for _ in 0..cfg.num_res_blocks {
                let idx = down_blocks.len();
                down_blocks.push(DownLayer::Res(ResidualBlock::new(in_dim, out, vbd.pp(idx))?));
                if cfg.attn_scales.contains(&scale) {
                    let idx = down_blocks.len();
                    down_blocks.push(DownLayer::Attn(AttentionBlock::new(out, vbd.pp(idx))?));
                }
                in_dim = out;
            }
            if i + 1 != cfg.dim_mult.len() {
                // `downsample2d` and `downsample3d` share the spatial part; `time_conv` is unused here.
                let idx = down_blocks.len();
                down_blocks.push(DownLayer::Resample(Resample::down(out, vbd.pp(idx))?));
                scale /= 2.0;
            }
            width = out;
        }
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(width, vb.pp("mid_block"))?,
            norm_out: RmsNorm::new(width, false, vb.pp("norm_out"))?,
            conv_out: CausalConv::new(width, out_dim, 3, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    /// `[B, input_channels, H, W]` → `[B, 2 * z_dim, H / f, W / f]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for layer in &self.down_blocks {
            x = layer.forward(&x)?;
        }
        let x = self.mid_block.forward(&x)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}
