//! 2-D convolution layer used by the VAE.
//!
//! With the `cudnn` feature, on a CUDA device, the convolution (and, when cuDNN can fuse it, the bias)
//! runs as one cuDNN graph ([`super::cudnn::conv2d`]); `QWEN_EDIT_NO_CUDNN=1` or
//! `QWEN_EDIT_NO_CUDNN_CONV=1` turns that off. Everywhere else, and whenever cuDNN declines, it is
//! exactly `candle_nn::Conv2d` (candle's `conv2d`, then a broadcast bias add), so CPU results are
//! bit-identical to it.

use candle_core::{Module, Result, Tensor};

/// A square-kernel `nn.Conv2d` with one group and no dilation. `weight [out, in, k, k]`, `bias [out]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        Self {
            weight,
            bias,
            padding,
            stride,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The candle path (what `candle_nn::Conv2d` computes), also used when cuDNN is not taken.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            None => Ok(y),
            Some(bias) => {
                let b = bias.dims1()?;
                y.broadcast_add(&bias.reshape((1, b, 1, 1))?)
            }
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cudnn")]
        if x.device().is_cuda() {
            if let Some(y) = super::cudnn::conv2d(x, &self.weight, self.bias.as_ref(), self.padding, self.stride)? {
                return Ok(y);
            }
        }
        self.forward_candle(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candle_nn_conv2d_bit_for_bit() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (5, 3, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.2, 5, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 7), &dev).unwrap();
        for (padding, stride) in [(1, 1), (0, 2), (0, 1)] {
            let ours = Conv2d::new(w.clone(), Some(b.clone()), padding, stride)
                .forward(&x)
                .unwrap();
            let cfg = candle_nn::Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let theirs = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg)
                .forward(&x)
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let a: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            let t: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            assert!(a.iter().zip(&t).all(|(p, q)| p.to_bits() == q.to_bits()));
            assert!(a.iter().any(|v| *v != 0.0));
        }
    }

    #[test]
    fn one_by_one_kernel_without_bias_is_a_channel_mix() {
        let dev = Device::Cpu;
        // out = 2·in0 − in1 at every pixel.
        let w = Tensor::new(&[2f32, -1.0], &dev).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let x = Tensor::arange(0f32, 8.0, &dev).unwrap().reshape((1, 2, 2, 2)).unwrap();
        let y: Vec<f32> = Conv2d::new(w, None, 0, 1)
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![-4.0, -3.0, -2.0, -1.0]);
        assert_eq!(x.dtype(), DType::F32);
    }
}
