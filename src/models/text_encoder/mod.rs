//! The Qwen2.5-VL prompt encoder: tokenizer, image processor, vision tower and language model.
//!
//! What the Edit pipelines of diffusers 0.42.1 use of `Qwen2_5_VLForConditionalGeneration`
//! (transformers 5.2.0, 3-D M-RoPE positions computed from `input_ids`) and of `Qwen2VLProcessor`:
//! `_get_qwen_prompt_embeds` fills the pipeline's template, the processor expands `<|image_pad|>` and
//! preprocesses the images, the model runs the vision tower, scatters its features into the image-pad
//! embeddings and runs the language model; the prompt embeddings are the final hidden states (after
//! `model.norm`) without the template prefix (64 tokens with the Qwen2 tokenizer).
//!
//! Files: `config.rs` (both config layouts), `prompt.rs` (templates, tokenizer), `processor.rs` (image
//! processor), `vision.rs` (vision tower), `text.rs` (language model, `rope_index`).
//!
//! Checkpoint layouts: legacy names `model.*` (language model) and `visual.*` (vision tower), or the
//! transformers-5 names `model.language_model.*` and `model.visual.*`; `lm_head` is never loaded.

pub mod config;
pub mod processor;
pub mod prompt;
pub mod text;
pub mod vision;

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

pub use config::{Config, ProcessorConfig};
pub use processor::{ImageProcessor, ProcessedImage};
pub use prompt::{PromptTokenizer, Template};

use crate::error::UserError;
use crate::models::quant::fp8::Fp8Quantizer;
use crate::models::quant::{text_encoder_fp8_select, WeightFormat};
use crate::models::weights::ComponentWeights;
use text::{MultimodalIds, TextModel};
use vision::VisionModel;

/// Prompt embeddings for the transformer.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// `[1, L, hidden]` in the encoder's dtype.
    pub embeds: Tensor,
    /// `[1, L]` mask, or `None` when every token is valid (always for batch 1, as `encode_prompt`).
    pub mask: Option<Tensor>,
}

/// Tokenizer + image processor + Qwen2.5-VL, loaded from a pipeline's `text_encoder/` and `processor/`.
pub struct PromptEncoder {
    cfg: Config,
    tokenizer: PromptTokenizer,
    processor: ImageProcessor,
    vision: VisionModel,
    text: TextModel,
    device: Device,
}

/// Picks the language-model and vision prefixes of the checkpoint.
fn split_prefixes(vb: &VarBuilder<'static>, dir: &Path) -> anyhow::Result<(VarBuilder<'static>, VarBuilder<'static>)> {
    if vb.contains_tensor("model.language_model.embed_tokens.weight") {
        Ok((vb.pp("model").pp("language_model"), vb.pp("model").pp("visual")))
    } else if vb.contains_tensor("model.embed_tokens.weight") {
        Ok((vb.pp("model"), vb.pp("visual")))
    } else {
        Err(UserError::model_missing(format!(
            "{} holds no text-encoder embeddings (neither `model.embed_tokens.weight` nor \
             `model.language_model.embed_tokens.weight`)",
            dir.display()
        ))
        .with_hint("run `qwen-edit fetch-models`")
        .into())
    }
}

impl PromptEncoder {
    /// Loads the text encoder from `text_encoder_dir` (config.json + safetensors, single or sharded)
    /// and the tokenizer and image-processor settings from `processor_dir`.
    pub fn load(text_encoder_dir: &Path, processor_dir: &Path, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        Self::load_with_format(text_encoder_dir, processor_dir, dtype, device, WeightFormat::Native)
    }

