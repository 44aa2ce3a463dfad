//! Building blocks of the Qwen-Image VAE, reduced to 2-D for single images.
//!
//! Upstream: diffusers 0.42.1 `models/autoencoders/autoencoder_kl_qwenimage.py` (`QwenImageCausalConv3d`,
//! `QwenImageRMS_norm`, `QwenImageResample`, `QwenImageResidualBlock`, `QwenImageAttentionBlock`,
//! `QwenImageMidBlock`).
//!
//! For one frame every causal 3-D convolution sees its input preceded by zero frames only (`2 * p_t`
//! front padding, empty feature cache), so a `k×k×k` kernel reduces exactly to the 2-D convolution with
//! its last temporal slice `W[:, :, k - 1]`, and `time_conv`s are skipped by the reference on the first
//! chunk. All tensors here are `[B, C, H, W]`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::models::nn::conv::Conv2d;
use crate::models::nn::fused;

/// `F.normalize`'s lower bound on the L2 norm.
const L2_NORM_EPS: f64 = 1e-12;

/// `QwenImageCausalConv3d` with a cubic kernel (`k = 1` or `3`, `padding = k / 2`) applied to one frame:
/// a 2-D convolution with the last temporal kernel slice. Keys: `weight [out, in, k, k, k]`, `bias [out]`.
#[derive(Debug, Clone)]
pub struct CausalConv {
    conv: Conv2d,
}

impl CausalConv {
    pub fn new(in_dim: usize, out_dim: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((out_dim, in_dim, k, k, k), "weight")?;
        let b = vb.get(out_dim, "bias")?;
        // [out, in, kt, kh, kw] -> [out, in, kh, kw] with kt = k - 1 (the frame itself; earlier taps see zeros).
        let w = w.narrow(2, k - 1, 1)?.squeeze(2)?.contiguous()?;
        Ok(Self {
            conv: Conv2d::new(w, Some(b), k / 2, 1),
        })
    }
}

impl Module for CausalConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// A plain `nn.Conv2d` (square kernel, with bias). Keys: `weight [out, in, k, k]`, `bias [out]`.
pub fn conv2d(
    in_dim: usize,
    out_dim: usize,
    k: usize,
    padding: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let w = vb.get((out_dim, in_dim, k, k), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Ok(Conv2d::new(w, Some(b), padding, stride))
}

/// `QwenImageRMS_norm` (channel-first, no bias): `x / max(‖x‖₂ over C, 1e-12) · √C · γ`.
///
/// The normalisation runs in f32 and is cast back to the input dtype before the two multiplications,
/// as upstream does for half-precision inputs ([`fused::channel_rms_norm`]: one kernel on CUDA in
/// bf16). Key: `gamma [C, 1, 1, 1]` (`images=False`, residual blocks and heads) or `[C, 1, 1]`
/// (`images=True`, attention blocks).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    gamma: Tensor, // [1, C, 1, 1]
    scale: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        let gamma = gamma.reshape((1, dim, 1, 1))?;
        Ok(Self {
            gamma,
            scale: (dim as f64).sqrt(),
        })
    }
}

impl RmsNorm {
    /// `silu(norm(x))`, as everywhere upstream but in the attention block (one kernel on CUDA in bf16).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        fused::channel_rms_norm(x, &self.gamma, self.scale, L2_NORM_EPS, true)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::channel_rms_norm(x, &self.gamma, self.scale, L2_NORM_EPS, false)
    }
}

/// `QwenImageResidualBlock`: `conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)`.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv,
    norm2: RmsNorm,
    conv2: CausalConv,
    conv_shortcut: Option<CausalConv>,
}

impl ResidualBlock {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let conv_shortcut = if in_dim != out_dim {
            Some(CausalConv::new(in_dim, out_dim, 1, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::new(in_dim, false, vb.pp("norm1"))?,
            conv1: CausalConv::new(in_dim, out_dim, 3, vb.pp("conv1"))?,
            norm2: RmsNorm::new(out_dim, false, vb.pp("norm2"))?,
            conv2: CausalConv::new(out_dim, out_dim, 3, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let x = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        // Dropout is the identity at inference.
        let x = self.conv2.forward(&self.norm2.forward_silu(&x)?)?;
        x + h
    }
}

/// `QwenImageAttentionBlock`: single-head self-attention over the pixels of each image.
/// Keys: `norm.gamma [C, 1, 1]`, `to_qkv [3C, C, 1, 1]`, `proj [C, C, 1, 1]`.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: conv2d(dim, 3 * dim, 1, 0, 1, vb.pp("to_qkv"))?,
            proj: conv2d(dim, dim, 1, 0, 1, vb.pp("proj"))?,
            dim,
        })
    }
}

