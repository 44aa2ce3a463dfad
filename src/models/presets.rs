//! The published `config.json` of each full-size component (Qwen-Image-Edit family), for `bench`,
//! which builds the real-size networks with random weights. The pipeline itself always reads the
//! model folder's own config files.

/// `transformer/config.json` of Qwen/Qwen-Image-Edit-2511 (the Edit and 2509 files differ only in
/// not setting `zero_cond_t`).
pub const TRANSFORMER_2511: &str = r#"{"_class_name": "QwenImageTransformer2DModel", "attention_head_dim": 128,
 "axes_dims_rope": [16, 56, 56], "guidance_embeds": false, "in_channels": 64, "joint_attention_dim": 3584,
 "num_attention_heads": 24, "num_layers": 60, "out_channels": 16, "patch_size": 2, "zero_cond_t": true}"#;

/// `vae/config.json` of the Qwen-Image family.
pub const VAE: &str = r#"{"_class_name": "AutoencoderKLQwenImage", "attn_scales": [], "base_dim": 96,
 "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2, "temperal_downsample": [false, true, true], "z_dim": 16,
 "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
 "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]}"#;

/// `text_encoder/config.json` (Qwen2.5-VL-7B-Instruct, flat hub layout).
pub const TEXT_ENCODER: &str = r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
 "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
 "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
 "max_position_embeddings": 128000, "vocab_size": 152064, "tie_word_embeddings": false, "use_sliding_window": false,
 "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},
 "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
 "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
 "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
   "in_channels": 3, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112,
   "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "out_hidden_size": 3584, "hidden_act": "silu"}}"#;
