//! Moving one blob from the hub into the cache: under huggingface_hub's lock, into
//! `blobs/<name>.incomplete`, resumed with `Range` after a cut connection (at once when the cut
//! came after some progress, with backoff otherwise), checked for size and sha256 and renamed into
//! place only then.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::download::{blob_complete, file_name, incomplete_path, Ctx, FileReport, FileStatus};
use super::human_bytes;

/// Another download failed, so this one stopped.
#[derive(Debug)]
pub(super) struct Cancelled;
impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}
impl std::error::Error for Cancelled {}

pub(super) struct Transfer {
    pub(super) received: u64,
    pub(super) status: FileStatus,
}

/// Downloads one blob under its lock: resumes `<blob>.incomplete`, verifies, renames into place.
pub(super) fn download_blob(ctx: &Ctx<'_>, f: &FileReport) -> anyhow::Result<Transfer> {
    let blob = ctx.folder.join("blobs").join(&f.blob);
    let _lock = lock_blob(ctx, f)?;
    if blob_complete(&blob, f.size) {
        // Another process finished it while we waited for the lock.
        ctx.total.inc(f.size - f.partial_bytes);
        return Ok(Transfer {
            received: 0,
            status: FileStatus::Reused,
        });
    }
    let part = incomplete_path(&blob);
    let bar = ctx
        .multi
        .insert_before(&ctx.total, ctx.printer.bytes_bar(f.size, &short_name(&f.path)));
    let mut received = 0;
    let mut from_scratch_tried = false;
    let result = loop {
        let (got, resumed_from, digest) = fetch_to_part(ctx, f, &part, &bar)?;
        received += got;
        let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let bad = if len != f.size {
            Some(format!(
                "size mismatch for {}: expected {} bytes, got {len}",
                f.path, f.size
            ))
        } else {
            match (&f.sha256, digest) {
                (Some(want), Some(got)) if *want != got => {
                    Some(format!("sha256 mismatch for {}: expected {want}, got {got}", f.path))
                }
                _ => None,
            }
        };
        match bad {
            None => break Ok(resumed_from),
            Some(msg) => {
                let _ = std::fs::remove_file(&part);
                if resumed_from > 0 && !from_scratch_tried {
                    // The earlier partial file may be what is wrong: try once from the start.
                    from_scratch_tried = true;
                    ctx.total.inc_length(resumed_from);
                    tracing::warn!("{msg}; downloading {} again from the start", f.path);
                    continue;
                }
                break Err(anyhow::anyhow!(
                    "{msg}; the download was discarded (nothing was stored at the final path)"
                ));
            }
        }
    };
    bar.finish_and_clear();
    let resumed_from = result?;
    let file = std::fs::File::open(&part)?;
    file.sync_all()
        .with_context(|| format!("cannot flush {}", part.display()))?;
    std::fs::rename(&part, &blob).with_context(|| format!("cannot move {} into place", part.display()))?;
    let status = if resumed_from > 0 {
        FileStatus::Resumed
    } else {
        FileStatus::Downloaded
    };
    if !ctx.printer.progress {
        let how = if resumed_from > 0 { "resumed" } else { "fetched" };
        ctx.printer
            .status(format!("  {how} {} ({})", f.path, human_bytes(f.size)));
    }
    Ok(Transfer { received, status })
}

/// Holds `<cache>/.locks/models--org--name/<blob>.lock` (huggingface_hub's lock) while alive.
fn lock_blob(ctx: &Ctx<'_>, f: &FileReport) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&ctx.locks).with_context(|| format!("cannot create {}", ctx.locks.display()))?;
    let path = ctx.locks.join(format!("{}.lock", f.blob));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if fs2::FileExt::try_lock_exclusive(&file).is_err() {
        ctx.printer
            .status(format!("waiting for another process downloading {}", f.path));
        fs2::FileExt::lock_exclusive(&file).with_context(|| format!("cannot lock {}", path.display()))?;
    }
    Ok(file)
}

