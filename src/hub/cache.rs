//! What the hub cache already holds: whether a snapshot is complete for the pipeline, and a
//! per-repo inventory (revisions, snapshots, partial downloads, truncated weight files) for `doctor`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pipeline::layout;

/// A snapshot's state for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// The cache has no snapshot for that revision.
    Absent,
    /// The snapshot lacks files the pipeline reads (relative paths).
    Incomplete { dir: PathBuf, missing: Vec<PathBuf> },
    /// Every file the pipeline reads is there.
    Complete { dir: PathBuf },
}

/// Files of a snapshot folder the pipeline needs but that are absent (or dangling links).
pub fn snapshot_missing(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    if !dir.join("model_index.json").is_file() {
        missing.push(PathBuf::from("model_index.json"));
    }
    missing.extend(layout::missing_files(dir));
    missing
}

/// The state of `repo` at `revision` in `cache` (no network).
pub fn snapshot_state(cache: &Path, repo: &str, revision: &str) -> SnapshotState {
    let Some(dir) = super::snapshot_dir(cache, repo, revision) else {
        return SnapshotState::Absent;
    };
    let missing = snapshot_missing(&dir);
    if missing.is_empty() {
        SnapshotState::Complete { dir }
    } else {
        SnapshotState::Incomplete { dir, missing }
    }
}

/// One snapshot folder of a cached repo.
#[derive(Debug, Clone, Serialize)]
pub struct CachedSnapshot {
    pub commit: String,
    pub dir: PathBuf,
    /// The refs (branches/tags) pointing at this commit.
    pub refs: Vec<String>,
    pub complete: bool,
    /// Files the pipeline needs that are absent.
    pub missing: Vec<String>,
    /// Weight files shorter or longer than their safetensors header says.
    pub bad_size: Vec<String>,
    /// Bytes of the files this snapshot links to.
    pub bytes: u64,
}

/// A repo in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CachedRepo {
    pub repo: String,
    pub folder: PathBuf,
    pub snapshots: Vec<CachedSnapshot>,
    /// Interrupted downloads (`blobs/*.incomplete`) and their bytes so far.
    pub partial_files: usize,
    pub partial_bytes: u64,
}

impl CachedRepo {
    /// The snapshot `main` points to, else the first complete one, else any.
    pub fn best(&self) -> Option<&CachedSnapshot> {
        self.snapshots
            .iter()
            .find(|s| s.refs.iter().any(|r| r == "main"))
            .or_else(|| self.snapshots.iter().find(|s| s.complete))
            .or_else(|| self.snapshots.first())
    }
}

/// The cache's inventory of `repo`, `None` when the cache has no folder for it.
pub fn inspect_repo(cache: &Path, repo: &str) -> Option<CachedRepo> {
    let folder = super::repo_folder(cache, repo);
    if !folder.is_dir() {
        return None;
    }
    let mut refs: Vec<(String, String)> = Vec::new();
    collect_refs(&folder.join("refs"), "", &mut refs);
    let mut snapshots = Vec::new();
    if let Ok(entries) = std::fs::read_dir(folder.join("snapshots")) {
        for e in entries.flatten() {
            let dir = e.path();
            if !dir.is_dir() {
                continue;
            }
            let commit = e.file_name().to_string_lossy().into_owned();
            let missing = snapshot_missing(&dir);
            let bad_size = bad_weight_sizes(&dir);
            snapshots.push(CachedSnapshot {
                refs: refs
                    .iter()
                    .filter(|(_, c)| *c == commit)
                    .map(|(r, _)| r.clone())
                    .collect(),
                complete: missing.is_empty() && bad_size.is_empty(),
                missing: missing.iter().map(|p| p.display().to_string()).collect(),
                bad_size,
                bytes: tree_bytes(&dir),
                commit,
                dir,
            });
        }
    }
    snapshots.sort_by(|a, b| a.commit.cmp(&b.commit));
    let (mut partial_files, mut partial_bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(folder.join("blobs")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".incomplete") {
                partial_files += 1;
                partial_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    Some(CachedRepo {
        repo: repo.to_string(),
        folder,
        snapshots,
        partial_files,
        partial_bytes,
    })
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let path = e.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            out.push((name, text.trim().to_string()));
        }
    }
}

/// Bytes of the files under `dir` (links followed; dangling links count 0).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => tree_bytes(&p),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

/// The size a safetensors file must have according to its header (8-byte length, JSON header,
/// then the data up to the largest `data_offsets` end); `None` when the header cannot be read.
pub fn safetensors_expected_len(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(n).ok()?];
    f.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let end = json
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some(8 + n + end)
}

/// The weight files of the snapshot's components whose length disagrees with their header.
fn bad_weight_sizes(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for comp in ["transformer", "vae", "text_encoder"] {
        let cdir = dir.join(comp);
        for f in layout::weight_files(&cdir).unwrap_or_default() {
            let p = cdir.join(&f);
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if let Some(want) = safetensors_expected_len(&p) {
                if want != meta.len() {
                    bad.push(format!("{comp}/{f} ({} bytes, header says {want})", meta.len()));
                }
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_length_from_header() {
        let tmp = tempfile::tempdir().unwrap();
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        let p = tmp.path().join("w.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(safetensors_expected_len(&p), Some(bytes.len() as u64));
        std::fs::write(tmp.path().join("x"), b"junk").unwrap();
        assert_eq!(safetensors_expected_len(&tmp.path().join("x")), None);
    }

    #[test]
    fn absent_and_incomplete_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(snapshot_state(tmp.path(), "a/b", "main"), SnapshotState::Absent);
        let folder = super::super::repo_folder(tmp.path(), "a/b");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), commit).unwrap();
        match snapshot_state(tmp.path(), "a/b", "main") {
            SnapshotState::Incomplete { missing, .. } => {
                assert!(missing.contains(&PathBuf::from("model_index.json")))
            }
            other => panic!("unexpected {other:?}"),
        }
        let inv = inspect_repo(tmp.path(), "a/b").unwrap();
        assert_eq!(inv.snapshots.len(), 1);
        assert_eq!(inv.snapshots[0].refs, vec!["main".to_string()]);
        assert!(!inv.snapshots[0].complete);
    }
}
