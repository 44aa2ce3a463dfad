//! The committed completions/ and man/ files must equal what the current CLI generates.
//! Regenerate with `UPDATE_DOCS=1 cargo test --test cli_docs`.

use std::path::Path;

#[test]
fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_DOCS").is_some() {
        qwen_edit::docs::write_all(root).unwrap();
    }
    let files = qwen_edit::docs::all_files().unwrap();
    assert!(files.len() >= 5 + 5, "5 completion scripts and a man page per command");
    let mut stale = Vec::new();
    for (rel, want) in &files {
        match std::fs::read(root.join(rel)) {
            Ok(have) if &have == want => {}
            _ => stale.push(rel.clone()),
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `UPDATE_DOCS=1 cargo test --test cli_docs`"
    );
}

#[test]
fn completion_scripts_name_the_commands() {
    let bash = String::from_utf8(qwen_edit::docs::completion_script(clap_complete::Shell::Bash)).unwrap();
    for word in ["edit", "doctor", "fetch-models", "--prompt", "--true-cfg-scale"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let man = qwen_edit::docs::man_pages().unwrap();
    assert!(man.iter().any(|(n, _)| n == "qwen-edit-edit.1"));
}
