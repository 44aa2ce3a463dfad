//! `qwen-edit fetch-models`.

use crate::cli::FetchModelsArgs;
use crate::printer::Printer;

pub fn run(_args: FetchModelsArgs, _printer: Printer) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
