//! A model folder in the diffusers layout, checked for completeness before anything is loaded.
//!
//! ```text
//! model_index.json            _class_name: QwenImageEditPipeline | QwenImageEditPlusPipeline
//! scheduler/scheduler_config.json
//! transformer/ vae/ text_encoder/   config.json + *.safetensors (or *.safetensors.index.json + shards)
//! processor/                  tokenizer.json + preprocessor_config.json (hub) or processor_config.json
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::UserError;

/// Which diffusers pipeline a model folder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PipelineKind {
    /// `QwenImageEditPipeline` (Qwen/Qwen-Image-Edit): one image, the VL encoder sees the ~1 MP image.
    Edit,
    /// `QwenImageEditPlusPipeline` (-2509, -2511): 1–3 images, 384²-area condition images.
    EditPlus,
}

impl PipelineKind {
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "QwenImageEditPipeline" => Some(Self::Edit),
            "QwenImageEditPlusPipeline" => Some(Self::EditPlus),
            _ => None,
        }
    }
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Edit => "QwenImageEditPipeline",
            Self::EditPlus => "QwenImageEditPlusPipeline",
        }
    }
    /// The model cards' default number of steps.
    pub fn default_steps(self) -> usize {
        match self {
            Self::Edit => 50,
            Self::EditPlus => 40,
        }
    }
    /// Most input images the pipeline accepts.
    pub fn max_images(self) -> usize {
        match self {
            Self::Edit => 1,
            Self::EditPlus => 3,
        }
    }
}

/// A complete model folder.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub root: PathBuf,
    pub kind: PipelineKind,
}

/// The components a pipeline needs (the hub's `tokenizer/` is not: `processor/` serves).
pub const COMPONENTS: [&str; 5] = ["scheduler", "transformer", "vae", "text_encoder", "processor"];

impl ModelFolder {
    pub fn component(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Which release this folder is: Edit from the pipeline class; 2509 or 2511 from the
    /// transformer's `zero_cond_t` (on only for 2511).
    pub fn variant(&self) -> anyhow::Result<crate::pipeline::lightning::ModelVariant> {
        use crate::pipeline::lightning::ModelVariant;
        if self.kind == PipelineKind::Edit {
            return Ok(ModelVariant::Edit);
        }
        let cfg: crate::models::transformer::TransformerConfig =
            crate::models::weights::read_config(&self.component("transformer"))?;
        Ok(if cfg.zero_cond_t {
            ModelVariant::Edit2511
        } else {
            ModelVariant::Edit2509
        })
    }

    /// Checks `root` and everything in it the pipeline will read; the error lists what is missing.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let index = root.join("model_index.json");
        if !index.is_file() {
            return Err(UserError::model_missing(format!(
                "{} is not a model folder: it has no model_index.json",
                root.display()
            ))
            .with_hint("point --model at a folder in the diffusers layout, or at a hub repo id and run `qwen-edit fetch-models --model <repo>`")
            .into());
        }
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| UserError::model_missing(format!("{} is not valid JSON: {e}", index.display())))?;
        let class = json.get("_class_name").and_then(|v| v.as_str()).unwrap_or("");
        let kind = PipelineKind::from_class_name(class).ok_or_else(|| {
            UserError::model_missing(format!(
                "{} is for `{class}`, not a Qwen-Image-Edit pipeline (QwenImageEditPipeline or QwenImageEditPlusPipeline)",
                root.display()
            ))
        })?;
        let missing = missing_files(root);
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(8).map(|p| p.display().to_string()).collect();
            let more = if missing.len() > 8 {
                format!(" and {} more", missing.len() - 8)
            } else {
                String::new()
            };
            return Err(UserError::model_missing(format!(
                "the model in {} is incomplete: missing {}{more}",
                root.display(),
                shown.join(", ")
            ))
            .with_hint("run `qwen-edit fetch-models --model <repo>` to complete the download")
            .into());
        }
        Ok(Self {
            root: root.to_path_buf(),
            kind,
        })
    }
}

/// Files the pipeline needs that are absent under `root` (relative paths).
pub fn missing_files(root: &Path) -> Vec<PathBuf> {
    let mut need = vec![PathBuf::from("scheduler/scheduler_config.json")];
    let mut missing = Vec::new();
    for comp in ["transformer", "vae", "text_encoder"] {
        need.push(Path::new(comp).join("config.json"));
        match weight_files(&root.join(comp)) {
            Some(files) => need.extend(files.into_iter().map(|f| Path::new(comp).join(f))),
            None => missing.push(Path::new(comp).join("*.safetensors")),
        }
    }
    need.push(PathBuf::from("processor/tokenizer.json"));
    missing.extend(need.into_iter().filter(|rel| !root.join(rel).is_file()));
    if !root.join("processor/preprocessor_config.json").is_file()
        && !root.join("processor/processor_config.json").is_file()
    {
        missing.push(PathBuf::from("processor/preprocessor_config.json"));
    }
    missing
}

/// The weight files a component folder should hold: the shards named by its index, or its single
/// safetensors file. `None` when there is neither an index nor a safetensors file.
pub fn weight_files(dir: &Path) -> Option<Vec<String>> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if let Some(index) = entries.iter().find(|n| n.ends_with(".safetensors.index.json")) {
        let text = std::fs::read_to_string(dir.join(index)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let mut shards: Vec<String> = json
            .get("weight_map")?
            .as_object()?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        shards.sort();
        shards.dedup();
        return Some(shards);
    }
    let singles: Vec<String> = entries.into_iter().filter(|n| n.ends_with(".safetensors")).collect();
    (!singles.is_empty()).then_some(singles)
}
