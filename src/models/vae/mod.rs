//! `AutoencoderKLQwenImage`: the Qwen-Image VAE (single images, T = 1).
