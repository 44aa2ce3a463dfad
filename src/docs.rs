//! Completion scripts and man pages, generated from the clap definition in [`crate::cli`].
//!
//! The generated files are committed under `completions/` and `man/`; `tests/cli_docs.rs` fails when
//! they differ from what the current CLI generates. Regenerate with
//! `UPDATE_DOCS=1 cargo test --test cli_docs`.

use std::path::Path;

use clap_complete::Shell;

/// The shells we ship completions for, with their file names.
pub const SHELLS: [(Shell, &str); 5] = [
    (Shell::Bash, "qwen-edit.bash"),
    (Shell::Zsh, "_qwen-edit"),
    (Shell::Fish, "qwen-edit.fish"),
    (Shell::PowerShell, "_qwen-edit.ps1"),
    (Shell::Elvish, "qwen-edit.elv"),
];

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = crate::cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "qwen-edit", &mut out);
    out
}

/// Man pages: `qwen-edit.1` and one `qwen-edit-<sub>.1` per subcommand, as (file name, bytes).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = crate::cli::command();
    cmd.build();
    let mut pages = Vec::new();
    let mut top = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut top)?;
    pages.push(("qwen-edit.1".to_string(), top));
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("qwen-edit-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name.clone())).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// All generated files as (path relative to the repo root, bytes).
pub fn all_files() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<(String, Vec<u8>)> = SHELLS
        .iter()
        .map(|(shell, name)| (format!("completions/{name}"), completion_script(*shell)))
        .collect();
    for (name, bytes) in man_pages()? {
        files.push((format!("man/{name}"), bytes));
    }
    Ok(files)
}

/// Writes every generated file under `root`.
pub fn write_all(root: &Path) -> std::io::Result<()> {
    for (rel, bytes) in all_files()? {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(())
}
