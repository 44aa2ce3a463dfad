//! `--lora` / `--lightning` / job `loras`: from what the user wrote to LoRA files on disk (hub
//! downloads into the standard cache) and the pipeline preset.

use std::path::{Path, PathBuf};

use crate::cli::{LoraArgs, ModelArgs};
use crate::error::UserError;
use crate::hub::{self, files::FileRequest};
use crate::models::lora::LoraFile;
use crate::pipeline::edit::Preset;
use crate::pipeline::layout::ModelFolder;
use crate::pipeline::lightning::{lightning_file, lightning_preset};
use crate::printer::Printer;

/// Where a LoRA comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraSource {
    Path(PathBuf),
    /// A hub repo and the file in it (`None`: its only .safetensors file).
    Hub {
        repo: String,
        file: Option<String>,
    },
}

/// One `--lora` value.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub source: LoraSource,
    pub scale: f64,
    /// As written, for messages.
    pub label: String,
}

/// Parses `PATH_OR_REPO[:FILE][@SCALE]`. An existing path wins; otherwise `ORG/NAME[:FILE]` is a
/// hub repo; anything else is a path (reported as missing when loading).
pub fn parse_spec(text: &str) -> anyhow::Result<LoraSpec> {
    let bad = |msg: String| -> anyhow::Error {
        UserError::bad_input(msg)
            .with_hint("write --lora FILE.safetensors[@SCALE] or --lora ORG/NAME[:FILE][@SCALE]")
            .into()
    };
    let (head, scale) = match text.rsplit_once('@') {
        Some((head, tail)) if !Path::new(text).exists() => {
            let scale: f64 = tail
                .trim()
                .parse()
                .map_err(|_| bad(format!("`{tail}` in --lora {text} is not a number (the LoRA scale)")))?;
            if !scale.is_finite() {
                return Err(bad(format!("the LoRA scale in --lora {text} must be finite")));
            }
            (head, scale)
        }
        _ => (text, 1.0),
    };
    if head.is_empty() {
        return Err(bad("--lora needs a file or a repo".to_string()));
    }
    let source = if Path::new(head).exists() {
        LoraSource::Path(PathBuf::from(head))
    } else if let Some((repo, file)) = head.split_once(':').filter(|(r, _)| hub::is_repo_id(r)) {
        if file.is_empty() {
            return Err(bad(format!("--lora {text}: no file after `:`")));
        }
        LoraSource::Hub {
            repo: repo.to_string(),
            file: Some(file.trim_start_matches('/').to_string()),
        }
    } else if hub::is_repo_id(head) && !head.ends_with(".safetensors") {
        LoraSource::Hub {
            repo: head.to_string(),
            file: None,
        }
    } else {
        LoraSource::Path(PathBuf::from(head))
    };
    Ok(LoraSpec {
        source,
        scale,
        label: head.to_string(),
    })
}

/// Fetches (when needed) and returns the file of `spec`.
pub fn resolve(spec: &LoraSpec, args: &ModelArgs, printer: &Printer) -> anyhow::Result<LoraFile> {
    let path = match &spec.source {
        LoraSource::Path(p) => p.clone(),
        LoraSource::Hub { repo, file } => {
            let cache = hub::cache_dir(args.cache_dir.as_deref());
            let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
            let req = FileRequest {
                repo,
                revision: "main",
                cache: &cache,
                offline: args.offline,
                token: token.as_deref(),
                dry_run: false,
            };
            let file = match file {
                Some(f) => f.clone(),
                None => only_safetensors(&req)?,
            };
            let got = hub::files::ensure_files(&req, std::slice::from_ref(&file), printer)?;
            got.into_iter()
                .next()
                .map(|f| f.local)
                .ok_or_else(|| anyhow::anyhow!("the download of {repo}:{file} gave no file"))?
        }
    };
    Ok(LoraFile {
        path,
        scale: spec.scale,
        label: spec.label.clone(),
    })
}

fn only_safetensors(req: &FileRequest<'_>) -> anyhow::Result<String> {
    let names = hub::files::list_safetensors(req)?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(UserError::bad_input(format!("{} has no .safetensors file", req.repo)).into()),
        many => {
            let shown: Vec<&str> = many.iter().take(8).map(String::as_str).collect();
            Err(UserError::bad_input(format!(
                "{} has {} .safetensors files ({}{}): say which one",
                req.repo,
                many.len(),
                shown.join(", "),
                if many.len() > 8 { ", …" } else { "" }
            ))
            .with_hint(format!("--lora {}:{}", req.repo, many[0]))
            .into())
        }
    }
}

