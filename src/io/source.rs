//! Where an input image's bytes come from.
//!
//! An image argument is resolved in a fixed order, without guessing from file names:
//!
//! 1. `-` → the bytes of stdin (at most once per process, and only where [`FetchOptions::allow_stdin`]).
//! 2. `data:image/<type>[;param]*;base64,<payload>` → the payload, strict base64.
//! 3. `http://…` / `https://…` → a download with connect/read/total timeouts, a redirect limit (redirects
//!    to other schemes are refused), a body size limit and retries with exponential backoff on
//!    connection errors, timeouts, HTTP 5xx and 429 (never on other 4xx).
//! 4. An existing file → its bytes; with [`FetchOptions::allowed_roots`] only below one of those folders
//!    (after resolving symlinks).
//! 5. Bare base64 of an image → the decoded bytes.
//! 6. Anything else → an error saying what was tried.
//!
//! Base64 rules (bare and in data: URIs): the standard (`+/`) or the URL-safe (`-_`) alphabet, not both;
//! `=` padding optional, but if present it must be correct; non-zero trailing bits are refused; ASCII
//! whitespace (spaces, tabs, CR, LF) anywhere is ignored, so line-wrapped output of `base64` works. A bare
//! argument is taken as base64 only when it decodes and the decoded bytes start with the signature of a
//! supported image format (PNG, JPEG, GIF, WebP, TIFF, BMP), or when it is at least
//! [`MIN_UNSIGNED_BASE64_LEN`] characters long; so a mistyped short file name is reported as a missing
//! file, not as broken base64. An existing file always wins over base64.
//!
//! All sources are bounded by [`FetchOptions::max_bytes`]; reading stops one byte past the limit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use crate::error::UserError;

mod http;
use http::{download, url_label};

/// Bare base64 at least this long is taken as base64 even when its bytes carry no known image
/// signature (so that the error is about undecodable image data, not about a missing file).
pub const MIN_UNSIGNED_BASE64_LEN: usize = 256;

/// How much of a payload a label may quote.
const LABEL_QUOTE_CHARS: usize = 16;

/// Limits and policies for reading an image argument.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Time allowed to open a TCP connection (per attempt).
    pub connect_timeout: Duration,
    /// Time allowed for any single read of the response (per attempt).
    pub read_timeout: Duration,
    /// Time allowed for one whole download attempt, body included, so a server that drips bytes cannot
    /// hold the process forever.
    pub total_timeout: Duration,
    /// Largest accepted input, in bytes, for every source kind.
    pub max_bytes: u64,
    /// Redirects followed before giving up.
    pub max_redirects: u32,
    /// Extra attempts after a retryable failure (connection error, timeout, HTTP 5xx or 429).
    pub retries: u32,
    /// Delay before the first retry; doubled on each further retry.
    pub backoff_base: Duration,
    /// When set, files are read only from below these folders (after resolving symlinks).
    /// `None` allows any path.
    pub allowed_roots: Option<Vec<PathBuf>>,
    /// Whether `-` (stdin) may be used.
    pub allow_stdin: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(300),
            max_bytes: 64 * 1024 * 1024,
            max_redirects: 5,
            retries: 3,
            backoff_base: Duration::from_millis(500),
            allowed_roots: None,
            allow_stdin: true,
        }
    }
}

/// The form of an image argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Stdin,
    DataUri,
    Url,
    Path,
    Base64,
}

/// The bytes of one input, with a short name for messages.
#[derive(Debug, Clone)]
pub struct InputBytes {
    pub kind: SourceKind,
    pub bytes: Vec<u8>,
    /// Names the input in messages: the path, the URL without its query, `stdin`, or a short
    /// description of a base64 payload (never the payload itself).
    pub label: String,
}

fn bad(message: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).into()
}

fn bad_hint(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).with_hint(hint).into()
}

fn has_prefix_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The form of `arg`, decided from the text alone (no filesystem or network access). `Path` means "not
/// one of the other forms"; [`read_source`] still prefers an existing file over `Base64`.
pub fn classify(arg: &str) -> SourceKind {
    if arg == "-" {
        SourceKind::Stdin
    } else if has_prefix_ignore_case(arg, "data:") {
        SourceKind::DataUri
    } else if has_prefix_ignore_case(arg, "http://") || has_prefix_ignore_case(arg, "https://") {
        SourceKind::Url
    } else if looks_like_image_base64(arg) {
        SourceKind::Base64
    } else {
        SourceKind::Path
    }
}

