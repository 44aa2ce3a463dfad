//! The Hugging Face Hub cache: where models live on disk, in the same layout as Python's
//! huggingface_hub (`<cache>/models--<org>--<name>/{blobs,refs,snapshots/<commit>}`), so a cache
//! filled by either tool serves both.

use std::path::{Path, PathBuf};

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
}
