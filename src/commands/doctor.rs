//! `qwen-edit doctor`.

use crate::cli::DoctorArgs;
use crate::printer::Printer;

pub fn run(_args: DoctorArgs, _printer: Printer) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