/// Brings `part` to the file's full length, resuming from what it holds. Returns the bytes
/// received, the length it resumed from, and the sha256 of the whole file when one is expected.
fn fetch_to_part(
    ctx: &Ctx<'_>,
    f: &FileReport,
    part: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, u64, Option<String>)> {
    let mut hasher = f.sha256.as_ref().map(|_| Sha256::new());
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > f.size {
        std::fs::remove_file(part)?;
        have = 0;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .with_context(|| format!("cannot open {}", part.display()))?;
    if let (Some(h), true) = (hasher.as_mut(), have > 0) {
        // Hash what an earlier run left, so the whole file is checked at the end.
        let mut r = std::fs::File::open(part)?.take(have);
        std::io::copy(&mut r, &mut HashWriter(h)).with_context(|| format!("cannot read {}", part.display()))?;
    }
    let resumed_from = have;
    bar.set_position(have);
    let mut received = 0u64;
    let mut failures = 0u32;
    let mut cuts = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    while have < f.size {
        if ctx.abort.load(Ordering::SeqCst) {
            return Err(Cancelled.into());
        }
        let resp = ctx.hub.open_file(ctx.repo, &ctx.commit, &f.path, have)?;
        match resp.status() {
            206 if content_range_start(&resp) == Some(have) => {}
            206 => anyhow::bail!("the hub answered a range request for {} with another range", f.path),
            200 => {
                if have > 0 {
                    // The server ignored the range and sends the whole file: start over.
                    out.set_len(0)?;
                    hasher = f.sha256.as_ref().map(|_| Sha256::new());
                    ctx.total.inc_length(have);
                    have = 0;
                    bar.set_position(0);
                }
            }
            416 => {
                // The server has fewer bytes than we hold: start over (a few times at most).
                out.set_len(0)?;
                hasher = f.sha256.as_ref().map(|_| Sha256::new());
                ctx.total.inc_length(have);
                have = 0;
                bar.set_position(0);
                cuts += 1;
                if cuts > 3 {
                    anyhow::bail!("the hub refused every range request for {}", f.path);
                }
                continue;
            }
            code => anyhow::bail!("the hub answered {code} for {}", f.path),
        }
        let mut reader = resp.into_reader();
        let mut got_now = 0u64;
        let err = loop {
            if ctx.abort.load(Ordering::SeqCst) {
                return Err(Cancelled.into());
            }
            match reader.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    if have + n as u64 > f.size {
                        anyhow::bail!("the hub sent more than the {} bytes listed for {}", f.size, f.path);
                    }
                    out.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", part.display()))?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    have += n as u64;
                    got_now += n as u64;
                    bar.inc(n as u64);
                    ctx.total.inc(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        out.flush()?;
        received += got_now;
        if have >= f.size {
            break;
        }
        // The connection ended early. Progress resets the failure count: resume at once.
        let why = err.map_or_else(|| "connection closed early".to_string(), |e| e.to_string());
        cuts += 1;
        if got_now > 0 {
            failures = 0;
        } else {
            failures += 1;
        }
        if failures >= ctx.hub.attempts() || cuts > 1000 {
            anyhow::bail!(
                "downloading {} failed after {have} of {} bytes: {why} (the partial file is kept; run again to resume)",
                f.path,
                f.size
            );
        }
        tracing::debug!("{} interrupted at {have} bytes ({why}); resuming", f.path);
        if failures > 0 {
            std::thread::sleep(ctx.hub.backoff(failures));
        }
    }
    Ok((received, resumed_from, hasher.map(|h| hex(&h.finalize()))))
}

/// The first byte of a 206 answer's `Content-Range: bytes N-M/T`.
fn content_range_start(resp: &ureq::Response) -> Option<u64> {
    let v = resp.header("Content-Range")?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A progress-bar label: the file name, shortened.
fn short_name(path: &str) -> String {
    let name = file_name(path);
    if name.chars().count() <= 28 {
        name.to_string()
    } else {
        let tail: String = name
            .chars()
            .rev()
            .take(27)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
