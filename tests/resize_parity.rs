//! `qwen_edit::io::resize` against the real Pillow 13.0.0: every case of
//! `tests/fixtures/resize/manifest.json` (made by `tests/fixtures/generate/gen_resize.py`) must match
//! byte for byte.

use std::path::{Path, PathBuf};

use qwen_edit::io::resize::{resize_rgb, Filter};

#[derive(serde::Deserialize)]
struct Manifest {
    pillow: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    source: String,
    filter: String,
    width: u32,
    height: u32,
    expected: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize")
}

fn load(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("decoding {}: {e}", path.display()))
        .to_rgb8()
}

#[test]
fn resize_matches_pillow_byte_for_byte() {
    let manifest_path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
    let manifest: Manifest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing manifest: {e}"));
    assert_eq!(manifest.pillow, "13.0.0");
    assert!(manifest.cases.len() >= 40, "only {} cases", manifest.cases.len());
    let mut failures = Vec::new();
    for case in &manifest.cases {
        let filter = match case.filter.as_str() {
            "lanczos" => Filter::Lanczos,
            "bicubic" => Filter::Bicubic,
            other => panic!("unknown filter {other}"),
        };
        let src = load(&dir().join(&case.source));
        let want = load(&dir().join(&case.expected));
        let got = resize_rgb(&src, case.width, case.height, filter);
        assert_eq!(got.dimensions(), (case.width, case.height), "{}", case.expected);
        assert_eq!(want.dimensions(), (case.width, case.height), "{}", case.expected);
        let diffs: Vec<i32> = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(&a, &b)| i32::from(a) - i32::from(b))
            .filter(|d| *d != 0)
            .collect();
        if !diffs.is_empty() {
            let max = diffs.iter().map(|d| d.abs()).max().unwrap_or(0);
            failures.push(format!("{}: {} bytes differ (max {max})", case.expected, diffs.len()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        manifest.cases.len(),
        failures.join("\n")
    );
}
