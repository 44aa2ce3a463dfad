//! Output encoding and atomic writing.

use std::io::Cursor;
use std::path::Path;

use qwen_edit::error::{user_error, ErrorKind};
use qwen_edit::io::encode::{encode_image, write_atomic, BitDepth, OutputFormat, OutputPixels};

fn assert_bad<T: std::fmt::Debug>(r: anyhow::Result<T>, needles: &[&str]) -> String {
    let err = r.expect_err("expected an error");
    let ue = user_error(&err).unwrap_or_else(|| panic!("not a UserError: {err:#}"));
    assert_eq!(ue.kind, ErrorKind::BadInput, "{err:#}");
    let text = format!("{err:#} {}", ue.hint.clone().unwrap_or_default());
    for n in needles {
        assert!(text.contains(n), "{text:?} lacks {n:?}");
    }
    text
}

fn rgb8(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 40) as u8, (y * 60) as u8, ((x + y) * 17) as u8])
    })
}

fn rgb16(w: u32, h: u32) -> image::ImageBuffer<image::Rgb<u16>, Vec<u16>> {
    image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9001) as u16, (y * 13007 + 1) as u16, 65535 - (x * y * 257) as u16])
    })
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ------------------------------------------------------------------------------------------------
// formats

#[test]
fn format_from_extension_and_name() {
    for (p, f) in [
        ("a.png", OutputFormat::Png),
        ("a.PNG", OutputFormat::Png),
        ("dir.x/a.jpg", OutputFormat::Jpeg),
        ("a.jpeg", OutputFormat::Jpeg),
        ("a.webp", OutputFormat::Webp),
        ("a.tif", OutputFormat::Tiff),
        ("a.TIFF", OutputFormat::Tiff),
    ] {
        assert_eq!(OutputFormat::from_extension(Path::new(p)).unwrap(), f, "{p}");
    }
    assert_bad(
        OutputFormat::from_extension(Path::new("out.gif")),
        &["out.gif", "`.gif`", "--format"],
    );
    assert_bad(OutputFormat::from_extension(Path::new("out")), &["out", "--format"]);
    assert_eq!(OutputFormat::from_name("JPG").unwrap(), OutputFormat::Jpeg);
    assert_eq!("tif".parse::<OutputFormat>().unwrap(), OutputFormat::Tiff);
    assert_bad(OutputFormat::from_name("bmp"), &["unknown output format `bmp`"]);
}

#[test]
fn formats_and_depths_parse_with_clap() {
    use clap::ValueEnum;
    assert_eq!(OutputFormat::from_str("jpg", true).unwrap(), OutputFormat::Jpeg);
    assert_eq!(OutputFormat::from_str("webp", false).unwrap(), OutputFormat::Webp);
    assert_eq!(BitDepth::from_str("16", false).unwrap(), BitDepth::Sixteen);
    assert_eq!(BitDepth::from_str("8", false).unwrap(), BitDepth::Eight);
    assert!(BitDepth::from_str("12", false).is_err());
}

#[test]
fn sixteen_bit_only_for_png_and_tiff() {
    assert!(OutputFormat::Png.check_bit_depth(BitDepth::Sixteen).is_ok());
    assert!(OutputFormat::Tiff.check_bit_depth(BitDepth::Sixteen).is_ok());
    assert_bad(
        OutputFormat::Jpeg.check_bit_depth(BitDepth::Sixteen),
        &["JPEG output is 8-bit only", "--bit-depth 8"],
    );
    let px = OutputPixels::Rgb16(rgb16(4, 4));
    assert_bad(
        encode_image(&px, OutputFormat::Webp, &[]),
        &["WebP output is 8-bit only"],
    );
}

// ------------------------------------------------------------------------------------------------
// encoding

#[test]
fn png8_round_trip_with_text_chunks() {
    let img = rgb8(7, 5);
    let text = vec![
        ("prompt".to_string(), "make the sky purple".to_string()),
        ("seed".to_string(), "42".to_string()),
        ("steps".to_string(), "50".to_string()),
        ("model".to_string(), "Qwen/Qwen-Image-Edit-2509".to_string()),
        ("negative_prompt".to_string(), "模糊, 低质量 — blurry".to_string()),
        ("latin1".to_string(), "café".to_string()),
    ];
    let bytes = encode_image(&OutputPixels::Rgb8(img.clone()), OutputFormat::Png, &text).unwrap();

    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
    assert_eq!(decoded.as_rgb8().unwrap(), &img);

    let decoder = png::Decoder::new(Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    reader.finish().unwrap();
    let info = reader.info();
    let mut found: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for c in &info.utf8_text {
        found.push((c.keyword.clone(), c.get_text().unwrap()));
    }
    for kv in &text {
        assert!(found.contains(kv), "{kv:?} not in {found:?}");
    }
    // Latin-1 values are tEXt, others iTXt.
    assert!(info.uncompressed_latin1_text.iter().any(|c| c.keyword == "latin1"));
    assert!(info.utf8_text.iter().any(|c| c.keyword == "negative_prompt"));
}

#[test]
fn png_text_key_must_be_valid() {
    let px = OutputPixels::Rgb8(rgb8(2, 2));
    assert!(encode_image(&px, OutputFormat::Png, &[(String::new(), "x".into())]).is_err());
    assert!(encode_image(&px, OutputFormat::Png, &[("k".repeat(80), "x".into())]).is_err());
}

#[test]
fn png16_round_trip() {
    let img = rgb16(9, 4);
    let bytes = encode_image(
        &OutputPixels::Rgb16(img.clone()),
        OutputFormat::Png,
        &[("seed".into(), "1".into())],
    )
    .unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
    assert_eq!(decoded.color(), image::ColorType::Rgb16);
    assert_eq!(decoded.as_rgb16().unwrap(), &img);
}

#[test]
fn tiff8_and_tiff16_round_trip() {
    let img = rgb8(6, 3);
    let bytes = encode_image(&OutputPixels::Rgb8(img.clone()), OutputFormat::Tiff, &[]).unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Tiff).unwrap();
    assert_eq!(decoded.as_rgb8().unwrap(), &img);

    let img = rgb16(6, 3);
    let bytes = encode_image(&OutputPixels::Rgb16(img.clone()), OutputFormat::Tiff, &[]).unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Tiff).unwrap();
    assert_eq!(decoded.color(), image::ColorType::Rgb16);
    assert_eq!(decoded.as_rgb16().unwrap(), &img);
}