/// Fails when `-` (stdin) appears more than once among `args`: stdin can be read only once.
pub fn check_stdin_once<S: AsRef<str>>(args: &[S]) -> anyhow::Result<()> {
    let uses: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| a.as_ref() == "-")
        .map(|(i, _)| i + 1)
        .collect();
    if uses.len() > 1 {
        let list: Vec<String> = uses.iter().map(|i| i.to_string()).collect();
        return Err(bad_hint(
            format!(
                "`-` (stdin) is given {} times (images {}), but stdin can be read only once",
                uses.len(),
                list.join(", ")
            ),
            "pass at most one image on stdin; give the others as files, URLs or base64",
        ));
    }
    Ok(())
}

/// Reads several image arguments in order, refusing more than one `-`.
pub fn read_sources<S: AsRef<str>>(
    args: &[S],
    opts: &FetchOptions,
    stdin: &mut dyn Read,
) -> anyhow::Result<Vec<InputBytes>> {
    check_stdin_once(args)?;
    args.iter().map(|a| read_source(a.as_ref(), opts, stdin)).collect()
}

/// Resolves one image argument to its bytes (see the module doc for the order).
pub fn read_source(arg: &str, opts: &FetchOptions, stdin: &mut dyn Read) -> anyhow::Result<InputBytes> {
    if arg.is_empty() {
        return Err(bad("an image argument is empty"));
    }
    let kind = classify(arg);
    match kind {
        SourceKind::Stdin => read_stdin(opts, stdin),
        SourceKind::DataUri => read_data_uri(arg, opts),
        SourceKind::Url => {
            let label = url_label(arg);
            let bytes = download(arg, &label, opts)?;
            Ok(InputBytes { kind, bytes, label })
        }
        SourceKind::Base64 | SourceKind::Path => {
            // An existing file wins over base64. `symlink_metadata` so that a dangling symlink counts
            // as "exists" and gets a precise error.
            match Path::new(arg).symlink_metadata() {
                Ok(_) => return read_path(Path::new(arg), opts),
                Err(e) if e.kind() != std::io::ErrorKind::NotFound && kind == SourceKind::Path => {
                    return Err(bad(format!("cannot access `{arg}`: {e}")));
                }
                Err(_) => {}
            }
            if kind == SourceKind::Base64 {
                let label = base64_label("base64 input", arg);
                let bytes = decode_base64(arg, opts.max_bytes, &label)?;
                return Ok(InputBytes { kind, bytes, label });
            }
            Err(not_any_form(arg))
        }
    }
}

/// Reads `arg` as base64 (bare, or a `data:` URI) whatever it looks like: for inputs that are declared
/// to be base64 (the `image_base64` job key), so that a damaged payload is reported as broken base64
/// rather than as a missing file.
pub fn read_base64(arg: &str, opts: &FetchOptions) -> anyhow::Result<InputBytes> {
    if has_prefix_ignore_case(arg, "data:") {
        return read_data_uri(arg, opts);
    }
    let label = base64_label("base64 input", arg);
    let bytes = decode_base64(arg, opts.max_bytes, &label)?;
    Ok(InputBytes {
        kind: SourceKind::Base64,
        bytes,
        label,
    })
}

fn not_any_form(arg: &str) -> anyhow::Error {
    let shown = if arg.chars().count() > 80 {
        let head: String = arg.chars().take(40).collect();
        format!("{head}… ({} chars)", arg.chars().count())
    } else {
        arg.to_string()
    };
    bad_hint(
        format!("`{shown}` is not a file, an http(s) URL, a data: URI or base64 of an image"),
        "check the path (no file by that name exists), or pass `-` to read stdin",
    )
}

// ---------------------------------------------------------------------------------------------
// stdin

fn read_stdin(opts: &FetchOptions, stdin: &mut dyn Read) -> anyhow::Result<InputBytes> {
    if !opts.allow_stdin {
        return Err(bad("reading an image from stdin (`-`) is not available here"));
    }
    let label = "stdin".to_string();
    let bytes =
        read_bounded(stdin, opts.max_bytes).map_err(|e| bad(format!("cannot read the image from stdin: {e}")))?;
    let Some(bytes) = bytes else {
        return Err(too_large(&label, opts.max_bytes));
    };
    if bytes.is_empty() {
        return Err(bad_hint(
            "stdin is empty: no image bytes arrived (stdin can be read only once per run)",
            "pipe an image in, e.g. `qwen-edit edit -i - … < photo.png`",
        ));
    }
    Ok(InputBytes {
        kind: SourceKind::Stdin,
        bytes,
        label,
    })
}

/// Reads at most `max` bytes; `None` when there is more.
fn read_bounded(r: &mut dyn Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        Ok(None)
    } else {
        Ok(Some(buf))
    }
}

