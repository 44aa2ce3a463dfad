//! `QwenImageTransformer2DModel`: the MMDiT denoiser.
