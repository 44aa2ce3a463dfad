//! The Hugging Face Hub cache: where models live on disk, in the same layout as Python's
//! huggingface_hub (`<cache>/models--<org>--<name>/{blobs,refs,snapshots/<commit>}`), so a cache
//! filled by either tool serves both.
//!
//! [`download::fetch`] fills it from the hub's HTTP API ([`api`]); [`ensure_model`] is what `edit`
//! calls to make sure a model is there; [`cache`] tells what a cache already holds.

pub mod api;
pub mod cache;
pub mod download;
pub mod files;
mod transfer;

use std::path::{Path, PathBuf};

pub use cache::{snapshot_state, SnapshotState};
pub use download::{fetch, FetchOptions, FetchSummary, FileReport, FileStatus};

use crate::error::UserError;
use crate::printer::Printer;

/// Known model repos and their shorthands.
pub const KNOWN_MODELS: [(&str, &str); 3] = [
    ("edit", "Qwen/Qwen-Image-Edit"),
    ("2509", "Qwen/Qwen-Image-Edit-2509"),
    ("2511", "Qwen/Qwen-Image-Edit-2511"),
];

/// `edit`, `2509`, `2511` → the full repo id; anything else unchanged.
pub fn expand_shorthand(model: &str) -> String {
    KNOWN_MODELS
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(model))
        .map(|(_, repo)| repo.to_string())
        .unwrap_or_else(|| model.to_string())
}

/// Whether `s` looks like a hub repo id (`org/name`, no path-like pieces).
pub fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(name)
}

