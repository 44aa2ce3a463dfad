//! Developer logs: `tracing` to stderr. `-v` = debug, `-vv` = trace, `RUST_LOG` overrides.

use tracing_subscriber::EnvFilter;

use crate::cli::GlobalArgs;

/// `info`: show info-level lines of qwen-edit by default (long-running commands such as `serve`).
pub fn init(g: &GlobalArgs, color: bool, info: bool) {
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) if info => "qwen_edit=info,warn",
        (false, 0) => "warn",
        (false, 1) => "qwen_edit=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .try_init();
}
