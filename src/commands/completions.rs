//! `qwen-edit completions <shell>`: shell completion scripts generated from the clap definition.

use std::io::Write;

use crate::cli::CompletionsArgs;

pub fn run(args: CompletionsArgs) -> anyhow::Result<u8> {
    let script = crate::docs::completion_script(args.shell);
    std::io::stdout().lock().write_all(&script)?;
    Ok(0)
}
