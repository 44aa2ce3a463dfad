//! Downloading a model repo into the hub cache, in huggingface_hub's layout:
//! `blobs/<sha256 or git blob id>` (written as `blobs/<name>.incomplete`, resumed with `Range`,
//! renamed into place only once its size and sha256 check out), `snapshots/<commit>/<path>` as
//! relative links to the blobs (made after the blob is in place), and `refs/<revision>` holding the
//! commit (written last). A blob being downloaded is locked in `<cache>/.locks/` as Python does.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::api::{Hub, Sibling};
use super::transfer;
use super::{human_bytes, repo_folder};
use crate::error::UserError;
use crate::pipeline::layout;
use crate::printer::Printer;

/// Files downloaded at once unless `--jobs` says otherwise.
pub const DEFAULT_JOBS: usize = 4;

/// What to fetch and where.
#[derive(Debug, Clone)]
pub struct FetchOptions<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub cache: &'a Path,
    pub endpoint: &'a str,
    pub token: Option<&'a str>,
    /// List what would be fetched, write nothing.
    pub dry_run: bool,
    /// Files downloaded at once.
    pub jobs: usize,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// Fetched whole in this run.
    Downloaded,
    /// Completed from an interrupted earlier download.
    Resumed,
    /// Already complete in the cache.
    Reused,
    /// Would be fetched (dry run).
    Pending,
}

/// One file of the snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    pub size: u64,
    pub lfs: bool,
    pub sha256: Option<String>,
    pub blob: String,
    pub status: FileStatus,
    /// Bytes already in `blobs/<blob>.incomplete` before this run.
    pub partial_bytes: u64,
}

/// The outcome of a fetch (also the `--json` output of `fetch-models`).
#[derive(Debug, Clone, Serialize)]
pub struct FetchSummary {
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub endpoint: Option<String>,
    pub cache_dir: PathBuf,
    pub snapshot: Option<PathBuf>,
    pub dry_run: bool,
    pub offline: bool,
    /// Whether the snapshot holds everything the pipeline needs.
    pub complete: bool,
    pub files: Vec<FileReport>,
    /// Files the pipeline needs that the snapshot lacks (offline mode).
    pub missing: Vec<String>,
    pub total_bytes: u64,
    /// Bytes received over the network in this run.
    pub downloaded_bytes: u64,
    /// Bytes of interrupted downloads that were continued rather than fetched again.
    pub resumed_bytes: u64,
    /// Bytes of files that were already complete.
    pub reused_bytes: u64,
    /// Bytes still to fetch when the run started.
    pub to_download_bytes: u64,
    /// Free space where the blobs go, when known.
    pub free_bytes: Option<u64>,
    pub seconds: f64,
}

/// Weight formats the pipeline never reads.
const FOREIGN_WEIGHTS: [&str; 10] = [
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".msgpack",
    ".h5",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ot",
];

/// A `*.variant.safetensors` (or its index), e.g. `diffusion_pytorch_model.fp16.safetensors`.
fn is_variant_weight(name: &str) -> bool {
    name.strip_suffix(".safetensors.index.json")
        .or_else(|| name.strip_suffix(".safetensors"))
        .is_some_and(|stem| stem.contains('.'))
}

