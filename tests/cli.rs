//! The real binary, run as a subprocess: help, usage errors and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-edit"));
    c.env_remove("QWEN_EDIT_MODEL")
        .env("NO_COLOR", "1")
        .env("HF_HUB_OFFLINE", "1");
    c
}

fn run(args: &[&str], cwd: &Path) -> Output {
    bin().args(args).current_dir(cwd).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tiny_png(dir: &Path, name: &str) -> PathBuf {
    let img = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 128]));
    let p = dir.join(name);
    img.save(&p).unwrap();
    p
}

fn fixture_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

#[test]
fn help_reads_well() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["--help"], tmp.path());
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for word in [
        "edit",
        "doctor",
        "fetch-models",
        "completions",
        "Exit codes:",
        "--quiet",
        "--color",
    ] {
        assert!(out.contains(word), "--help lacks {word}");
    }
    let o = run(&["edit", "--help"], tmp.path());
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for word in [
        "--prompt",
        "--negative-prompt",
        "--steps",
        "--true-cfg-scale",
        "--seed",
        "--model",
        "--device",
        "--dtype",
        "--output",
        "--bit-depth",
        "--overwrite",
        "--json",
    ] {
        assert!(out.contains(word), "edit --help lacks {word}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(run(&["edit"], tmp.path()).status.code(), Some(2));
    assert_eq!(run(&["edit", "a.png"], tmp.path()).status.code(), Some(2), "no prompt");
    assert_eq!(
        run(&["edit", "a", "b", "c", "d", "-p", "x"], tmp.path()).status.code(),
        Some(2),
        "4 images"
    );
    assert_eq!(
        run(&["edit", "a.png", "-p", "x", "--steps", "0"], tmp.path())
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["frobnicate"], tmp.path()).status.code(), Some(2));
}

#[test]
fn missing_input_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["edit", "missing.png", "-p", "x"], tmp.path());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.png"), "{}", stderr(&o));
}

#[test]
fn model_folder_without_model_exits_4_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny_png(tmp.path(), "ok.png");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let args = [
        "edit",
        img.to_str().unwrap(),
        "-p",
        "x",
        "--model",
        empty.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    let o = run(&args, tmp.path());
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("model_index.json") && err.contains("hint:"), "{err}");
    // A repo id that is not in the (empty) cache, offline.
    let o = bin()
        .args([
            "edit",
            img.to_str().unwrap(),
            "-p",
            "x",
            "--model",
            "2511",
            "--offline",
            "--device",
            "cpu",
        ])
        .env("HF_HUB_CACHE", tmp.path().join("cache"))
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("fetch-models"), "{}", stderr(&o));
}

#[test]
fn cuda_without_cuda_build_exits_5() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny_png(tmp.path(), "ok.png");
    let model = fixture_model("tiny-edit");
    let args = [
        "edit",
        img.to_str().unwrap(),
        "-p",
        "x",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cuda",
    ];
    let o = run(&args, tmp.path());
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}

#[test]
fn existing_output_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tiny_png(tmp.path(), "ok.png");
    std::fs::write(tmp.path().join("out.png"), b"keep me").unwrap();
    let o = run(
        &[
            "edit",
            img.to_str().unwrap(),
            "-p",
            "x",
            "-o",
            "out.png",
            "--device",
            "cpu",
        ],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("--overwrite"));
    assert_eq!(std::fs::read(tmp.path().join("out.png")).unwrap(), b"keep me");
    let o = run(
        &[
            "edit",
            img.to_str().unwrap(),
            "-p",
            "x",
            "-o",
            "no/such/dir/out.png",
            "--device",
            "cpu",
        ],
        tmp.path(),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("--mkdir"));
}

#[test]
fn completions_print_a_script() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["completions", "zsh"], tmp.path());
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("#compdef qwen-edit"));
}
