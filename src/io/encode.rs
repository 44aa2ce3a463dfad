//! Encoding and writing results.

/// Output image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
    Tiff,
}
