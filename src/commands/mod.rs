//! One module per subcommand; each `run` returns the process exit code.

pub mod batch;
pub mod bench;
pub mod common;
pub mod completions;
pub mod doctor;
pub mod edit;
pub mod fetch_models;
pub mod lora;
pub mod model;
pub mod serve;

use std::io::Write;

use crate::cli::Command;
use crate::error::{exit_code, user_error};
use crate::printer::Printer;

/// Runs `command` and returns its exit code.
pub fn dispatch(command: Command, printer: Printer) -> anyhow::Result<u8> {
    match command {
        Command::Edit(args) => edit::run(args, printer),
        Command::Doctor(args) => doctor::run(args, printer),
        Command::FetchModels(args) => fetch_models::run(args, printer),
        Command::Batch(args) => batch::run(args, printer),
        Command::Bench(args) => bench::run(args, printer),
        Command::Serve(args) => serve::run(args, printer),
        Command::Completions(args) => completions::run(args),
    }
}

/// Prints `err` on stderr (`error:`, `caused by:` lines, `hint:`) and returns its exit code.
/// A broken pipe on stdout (e.g. `| head`) is not an error: exit 0.
pub fn report_error(err: &anyhow::Error, printer: &Printer) -> u8 {
    if err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return 0;
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{} {err}", printer.paint("error:", "1;31"));
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
    if let Some(hint) = user_error(err).and_then(|u| u.hint.as_deref()) {
        let _ = writeln!(stderr, "{} {hint}", printer.paint("hint:", "1;36"));
    }
    exit_code(err)
}