fn too_large(label: &str, max: u64) -> anyhow::Error {
    bad_hint(
        format!("`{label}` is larger than the input limit of {}", human_bytes(max)),
        "use a smaller image",
    )
}

fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

// ---------------------------------------------------------------------------------------------
// files

fn read_path(path: &Path, opts: &FetchOptions) -> anyhow::Result<InputBytes> {
    let label = path.display().to_string();
    let resolved = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(format!("`{label}` is a symlink to a file that does not exist")),
        _ => bad(format!("cannot resolve `{label}`: {e}")),
    })?;
    if let Some(roots) = &opts.allowed_roots {
        check_inside_roots(&label, &resolved, roots)?;
    }
    let meta = std::fs::metadata(&resolved).map_err(|e| bad(format!("cannot read `{label}`: {e}")))?;
    if meta.is_dir() {
        return Err(bad_hint(
            format!("`{label}` is a directory, not an image file"),
            "pass the path of an image file inside it",
        ));
    }
    if !meta.is_file() {
        return Err(bad_hint(
            format!("`{label}` is not a regular file"),
            "to read an image from a pipe, pass `-` and redirect it to stdin",
        ));
    }
    if meta.len() > opts.max_bytes {
        return Err(too_large(&label, opts.max_bytes));
    }
    let mut file = File::open(&resolved).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => bad_hint(
            format!("cannot read `{label}`: permission denied"),
            "check the file's permissions",
        ),
        _ => bad(format!("cannot open `{label}`: {e}")),
    })?;
    let bytes = read_bounded(&mut file, opts.max_bytes)
        .map_err(|e| bad(format!("cannot read `{label}`: {e}")))?
        .ok_or_else(|| too_large(&label, opts.max_bytes))?;
    if bytes.is_empty() {
        return Err(bad(format!("`{label}` is empty (0 bytes)")));
    }
    Ok(InputBytes {
        kind: SourceKind::Path,
        bytes,
        label,
    })
}

fn check_inside_roots(label: &str, resolved: &Path, roots: &[PathBuf]) -> anyhow::Result<()> {
    if roots.is_empty() {
        return Err(bad_hint(
            format!("reading local files is not allowed here (`{label}`)"),
            "send the image as a URL or base64, or allow a folder (`serve --allow-path DIR`)",
        ));
    }
    let inside = roots.iter().any(|root| match std::fs::canonicalize(root) {
        Ok(root) => resolved.starts_with(&root),
        Err(e) => {
            tracing::warn!("allowed input folder `{}` cannot be resolved: {e}", root.display());
            false
        }
    });
    if inside {
        return Ok(());
    }
    let list: Vec<String> = roots.iter().map(|r| format!("`{}`", r.display())).collect();
    Err(bad_hint(
        format!(
            "`{label}` is outside the allowed input folders ({}){}",
            list.join(", "),
            if Path::new(label) != resolved {
                format!("; it resolves to `{}`", resolved.display())
            } else {
                String::new()
            }
        ),
        "put the image inside an allowed folder, or send it as a URL or base64",
    ))
}

// ---------------------------------------------------------------------------------------------
// base64 and data: URIs

fn engine(url_safe: bool) -> GeneralPurpose {
    let config = GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if url_safe {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config)
}

/// `s` without ASCII whitespace, and whether it uses the URL-safe alphabet; `Err` names the first
/// character that belongs to neither alphabet, or a mix of both alphabets.
fn base64_compact(s: &str) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::with_capacity(s.len());
    let (mut standard, mut url_safe) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            ' ' | '\t' | '\r' | '\n' => continue,
            'A'..='Z' | 'a'..='z' | '0'..='9' | '=' => {}
            '+' | '/' => standard = true,
            '-' | '_' => url_safe = true,
            other => return Err(format!("character {other:?} at offset {i} is not base64")),
        }
        out.push(c as u8);
    }
    if standard && url_safe {
        return Err("it mixes the standard (`+/`) and the URL-safe (`-_`) base64 alphabets".into());
    }
    Ok((out, url_safe))
}

/// Strict base64 decoding with the size limit applied before decoding.
fn decode_base64(s: &str, max_bytes: u64, label: &str) -> anyhow::Result<Vec<u8>> {
    let (compact, url_safe) = base64_compact(s).map_err(|why| bad(format!("`{label}` is not valid base64: {why}")))?;
    if compact.is_empty() {
        return Err(bad(format!("`{label}` is empty")));
    }
    let estimate = (compact.len() as u64 / 4) * 3 + 3;
    if estimate > max_bytes.saturating_add(3) {
        return Err(too_large(label, max_bytes));
    }
    let bytes = engine(url_safe).decode(&compact).map_err(|e| {
        bad_hint(
            format!("`{label}` is not valid base64: {e}"),
            "encode the whole file with a standard base64 encoder",
        )
    })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(label, max_bytes));
    }
    if bytes.is_empty() {
        return Err(bad(format!("`{label}` decodes to 0 bytes")));
    }
    Ok(bytes)
}

