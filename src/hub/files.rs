//! Single files of any hub repo (LoRA adapters), in the same cache layout as whole models: the
//! blobs, the `snapshots/<commit>/<path>` links and `refs/<revision>`, downloaded with the same
//! resumable, verified transfers as `fetch`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use indicatif::{MultiProgress, ProgressDrawTarget};

use super::api::{self, Hub};
use super::download::{self, blob_complete, entry_for, free_space, incomplete_path, Ctx, FileStatus};
use super::{human_bytes, repo_folder, snapshot_dir};
use crate::error::UserError;
use crate::printer::Printer;

/// Where and how to look for the files.
#[derive(Debug, Clone)]
pub struct FileRequest<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub cache: &'a Path,
    pub offline: bool,
    pub token: Option<&'a str>,
    /// Only report what is cached / what would be fetched.
    pub dry_run: bool,
}

/// A file of the request, cached or not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepoFile {
    pub repo: String,
    pub path: String,
    /// The snapshot path (present once cached).
    pub local: PathBuf,
    pub size: Option<u64>,
    pub cached: bool,
}

/// `files` of `req.repo` at `req.revision`, from the cache when every one is there (no network),
/// else downloaded (unless offline or a dry run). Paths are repo-relative (`dir/file.safetensors`).
pub fn ensure_files(req: &FileRequest<'_>, files: &[String], printer: &Printer) -> anyhow::Result<Vec<RepoFile>> {
    if let Some(dir) = snapshot_dir(req.cache, req.repo, req.revision) {
        if files.iter().all(|f| dir.join(f).is_file()) {
            return Ok(files
                .iter()
                .map(|f| RepoFile {
                    repo: req.repo.to_string(),
                    path: f.clone(),
                    size: std::fs::metadata(dir.join(f)).ok().map(|m| m.len()),
                    local: dir.join(f),
                    cached: true,
                })
                .collect());
        }
    }
    if req.offline || super::offline_from_env() {
        return Err(UserError::model_missing(format!(
            "{} of {} ({}) is not in the hub cache {}, and offline mode is on",
            files.join(", "),
            req.repo,
            req.revision,
            req.cache.display()
        ))
        .with_hint("run once with network access (without --offline / HF_HUB_OFFLINE), or `qwen-edit fetch-models --lightning` for the Lightning LoRAs")
        .into());
    }
    let token = req.token.map(str::to_string).or_else(api::token_from_env);
    let hub = Hub::new(&api::endpoint_from_env(), token.as_deref());
    let info = hub.repo_info(req.repo, req.revision)?;
    let commit = info.sha.to_ascii_lowercase();
    let folder = repo_folder(req.cache, req.repo);
    let blobs = folder.join("blobs");
    let mut plan = Vec::new();
    for f in files {
        let sib = info.siblings.iter().find(|s| &s.rfilename == f).ok_or_else(|| {
            UserError::model_missing(format!("{} at {} has no file {f}", req.repo, &commit[..12])).with_hint(format!(
                "list the repo's files at https://huggingface.co/{}/tree/{}",
                req.repo, req.revision
            ))
        })?;
        let mut e = entry_for(sib)?;
        let blob = blobs.join(&e.blob);
        if blob_complete(&blob, e.size) {
            e.status = FileStatus::Reused;
        } else if let Ok(m) = std::fs::metadata(incomplete_path(&blob)) {
            e.partial_bytes = if m.len() <= e.size { m.len() } else { 0 };
        }
        plan.push(e);
    }
    let snapshot = folder.join("snapshots").join(&commit);
    let report = |plan: &[download::FileReport]| -> Vec<RepoFile> {
        plan.iter()
            .map(|f| RepoFile {
                repo: req.repo.to_string(),
                path: f.path.clone(),
                local: snapshot.join(&f.path),
                size: Some(f.size),
                cached: f.status == FileStatus::Reused,
            })
            .collect()
    };
    if req.dry_run {
        return Ok(report(&plan));
    }
    let to_download: u64 = plan
        .iter()
        .filter(|f| f.status != FileStatus::Reused)
        .map(|f| f.size - f.partial_bytes)
        .sum();
    if let Some(free) = free_space(&folder).filter(|free| *free < to_download) {
        anyhow::bail!(
            "not enough disk space in {}: {} needed, {} free",
            req.cache.display(),
            human_bytes(to_download),
            human_bytes(free)
        );
    }
    std::fs::create_dir_all(&blobs).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", blobs.display()))?;
    let multi = MultiProgress::with_draw_target(if printer.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let total = multi.add(printer.bytes_bar(to_download, "total"));
    let ctx = Ctx {
        hub,
        repo: req.repo,
        commit: commit.clone(),
        folder: folder.clone(),
        locks: req
            .cache
            .join(".locks")
            .join(folder.file_name().map(PathBuf::from).unwrap_or_default()),
        printer,
        multi,
        total,
        abort: AtomicBool::new(false),
    };
    if to_download > 0 {
        printer.status(format!(
            "downloading {} ({}) from {}@{}",
            files.join(", "),
            human_bytes(to_download),
            req.repo,
            &commit[..12]
        ));
    }
    download::download_all(&ctx, &mut plan, download::DEFAULT_JOBS)?;
    ctx.total.finish_and_clear();
    for f in &plan {
        download::link_snapshot(&folder, &commit, &f.path, &f.blob)?;
    }
    if req.revision != commit {
        download::write_ref(&folder, req.revision, &commit)?;
    }
    let mut out = report(&plan);
    for f in &mut out {
        f.cached = true;
    }
    Ok(out)
}

/// The `*.safetensors` files of `repo` (from the cached snapshot when offline, else from the hub).
pub fn list_safetensors(req: &FileRequest<'_>) -> anyhow::Result<Vec<String>> {
    let mut names = if req.offline || super::offline_from_env() {
        let dir = snapshot_dir(req.cache, req.repo, req.revision).ok_or_else(|| {
            UserError::model_missing(format!(
                "{} ({}) is not in the hub cache {}, and offline mode is on",
                req.repo,
                req.revision,
                req.cache.display()
            ))
        })?;
        let mut v = Vec::new();
        walk(&dir, "", &mut v);
        v
    } else {
        let token = req.token.map(str::to_string).or_else(api::token_from_env);
        let hub = Hub::new(&api::endpoint_from_env(), token.as_deref());
        hub.repo_info(req.repo, req.revision)?
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .collect()
    };
    names.retain(|n| n.ends_with(".safetensors"));
    names.sort();
    Ok(names)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        if path.is_dir() {
            walk(&path, &rel, out);
        } else if path.is_file() {
            out.push(rel);
        }
    }
}

