//! The job schema shared by `batch` (JSON lines) and the worker: what one edit job may say.
//!
//! Accepts the conventions of public Qwen edit workers: `image` | `image_url` | `image_base64` |
//! `image_path`, or `images` as a list of strings or of `{name, image}`; `num_inference_steps` or
//! `steps`; `true_cfg_scale` or `guidance_scale`; `seed` -1 or absent for a random seed.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::UserError;

/// One image reference in `images`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImageRef {
    Plain(String),
    Named { name: Option<String>, image: String },
}

impl ImageRef {
    pub fn source(&self) -> &str {
        match self {
            ImageRef::Plain(s) => s,
            ImageRef::Named { image, .. } => image,
        }
    }
}

/// One entry of a job's `loras`: `{"path": …}` or `{"repo": …, "file": …}`, and `scale` (default 1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLora {
    pub path: Option<String>,
    pub repo: Option<String>,
    pub file: Option<String>,
    pub scale: Option<f64>,
}

/// A validated `loras` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraRef {
    Path(String),
    Hub { repo: String, file: Option<String> },
}

/// A job as sent (unknown keys are refused so typos don't go unnoticed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    pub prompt: Option<String>,
    pub image: Option<String>,
    pub image_url: Option<String>,
    pub image_base64: Option<String>,
    pub image_path: Option<String>,
    pub images: Option<Vec<ImageRef>>,
    pub negative_prompt: Option<String>,
    pub seed: Option<i64>,
    #[serde(alias = "steps")]
    pub num_inference_steps: Option<u32>,
    #[serde(alias = "guidance_scale")]
    pub true_cfg_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub output_format: Option<String>,
    /// qwen-edit extension: side of the area the references are resized to (default 1024).
    pub ref_size: Option<u32>,
    /// LoRAs the job expects (must equal those merged at startup; absent: whatever was merged).
    pub loras: Option<Vec<JobLora>>,
    /// Batch mode: where to write the result.
    pub output: Option<PathBuf>,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: String,
    pub images: Vec<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub true_cfg_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub output_format: Option<String>,
    pub ref_size: Option<u32>,
    /// `(source, scale)` per LoRA; `None` when the job does not say.
    pub loras: Option<Vec<(LoraRef, f64)>>,
    pub output: Option<PathBuf>,
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(msg).into()
}

impl JobInput {
    /// Parses one job from JSON text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text).map_err(|e| bad(format!("invalid job JSON: {e}")))
    }

    /// Checks the job before any image is read or the GPU is touched.
    pub fn validate(self) -> anyhow::Result<Job> {
        let prompt = self
            .prompt
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad("the job has no `prompt`"))?;
        let mut images: Vec<String> = Vec::new();
        for single in [self.image, self.image_url, self.image_base64, self.image_path]
            .into_iter()
            .flatten()
        {
            images.push(single);
        }
        if let Some(list) = self.images {
            images.extend(list.iter().map(|r| r.source().to_string()));
        }
        if images.is_empty() {
            return Err(bad(
                "the job has no image (`image`, `image_url`, `image_base64`, `image_path` or `images`)",
            ));
        }
        if images.len() > 3 {
            return Err(bad(format!(
                "the job has {} images; at most 3 are accepted",
                images.len()
            )));
        }
        let seed = match self.seed {
            None | Some(-1) => None,
            Some(s) if s >= 0 => Some(s as u64),
            Some(s) => return Err(bad(format!("`seed` must be ≥ 0 or -1 (random), got {s}"))),
        };
        if let Some(steps) = self.num_inference_steps {
            if !(1..=1000).contains(&steps) {
                return Err(bad(format!("`num_inference_steps` must be 1..=1000, got {steps}")));
            }
        }
        if let Some(s) = self.true_cfg_scale {
            if !s.is_finite() || !(0.0..=100.0).contains(&s) {
                return Err(bad(format!("`true_cfg_scale` must be within 0..=100, got {s}")));
            }
        }
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = v {
                if !(16..=8192).contains(&v) {
                    return Err(bad(format!("`{name}` must be 16..=8192, got {v}")));
                }
            }
        }
        let loras = match self.loras {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(|l| {
                        let scale = l.scale.unwrap_or(1.0);
                        if !scale.is_finite() {
                            return Err(bad("a LoRA `scale` must be a finite number"));
                        }
                        let src = match (l.path, l.repo, l.file) {
                            (Some(p), None, None) => LoraRef::Path(p),
                            (None, Some(repo), file) => LoraRef::Hub { repo, file },
                            _ => {
                                return Err(bad(
                                    "each entry of `loras` needs `path`, or `repo` (and optionally `file`)",
                                ))
                            }
                        };
                        Ok((src, scale))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
        };
        Ok(Job {
            prompt,
            loras,
            images,
            negative_prompt: self.negative_prompt,
            seed,
            steps: self.num_inference_steps.map(|s| s as usize),
            true_cfg_scale: self.true_cfg_scale,
            width: self.width,
            height: self.height,
            output_format: self.output_format,
            ref_size: self.ref_size,
            output: self.output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_common_conventions() {
        let j =
            JobInput::parse(r#"{"prompt":"x","image_url":"http://a/b.png","steps":8,"guidance_scale":1.0,"seed":-1}"#)
                .unwrap()
                .validate()
                .unwrap();
        assert_eq!(j.images, vec!["http://a/b.png"]);
        assert_eq!(j.steps, Some(8));
        assert_eq!(j.true_cfg_scale, Some(1.0));
        assert_eq!(j.seed, None);
        let j = JobInput::parse(r#"{"prompt":"x","images":["a.png",{"name":"b","image":"b.png"}],"seed":5}"#)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(j.images, vec!["a.png", "b.png"]);
        assert_eq!(j.seed, Some(5));
        let j = JobInput::parse(r#"{"prompt":"x","image":"a","loras":[{"repo":"o/n","file":"f.safetensors","scale":0.5},{"path":"s.safetensors"}]}"#)
            .unwrap()
            .validate()
            .unwrap();
        let loras = j.loras.unwrap();
        assert_eq!(
            loras[0],
            (
                LoraRef::Hub {
                    repo: "o/n".into(),
                    file: Some("f.safetensors".into())
                },
                0.5
            )
        );
        assert_eq!(loras[1], (LoraRef::Path("s.safetensors".into()), 1.0));
    }

    #[test]
    fn refuses_bad_jobs_with_exit_3() {
        for text in [
            r#"{"image":"a.png"}"#,
            r#"{"prompt":"  ","image":"a.png"}"#,
            r#"{"prompt":"x"}"#,
            r#"{"prompt":"x","images":["a","b","c","d"]}"#,
            r#"{"prompt":"x","image":"a","seed":-5}"#,
            r#"{"prompt":"x","image":"a","steps":0}"#,
            r#"{"prompt":"x","image":"a","width":3}"#,
            r#"{"prompt":"x","image":"a","promt":"typo"}"#,
            r#"{"prompt":"x","image":"a","loras":[{"path":"a","repo":"o/n"}]}"#,
            r#"{"prompt":"x","image":"a","loras":[{"scale":1}]}"#,
            r#"not json"#,
        ] {
            let err = JobInput::parse(text).and_then(JobInput::validate).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 3, "{text}: {err}");
        }
    }
}
