//! Prompt templates of the Edit pipelines and the text side of `Qwen2VLProcessor`.
//!
//! Both templates share the system block; the pipelines drop the embeddings of that block plus
//! `<|im_start|>user\n` (`prompt_template_encode_start_idx = 64` in diffusers). Here that count is
//! derived by tokenizing the prefix with the model's own tokenizer.
//!
//! The processor expands every `<|image_pad|>` of the text into `grid_t·grid_h·grid_w / merge²` copies
//! (in image order) before tokenizing; this module does the same.

use std::path::Path;

use anyhow::{bail, Context};
use tokenizers::Tokenizer;

use crate::error::UserError;

/// The system block plus the start of the user turn: the part dropped from the prompt embeddings.
pub const TEMPLATE_PREFIX: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n";

/// What follows the user text.
pub const TEMPLATE_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n";

/// The number of prefix tokens diffusers hard-codes (`prompt_template_encode_start_idx`).
pub const DIFFUSERS_DROP_IDX: usize = 64;

pub const IMAGE_PAD: &str = "<|image_pad|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const VIDEO_PAD: &str = "<|video_pad|>";

/// Which pipeline's template to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `QwenImageEditPipeline`: one image, `<|vision_start|><|image_pad|><|vision_end|>{prompt}`.
    Edit,
    /// `QwenImageEditPlusPipeline`: `Picture N: <|vision_start|><|image_pad|><|vision_end|>` per
    /// image, then the prompt with no separator.
    Plus,
}

impl Template {
    /// The full template text for `prompt` and `num_images` images (before `<|image_pad|>` expansion).
    pub fn render(self, prompt: &str, num_images: usize) -> String {
        let user = match self {
            Template::Edit => format!("{VISION_START}{IMAGE_PAD}{VISION_END}{prompt}"),
            Template::Plus => {
                let mut s = String::new();
                for i in 0..num_images {
                    s.push_str(&format!("Picture {}: {VISION_START}{IMAGE_PAD}{VISION_END}", i + 1));
                }
                s.push_str(prompt);
                s
            }
        };
        format!("{TEMPLATE_PREFIX}{user}{TEMPLATE_SUFFIX}")
    }
}

/// The processor's tokenizer (`processor/tokenizer.json`) plus the derived prefix length.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    image_token_id: u32,
    prefix_ids: Vec<u32>,
}

impl PromptTokenizer {
    /// Loads `processor_dir/tokenizer.json`; `image_token_id` comes from the text-encoder config and
    /// must be the id of `<|image_pad|>` in the tokenizer.
    pub fn load(processor_dir: &Path, image_token_id: u32) -> anyhow::Result<Self> {
        let path = processor_dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(
                UserError::model_missing(format!("tokenizer {} is missing", path.display()))
                    .with_hint("run `qwen-edit fetch-models`")
                    .into(),
            );
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot load tokenizer {}", path.display()))?;
        Self::new(tokenizer, image_token_id)
    }

    pub fn new(tokenizer: Tokenizer, image_token_id: u32) -> anyhow::Result<Self> {
        match tokenizer.token_to_id(IMAGE_PAD) {
            Some(id) if id == image_token_id => {}
            Some(id) => {
                bail!("tokenizer maps {IMAGE_PAD} to {id} but the text encoder's image_token_id is {image_token_id}")
            }
            None => bail!("tokenizer has no {IMAGE_PAD} token"),
        }
        let mut this = Self {
            tokenizer,
            image_token_id,
            prefix_ids: Vec::new(),
        };
        this.prefix_ids = this.encode(TEMPLATE_PREFIX)?;
        if this.prefix_ids.len() != DIFFUSERS_DROP_IDX {
            tracing::warn!(
                "the template prefix is {} tokens with this tokenizer (diffusers assumes {DIFFUSERS_DROP_IDX}); dropping {}",
                this.prefix_ids.len(),
                this.prefix_ids.len()
            );
        }
        Ok(this)
    }

    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Number of leading tokens the prompt embeddings drop (64 with the Qwen2 tokenizer).
    pub fn drop_idx(&self) -> usize {
        self.prefix_ids.len()
    }

    /// The id of a token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Token ids of `template` filled with `prompt`, with each image's `<|image_pad|>` expanded to
    /// `tokens_per_image[i]` copies.
    pub fn build_input_ids(
        &self,
        template: Template,
        prompt: &str,
        tokens_per_image: &[usize],
    ) -> anyhow::Result<Vec<u32>> {
        for tok in [IMAGE_PAD, VISION_START, VISION_END, VIDEO_PAD] {
            if prompt.contains(tok) {
                return Err(
                    UserError::bad_input(format!("the prompt must not contain the special token {tok}")).into(),
                );
            }
        }
        if template == Template::Edit && tokens_per_image.len() != 1 {
            bail!(
                "the Edit template takes exactly one image, got {}",
                tokens_per_image.len()
            );
        }
        let text = template.render(prompt, tokens_per_image.len());
        let mut expanded = String::with_capacity(text.len() + IMAGE_PAD.len() * tokens_per_image.iter().sum::<usize>());
        let mut parts = text.split(IMAGE_PAD);
        expanded.push_str(parts.next().unwrap_or_default());
        for (i, part) in parts.enumerate() {
            let n = tokens_per_image.get(i).copied().unwrap_or(0);
            for _ in 0..n {
                expanded.push_str(IMAGE_PAD);
            }
            expanded.push_str(part);
        }
        let ids = self.encode(&expanded)?;
        let want: usize = tokens_per_image.iter().sum();
        let got = ids.iter().filter(|&&i| i == self.image_token_id).count();
        if got != want {
            bail!("tokenized prompt has {got} image tokens, expected {want}");
        }
        if !ids.starts_with(&self.prefix_ids) {
            bail!("the tokenized prompt does not start with the tokenized template prefix");
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_template_has_no_separator() {
        let s = Template::Plus.render("dance", 2);
        let user = &s[TEMPLATE_PREFIX.len()..s.len() - TEMPLATE_SUFFIX.len()];
        assert_eq!(
            user,
            "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>dance"
        );
        let e = Template::Edit.render("dance", 1);
        assert!(e.ends_with("<|vision_start|><|image_pad|><|vision_end|>dance<|im_end|>\n<|im_start|>assistant\n"));
    }
}