/// A `*.safetensors` file of a non-pipeline repo in the cache (a LoRA, as far as qwen-edit knows).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedFile {
    pub repo: String,
    pub path: String,
    pub commit: String,
    pub bytes: u64,
    pub local: PathBuf,
}

/// Every `*.safetensors` of the cached repos that are not diffusers pipelines (no
/// `model_index.json` in any snapshot): LoRA files fetched by `--lora` / `--lightning`. Only
/// directory listings, no file is opened.
pub fn cached_safetensors(cache: &Path) -> Vec<CachedFile> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache) else {
        return out;
    };
    let mut repos: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some((repo, e.path()))
        })
        .collect();
    repos.sort();
    for (repo, folder) in repos {
        let Ok(snaps) = std::fs::read_dir(folder.join("snapshots")) else {
            continue;
        };
        let snaps: Vec<PathBuf> = snaps.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        if snaps.iter().any(|s| s.join("model_index.json").exists()) {
            continue;
        }
        for snap in snaps {
            let commit = snap
                .file_name()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            walk(&snap, "", &mut files);
            files.retain(|f| f.ends_with(".safetensors"));
            files.sort();
            for f in files {
                let local = snap.join(&f);
                let Ok(meta) = std::fs::metadata(&local) else {
                    continue; // a dangling link: the blob is gone
                };
                out.push(CachedFile {
                    repo: repo.clone(),
                    path: f,
                    commit: commit.clone(),
                    bytes: meta.len(),
                    local,
                });
            }
        }
    }
    out
}
