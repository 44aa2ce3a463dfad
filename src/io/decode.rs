//! Decoding input images to 8-bit RGB the way the reference does.
//!
//! The reference (`diffusers.utils.load_image`) opens the image with PIL, applies
//! `ImageOps.exif_transpose`, then `Image.convert("RGB")`. We do the same with the `image` crate:
//!
//! - The format comes from the bytes' signature, never from a file name: PNG, JPEG, WebP, BMP, TIFF
//!   (first page) and GIF (first frame). Other formats are refused by name.
//! - Size limits ([`DecodeLimits`]) are checked against the declared dimensions before the pixel
//!   buffer is allocated, so a decompression bomb is refused cheaply.
//! - The EXIF orientation (JPEG APP1, PNG `eXIf`, WebP `EXIF`, TIFF tag 274) is applied; unreadable
//!   EXIF is ignored with a warning.
//! - Conversion to RGB follows PIL 13 (checked against /work/venv-ref):
//!   - alpha is dropped, never composited (RGBA→RGB, LA→L→RGB);
//!   - grayscale is replicated to the three channels; palettes give their colours, including the
//!     colour of a transparent index; 1/2/4-bit grayscale is scaled to 0..255 (0, 85, 170, 255 …);
//!   - 16-bit RGB, RGBA and gray+alpha samples keep their high byte (`v >> 8`; PIL reads them through
//!     8-bit raw modes);
//!   - 16-bit grayscale *without* an alpha channel in the file (PNG colour type 0, also with `tRNS`;
//!     TIFF) is clamped, `min(v, 255)`: PIL opens it as mode `I;16` and `convert("RGB")` clips. A
//!     16-bit grayscale photo therefore comes out nearly white, exactly as in the reference.
//!   - GIF: pixels outside the first frame's rectangle take the colour of the transparent index if
//!     the frame has one, else of palette index 0, as PIL fills them.
//! - Floating-point TIFFs are refused (PIL cannot convert them consistently either).
//!
//! Known differences that are not bit-exact: JPEG and lossy WebP decoders differ from libjpeg/libwebp
//! in IDCT and chroma upsampling rounding (typically ±1–2 levels); CMYK JPEGs are converted by the
//! decoder's own formula; a GIF whose first frame extends past the logical screen is clipped
//! (PIL enlarges the canvas).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::error::UserError;

/// Limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Largest decoded buffer in bytes (in the file's own pixel format).
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_width: 16384,
            max_height: 16384,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

const SUPPORTED: &str = "PNG, JPEG, WebP, BMP, TIFF or GIF";
const DAMAGED: &str = "the file may be damaged or incompletely downloaded; fetch or export it again";

fn bad(message: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).into()
}

fn bad_hint(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    UserError::bad_input(message).with_hint(hint).into()
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Ico => "ICO",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Dds => "DDS",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Tga => "TGA",
        _ => "an image format",
    }
}

/// Decodes `bytes` to RGB (see the module doc). `label` names the input in messages.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits, label: &str) -> anyhow::Result<RgbImage> {
    if bytes.is_empty() {
        return Err(bad(format!("`{label}` is empty (0 bytes)")));
    }
    let format = detect_format(bytes, label)?;
    let name = format_name(format);

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);

    let fail = |e: ImageError, at_header: bool| -> anyhow::Error {
        if format == ImageFormat::Gif && parse_gif_first_frame(bytes).is_none() {
            return bad(format!("`{label}` is a GIF with no image frame"));
        }
        if at_header && matches!(e, ImageError::Limits(_)) {
            if let Some((w, h)) = declared_dimensions(bytes, format, limits) {
                return over_limits(w, h, label, name, limits);
            }
        }
        decode_error(e, label, name, limits)
    };
    let mut decoder = reader.into_decoder().map_err(|e| fail(e, true))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(bad(format!(
            "`{label}` is a {name} of {w}×{h} pixels: it has no pixels"
        )));
    }
    check_limits(w, h, decoder.total_bytes(), label, name, limits)?;
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::warn!("`{label}`: ignoring unreadable EXIF orientation: {e}");
        image::metadata::Orientation::NoTransforms
    });

    let img = DynamicImage::from_decoder(decoder).map_err(|e| fail(e, false))?;
    let clamp_gray16 = match format {
        ImageFormat::Png => png_is_gray16(bytes),
        _ => false,
    };
    let mut rgb = to_rgb_like_pil(img, clamp_gray16, label)?;
    if format == ImageFormat::Gif {
        fill_outside_first_gif_frame(bytes, &mut rgb);
    }
    if orientation != image::metadata::Orientation::NoTransforms {
        let mut dynamic = DynamicImage::ImageRgb8(rgb);
        dynamic.apply_orientation(orientation);
        rgb = dynamic.into_rgb8();
    }
    Ok(rgb)
}