#[test]
fn webp_is_lossless() {
    let img = rgb8(17, 9);
    let bytes = encode_image(&OutputPixels::Rgb8(img.clone()), OutputFormat::Webp, &[]).unwrap();
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).unwrap();
    assert_eq!(decoded.to_rgb8(), img);
}

#[test]
fn jpeg_quality_95_is_close() {
    let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]));
    let bytes = encode_image(&OutputPixels::Rgb8(img.clone()), OutputFormat::Jpeg, &[]).unwrap();
    assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff]);
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .unwrap()
        .to_rgb8();
    assert_eq!(decoded.dimensions(), (32, 32));
    let err: f64 = img
        .as_raw()
        .iter()
        .zip(decoded.as_raw())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .sum::<f64>()
        / img.as_raw().len() as f64;
    assert!(err < 2.0, "mean abs error {err}");
}

// ------------------------------------------------------------------------------------------------
// atomic writing

#[test]
fn write_new_file_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    write_atomic(&out, b"first", false, false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"first");
    assert_eq!(dir_entries(dir.path()), vec!["out.png"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

#[test]
fn existing_file_refused_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    std::fs::write(&out, b"old").unwrap();
    assert_bad(
        write_atomic(&out, b"new", false, false),
        &["out.png", "already exists", "--overwrite"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(dir_entries(dir.path()), vec!["out.png"]);

    write_atomic(&out, b"new", true, false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"new");
    assert_eq!(dir_entries(dir.path()), vec!["out.png"]);
}

#[cfg(unix)]
#[test]
fn overwrite_keeps_the_replaced_files_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.tif");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
    write_atomic(&out, b"new", true, false).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn missing_folder_needs_mkdir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a").join("b").join("out.png");
    assert_bad(write_atomic(&out, b"x", false, false), &["does not exist", "--mkdir"]);
    assert!(dir_entries(dir.path()).is_empty(), "nothing created without --mkdir");

    write_atomic(&out, b"x", false, true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"x");
    assert_eq!(dir_entries(&dir.path().join("a").join("b")), vec!["out.png"]);
}

#[test]
fn output_path_that_is_a_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out.png")).unwrap();
    assert_bad(
        write_atomic(&dir.path().join("out.png"), b"x", true, false),
        &["is a folder"],
    );
    assert_eq!(dir_entries(dir.path()), vec!["out.png"]);
}

#[test]
fn parent_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    assert_bad(
        write_atomic(&dir.path().join("file").join("out.png"), b"x", false, true),
        &["is not a folder"],
    );
    assert_eq!(dir_entries(dir.path()), vec!["file"]);
}

#[test]
fn encode_then_write_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let img = rgb8(5, 5);
    for name in ["r.png", "r.webp", "r.tif"] {
        let out = dir.path().join(name);
        let fmt = OutputFormat::from_extension(&out).unwrap();
        let bytes = encode_image(&OutputPixels::Rgb8(img.clone()), fmt, &[]).unwrap();
        write_atomic(&out, &bytes, false, false).unwrap();
        let back = qwen_edit::io::decode::decode_image(
            &std::fs::read(&out).unwrap(),
            &qwen_edit::io::decode::DecodeLimits::default(),
            name,
        )
        .unwrap();
        assert_eq!(back, img, "{name}");
    }
}

// ------------------------------------------------------------------------------------------------
// stdout (`-o -`): run this test binary again as a child with stdout on a pipe

const CHILD_ENV: &str = "QWEN_EDIT_IO_TEST_STDOUT_CHILD";
const MARKER: &[u8] = b"<<image-bytes:\x89PNG\x00\x01\x02>>";

#[test]
fn stdout_child_writer() {
    if std::env::var_os(CHILD_ENV).is_some() {
        qwen_edit::io::encode::write_stdout(MARKER).unwrap();
    }
}

#[test]
fn write_stdout_writes_bytes_to_a_pipe() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "stdout_child_writer", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout.windows(MARKER.len()).any(|w| w == MARKER),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
