//! Encoding results and writing them without leaving half-written files.
//!
//! Formats: PNG (8- or 16-bit, with `text` as tEXt chunks, or iTXt when a value is not Latin-1),
//! JPEG (quality 95, 8-bit), WebP (lossless, 8-bit) and TIFF (8- or 16-bit). Text metadata is
//! embedded in PNG only; other formats ignore it.
//!
//! [`write_atomic`] writes to a temporary file in the target folder, fsyncs it, then renames it over
//! the target (or refuses an existing target without `overwrite`), so a reader never sees a partial
//! file and a failure leaves nothing behind.

use std::io::Write;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::tiff::TiffEncoder;
use image::codecs::webp::WebPEncoder;

use crate::error::UserError;

/// JPEG quality used for `.jpg` outputs.
pub const JPEG_QUALITY: u8 = 95;

/// An output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Png,
    #[value(alias = "jpg")]
    Jpeg,
    Webp,
    #[value(alias = "tif")]
    Tiff,
}

/// Sample depth of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BitDepth {
    #[default]
    #[value(name = "8")]
    Eight,
    #[value(name = "16")]
    Sixteen,
}

/// Pixels ready to encode.
#[derive(Debug, Clone)]
pub enum OutputPixels {
    Rgb8(image::RgbImage),
    Rgb16(image::ImageBuffer<image::Rgb<u16>, Vec<u16>>),
}

impl OutputPixels {
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            OutputPixels::Rgb8(i) => i.dimensions(),
            OutputPixels::Rgb16(i) => i.dimensions(),
        }
    }
    pub fn bit_depth(&self) -> BitDepth {
        match self {
            OutputPixels::Rgb8(_) => BitDepth::Eight,
            OutputPixels::Rgb16(_) => BitDepth::Sixteen,
        }
    }
}

fn bad(message: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).into()
}

fn bad_hint(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).with_hint(hint).into()
}

impl OutputFormat {
    /// The format named by `path`'s extension (case-insensitive): png, jpg/jpeg, webp, tif/tiff.
    pub fn from_extension(path: &Path) -> anyhow::Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        Self::parse(ext).ok_or_else(|| {
            bad_hint(
                format!(
                    "cannot tell the output format of `{}` from its extension{}",
                    path.display(),
                    if ext.is_empty() {
                        String::new()
                    } else {
                        format!(" `.{ext}`")
                    }
                ),
                "end the output name in .png, .jpg, .webp or .tif, or pass --format",
            )
        })
    }

    /// The format called `name` (case-insensitive; `jpg` and `tif` accepted).
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        Self::parse(name).ok_or_else(|| {
            bad_hint(
                format!("unknown output format `{name}`"),
                "use one of png, jpeg, webp, tiff",
            )
        })
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            "tif" | "tiff" => Some(Self::Tiff),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Tiff => "tif",
        }
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Tiff => "image/tiff",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Webp => "WebP",
            Self::Tiff => "TIFF",
        }
    }

    pub fn supports_16bit(self) -> bool {
        matches!(self, Self::Png | Self::Tiff)
    }

    /// Fails when `depth` cannot be written in this format (16-bit is PNG and TIFF only).
    pub fn check_bit_depth(self, depth: BitDepth) -> anyhow::Result<()> {
        if depth == BitDepth::Sixteen && !self.supports_16bit() {
            return Err(bad_hint(
                format!("{} output is 8-bit only; 16-bit needs PNG or TIFF", self.name()),
                "use --bit-depth 8, or an output name ending in .png or .tif",
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::from_name(s)
    }
}

/// Encodes `px` as `format`; `text` (key, value) pairs become PNG text chunks.
pub fn encode_image(px: &OutputPixels, format: OutputFormat, text: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    format.check_bit_depth(px.bit_depth())?;
    let (w, h) = px.dimensions();
    if w == 0 || h == 0 {
        anyhow::bail!("cannot encode an empty {w}×{h} image");
    }
    if !text.is_empty() && format != OutputFormat::Png {
        tracing::debug!("{} output: text metadata is not embedded", format.name());
    }
    let mut out = Vec::new();
    let what = format.name();
    match (format, px) {
        (OutputFormat::Png, _) => encode_png(px, text, &mut out)?,
        (OutputFormat::Jpeg, OutputPixels::Rgb8(i)) => i
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))
            .map_err(|e| encode_error(what, w, h, e))?,
        (OutputFormat::Webp, OutputPixels::Rgb8(i)) => i
            .write_with_encoder(WebPEncoder::new_lossless(&mut out))
            .map_err(|e| encode_error(what, w, h, e))?,
        (OutputFormat::Tiff, OutputPixels::Rgb8(i)) => {
            let mut cursor = std::io::Cursor::new(&mut out);
            i.write_with_encoder(TiffEncoder::new(&mut cursor))
                .map_err(|e| encode_error(what, w, h, e))?
        }
        (OutputFormat::Tiff, OutputPixels::Rgb16(i)) => {
            let mut cursor = std::io::Cursor::new(&mut out);
            i.write_with_encoder(TiffEncoder::new(&mut cursor))
                .map_err(|e| encode_error(what, w, h, e))?
        }
        (OutputFormat::Jpeg | OutputFormat::Webp, OutputPixels::Rgb16(_)) => {
            // check_bit_depth above refuses these
            anyhow::bail!("{what} cannot hold 16-bit samples")
        }
    }
    Ok(out)
}