    /// [`Self::load`] with the language model's Linear weights in `format` (fp8: quantized at load).
    pub fn load_with_format(
        text_encoder_dir: &Path,
        processor_dir: &Path,
        dtype: DType,
        device: &Device,
        format: WeightFormat,
    ) -> anyhow::Result<Self> {
        for dir in [text_encoder_dir, processor_dir] {
            if !dir.is_dir() {
                return Err(
                    UserError::model_missing(format!("model folder {} is missing", dir.display()))
                        .with_hint("run `qwen-edit fetch-models`")
                        .into(),
                );
            }
        }
        let cfg = Config::load(text_encoder_dir)?;
        let pcfg = ProcessorConfig::load(processor_dir)?;
        let v = &cfg.vision;
        if (pcfg.patch_size, pcfg.merge_size, pcfg.temporal_patch_size)
            != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        {
            bail!(
                "image processor patch/merge/temporal sizes ({}, {}, {}) differ from the vision config ({}, {}, {})",
                pcfg.patch_size,
                pcfg.merge_size,
                pcfg.temporal_patch_size,
                v.patch_size,
                v.spatial_merge_size,
                v.temporal_patch_size
            );
        }
        if v.in_channels != 3 {
            bail!("vision in_channels {} is not supported (RGB only)", v.in_channels);
        }
        let tokenizer = PromptTokenizer::load(processor_dir, cfg.image_token_id)?;
        for (name, id) in [
            (prompt::VISION_START, cfg.vision_start_token_id),
            (prompt::VISION_END, cfg.vision_end_token_id),
            (prompt::VIDEO_PAD, cfg.video_token_id),
        ] {
            if let Some(t) = tokenizer.token_id(name) {
                if t != id {
                    bail!("tokenizer maps {name} to {t} but the text encoder config says {id}");
                }
            }
        }
        let weights = ComponentWeights::open(text_encoder_dir).map_err(|e| {
            anyhow::Error::new(UserError::model_missing(e.to_string()).with_hint("run `qwen-edit fetch-models`"))
        })?;
        let vb = match format {
            WeightFormat::Native => weights.into_var_builder(dtype, device),
            WeightFormat::Fp8 => VarBuilder::from_backend(
                Box::new(Fp8Quantizer::new(Box::new(weights), text_encoder_fp8_select)),
                dtype,
                device.clone(),
            ),
        };
        let (lm_vb, vis_vb) = split_prefixes(&vb, text_encoder_dir)?;
        let ctx = || format!("cannot load the text encoder from {}", text_encoder_dir.display());
        let vision = VisionModel::new(&cfg.vision, vis_vb).with_context(ctx)?;
        let text = TextModel::new(&cfg.text, lm_vb).with_context(ctx)?;
        Ok(Self {
            cfg,
            tokenizer,
            processor: ImageProcessor::new(pcfg),
            vision,
            text,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Leading tokens dropped from the prompt embeddings (the tokenized template prefix).
    pub fn drop_idx(&self) -> usize {
        self.tokenizer.drop_idx()
    }

    /// `Qwen2VLImageProcessor` on one image.
    pub fn process_image(&self, img: &RgbImage) -> anyhow::Result<ProcessedImage> {
        self.processor.process_image(img)
    }

    /// The image as the processor resizes it (bicubic to the `smart_resize` size).
    pub fn resized_image(&self, img: &RgbImage) -> anyhow::Result<RgbImage> {
        self.processor.resized(img)
    }

    /// Token ids of the template with `<|image_pad|>` expanded for `images`.
    pub fn build_input_ids(
        &self,
        template: Template,
        prompt: &str,
        images: &[ProcessedImage],
    ) -> anyhow::Result<Vec<u32>> {
        let merge = self.cfg.vision.spatial_merge_size;
        let counts: Vec<usize> = images.iter().map(|i| i.num_tokens(merge)).collect();
        self.tokenizer.build_input_ids(template, prompt, &counts)
    }

    /// 3-D M-RoPE positions (`[t, h, w]` per token) of `get_rope_index`.
    pub fn rope_index(&self, ids: &[u32], images: &[ProcessedImage]) -> candle_core::Result<Vec<[u32; 3]>> {
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
        let mm = MultimodalIds {
            image_token_id: self.cfg.image_token_id,
            video_token_id: self.cfg.video_token_id,
            vision_start_token_id: self.cfg.vision_start_token_id,
        };
        text::rope_index(ids, &grids, mm, self.cfg.vision.spatial_merge_size)
    }

    /// The vision tower's merged features of all images, `[Σ tokens, hidden]`, or `None` without images.
    pub fn vision_embeds(&self, images: &[ProcessedImage]) -> candle_core::Result<Option<Tensor>> {
        if images.is_empty() {
            return Ok(None);
        }
        let pixels: Vec<&Tensor> = images.iter().map(|i| &i.pixel_values).collect();
        let pixels = Tensor::cat(&pixels, 0)?.to_device(&self.device)?;
        let grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
        self.vision.forward(&pixels, &grids).map(Some)
    }

    /// `inputs_embeds [1, L, hidden]`: token embeddings with the image features scattered in.
    pub fn inputs_embeds(&self, ids: &[u32], images: &[ProcessedImage]) -> candle_core::Result<Tensor> {
        let vis = self.vision_embeds(images)?;
        self.text.embed(ids, vis.as_ref(), self.cfg.image_token_id)
    }

    /// Final hidden states `[1, L, hidden]` (after `model.norm`) for one sequence.
    pub fn forward_hidden(&self, ids: &[u32], images: &[ProcessedImage]) -> anyhow::Result<Tensor> {
        let positions = self.rope_index(ids, images)?;
        let embeds = self.inputs_embeds(ids, images)?;
        Ok(self.text.forward(&embeds, &positions)?)
    }

    /// `_get_qwen_prompt_embeds` for one prompt with already-resized images.
    pub fn encode(&self, template: Template, prompt: &str, images: &[RgbImage]) -> anyhow::Result<PromptEmbeds> {
        let processed = images
            .iter()
            .map(|i| self.process_image(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ids = self.build_input_ids(template, prompt, &processed)?;
        let hidden = self.forward_hidden(&ids, &processed)?;
        let drop = self.drop_idx();
        let (_, l, _) = hidden.dims3()?;
        if l <= drop {
            bail!("the encoded prompt has {l} tokens, not more than the {drop} template tokens");
        }
        Ok(PromptEmbeds {
            embeds: hidden.narrow(1, drop, l - drop)?,
            mask: None,
        })
    }

    /// Edit v1 (`QwenImageEditPipeline`): one image, already Lanczos-resized by the pipeline.
    pub fn encode_edit(&self, prompt: &str, image: &RgbImage) -> anyhow::Result<PromptEmbeds> {
        self.encode(Template::Edit, prompt, std::slice::from_ref(image))
    }

    /// Edit Plus (2509 / 2511): the condition images, already resized by the pipeline.
    pub fn encode_plus(&self, prompt: &str, images: &[RgbImage]) -> anyhow::Result<PromptEmbeds> {
        self.encode(Template::Plus, prompt, images)
    }
}
