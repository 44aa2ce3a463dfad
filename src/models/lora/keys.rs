//! LoRA key layouts: what one tensor name of a LoRA file says (which module, which factor).
//!
//! The layouts found in Qwen-Image LoRA files (those diffusers 0.42.1 reads through
//! `QwenImageLoraLoaderMixin.lora_state_dict`, and the official Lightning files):
//!
//! ```text
//! diffusers / PEFT   transformer.<module>.lora_A.weight  [r, in]   .lora_B.weight [out, r]  (r, lora_alpha in the
//!                                                                                         `lora_adapter_metadata` header)
//! PEFT "default"     <module>.lora_A.default.weight                .lora_B.default.weight    (DiffSynth-Studio)
//! lightx2v           [diffusion_model.]<module>.lora_down.weight   .lora_up.weight   .alpha
//! kohya              lora_unet_<module with . → _>.lora_down.weight  .lora_up.weight  .alpha
//! ```
//!
//! `<module>` is the dotted path of a Linear of the transformer (`transformer_blocks.3.attn.to_q`). Kohya's
//! flattened names are resolved against the model's own weight names (see [`super::LoraMerge`]), which is
//! exact where diffusers guesses with protected n-grams.

/// Which factor of a LoRA module a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `lora_A` / `lora_down`: `[rank, in]`.
    Down,
    /// `lora_B` / `lora_up`: `[out, rank]`.
    Up,
    /// `alpha`: a scalar; the update is scaled by `alpha / rank`.
    Alpha,
}

/// What one key of a LoRA file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A factor of the LoRA module `module` (dotted, or kohya-flat when `flat`).
    Lora { module: String, flat: bool, part: Part },
    /// A key for the text encoder (`lora_te_…`, `text_encoder.…`), which qwen-edit never adapts.
    TextEncoder,
    /// A known adapter kind that is not a plain LoRA (DoRA, LoHa, LoKr, bias or weight diffs).
    Unsupported(&'static str),
    /// Nothing we recognise.
    Unknown,
}

const TEXT_ENCODER_PREFIXES: [&str; 6] = [
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "text_encoder.",
    "text_encoders.",
    "te.",
];

/// Prefixes stripped before the module name (the first that matches).
const PREFIXES: [&str; 4] = [
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "base_model.model.",
];

/// Key fragments of adapter kinds that are not plain LoRA (matched anywhere in the key).
const UNSUPPORTED: [(&str, &str); 8] = [
    (".dora_scale", "DoRA (dora_scale)"),
    (".lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
    (".lora_mid.", "LoCon mid weights (lora_mid)"),
    (".hada_", "LoHa (hada_*)"),
    (".lokr_", "LoKr (lokr_*)"),
    (".lora_A.bias", "LoRA biases (lora_A.bias)"),
    (".lora_B.bias", "LoRA biases (lora_B.bias)"),
    (".lora_up.bias", "LoRA biases (lora_up.bias)"),
];

/// Classifies one key of a LoRA file.
pub fn classify(key: &str) -> KeyKind {
    if TEXT_ENCODER_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return KeyKind::TextEncoder;
    }
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(pat, _)| key.contains(pat)) {
        return KeyKind::Unsupported(what);
    }
    if key.ends_with(".diff_b") {
        return KeyKind::Unsupported("bias differences (diff_b)");
    }
    if key.ends_with(".diff") {
        return KeyKind::Unsupported("full weight differences (diff)");
    }
    if let Some(rest) = key.strip_prefix("lora_unet_") {
        // Kohya: the module name is flat up to the first dot.
        let Some((module, suffix)) = rest.split_once('.') else {
            return KeyKind::Unknown;
        };
        let part = match suffix {
            "lora_down.weight" => Part::Down,
            "lora_up.weight" => Part::Up,
            "alpha" => Part::Alpha,
            _ => return KeyKind::Unknown,
        };
        return KeyKind::Lora {
            module: module.to_string(),
            flat: true,
            part,
        };
    }
    let mut name = key;
    if let Some(p) = PREFIXES.iter().find(|p| name.starts_with(*p)) {
        name = &name[p.len()..];
    }
    const SUFFIXES: [(&str, Part); 9] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora_A.default.weight", Part::Down),
        (".lora_B.default.weight", Part::Up),
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    for (suffix, part) in SUFFIXES {
        if let Some(module) = name.strip_suffix(suffix) {
            if module.is_empty() {
                return KeyKind::Unknown;
            }
            return KeyKind::Lora {
                module: module.to_string(),
                flat: false,
                part,
            };
        }
    }
    KeyKind::Unknown
}

/// The key layout of a file, named for messages, from its LoRA keys.
pub fn layout_name<'a>(keys: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut kohya = false;
    let mut down_up = false;
    let mut default = false;
    let mut ab = false;
    for k in keys {
        kohya |= k.starts_with("lora_unet_");
        down_up |= k.contains(".lora_down.") || k.contains(".lora.down.");
        default |= k.contains(".default.");
        ab |= k.contains(".lora_A.");
    }
    if kohya {
        "kohya (lora_unet_…)"
    } else if down_up {
        "lora_down/lora_up (lightx2v)"
    } else if default {
        "PEFT lora_A.default (DiffSynth)"
    } else if ab {
        "diffusers/PEFT (lora_A/lora_B)"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(module: &str, flat: bool, part: Part) -> KeyKind {
        KeyKind::Lora {
            module: module.into(),
            flat,
            part,
        }
    }

    #[test]
    fn every_layout_names_the_module() {
        let m = "transformer_blocks.0.attn.to_q";
        assert_eq!(
            classify(&format!("transformer.{m}.lora_A.weight")),
            lora(m, false, Part::Down)
        );
        assert_eq!(
            classify(&format!("{m}.lora_B.default.weight")),
            lora(m, false, Part::Up)
        );
        assert_eq!(
            classify(&format!("diffusion_model.{m}.lora_down.weight")),
            lora(m, false, Part::Down)
        );
        assert_eq!(classify(&format!("{m}.alpha")), lora(m, false, Part::Alpha));
        assert_eq!(
            classify("lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight"),
            lora("transformer_blocks_0_attn_to_q", true, Part::Up)
        );
        assert_eq!(
            classify("lora_unet_norm_out_linear.alpha"),
            lora("norm_out_linear", true, Part::Alpha)
        );
    }

    #[test]
    fn other_keys_are_told_apart() {
        assert_eq!(
            classify("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"),
            KeyKind::TextEncoder
        );
        assert_eq!(
            classify("text_encoder.model.layers.0.q_proj.lora_A.weight"),
            KeyKind::TextEncoder
        );
        assert!(matches!(
            classify("transformer_blocks.0.attn.to_q.dora_scale"),
            KeyKind::Unsupported(_)
        ));
        assert!(matches!(
            classify("diffusion_model.transformer_blocks.0.attn.to_q.diff_b"),
            KeyKind::Unsupported(_)
        ));
        assert_eq!(classify("transformer_blocks.0.attn.to_q.weight"), KeyKind::Unknown);
        assert_eq!(classify("lora_unet_x"), KeyKind::Unknown);
    }
}