fn encode_error(what: &str, w: u32, h: u32, e: image::ImageError) -> anyhow::Error {
    match e {
        image::ImageError::Limits(_) | image::ImageError::Parameter(_) => bad_hint(
            format!("cannot write a {w}×{h} image as {what}: {e}"),
            "use PNG or TIFF output for very large images",
        ),
        other => anyhow::Error::new(other).context(format!("encoding a {w}×{h} {what} failed")),
    }
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

fn encode_png(px: &OutputPixels, text: &[(String, String)], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let (w, h) = px.dimensions();
    let mut encoder = png::Encoder::new(&mut *out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_compression(png::Compression::Balanced);
    for (key, value) in text {
        if key.is_empty() || key.len() > 79 || !is_latin1(key) {
            anyhow::bail!("PNG text key `{key}` must be 1 to 79 Latin-1 characters");
        }
        if is_latin1(value) {
            encoder.add_text_chunk(key.clone(), value.clone())?;
        } else {
            encoder.add_itxt_chunk(key.clone(), value.clone())?;
        }
    }
    let data: std::borrow::Cow<[u8]> = match px {
        OutputPixels::Rgb8(i) => {
            encoder.set_depth(png::BitDepth::Eight);
            std::borrow::Cow::Borrowed(i.as_raw())
        }
        OutputPixels::Rgb16(i) => {
            encoder.set_depth(png::BitDepth::Sixteen);
            // PNG stores 16-bit samples big-endian.
            std::borrow::Cow::Owned(i.as_raw().iter().flat_map(|v| v.to_be_bytes()).collect())
        }
    };
    let mut writer = encoder
        .write_header()
        .map_err(|e| anyhow::anyhow!("writing the PNG header of a {w}×{h} image failed: {e}"))?;
    writer
        .write_image_data(&data)
        .map_err(|e| anyhow::anyhow!("encoding a {w}×{h} PNG failed: {e}"))?;
    writer
        .finish()
        .map_err(|e| anyhow::anyhow!("finishing a {w}×{h} PNG failed: {e}"))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsynced, then renamed.
/// Without `overwrite` an existing `path` is refused (also when it appears meanwhile); without
/// `mkdir` a missing parent folder is refused. On any failure nothing is left at `path` or beside it.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool, mkdir: bool) -> anyhow::Result<()> {
    let label = path.display().to_string();
    let file_name = path
        .file_name()
        .ok_or_else(|| bad(format!("output path `{label}` does not name a file")))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(bad(format!(
                "cannot write `{label}`: `{}` is not a folder",
                parent.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !mkdir {
                return Err(bad_hint(
                    format!(
                        "cannot write `{label}`: the folder `{}` does not exist",
                        parent.display()
                    ),
                    "create it, or pass --mkdir",
                ));
            }
            std::fs::create_dir_all(&parent)
                .map_err(|e| bad(format!("cannot create the folder `{}`: {e}", parent.display())))?;
        }
        Err(e) => return Err(bad(format!("cannot write `{label}`: `{}`: {e}", parent.display()))),
    }
    let existing = std::fs::symlink_metadata(path).ok();
    if let Some(m) = &existing {
        if m.is_dir() {
            return Err(bad(format!("cannot write `{label}`: it is a folder")));
        }
        if !overwrite {
            return Err(exists_error(&label));
        }
    }

    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&parent)
        .map_err(|e| io_error(&label, "create a temporary file beside", e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.flush())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| io_error(&label, "write", e))?;
    set_output_permissions(tmp.as_file(), existing.as_ref());

    let persisted = if overwrite {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    if let Err(e) = persisted {
        // Dropping `e.file` removes the temporary file.
        let err = e.error;
        if !overwrite && err.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(exists_error(&label));
        }
        return Err(io_error(&label, "move the finished file into place at", err));
    }
    // Make the rename itself durable; failing to sync a folder is not worth failing the run.
    if let Ok(dir) = std::fs::File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn exists_error(label: &str) -> anyhow::Error {
    bad_hint(
        format!("`{label}` already exists"),
        "pass --overwrite to replace it, or choose another output name",
    )
}

fn io_error(label: &str, what: &str, e: std::io::Error) -> anyhow::Error {
    let msg = format!("cannot {what} `{label}`: {e}");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => bad_hint(msg, "check the folder's permissions"),
        _ => anyhow::anyhow!(msg),
    }
}

/// Temporary files are created owner-only (0600); give the output the replaced file's mode, or the
/// usual 0644 for a new file.
#[cfg(unix)]
fn set_output_permissions(file: &std::fs::File, existing: Option<&std::fs::Metadata>) {
    use std::os::unix::fs::PermissionsExt;
    let mode = existing.map_or(0o644, |m| m.permissions().mode() & 0o7777);
    if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
        tracing::debug!("cannot set the output's permissions: {e}");
    }
}

#[cfg(not(unix))]
fn set_output_permissions(_file: &std::fs::File, _existing: Option<&std::fs::Metadata>) {}

/// Writes `bytes` to stdout (for `-o -`); refuses a terminal.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(bad_hint(
            "refusing to write image data to a terminal (`-o -`)",
            "redirect stdout to a file or a pipe, or pass -o <file>",
        ));
    }
    let mut lock = stdout.lock();
    lock.write_all(bytes)
        .and_then(|_| lock.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => {
                anyhow::anyhow!("stdout was closed before the image was written")
            }
            _ => anyhow::anyhow!("writing the image to stdout failed: {e}"),
        })
}
