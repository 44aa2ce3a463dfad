//! Where user-facing output goes: stdout carries only data (paths, JSON, image bytes); messages,
//! progress bars and logs go to stderr. Progress bars are hidden when stderr is not a terminal,
//! with `--quiet`, and with `--verbose` (so they don't interleave with logs).

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{ColorChoice, GlobalArgs};

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
    pub progress: bool,
}

impl Printer {
    pub fn from_args(g: &GlobalArgs) -> Self {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match g.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty && !no_color,
        };
        Self {
            quiet: g.quiet,
            verbose: g.verbose,
            color,
            progress: tty && !g.quiet && g.verbose == 0,
        }
    }

    /// A printer that shows nothing but errors (for library callers and tests).
    pub fn silent() -> Self {
        Self {
            quiet: true,
            verbose: 0,
            color: false,
            progress: false,
        }
    }

    /// A status line on stderr (suppressed by `--quiet`).
    pub fn status(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{}", msg.as_ref());
        }
    }

    /// A warning on stderr (shown even with `--quiet`).
    pub fn warn(&self, msg: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr(), "{} {}", self.paint("warning:", "33"), msg.as_ref());
    }

    /// `text` wrapped in an ANSI colour (SGR `code`) when colours are on.
    pub fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A progress bar of `len` steps on stderr, hidden unless progress is shown.
    pub fn bar(&self, len: u64, message: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(
            Some(len),
            if self.progress {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        pb.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(message.to_string());
        pb
    }

    /// A byte-counting progress bar on stderr.
    pub fn bytes_bar(&self, len: u64, message: &str) -> ProgressBar {
        let pb = self.bar(len, message);
        pb.set_style(
            ProgressStyle::with_template("{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    }
}