/// The components `model_index.json` declares (entries `[library, class]` with a class).
pub fn declared_components(model_index: &serde_json::Value) -> Vec<String> {
    let Some(obj) = model_index.as_object() else {
        return Vec::new();
    };
    obj.iter()
        .filter(|(k, v)| {
            !k.starts_with('_')
                && v.as_array()
                    .is_some_and(|a| a.len() == 2 && a.iter().all(|x| x.is_string()))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// The repo files the pipeline needs: `model_index.json` and, in each folder that both the index
/// declares and [`layout::COMPONENTS`] names, everything but foreign weight formats and
/// `*.variant.safetensors` (when plain safetensors exist beside them).
pub fn select_files<'a>(siblings: &'a [Sibling], model_index: &serde_json::Value) -> Vec<&'a Sibling> {
    let declared = declared_components(model_index);
    let wanted: Vec<&str> = layout::COMPONENTS
        .iter()
        .copied()
        .filter(|c| declared.iter().any(|d| d == c))
        .collect();
    let mut out: Vec<&Sibling> = siblings.iter().filter(|s| s.rfilename == "model_index.json").collect();
    for comp in wanted {
        let prefix = format!("{comp}/");
        let in_comp: Vec<&Sibling> = siblings.iter().filter(|s| s.rfilename.starts_with(&prefix)).collect();
        let has_plain = in_comp.iter().any(|s| {
            let name = file_name(&s.rfilename);
            (name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")) && !is_variant_weight(name)
        });
        out.extend(in_comp.into_iter().filter(|s| {
            let name = file_name(&s.rfilename);
            let foreign = FOREIGN_WEIGHTS.iter().any(|ext| name.ends_with(ext));
            let variant = has_plain && is_variant_weight(name);
            !foreign && !variant
        }));
    }
    out
}

pub(super) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A repo path that stays inside the snapshot folder.
fn check_rel_path(path: &str) -> anyhow::Result<()> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        anyhow::bail!("the hub listed a file with an unsafe path: {path:?}");
    }
    Ok(())
}

/// The file's entry in the plan, from the API's metadata.
pub(super) fn entry_for(s: &Sibling) -> anyhow::Result<FileReport> {
    check_rel_path(&s.rfilename)?;
    let blob = s.blob_name().ok_or_else(|| {
        anyhow::anyhow!(
            "the hub's file list gives no blob id for {}: cannot name it in the cache",
            s.rfilename
        )
    })?;
    if blob.is_empty() || !blob.chars().all(|c| c.is_ascii_alphanumeric()) {
        anyhow::bail!("the hub gave {} an unusable blob id {blob:?}", s.rfilename);
    }
    let size = s
        .len()
        .ok_or_else(|| anyhow::anyhow!("the hub's file list gives no size for {}", s.rfilename))?;
    Ok(FileReport {
        path: s.rfilename.clone(),
        size,
        lfs: s.lfs.is_some(),
        sha256: s.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()),
        blob,
        status: FileStatus::Pending,
        partial_bytes: 0,
    })
}

/// Free bytes on the file system holding `path` (or its nearest existing ancestor).
pub fn free_space(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            return fs2::available_space(p).ok();
        }
        p = p.parent()?;
    }
}

/// Shared state of one fetch.
pub(super) struct Ctx<'a> {
    pub(super) hub: Hub,
    pub(super) repo: &'a str,
    pub(super) commit: String,
    pub(super) folder: PathBuf,
    pub(super) locks: PathBuf,
    pub(super) printer: &'a Printer,
    pub(super) multi: MultiProgress,
    pub(super) total: ProgressBar,
    pub(super) abort: AtomicBool,
}

