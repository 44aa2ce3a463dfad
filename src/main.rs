use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = qwen_edit::cli::Cli::parse();
    let printer = qwen_edit::printer::Printer::from_args(&cli.global);
    let serving = matches!(cli.command, qwen_edit::cli::Command::Serve(_));
    qwen_edit::logging::init(&cli.global, printer.color, serving);
    match qwen_edit::commands::dispatch(cli.command, printer) {
        Ok(code) => ExitCode::from(code),
        Err(err) => ExitCode::from(qwen_edit::commands::report_error(&err, &printer)),
    }
}
