//! The Qwen-Image-Lightning presets (lightx2v): a distilled LoRA per model and step count, run with a
//! static shift-3 schedule and without CFG (spec §6).
//!
//! Files (`lightx2v/Qwen-Image-Lightning` and `lightx2v/Qwen-Image-Edit-2511-Lightning` on the Hub; the
//! bf16 variants, as the merge is done in f32 anyway):
//!
//! ```text
//! Edit   lightx2v/Qwen-Image-Lightning         Qwen-Image-Edit-Lightning-{4,8}steps-V1.0-bf16.safetensors
//! 2509   lightx2v/Qwen-Image-Lightning         Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-{4,8}steps-V1.0-bf16.safetensors
//! 2511   lightx2v/Qwen-Image-Edit-2511-Lightning  Qwen-Image-Edit-2511-Lightning-{4,8}steps-V1.0-bf16.safetensors
//! ```
//!
//! Scheduler: `base_shift = max_shift = ln 3` (so mu = ln 3 at every size, σ' = 3σ / (1 + 2σ)), no
//! `shift_terminal`, exponential time shift ([`SchedulerConfig::lightning`]); steps 4 or 8 to match the
//! file; `true_cfg_scale` 1 (one transformer pass per step).

use crate::pipeline::edit::Preset;
use crate::pipeline::scheduler::SchedulerConfig;

/// The Qwen-Image-Edit release a model folder is (picks the Lightning file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ModelVariant {
    /// Qwen/Qwen-Image-Edit (`QwenImageEditPipeline`).
    Edit,
    /// Qwen/Qwen-Image-Edit-2509 (`QwenImageEditPlusPipeline`, no `zero_cond_t`).
    Edit2509,
    /// Qwen/Qwen-Image-Edit-2511 (`QwenImageEditPlusPipeline`, `zero_cond_t`).
    Edit2511,
}

impl ModelVariant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Edit => "Qwen-Image-Edit",
            Self::Edit2509 => "Qwen-Image-Edit-2509",
            Self::Edit2511 => "Qwen-Image-Edit-2511",
        }
    }

    /// The variant of a hub repo id or shorthand, when it is one of the Qwen releases.
    pub fn from_repo(repo: &str) -> Option<Self> {
        let name = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
        match name.as_str() {
            "edit" | "qwen-image-edit" => Some(Self::Edit),
            "2509" | "qwen-image-edit-2509" => Some(Self::Edit2509),
            "2511" | "qwen-image-edit-2511" => Some(Self::Edit2511),
            _ => None,
        }
    }
}

/// Step counts with a Lightning LoRA.
pub const LIGHTNING_STEPS: [usize; 2] = [4, 8];

/// A Lightning LoRA on the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningFile {
    pub repo: &'static str,
    pub file: String,
}

/// The lightx2v LoRA for `variant` and `steps` (4 or 8).
pub fn lightning_file(variant: ModelVariant, steps: usize) -> anyhow::Result<LightningFile> {
    if !LIGHTNING_STEPS.contains(&steps) {
        anyhow::bail!("Lightning LoRAs exist for 4 and 8 steps, not {steps}");
    }
    Ok(match variant {
        ModelVariant::Edit => LightningFile {
            repo: "lightx2v/Qwen-Image-Lightning",
            file: format!("Qwen-Image-Edit-Lightning-{steps}steps-V1.0-bf16.safetensors"),
        },
        ModelVariant::Edit2509 => LightningFile {
            repo: "lightx2v/Qwen-Image-Lightning",
            file: format!("Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-{steps}steps-V1.0-bf16.safetensors"),
        },
        ModelVariant::Edit2511 => LightningFile {
            repo: "lightx2v/Qwen-Image-Edit-2511-Lightning",
            file: format!("Qwen-Image-Edit-2511-Lightning-{steps}steps-V1.0-bf16.safetensors"),
        },
    })
}

/// The pipeline defaults of a `steps`-step Lightning LoRA.
pub fn lightning_preset(steps: usize) -> Preset {
    Preset {
        scheduler: SchedulerConfig::lightning(),
        steps,
        true_cfg_scale: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_variant() {
        let f = lightning_file(ModelVariant::Edit2511, 4).unwrap();
        assert_eq!(f.repo, "lightx2v/Qwen-Image-Edit-2511-Lightning");
        assert_eq!(f.file, "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors");
        let f = lightning_file(ModelVariant::Edit2509, 8).unwrap();
        assert!(f.file.starts_with("Qwen-Image-Edit-2509/"));
        assert!(lightning_file(ModelVariant::Edit, 6).is_err());
        assert_eq!(
            ModelVariant::from_repo("Qwen/Qwen-Image-Edit-2509"),
            Some(ModelVariant::Edit2509)
        );
        assert_eq!(ModelVariant::from_repo("me/other"), None);
        let p = lightning_preset(8);
        assert_eq!((p.steps, p.true_cfg_scale), (8, 1.0));
        assert_eq!(p.scheduler.shift_terminal, None);
    }
}