/// Signatures of the formats we decode (see `decode.rs`).
fn has_image_signature(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
        || b.starts_with(&[0xff, 0xd8, 0xff])
        || b.starts_with(b"GIF87a")
        || b.starts_with(b"GIF89a")
        || (b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP")
        || b.starts_with(b"II*\0")
        || b.starts_with(b"MM\0*")
        || b.starts_with(b"BM")
}

fn looks_like_image_base64(arg: &str) -> bool {
    let Ok((compact, url_safe)) = base64_compact(arg) else {
        return false;
    };
    if compact.len() < 4 {
        return false;
    }
    // Check the whole payload's syntax cheaply: '=' only at the end, at most two of them.
    let body_end = compact.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    if compact.len() - body_end > 2 || compact[..body_end].contains(&b'=') {
        return false;
    }
    if compact.len() >= MIN_UNSIGNED_BASE64_LEN {
        return true;
    }
    // Short payloads: decode and require an image signature.
    match engine(url_safe).decode(&compact) {
        Ok(bytes) => has_image_signature(&bytes),
        Err(_) => false,
    }
}

fn base64_label(what: &str, payload: &str) -> String {
    let head: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .take(LABEL_QUOTE_CHARS)
        .collect();
    format!("{what} ({} chars, `{head}…`)", payload.len())
}

fn read_data_uri(arg: &str, opts: &FetchOptions) -> anyhow::Result<InputBytes> {
    let rest = &arg["data:".len()..];
    let Some((header, payload)) = rest.split_once(',') else {
        return Err(bad(format!(
            "`{}` is not a valid data: URI: there is no `,` before the data",
            base64_label("data: URI", arg)
        )));
    };
    let mut parts = header.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params: Vec<&str> = parts.collect();
    let label = format!(
        "data:{} URI ({} chars)",
        if mime.is_empty() { "(no type)" } else { mime.as_str() },
        arg.len()
    );
    if !mime.starts_with("image/") || mime.len() == "image/".len() {
        return Err(bad_hint(
            format!(
                "`{label}` does not hold an image: its media type is `{}`",
                if mime.is_empty() {
                    "text/plain (none given)"
                } else {
                    mime.as_str()
                }
            ),
            "use a URI of the form `data:image/png;base64,…`",
        ));
    }
    if !params.last().is_some_and(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(bad_hint(
            format!("`{label}` is not base64-encoded (no `;base64` before the `,`)"),
            "use a URI of the form `data:image/png;base64,…`",
        ));
    }
    let bytes = decode_base64(payload, opts.max_bytes, &label)?;
    Ok(InputBytes {
        kind: SourceKind::DataUri,
        bytes,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_forms() {
        assert_eq!(classify("-"), SourceKind::Stdin);
        assert_eq!(classify("DATA:image/png;base64,AAAA"), SourceKind::DataUri);
        assert_eq!(classify("https://example.com/a.png"), SourceKind::Url);
        assert_eq!(classify("HTTP://example.com/a.png"), SourceKind::Url);
        assert_eq!(classify("photo.png"), SourceKind::Path);
        assert_eq!(classify("cats"), SourceKind::Path);
        assert_eq!(classify("ftp://example.com/a.png"), SourceKind::Path);
        // base64 of the PNG signature
        assert_eq!(classify("iVBORw0KGgo="), SourceKind::Base64);
        assert_eq!(classify("iVBORw0KGgo"), SourceKind::Base64);
    }

    #[test]
    fn base64_strictness() {
        let e = engine(false);
        assert_eq!(e.decode("QUJD").ok(), Some(b"ABC".to_vec()));
        assert_eq!(e.decode("QUI").ok(), Some(b"AB".to_vec()));
        assert_eq!(e.decode("QUI=").ok(), Some(b"AB".to_vec()));
        assert!(e.decode("QUJ=").is_err(), "non-zero trailing bits");
        assert!(base64_compact("ab+-").is_err());
        assert!(base64_compact("ab*c").is_err());
        assert_eq!(base64_compact("QU\nJD").map(|(c, _)| c).ok(), Some(b"QUJD".to_vec()));
    }
}