/// The LoRA files and the preset that `args` ask for, for the model in `folder`: the Lightning LoRA
/// first (when `--lightning`), then each `--lora` in order.
pub fn from_args(
    args: &ModelArgs,
    folder: &ModelFolder,
    printer: &Printer,
) -> anyhow::Result<(Vec<LoraSpec>, Vec<LoraFile>, Option<Preset>)> {
    let LoraArgs {
        loras,
        lightning,
        lightning_lora,
        ..
    } = &args.lora;
    let mut specs = Vec::new();
    let mut preset = None;
    if let Some(steps) = lightning {
        let steps = *steps as usize;
        let spec = match lightning_lora {
            Some(text) => parse_spec(text)?,
            None => {
                let variant = folder.variant()?;
                let f = lightning_file(variant, steps)?;
                printer.status(format!(
                    "Lightning {steps} steps for {}: {}:{}",
                    variant.name(),
                    f.repo,
                    f.file
                ));
                LoraSpec {
                    label: format!("{}:{}", f.repo, f.file),
                    source: LoraSource::Hub {
                        repo: f.repo.to_string(),
                        file: Some(f.file),
                    },
                    scale: 1.0,
                }
            }
        };
        specs.push(spec);
        preset = Some(lightning_preset(steps));
    }
    for text in loras {
        specs.push(parse_spec(text)?);
    }
    let files = specs
        .iter()
        .map(|s| resolve(s, args, printer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((specs, files, preset))
}

/// Whether two specs name the same LoRA at the same scale (paths compared canonically).
pub fn same_lora(a: &LoraSpec, b: &LoraSpec) -> bool {
    let same_source = match (&a.source, &b.source) {
        (LoraSource::Path(x), LoraSource::Path(y)) => {
            x == y || matches!((x.canonicalize(), y.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        (x, y) => x == y,
    };
    same_source && a.scale == b.scale
}

/// Checks a job's `loras` against those merged at startup: per-job LoRA sets would need a reload of
/// the transformer, which a running batch / worker does not do.
pub fn check_job_loras(job: &[LoraSpec], loaded: &[LoraSpec]) -> anyhow::Result<()> {
    let same = job.len() == loaded.len() && job.iter().zip(loaded).all(|(a, b)| same_lora(a, b));
    if same {
        return Ok(());
    }
    let list = |v: &[LoraSpec]| -> String {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|s| format!("{}@{}", s.label, s.scale))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    Err(UserError::bad_input(format!(
        "the job asks for LoRAs [{}], but this process merged [{}] at startup; LoRAs are merged into the weights once, so a job cannot change them",
        list(job),
        list(loaded)
    ))
    .with_hint("leave `loras` out of the job (or repeat the startup set), and start one batch/worker per LoRA set with --lora")
    .into())
}

/// Refuses a job whose `loras` differ from the LoRAs merged at startup (`loaded`, as given).
pub fn check_job(job: &crate::jobs::Job, loaded: &[LoraSpec]) -> anyhow::Result<()> {
    use crate::jobs::LoraRef;
    if let Some(loras) = &job.loras {
        let specs: Vec<LoraSpec> = loras
            .iter()
            .map(|(src, scale)| {
                let (source, label) = match src {
                    LoraRef::Path(p) => (LoraSource::Path(p.into()), p.clone()),
                    LoraRef::Hub { repo, file } => (
                        LoraSource::Hub {
                            repo: repo.clone(),
                            file: file.clone(),
                        },
                        match file {
                            Some(f) => format!("{repo}:{f}"),
                            None => repo.clone(),
                        },
                    ),
                };
                LoraSpec {
                    source,
                    scale: *scale,
                    label,
                }
            })
            .collect();
        check_job_loras(&specs, loaded)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = parse_spec("lightx2v/Qwen-Image-Lightning:Qwen-Image-Edit-2509/x.safetensors@0.75").unwrap();
        assert_eq!(
            s.source,
            LoraSource::Hub {
                repo: "lightx2v/Qwen-Image-Lightning".into(),
                file: Some("Qwen-Image-Edit-2509/x.safetensors".into())
            }
        );
        assert_eq!(s.scale, 0.75);
        let s = parse_spec("me/style").unwrap();
        assert_eq!(
            s.source,
            LoraSource::Hub {
                repo: "me/style".into(),
                file: None
            }
        );
        assert_eq!(s.scale, 1.0);
        let s = parse_spec("loras/style.safetensors@-0.5").unwrap();
        assert_eq!(s.source, LoraSource::Path("loras/style.safetensors".into()));
        assert_eq!(s.scale, -0.5);
        assert!(parse_spec("x.safetensors@big").is_err());
        assert!(parse_spec("@1").is_err());
        assert!(parse_spec("me/style:").is_err());
    }
}
