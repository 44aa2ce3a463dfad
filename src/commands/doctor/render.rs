//! The human form of the doctor report: aligned columns, coloured when stdout is a terminal.

use std::io::Write;

use super::{Report, Status};
use crate::hub::human_bytes;

/// The human report: aligned columns, coloured when stdout is a terminal.
pub(super) fn render(out: &mut impl Write, r: &Report, color: bool) -> std::io::Result<()> {
    let paint = |text: &str, code: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    writeln!(out, "qwen-edit {} doctor", r.build.version)?;
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.checks {
        let tag = match c.status {
            Status::Pass => paint("pass", "32"),
            Status::Warn => paint("warn", "33"),
            Status::Fail => paint("FAIL", "1;31"),
        };
        writeln!(out, "  {tag}  {:<width$}  {}", c.name, c.detail)?;
        if let Some(fix) = &c.fix {
            writeln!(out, "        {:<width$}  fix: {fix}", "")?;
        }
    }
    if !r.gpus.is_empty() {
        writeln!(out, "GPUs")?;
        for g in &r.gpus {
            writeln!(
                out,
                "  {}  {:<24}  compute {}  {:>9} total  {:>9} free  {}",
                g.index,
                g.name,
                g.compute_capability,
                human_bytes(g.total_bytes),
                g.free_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
                g.compute_test.as_deref().unwrap_or("")
            )?;
        }
    }
    writeln!(out, "Models in {}", r.cache_dir.display())?;
    for m in &r.models {
        let state = if m.complete {
            paint("complete", "32")
        } else if m.cached {
            paint("incomplete", "33")
        } else {
            "not cached".to_string()
        };
        let at = match (&m.commit, m.refs.is_empty()) {
            (Some(c), false) => format!("{} -> {}", m.refs.join(","), &c[..c.len().min(12)]),
            (Some(c), true) => c[..c.len().min(12)].to_string(),
            _ => String::new(),
        };
        let size = if m.cached { human_bytes(m.bytes) } else { String::new() };
        let line = format!("  {:<4}  {:<26}  {:<10}  {:>9}  {at}", m.shorthand, m.repo, state, size);
        writeln!(out, "{}", line.trim_end())?;
    }
    if !r.loras.is_empty() {
        writeln!(out, "LoRAs in {}", r.cache_dir.display())?;
        for l in &r.loras {
            writeln!(out, "  {:>9}  {}:{}", human_bytes(l.bytes), l.repo, l.path)?;
        }
    }
    if r.ok {
        writeln!(
            out,
            "{} this machine can run `qwen-edit edit` on the GPU",
            paint("ok:", "1;32")
        )?;
    } else {
        writeln!(
            out,
            "{} this machine cannot run `qwen-edit edit` on the GPU:",
            paint("not ready:", "1;31")
        )?;
        for reason in &r.reasons {
            writeln!(out, "  - {reason}")?;
        }
    }
    Ok(())
}