fn detect_format(bytes: &[u8], label: &str) -> anyhow::Result<ImageFormat> {
    match image::guess_format(bytes) {
        Ok(
            f @ (ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Tiff
            | ImageFormat::Bmp),
        ) => Ok(f),
        Ok(other) => Err(bad_hint(
            format!("`{label}` is {}, which is not supported", format_name(other)),
            format!("convert it to {SUPPORTED}"),
        )),
        Err(_) => Err(not_an_image(bytes, label)),
    }
}

/// An error for bytes with no known signature, saying what they look like.
fn not_an_image(bytes: &[u8], label: &str) -> anyhow::Error {
    let head = &bytes[..bytes.len().min(256)];
    let text = std::str::from_utf8(head)
        .ok()
        .or_else(|| std::str::from_utf8(&head[..head.len().saturating_sub(3)]).ok())
        .filter(|t| t.chars().all(|c| !c.is_control() || c.is_whitespace()));
    match text {
        Some(t) => {
            let trimmed = t.trim_start();
            let lower = trimmed.to_ascii_lowercase();
            let snippet: String = trimmed.chars().take(40).collect::<String>().replace('\n', " ");
            if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
                bad_hint(
                    format!("`{label}` is an HTML page, not an image"),
                    "the URL may point to a web page about the image; use the address of the image file itself",
                )
            } else {
                bad_hint(
                    format!("`{label}` is not an image: it looks like text (`{snippet}`)"),
                    format!("pass a {SUPPORTED} image"),
                )
            }
        }
        None => {
            let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            bad_hint(
                format!(
                    "`{label}` is not an image in a supported format (it starts with bytes {})",
                    hex.join(" ")
                ),
                format!("pass a {SUPPORTED} image"),
            )
        }
    }
}

/// The dimensions a file declares, read with the dimension limits lifted (headers only; the
/// allocation limit stays).
fn declared_dimensions(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Option<(u32, u32)> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    reader.into_dimensions().ok()
}

fn over_limits(w: u32, h: u32, label: &str, name: &str, limits: &DecodeLimits) -> anyhow::Error {
    bad_hint(
        format!(
            "`{label}` is a {name} of {w}×{h} pixels, over the limit of {}×{} pixels",
            limits.max_width, limits.max_height
        ),
        "downscale the image before passing it",
    )
}

fn check_limits(
    w: u32,
    h: u32,
    total_bytes: u64,
    label: &str,
    name: &str,
    limits: &DecodeLimits,
) -> anyhow::Result<()> {
    if w > limits.max_width || h > limits.max_height || total_bytes > limits.max_alloc {
        return Err(bad_hint(
            format!(
                "`{label}` is a {name} of {w}×{h} pixels ({} MiB decoded), over the limit of {}×{} pixels and {} MiB",
                total_bytes.div_ceil(1024 * 1024),
                limits.max_width,
                limits.max_height,
                limits.max_alloc / (1024 * 1024)
            ),
            "downscale the image before passing it",
        ));
    }
    Ok(())
}

fn decode_error(e: ImageError, label: &str, name: &str, limits: &DecodeLimits) -> anyhow::Error {
    match e {
        ImageError::Limits(l) => bad_hint(
            format!(
                "`{label}` is a {name} too large to decode within the limits ({}×{} pixels, {} MiB): {l}",
                limits.max_width,
                limits.max_height,
                limits.max_alloc / (1024 * 1024)
            ),
            "downscale the image before passing it",
        ),
        ImageError::Unsupported(u) => bad_hint(
            format!("`{label}` is a {name} that uses an unsupported feature: {u}"),
            format!("re-save it as a plain 8-bit {SUPPORTED}"),
        ),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            bad_hint(format!("`{label}` is a truncated {name}: the data ends early"), DAMAGED)
        }
        ImageError::Parameter(p) => bad(format!("`{label}` is a {name} with no usable image: {p}")),
        other => bad_hint(format!("`{label}` is a corrupt or truncated {name}: {other}"), DAMAGED),
    }
}

