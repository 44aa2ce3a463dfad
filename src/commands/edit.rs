//! `qwen-edit edit`.

use crate::cli::EditArgs;
use crate::printer::Printer;

pub fn run(_args: EditArgs, _printer: Printer) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