impl Module for AttentionBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.dim {
            candle_core::bail!(
                "vae attention block: expected {} channels, got input {:?}",
                self.dim,
                x.shape()
            );
        }
        // [B, 3C, H, W]: channels [0, C) are q, [C, 2C) k, [2C, 3C) v, one token per pixel.
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        let o = fused::pixel_attention(&qkv, 1.0 / (c as f64).sqrt())?; // [B, C, H, W]
        self.proj.forward(&o)? + x
    }
}

/// The spatial part of `QwenImageResample` (`resample.1` is the conv; `time_conv` is never used for
/// single images and is not loaded).
#[derive(Debug, Clone)]
pub enum Resample {
    /// `ZeroPad2d((0, 1, 0, 1))` then a 3×3 stride-2 conv, `dim → dim`.
    Down(Conv2d),
    /// Nearest ×2 then a 3×3 conv with padding 1, `dim → dim / 2`.
    Up(Conv2d),
}

impl Resample {
    pub fn down(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self::Down(conv2d(dim, dim, 3, 0, 2, vb.pp("resample").pp("1"))?))
    }

    pub fn up(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self::Up(conv2d(dim, dim / 2, 3, 1, 1, vb.pp("resample").pp("1"))?))
    }
}

impl Module for Resample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Down(conv) => {
                // Right and bottom only: [B, C, H, W] -> [B, C, H + 1, W + 1].
                let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
                conv.forward(&x)
            }
            Self::Up(conv) => {
                let (_, _, h, w) = x.dims4()?;
                // "nearest-exact" with an integer factor 2 is plain nearest: out[i] = in[i / 2].
                conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }
        }
    }
}

/// `QwenImageMidBlock` with one layer: `resnets.0` → `attentions.0` → `resnets.1`.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let r = vb.pp("resnets");
        let resnets = vec![
            ResidualBlock::new(dim, dim, r.pp("0"))?,
            ResidualBlock::new(dim, dim, r.pp("1"))?,
        ];
        let attentions = vec![AttentionBlock::new(dim, vb.pp("attentions").pp("0"))?];
        Ok(Self { resnets, attentions })
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = match self.resnets.first() {
            Some(r) => r.forward(x)?,
            None => x.clone(),
        };
        for (attn, resnet) in self.attentions.iter().zip(self.resnets.iter().skip(1)) {
            x = resnet.forward(&attn.forward(&x)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn rms_norm_is_l2_normalisation_times_sqrt_c() {
        let dev = Device::Cpu;
        let gamma = Tensor::ones((4, 1, 1, 1), DType::F32, &dev).unwrap();
        let vb = VarBuilder::from_tensors(
            std::collections::HashMap::from([("n.gamma".to_string(), gamma)]),
            DType::F32,
            &dev,
        );
        let norm = RmsNorm::new(4, false, vb.pp("n")).unwrap();
        let x = Tensor::new(&[1f32, 2., 2., 4.], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let y: Vec<f32> = norm.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // ‖x‖ = 5, √C = 2.
        for (got, want) in y.iter().zip([0.4f32, 0.8, 0.8, 1.6]) {
            assert!((got - want).abs() < 1e-6, "{y:?}");
        }
        // An all-zero pixel stays zero (norm clamped at 1e-12).
        let z = norm
            .forward(&Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap())
            .unwrap();
        assert_eq!(z.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn causal_conv_uses_the_last_temporal_slice() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 3. * 9., &dev)
            .unwrap()
            .reshape((1, 1, 3, 3, 3))
            .unwrap();
        let b = Tensor::zeros(1, DType::F32, &dev).unwrap();
        let ts = std::collections::HashMap::from([("c.weight".to_string(), w), ("c.bias".to_string(), b)]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let conv = CausalConv::new(1, 1, 3, vb.pp("c")).unwrap();
        // A single centred one picks up the centre tap of slice 2: 18 + 4 = 22.
        let mut img = vec![0f32; 9];
        img[4] = 1.0;
        let x = Tensor::from_vec(img, (1, 1, 3, 3), &dev).unwrap();
        let y: Vec<f32> = conv.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(y[4], 22.0);
        assert_eq!(y[0], 26.0); // kernel index (2, 2) of slice 2 = 18 + 8
    }

    #[test]
    fn downsample_pads_right_and_bottom() {
        let dev = Device::Cpu;
        // A 3×3 kernel that only reads its top-left tap: output (i, j) = input (2i, 2j).
        let mut k = vec![0f32; 9];
        k[0] = 1.0;
        let ts = std::collections::HashMap::from([
            (
                "resample.1.weight".to_string(),
                Tensor::from_vec(k, (1, 1, 3, 3), &dev).unwrap(),
            ),
            (
                "resample.1.bias".to_string(),
                Tensor::zeros(1, DType::F32, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let down = Resample::down(1, vb).unwrap();
        let x = Tensor::arange(0f32, 16., &dev).unwrap().reshape((1, 1, 4, 4)).unwrap();
        let y: Vec<f32> = down.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(y, vec![0., 2., 8., 10.]);
    }
}