/// Downloads `opts.repo` at `opts.revision` into `opts.cache` (see the module docs).
pub fn fetch(opts: &FetchOptions<'_>, printer: &Printer) -> anyhow::Result<FetchSummary> {
    let start = Instant::now();
    let hub = Hub::new(opts.endpoint, opts.token);
    let info = hub.repo_info(opts.repo, opts.revision)?;
    let commit = info.sha.to_ascii_lowercase();
    let folder = repo_folder(opts.cache, opts.repo);
    let blobs = folder.join("blobs");

    let index_sib = info
        .siblings
        .iter()
        .find(|s| s.rfilename == "model_index.json")
        .ok_or_else(|| {
            UserError::model_missing(format!(
                "{} at {commit} has no model_index.json: it is not a diffusers pipeline repo",
                opts.repo
            ))
            .with_hint("pass --model a Qwen-Image-Edit repo (edit, 2509, 2511)")
        })?;
    let index_entry = entry_for(index_sib)?;
    // The file list depends on model_index.json: read it from the cache or fetch it into memory.
    let index_blob = blobs.join(&index_entry.blob);
    let fetched_index = if blob_complete(&index_blob, index_entry.size) {
        None
    } else {
        Some(fetch_small(&hub, opts.repo, &commit, &index_entry)?)
    };
    let index_bytes = match &fetched_index {
        Some(b) => b.clone(),
        None => std::fs::read(&index_blob).with_context(|| format!("cannot read {}", index_blob.display()))?,
    };
    let index_json: serde_json::Value = serde_json::from_slice(&index_bytes)
        .map_err(|e| UserError::model_missing(format!("{}'s model_index.json is not valid JSON: {e}", opts.repo)))?;

    let mut files = Vec::new();
    for s in select_files(&info.siblings, &index_json) {
        let mut f = entry_for(s)?;
        let blob = blobs.join(&f.blob);
        if blob_complete(&blob, f.size) {
            f.status = FileStatus::Reused;
        } else if let Ok(m) = std::fs::metadata(incomplete_path(&blob)) {
            f.partial_bytes = if m.len() <= f.size { m.len() } else { 0 };
        }
        files.push(f);
    }
    let to_download: u64 = files
        .iter()
        .filter(|f| f.status != FileStatus::Reused)
        .map(|f| f.size - f.partial_bytes)
        .sum();
    let free = free_space(&folder);
    let mut summary = FetchSummary {
        repo: opts.repo.to_string(),
        revision: opts.revision.to_string(),
        commit: Some(commit.clone()),
        endpoint: Some(hub.endpoint().to_string()),
        cache_dir: opts.cache.to_path_buf(),
        snapshot: Some(folder.join("snapshots").join(&commit)),
        dry_run: opts.dry_run,
        offline: false,
        complete: false,
        total_bytes: files.iter().map(|f| f.size).sum(),
        downloaded_bytes: 0,
        resumed_bytes: 0,
        reused_bytes: 0,
        to_download_bytes: to_download,
        free_bytes: free,
        seconds: 0.0,
        missing: Vec::new(),
        files,
    };
    if let Some(free) = free.filter(|free| *free < to_download) {
        anyhow::bail!(
            "not enough disk space in {}: the download needs {} more, {} are free; free some space or pass --cache-dir (or HF_HUB_CACHE) on a larger disk",
            opts.cache.display(),
            human_bytes(to_download),
            human_bytes(free)
        );
    }
    if opts.dry_run {
        summary.complete = to_download == 0;
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    std::fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let locks = opts
        .cache
        .join(".locks")
        .join(folder.file_name().map(PathBuf::from).unwrap_or_default());
    let multi = MultiProgress::with_draw_target(if printer.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let total = multi.add(printer.bytes_bar(to_download, "total"));
    let ctx = Ctx {
        hub,
        repo: opts.repo,
        commit: commit.clone(),
        folder: folder.clone(),
        locks,
        printer,
        multi,
        total,
        abort: AtomicBool::new(false),
    };
    if to_download > 0 {
        let n = summary.files.iter().filter(|f| f.status != FileStatus::Reused).count();
        printer.status(format!(
            "downloading {n} files ({}) of {}@{} into {}",
            human_bytes(to_download),
            opts.repo,
            &commit[..12],
            opts.cache.display()
        ));
    }
    if let Some(bytes) = &fetched_index {
        let i = summary.files.iter().position(|f| f.path == "model_index.json");
        if let Some(f) = i.map(|i| &mut summary.files[i]) {
            store_bytes(&ctx, f, bytes)?;
            f.status = FileStatus::Downloaded;
            summary.downloaded_bytes += bytes.len() as u64;
            ctx.total.inc(f.size - f.partial_bytes);
        }
    }
    summary.downloaded_bytes += download_all(&ctx, &mut summary.files, opts.jobs.max(1))?;
    ctx.total.finish_and_clear();

    for f in &summary.files {
        link_snapshot(&folder, &commit, &f.path, &f.blob)?;
        match f.status {
            FileStatus::Reused => summary.reused_bytes += f.size,
            FileStatus::Resumed => summary.resumed_bytes += f.partial_bytes,
            _ => {}
        }
    }
    if opts.revision != commit {
        write_ref(&folder, opts.revision, &commit)?;
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let snapshot = folder.join("snapshots").join(&commit);
    let missing = super::cache::snapshot_missing(&snapshot);
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(UserError::model_missing(format!(
            "{} at {commit} lacks files the pipeline needs: {}",
            opts.repo,
            shown.join(", ")
        ))
        .with_hint("pass --model a Qwen-Image-Edit repo (edit, 2509, 2511) in the diffusers layout")
        .into());
    }
    summary.complete = true;
    Ok(summary)
}

/// Whether `blob` exists with `size` bytes.
pub(super) fn blob_complete(blob: &Path, size: u64) -> bool {
    std::fs::metadata(blob).is_ok_and(|m| m.is_file() && m.len() == size)
}

pub(super) fn incomplete_path(blob: &Path) -> PathBuf {
    let mut name = blob.file_name().unwrap_or_default().to_os_string();
    name.push(".incomplete");
    blob.with_file_name(name)
}

/// Fetches a small file (model_index.json) into memory, checking its size.
fn fetch_small(hub: &Hub, repo: &str, commit: &str, f: &FileReport) -> anyhow::Result<Vec<u8>> {
    const LIMIT: u64 = 16 << 20;
    if f.size > LIMIT {
        anyhow::bail!("{} is {} bytes: too large for a config file", f.path, f.size);
    }
    let resp = hub.open_file(repo, commit, &f.path, 0)?;
    if resp.status() != 200 {
        anyhow::bail!("the hub answered {} for {}", resp.status(), f.path);
    }
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(LIMIT + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("downloading {}", f.path))?;
    if bytes.len() as u64 != f.size {
        anyhow::bail!(
            "{} arrived with {} bytes, the hub lists {}",
            f.path,
            bytes.len(),
            f.size
        );
    }
    Ok(bytes)
}

/// Writes an already fetched, size-checked file into its blob (incomplete name, then rename).
fn store_bytes(ctx: &Ctx<'_>, f: &FileReport, bytes: &[u8]) -> anyhow::Result<()> {
    let blob = ctx.folder.join("blobs").join(&f.blob);
    if let Some(want) = &f.sha256 {
        let got = super::transfer::hex(&Sha256::digest(bytes));
        if &got != want {
            anyhow::bail!("sha256 mismatch for {}: expected {want}, got {got}", f.path);
        }
    }
    let part = incomplete_path(&blob);
    std::fs::write(&part, bytes).with_context(|| format!("cannot write {}", part.display()))?;
    std::fs::rename(&part, &blob).with_context(|| format!("cannot move {}", part.display()))
}

/// Downloads every file not yet complete, `jobs` at a time; returns the bytes received.
pub(super) fn download_all(ctx: &Ctx<'_>, files: &mut [FileReport], jobs: usize) -> anyhow::Result<u64> {
    let todo: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].status == FileStatus::Pending)
        .collect();
    if todo.is_empty() {
        return Ok(0);
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, anyhow::Result<transfer::Transfer>)>> = Mutex::new(Vec::new());
    let shared: &[FileReport] = files;
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(todo.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= todo.len() || ctx.abort.load(Ordering::SeqCst) {
                    break;
                }
                let i = todo[k];
                let r = transfer::download_blob(ctx, &shared[i]);
                if r.is_err() {
                    ctx.abort.store(true, Ordering::SeqCst);
                }
                if let Ok(mut v) = results.lock() {
                    v.push((i, r));
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a download thread panicked"))?;
    let mut received = 0;
    let mut first_err = None;
    for (i, r) in results {
        match r {
            Ok(t) => {
                received += t.received;
                files[i].status = t.status;
            }
            Err(e) if e.downcast_ref::<transfer::Cancelled>().is_none() => {
                first_err.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(received),
    }
}

/// `../../blobs/<blob>` as seen from `snapshots/<commit>/<rel>` (one more `..` per folder).
pub fn link_target(rel: &str, blob: &str) -> PathBuf {
    let depth = rel.split('/').count();
    let mut t = PathBuf::new();
    for _ in 0..depth + 1 {
        t.push("..");
    }
    t.join("blobs").join(blob)
}

/// Makes `snapshots/<commit>/<rel>` a relative link to its blob (atomically replacing a wrong one;
/// a regular file of the right size, as a copying cache leaves, is kept).
pub(super) fn link_snapshot(folder: &Path, commit: &str, rel: &str, blob: &str) -> anyhow::Result<()> {
    let dst = folder.join("snapshots").join(commit).join(rel);
    let target = link_target(rel, blob);
    let blob_path = folder.join("blobs").join(blob);
    match std::fs::symlink_metadata(&dst) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&dst).is_ok_and(|t| t == target) {
                return Ok(());
            }
        }
        Ok(m) if m.is_file() => {
            let want = std::fs::metadata(&blob_path).map(|b| b.len()).ok();
            if want == Some(m.len()) {
                return Ok(());
            }
        }
        Ok(_) => anyhow::bail!("{} is in the way (not a file)", dst.display()),
        Err(_) => {}
    }
    let parent = dst
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent folder", dst.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.{}.tmp", file_name(rel), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp).with_context(|| format!("cannot create the link {}", tmp.display()))?;
    #[cfg(not(unix))]
    std::fs::copy(&blob_path, &tmp)
        .with_context(|| format!("cannot copy {} to {}", blob_path.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("cannot create {}", dst.display()))
}

/// Writes `refs/<revision>` = `commit` (atomically; no newline, as huggingface_hub writes it).
pub(super) fn write_ref(folder: &Path, revision: &str, commit: &str) -> anyhow::Result<()> {
    check_rel_path(revision).map_err(|_| UserError::bad_input(format!("`{revision}` cannot be a revision name")))?;
    let path = folder.join("refs").join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == commit) {
        return Ok(());
    }
    let parent = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent folder", path.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.{}.tmp", file_name(revision), std::process::id()));
    std::fs::write(&tmp, commit).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(name: &str) -> Sibling {
        serde_json::from_value(serde_json::json!({"rfilename": name, "size": 1, "blobId": "ab"})).unwrap()
    }

    #[test]
    fn selection_follows_the_index_and_layout() {
        let names = [
            "model_index.json",
            "README.md",
            "tokenizer/vocab.json",
            "processor/tokenizer.json",
            "scheduler/scheduler_config.json",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.fp16.safetensors",
            "transformer/diffusion_pytorch_model.bin",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "safety_checker/model.safetensors",
        ];
        let sibs: Vec<Sibling> = names.iter().map(|n| sib(n)).collect();
        let index = serde_json::json!({
            "_class_name": "QwenImageEditPlusPipeline",
            "processor": ["transformers", "Qwen2VLProcessor"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "tokenizer": ["transformers", "Qwen2Tokenizer"],
            "transformer": ["diffusers", "QwenImageTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLQwenImage"],
            "safety_checker": [null, null],
        });
        let got: Vec<&str> = select_files(&sibs, &index)
            .into_iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "processor/tokenizer.json",
            ]
        );
    }

    #[test]
    fn link_targets_are_relative() {
        assert_eq!(link_target("model_index.json", "b"), PathBuf::from("../../blobs/b"));
        assert_eq!(link_target("vae/config.json", "b"), PathBuf::from("../../../blobs/b"));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(check_rel_path("../x").is_err());
        assert!(check_rel_path("/etc/passwd").is_err());
        assert!(check_rel_path("vae/config.json").is_ok());
    }
}