/// The hub cache folder: `override`, else `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (huggingface_hub's order).
pub fn cache_dir(override_dir: Option<&Path>) -> PathBuf {
    if let Some(d) = override_dir {
        return d.to_path_buf();
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("HF_HUB_CACHE") {
        return d;
    }
    if let Some(d) = env("HF_HOME") {
        return d.join("hub");
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return d.join("huggingface").join("hub");
    }
    let home = directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether the user asked for offline mode (`HF_HUB_OFFLINE=1`).
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
}

/// `<cache>/models--org--name`.
pub fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Whether `rev` is a full commit hash.
pub fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `repo` at `revision` in `cache`, if the cache knows that revision.
pub fn snapshot_dir(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let folder = repo_folder(cache, repo);
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        std::fs::read_to_string(folder.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let dir = folder.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// `n` bytes for people: `57.7 GB`, `254 MB`, `12 KB`, `7 B` (decimal units, as the hub shows).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// The command that fetches `repo` at `revision`, for hints.
pub fn fetch_command(repo: &str, revision: &str) -> String {
    let short = KNOWN_MODELS
        .iter()
        .find(|(_, r)| *r == repo)
        .map(|(s, _)| *s)
        .unwrap_or(repo);
    if revision == "main" {
        format!("qwen-edit fetch-models --model {short}")
    } else {
        format!("qwen-edit fetch-models --model {short} --revision {revision}")
    }
}

/// What the cache holds of `repo` at `revision` without the network, as a fetch summary
/// (`complete` tells whether the pipeline can run from it).
pub fn offline_summary(repo: &str, revision: &str, cache: &Path) -> FetchSummary {
    let (snapshot, missing) = match snapshot_state(cache, repo, revision) {
        SnapshotState::Absent => (None, vec!["model_index.json".to_string()]),
        SnapshotState::Incomplete { dir, missing } => {
            (Some(dir), missing.iter().map(|p| p.display().to_string()).collect())
        }
        SnapshotState::Complete { dir } => (Some(dir), Vec::new()),
    };
    let commit = snapshot
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|c| c.to_string_lossy().into_owned());
    FetchSummary {
        repo: repo.to_string(),
        revision: revision.to_string(),
        commit,
        endpoint: None,
        cache_dir: cache.to_path_buf(),
        complete: snapshot.is_some() && missing.is_empty(),
        snapshot,
        dry_run: false,
        offline: true,
        files: Vec::new(),
        missing,
        total_bytes: 0,
        downloaded_bytes: 0,
        resumed_bytes: 0,
        reused_bytes: 0,
        to_download_bytes: 0,
        free_bytes: None,
        seconds: 0.0,
    }
}

/// Makes sure `repo` (a repo id or shorthand) at `revision` is complete in `cache` and returns its
/// snapshot folder. A complete snapshot is used as it is, without the network; otherwise the
/// missing files are downloaded (a status line first, then progress bars), unless `offline` (or
/// `HF_HUB_OFFLINE=1`), which is a "model missing" error (exit 4) naming the fetch-models command.
/// `token` falls back to `HF_TOKEN` / the saved hub token.
pub fn ensure_model(
    repo: &str,
    revision: &str,
    cache: &Path,
    offline: bool,
    token: Option<&str>,
    printer: &Printer,
) -> anyhow::Result<PathBuf> {
    let repo = expand_shorthand(repo);
    let state = snapshot_state(cache, &repo, revision);
    let what = match &state {
        SnapshotState::Complete { dir } => return Ok(dir.clone()),
        SnapshotState::Absent => format!("{repo} ({revision}) is not in the hub cache {}", cache.display()),
        SnapshotState::Incomplete { dir, missing } => format!(
            "{repo} ({revision}) is incomplete in the hub cache ({} lacks {} file{})",
            dir.display(),
            missing.len(),
            if missing.len() == 1 { "" } else { "s" }
        ),
    };
    if offline || offline_from_env() {
        return Err(UserError::model_missing(format!("{what}, and offline mode is on"))
            .with_hint(format!(
                "run `{}` with network access (without --offline / HF_HUB_OFFLINE)",
                fetch_command(&repo, revision)
            ))
            .into());
    }
    printer.status(format!("{what}: downloading it"));
    let token = token.map(str::to_string).or_else(api::token_from_env);
    let endpoint = api::endpoint_from_env();
    let summary = fetch(
        &FetchOptions {
            repo: &repo,
            revision,
            cache,
            endpoint: &endpoint,
            token: token.as_deref(),
            dry_run: false,
            jobs: download::DEFAULT_JOBS,
        },
        printer,
    )?;
    printer.status(format!(
        "fetched {} in {:.0} s",
        human_bytes(summary.downloaded_bytes),
        summary.seconds
    ));
    summary
        .snapshot
        .ok_or_else(|| anyhow::anyhow!("the download of {repo} gave no snapshot folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_and_repo_ids() {
        assert_eq!(expand_shorthand("2511"), "Qwen/Qwen-Image-Edit-2511");
        assert_eq!(expand_shorthand("EDIT"), "Qwen/Qwen-Image-Edit");
        assert_eq!(expand_shorthand("me/model"), "me/model");
        assert!(is_repo_id("Qwen/Qwen-Image-Edit-2509"));
        assert!(!is_repo_id("/abs/path"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("model"));
    }

    #[test]
    fn snapshot_lookup_follows_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = repo_folder(tmp.path(), "Qwen/Qwen-Image-Edit");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::create_dir_all(folder.join("snapshots").join(commit)).unwrap();
        std::fs::write(folder.join("refs").join("main"), commit).unwrap();
        let want = folder.join("snapshots").join(commit);
        assert_eq!(
            snapshot_dir(tmp.path(), "Qwen/Qwen-Image-Edit", "main"),
            Some(want.clone())
        );
        assert_eq!(snapshot_dir(tmp.path(), "Qwen/Qwen-Image-Edit", commit), Some(want));
        assert_eq!(snapshot_dir(tmp.path(), "Qwen/Qwen-Image-Edit", "v2"), None);
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(12_345), "12.3 KB");
        assert_eq!(human_bytes(254_000_000), "254 MB");
        assert_eq!(human_bytes(57_700_000_000), "57.7 GB");
        assert_eq!(
            fetch_command("Qwen/Qwen-Image-Edit-2511", "main"),
            "qwen-edit fetch-models --model 2511"
        );
    }

    #[test]
    fn offline_ensure_names_the_fetch_command() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ensure_model("2509", "main", tmp.path(), true, None, &Printer::silent()).unwrap_err();
        let user = crate::error::user_error(&err).unwrap();
        assert_eq!(user.kind.exit_code(), 4);
        assert!(user
            .hint
            .as_deref()
            .unwrap()
            .contains("qwen-edit fetch-models --model 2509"));
    }
}