/// Whether a PNG declares 16-bit grayscale without alpha (colour type 0, bit depth 16) in IHDR.
fn png_is_gray16(bytes: &[u8]) -> bool {
    // signature (8) | length (4) | "IHDR" | width (4) | height (4) | depth | colour type
    bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

fn to_rgb_like_pil(img: DynamicImage, clamp_gray16: bool, label: &str) -> anyhow::Result<RgbImage> {
    let (w, h) = (img.width(), img.height());
    let from_fn = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let hi = |v: u16| (v >> 8) as u8;
    let clip = |v: u16| v.min(255) as u8;
    Ok(match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma8(i) => from_fn(&|x, y| [i.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(i) => from_fn(&|x, y| [i.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLuma16(i) => from_fn(&|x, y| [clip(i.get_pixel(x, y).0[0]); 3]),
        DynamicImage::ImageLumaA16(i) => from_fn(&|x, y| {
            let v = i.get_pixel(x, y).0[0];
            [if clamp_gray16 { clip(v) } else { hi(v) }; 3]
        }),
        DynamicImage::ImageRgb16(i) => from_fn(&|x, y| i.get_pixel(x, y).0.map(hi)),
        DynamicImage::ImageRgba16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [hi(p[0]), hi(p[1]), hi(p[2])]
        }),
        _ => {
            return Err(bad_hint(
                format!("`{label}` has floating-point samples, which are not supported"),
                "convert it to an 8- or 16-bit integer image",
            ))
        }
    })
}

/// The first frame's rectangle and the colour PIL gives pixels outside it.
struct GifFirstFrame {
    left: u32,
    top: u32,
    width: u32,
    height: u32,
    fill: [u8; 3],
}

/// Walks a GIF's blocks up to the first image descriptor.
fn parse_gif_first_frame(b: &[u8]) -> Option<GifFirstFrame> {
    let u16_at = |i: usize| -> Option<u32> { Some(u32::from(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]))) };
    let flags = *b.get(10)?;
    let mut pos = 13;
    let mut global: Option<&[u8]> = None;
    if flags & 0x80 != 0 {
        let len = 3 << ((flags & 7) + 1);
        global = Some(b.get(pos..pos + len)?);
        pos += len;
    }
    let mut transparent: Option<u8> = None;
    loop {
        match *b.get(pos)? {
            0x21 => {
                let label = *b.get(pos + 1)?;
                pos += 2;
                if label == 0xF9 && *b.get(pos)? >= 4 && b.get(pos + 1)? & 1 != 0 {
                    transparent = Some(*b.get(pos + 4)?);
                }
                // skip the data sub-blocks
                loop {
                    let n = *b.get(pos)? as usize;
                    pos += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let (left, top) = (u16_at(pos + 1)?, u16_at(pos + 3)?);
                let (width, height) = (u16_at(pos + 5)?, u16_at(pos + 7)?);
                let lflags = *b.get(pos + 9)?;
                let palette = if lflags & 0x80 != 0 {
                    let len = 3 << ((lflags & 7) + 1);
                    b.get(pos + 10..pos + 10 + len)?
                } else {
                    global.unwrap_or(&[])
                };
                let idx = usize::from(transparent.unwrap_or(0)) * 3;
                let fill = palette.get(idx..idx + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]]);
                return Some(GifFirstFrame {
                    left,
                    top,
                    width,
                    height,
                    fill,
                });
            }
            _ => return None,
        }
    }
}

fn fill_outside_first_gif_frame(bytes: &[u8], rgb: &mut RgbImage) {
    let Some(f) = parse_gif_first_frame(bytes) else {
        return;
    };
    let (x1, y1) = (f.left.saturating_add(f.width), f.top.saturating_add(f.height));
    if f.left == 0 && f.top == 0 && x1 >= rgb.width() && y1 >= rgb.height() {
        return;
    }
    for (x, y, p) in rgb.enumerate_pixels_mut() {
        if x < f.left || y < f.top || x >= x1 || y >= y1 {
            p.0 = f.fill;
        }
    }
}
