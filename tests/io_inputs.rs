//! Input resolution and decoding: every input form, hostile inputs, EXIF orientation and PIL-exact
//! RGB conversion. All offline: HTTP cases use a server on 127.0.0.1 in a thread.

use std::io::{Cursor, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use qwen_edit::error::{user_error, ErrorKind};
use qwen_edit::io::decode::{decode_image, DecodeLimits};
use qwen_edit::io::source::{classify, read_source, read_sources, FetchOptions, InputBytes, SourceKind};

// ------------------------------------------------------------------------------------------------
// helpers

fn opts() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(10),
        retries: 2,
        backoff_base: Duration::from_millis(1),
        ..FetchOptions::default()
    }
}

fn no_stdin() -> Cursor<Vec<u8>> {
    Cursor::new(Vec::new())
}

fn read(arg: &str, o: &FetchOptions) -> anyhow::Result<InputBytes> {
    read_source(arg, o, &mut no_stdin())
}

/// read_source + decode_image, as the edit command does.
fn load(arg: &str, o: &FetchOptions) -> anyhow::Result<image::RgbImage> {
    let input = read(arg, o)?;
    decode_image(&input.bytes, &DecodeLimits::default(), &input.label)
}

/// Asserts a BadInput error whose message contains every one of `needles` (case-insensitive).
fn assert_bad<T: std::fmt::Debug>(r: anyhow::Result<T>, needles: &[&str]) -> String {
    let err = r.expect_err("expected an error");
    let ue = user_error(&err).unwrap_or_else(|| panic!("not a UserError: {err:#}"));
    assert_eq!(ue.kind, ErrorKind::BadInput, "{err:#}");
    let msg = format!("{err:#}");
    eprintln!("message: {msg}\n   hint: {}", ue.hint.as_deref().unwrap_or("-"));
    for n in needles {
        assert!(
            msg.to_lowercase().contains(&n.to_lowercase()),
            "message {msg:?} lacks {n:?}"
        );
    }
    msg
}

fn test_image(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 37 + y * 11) as u8, (x * 5 + y * 53) as u8, ((x ^ y) * 7) as u8])
    })
}

fn png_of(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg_of(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95))
        .unwrap();
    out
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc_in = kind.to_vec();
    crc_in.extend_from_slice(data);
    c.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    c
}

/// A PNG built chunk by chunk, for headers the encoders would not write.
fn raw_png(w: u32, h: u32, depth: u8, color: u8, extra: &[Vec<u8>], raw_rows: &[u8]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    for e in extra {
        out.extend_from_slice(e);
    }
    let mut z = flate2_free_deflate(raw_rows);
    out.extend(png_chunk(b"IDAT", &std::mem::take(&mut z)));
    out.extend(png_chunk(b"IEND", b""));
    out
}

/// zlib stream with stored (uncompressed) deflate blocks: no compression crate needed.
fn flate2_free_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i == chunks.len() - 1));
        out.extend_from_slice(&(c.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        out.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// Rows of 16-bit big-endian samples, each row prefixed by filter type 0.
fn rows16(rows: &[Vec<u16>]) -> Vec<u8> {
    rows.iter()
        .flat_map(|r| std::iter::once(0u8).chain(r.iter().flat_map(|v| v.to_be_bytes())))
        .collect()
}

fn rows8(rows: &[Vec<u8>]) -> Vec<u8> {
    rows.iter()
        .flat_map(|r| std::iter::once(0u8).chain(r.iter().copied()))
        .collect()
}

fn pixels(img: &image::RgbImage) -> Vec<[u8; 3]> {
    img.pixels().map(|p| p.0).collect()
}

// ------------------------------------------------------------------------------------------------
// local HTTP server

enum Reply {
    Raw(Vec<u8>),
    /// Accept, read the request, then say nothing for this long.
    Hang(Duration),
}

fn http(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

/// Serves connections one at a time; `f(n, path)` answers the n-th request (0-based).
fn serve(f: impl Fn(usize, &str) -> Reply + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let path = read_request_path(&mut stream);
            let n = counter.fetch_add(1, Ordering::SeqCst);
            match f(n, &path) {
                Reply::Raw(bytes) => {
                    let _ = stream.write_all(&bytes);
                    let _ = stream.flush();
                }
                Reply::Hang(d) => std::thread::sleep(d),
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { base, hits }
}

fn read_request_path(stream: &mut TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).unwrap_or("/").to_string()
}

// ------------------------------------------------------------------------------------------------
// input forms

#[test]
fn classify_is_syntactic() {
    assert_eq!(classify("-"), SourceKind::Stdin);
    assert_eq!(classify("data:image/png;base64,iVBO"), SourceKind::DataUri);
    assert_eq!(classify("http://127.0.0.1/x.png"), SourceKind::Url);
    assert_eq!(classify("https://127.0.0.1/x.png"), SourceKind::Url);
    assert_eq!(classify("some/dir/photo.png"), SourceKind::Path);
    let b64 = base64::engine::general_purpose::STANDARD.encode(png_of(&test_image(3, 3)));
    assert_eq!(classify(&b64), SourceKind::Base64);
}

#[test]
fn file_input() {
    let dir = tmpdir();
    let img = test_image(7, 5);
    let p = write_file(dir.path(), "in.png", &png_of(&img));
    let input = read(p.to_str().unwrap(), &opts()).unwrap();
    assert_eq!(input.kind, SourceKind::Path);
    assert_eq!(input.label, p.display().to_string());
    assert_eq!(load(p.to_str().unwrap(), &opts()).unwrap(), img);
}

#[test]
fn file_inside_allowed_root() {
    let dir = tmpdir();
    let img = test_image(4, 4);
    let p = write_file(dir.path(), "ok.png", &png_of(&img));
    let o = FetchOptions {
        allowed_roots: Some(vec![dir.path().to_path_buf()]),
        ..opts()
    };
    assert_eq!(load(p.to_str().unwrap(), &o).unwrap(), img);
}

#[test]
fn existing_file_wins_over_base64() {
    // A path made only of base64 characters and long enough to classify as base64.
    let dir = tempfile::Builder::new()
        .prefix("b64")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let name = "A".repeat(250);
    let img = test_image(2, 2);
    let p = write_file(dir.path(), &name, &png_of(&img));
    let arg = p.to_str().unwrap();
    assert_eq!(classify(arg), SourceKind::Base64, "{arg}");
    let input = read(arg, &opts()).unwrap();
    assert_eq!(input.kind, SourceKind::Path);
    assert_eq!(
        decode_image(&input.bytes, &DecodeLimits::default(), &input.label).unwrap(),
        img
    );
}

#[test]
fn stdin_input() {
    let img = test_image(6, 3);
    let mut stdin = Cursor::new(png_of(&img));
    let input = read_source("-", &opts(), &mut stdin).unwrap();
    assert_eq!((input.kind, input.label.as_str()), (SourceKind::Stdin, "stdin"));
    assert_eq!(
        decode_image(&input.bytes, &DecodeLimits::default(), &input.label).unwrap(),
        img
    );
}

/// PNG bytes plus trailing zeros (ignored after IEND) so that `len % 3 == rem`.
fn png_with_len_mod3(rem: usize) -> (image::RgbImage, Vec<u8>) {
    let img = test_image(9, 7);
    let mut bytes = png_of(&img);
    while bytes.len() % 3 != rem {
        bytes.push(0);
    }
    (img, bytes)
}

#[test]
fn base64_standard_and_url_safe_with_and_without_padding() {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for rem in [1, 2] {
        let (img, bytes) = png_with_len_mod3(rem);
        let std_padded = STANDARD.encode(&bytes);
        assert!(std_padded.ends_with('='));
        assert!(std_padded.contains(['+', '/']), "test data should use +/ at least once");
        for (name, text) in [
            ("standard padded", std_padded.clone()),
            ("standard unpadded", STANDARD_NO_PAD.encode(&bytes)),
            ("url-safe padded", URL_SAFE.encode(&bytes)),
            ("url-safe unpadded", URL_SAFE_NO_PAD.encode(&bytes)),
        ] {
            assert_eq!(classify(&text), SourceKind::Base64, "{name}");
            let input = read(&text, &opts()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(input.kind, SourceKind::Base64);
            assert_eq!(input.bytes, bytes, "{name}");
            assert!(
                input.label.len() < 60,
                "label must not hold the payload: {}",
                input.label
            );
            let got = decode_image(&input.bytes, &DecodeLimits::default(), &input.label).unwrap();
            assert_eq!(got, img, "{name}");
        }
    }
}

#[test]
fn base64_wrapped_lines_are_accepted() {
    let (img, bytes) = png_with_len_mod3(0);
    let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let wrapped: Vec<String> = text
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let wrapped = wrapped.join("\r\n") + "\n";
    assert_eq!(load(&wrapped, &opts()).unwrap(), img);
}

#[test]
fn data_uri_input() {
    let img = test_image(5, 5);
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_of(&img))
    );
    let input = read(&uri, &opts()).unwrap();
    assert_eq!(input.kind, SourceKind::DataUri);
    assert!(input.label.starts_with("data:image/png URI"), "{}", input.label);
    assert_eq!(load(&uri, &opts()).unwrap(), img);
    // Parameters before `;base64` and an upper-case scheme are fine.
    let uri2 = uri.replacen("data:image/png;", "DATA:image/png;name=x.png;", 1);
    assert_eq!(load(&uri2, &opts()).unwrap(), img);
}

#[test]
fn url_input() {
    let img = test_image(8, 8);
    let body = png_of(&img);
    let s = serve(move |_, path| {
        if path.starts_with("/img.png?") {
            http("200 OK", &[("Content-Type", "image/png")], &body)
        } else {
            http("404 Not Found", &[], b"no")
        }
    });
    let url = format!("{}/img.png?token=secret", s.base);
    let input = read(&url, &opts()).unwrap();
    assert_eq!(input.kind, SourceKind::Url);
    assert!(!input.label.contains("secret"), "{}", input.label);
    assert_eq!(
        decode_image(&input.bytes, &DecodeLimits::default(), &input.label).unwrap(),
        img
    );
}

#[test]
fn url_404_is_not_retried() {
    let s = serve(|_, _| http("404 Not Found", &[], b"missing"));
    let r = read(&format!("{}/nope.png", s.base), &opts());
    assert_bad(r, &["404", "/nope.png"]);
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn url_500_then_success() {
    let body = png_of(&test_image(3, 3));
    let s = serve(move |n, _| {
        if n == 0 {
            http("500 Internal Server Error", &[], b"oops")
        } else {
            http("200 OK", &[], &body)
        }
    });
    let input = read(&format!("{}/a.png", s.base), &opts()).unwrap();
    assert_eq!(input.bytes, png_of(&test_image(3, 3)));
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn url_429_then_success() {
    let body = png_of(&test_image(3, 3));
    let s = serve(move |n, _| {
        if n == 0 {
            http("429 Too Many Requests", &[], b"slow down")
        } else {
            http("200 OK", &[], &body)
        }
    });
    let input = read(&format!("{}/a.png", s.base), &opts()).unwrap();
    assert_eq!(input.bytes.len(), png_of(&test_image(3, 3)).len());
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn url_persistent_503_gives_up_after_retries() {
    let s = serve(|_, _| http("503 Service Unavailable", &[], b""));
    let o = FetchOptions { retries: 2, ..opts() };
    assert_bad(
        read(&format!("{}/a.png", s.base), &o),
        &["503", "gave up after 3 attempts"],
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 3);
}

#[test]
fn url_timeout() {
    let s = serve(|_, _| Reply::Hang(Duration::from_millis(1500)));
    let o = FetchOptions {
        read_timeout: Duration::from_millis(200),
        retries: 0,
        ..opts()
    };
    let t = Instant::now();
    assert_bad(read(&format!("{}/slow.png", s.base), &o), &["timed out", "/slow.png"]);
    assert!(t.elapsed() < Duration::from_millis(1400), "took {:?}", t.elapsed());
}

#[test]
fn url_connection_refused_is_retried_then_reported() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = FetchOptions { retries: 1, ..opts() };
    assert_bad(
        read(&format!("http://127.0.0.1:{port}/x.png"), &o),
        &["cannot connect", "gave up after 2"],
    );
}

#[test]
fn url_oversize_body_with_content_length() {
    let s = serve(|_, _| http("200 OK", &[], &vec![0u8; 4096]));
    let o = FetchOptions {
        max_bytes: 1000,
        ..opts()
    };
    assert_bad(
        read(&format!("{}/big.png", s.base), &o),
        &["larger than the input limit", "1000 bytes"],
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 1, "oversize is not retried");
}

#[test]
fn url_oversize_body_without_content_length() {
    // No Content-Length: the body runs to the end of the connection; reading must stop at the limit.
    let s = serve(|_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(7u8, 3 * 1024 * 1024));
        Reply::Raw(r)
    });
    let o = FetchOptions {
        max_bytes: 64 * 1024,
        ..opts()
    };
    assert_bad(
        read(&format!("{}/stream", s.base), &o),
        &["larger than the input limit", "64 KiB"],
    );
}

#[test]
fn url_redirect_followed() {
    let body = png_of(&test_image(2, 3));
    let s = serve(move |_, path| match path {
        "/old/a.png" => http("301 Moved Permanently", &[("Location", "../new/a.png")], b""),
        "/new/a.png" => http("302 Found", &[("Location", "/final.png?x=1")], b""),
        p if p.starts_with("/final.png") => http("200 OK", &[], &body),
        _ => http("404 Not Found", &[], b""),
    });
    let input = read(&format!("{}/old/a.png", s.base), &opts()).unwrap();
    assert_eq!(input.bytes, png_of(&test_image(2, 3)));
    assert_eq!(s.hits.load(Ordering::SeqCst), 3);
}

#[test]
fn url_redirect_loop() {
    let s = serve(|_, path| {
        let next = if path == "/a" { "/b" } else { "/a" };
        http("302 Found", &[("Location", next)], b"")
    });
    let o = FetchOptions {
        max_redirects: 5,
        ..opts()
    };
    assert_bad(read(&format!("{}/a", s.base), &o), &["more than 5 redirects", "loop"]);
    assert_eq!(s.hits.load(Ordering::SeqCst), 6);
}

#[test]
fn url_redirect_to_non_http_scheme_is_refused() {
    for target in ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://x"] {
        let t = target.to_string();
        let s = serve(move |_, _| http("302 Found", &[("Location", &t)], b""));
        let scheme = target.split(':').next().unwrap();
        assert_bad(
            read(&format!("{}/x", s.base), &opts()),
            &["redirects to", &format!("`{scheme}:`"), "not http(s)"],
        );
    }
}

// ------------------------------------------------------------------------------------------------
// hostile inputs (each must be a BadInput with a clear message, never a panic)

#[test]
fn hostile_truncated_png() {
    let dir = tmpdir();
    let bytes = png_of(&test_image(64, 64));
    let p = write_file(dir.path(), "cut.png", &bytes[..bytes.len() / 2]);
    assert_bad(load(p.to_str().unwrap(), &opts()), &["cut.png", "PNG"]);
}

#[test]
fn hostile_zero_byte_file() {
    let dir = tmpdir();
    let p = write_file(dir.path(), "empty.png", b"");
    assert_bad(load(p.to_str().unwrap(), &opts()), &["empty.png", "empty"]);
}

#[test]
fn hostile_text_file() {
    let dir = tmpdir();
    let p = write_file(dir.path(), "notes.png", b"just some notes\nnot an image\n");
    assert_bad(
        load(p.to_str().unwrap(), &opts()),
        &["notes.png", "looks like text", "just some notes"],
    );
}

#[test]
fn hostile_html_page_from_url() {
    let s = serve(|_, _| {
        http(
            "200 OK",
            &[("Content-Type", "text/html")],
            b"<!DOCTYPE html><html><body>hi</body></html>",
        )
    });
    assert_bad(load(&format!("{}/photo.jpg", s.base), &opts()), &["HTML page"]);
}

#[test]
fn hostile_decompression_bomb_png_dimensions() {
    // A valid header claiming 100000×100000 RGB with one tiny IDAT.
    let bomb = raw_png(100_000, 100_000, 8, 2, &[], &[0, 0, 0, 0]);
    assert_bad(
        decode_image(&bomb, &DecodeLimits::default(), "bomb.png"),
        &["bomb.png", "100000×100000", "limit"],
    );
}

#[test]
fn hostile_bomb_within_dimensions_but_over_alloc() {
    // 16000×16000 16-bit RGBA = 2 GB decoded, under the dimension limit but over max_alloc.
    let bomb = raw_png(16_000, 16_000, 16, 6, &[], &[0]);
    assert_bad(
        decode_image(&bomb, &DecodeLimits::default(), "wide.png"),
        &["wide.png", "MiB", "limit"],
    );
}

#[test]
fn hostile_jpeg_header_claiming_huge_size() {
    // A real JPEG whose SOF0 is patched to claim 60000×60000.
    let mut j = jpeg_of(&test_image(16, 16));
    let sof = j
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("baseline JPEG has SOF0");
    j[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    assert_bad(
        decode_image(&j, &DecodeLimits::default(), "huge.jpg"),
        &["huge.jpg", "JPEG", "60000×60000", "limit"],
    );
}

#[test]
fn hostile_corrupt_jpeg() {
    let mut j = jpeg_of(&test_image(32, 32));
    // Keep SOI and the first segments, then garbage.
    let n = j.len();
    for b in &mut j[20..n - 2] {
        *b = 0xff;
    }
    assert_bad(
        decode_image(&j, &DecodeLimits::default(), "bad.jpg"),
        &["bad.jpg", "JPEG"],
    );
}

#[test]
fn hostile_png_bad_crc() {
    let mut bytes = png_of(&test_image(8, 8));
    bytes[29] ^= 0xff; // inside the IHDR CRC
    assert_bad(
        decode_image(&bytes, &DecodeLimits::default(), "crc.png"),
        &["crc.png", "PNG"],
    );
}

#[test]
fn hostile_bad_base64() {
    // Not base64 (a `*`), not a file, not a URL: the message says what was tried.
    assert_bad(
        read("iVBORw0KGgo*AAAAN", &opts()),
        &["is not a file, an http(s) URL, a data: URI or base64"],
    );
}

#[test]
fn hostile_long_base64_of_garbage() {
    let text = base64::engine::general_purpose::STANDARD.encode(vec![0x42u8 ^ 0x55; 600]);
    assert_bad(load(&text, &opts()), &["base64 input", "not an image"]);
}

#[test]
fn hostile_base64_with_bad_trailing_bits() {
    let mut text = base64::engine::general_purpose::STANDARD.encode(png_with_len_mod3(1).1);
    // `…A==` → `…B==`: non-zero trailing bits.
    let at = text.len() - 3;
    text.replace_range(at..at + 1, "B");
    let uri = format!("data:image/png;base64,{text}");
    assert_bad(read(&uri, &opts()), &["not valid base64"]);
}

#[test]
fn hostile_data_uri_mixed_alphabets() {
    assert_bad(read("data:image/png;base64,ab+c-d__", &opts()), &["mixes", "alphabets"]);
}

#[test]
fn hostile_data_uri_wrong_mime() {
    let uri = format!(
        "data:text/plain;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b"hello")
    );
    assert_bad(read(&uri, &opts()), &["does not hold an image", "text/plain"]);
}

#[test]
fn hostile_data_uri_no_media_type() {
    assert_bad(read("data:;base64,aGVsbG8=", &opts()), &["does not hold an image"]);
}

#[test]
fn hostile_data_uri_garbage_payload() {
    assert_bad(
        read("data:image/png;base64,@@@not base64@@@", &opts()),
        &["data:image/png", "not valid base64"],
    );
}

#[test]
fn hostile_data_uri_not_base64_encoded() {
    assert_bad(read("data:image/png,%89PNG", &opts()), &["not base64-encoded"]);
}

#[test]
fn hostile_data_uri_without_comma() {
    assert_bad(read("data:image/png;base64", &opts()), &["no `,`"]);
}

#[test]
fn hostile_data_uri_with_text_payload() {
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(b"hello world, definitely not a PNG")
    );
    assert_bad(load(&uri, &opts()), &["data:image/png URI", "not an image"]);
}

#[test]
fn hostile_directory_path() {
    let dir = tmpdir();
    assert_bad(read(dir.path().to_str().unwrap(), &opts()), &["is a directory"]);
}

#[test]
fn hostile_nonexistent_path() {
    assert_bad(
        read("/definitely/not/here/foo.png", &opts()),
        &["`/definitely/not/here/foo.png` is not a file, an http(s) URL, a data: URI or base64"],
    );
}

#[test]
fn hostile_path_outside_allowed_roots() {
    let root = tmpdir();
    let other = tmpdir();
    let p = write_file(other.path(), "x.png", &png_of(&test_image(2, 2)));
    let o = FetchOptions {
        allowed_roots: Some(vec![root.path().to_path_buf()]),
        ..opts()
    };
    assert_bad(read(p.to_str().unwrap(), &o), &["outside the allowed input folders"]);
    // `..` out of the root is resolved before the check.
    let sneaky = root
        .path()
        .join("..")
        .join(other.path().file_name().unwrap())
        .join("x.png");
    assert_bad(
        read(sneaky.to_str().unwrap(), &o),
        &["outside the allowed input folders"],
    );
}

#[cfg(unix)]
#[test]
fn hostile_symlink_escaping_root() {
    let root = tmpdir();
    let other = tmpdir();
    let target = write_file(other.path(), "secret.png", &png_of(&test_image(2, 2)));
    let link = root.path().join("innocent.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = FetchOptions {
        allowed_roots: Some(vec![root.path().to_path_buf()]),
        ..opts()
    };
    let msg = assert_bad(
        read(link.to_str().unwrap(), &o),
        &["innocent.png", "outside the allowed input folders", "resolves to"],
    );
    assert!(msg.contains("secret.png"));
}

#[cfg(unix)]
#[test]
fn hostile_dangling_symlink() {
    let dir = tmpdir();
    let link = dir.path().join("gone.png");
    std::os::unix::fs::symlink(dir.path().join("missing.png"), &link).unwrap();
    assert_bad(read(link.to_str().unwrap(), &opts()), &["gone.png", "does not exist"]);
}

#[test]
fn hostile_gif_with_no_frames() {
    // Header, logical screen 4×4 with a 2-colour global table, then the trailer.
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[4, 0, 4, 0, 0x80, 0, 0, 0, 0, 0, 255, 255, 255, 0x3b]);
    assert_bad(
        decode_image(&g, &DecodeLimits::default(), "empty.gif"),
        &["empty.gif", "GIF with no image frame"],
    );
}

#[test]
fn hostile_tiff_garbage() {
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_bad(
        decode_image(&t, &DecodeLimits::default(), "junk.tif"),
        &["junk.tif", "TIFF"],
    );
}

#[test]
fn hostile_webp_garbage() {
    let mut w = b"RIFF\x20\0\0\0WEBPVP8 ".to_vec();
    w.extend_from_slice(&[0x10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    assert_bad(
        decode_image(&w, &DecodeLimits::default(), "junk.webp"),
        &["junk.webp", "WebP"],
    );
}

#[test]
fn hostile_bmp_garbage() {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&[0xff; 40]);
    assert_bad(
        decode_image(&b, &DecodeLimits::default(), "junk.bmp"),
        &["junk.bmp", "BMP"],
    );
}

#[test]
fn hostile_unsupported_format() {
    assert_bad(
        decode_image(b"qoif\0\0\0\x04\0\0\0\x04\x03\0", &DecodeLimits::default(), "x.qoi"),
        &["QOI", "not supported"],
    );
}

#[test]
fn hostile_binary_garbage() {
    assert_bad(
        decode_image(
            &[0x00, 0x01, 0xfe, 0x80, 0x13, 0x37, 0x99, 0x42, 0x00],
            &DecodeLimits::default(),
            "blob",
        ),
        &["blob", "not an image", "00 01 fe 80"],
    );
}

#[test]
fn hostile_file_over_size_limit() {
    let dir = tmpdir();
    let p = write_file(dir.path(), "big.png", &vec![0u8; 5000]);
    let o = FetchOptions {
        max_bytes: 4096,
        ..opts()
    };
    assert_bad(
        read(p.to_str().unwrap(), &o),
        &["big.png", "larger than the input limit", "4 KiB"],
    );
}

#[test]
fn hostile_base64_over_size_limit() {
    let text = base64::engine::general_purpose::STANDARD.encode(png_of(&test_image(40, 40)));
    let o = FetchOptions {
        max_bytes: 100,
        ..opts()
    };
    assert_bad(read(&text, &o), &["base64 input", "larger than the input limit"]);
}

#[test]
fn hostile_stdin_empty_oversize_and_disallowed() {
    assert_bad(
        read_source("-", &opts(), &mut Cursor::new(Vec::new())),
        &["stdin is empty"],
    );
    let o = FetchOptions {
        max_bytes: 10,
        ..opts()
    };
    assert_bad(
        read_source("-", &o, &mut Cursor::new(vec![1u8; 11])),
        &["stdin", "larger than the input limit"],
    );
    let o = FetchOptions {
        allow_stdin: false,
        ..opts()
    };
    assert_bad(
        read_source("-", &o, &mut Cursor::new(vec![1u8; 5])),
        &["stdin", "not available"],
    );
}

#[test]
fn hostile_second_stdin() {
    let img = png_of(&test_image(2, 2));
    let mut stdin = Cursor::new(img);
    let args = ["-".to_string(), "x.png".to_string(), "-".to_string()];
    assert_bad(
        read_sources(&args, &opts(), &mut stdin),
        &["given 2 times", "images 1, 3", "only once"],
    );
    assert_eq!(stdin.position(), 0, "nothing is read before the check");
}

#[test]
fn hostile_empty_argument() {
    assert_bad(read("", &opts()), &["empty"]);
}

#[test]
fn hostile_zero_width_png() {
    let png = raw_png(0, 5, 8, 2, &[], &[0]);
    assert_bad(decode_image(&png, &DecodeLimits::default(), "zero.png"), &["zero.png"]);
}

// ------------------------------------------------------------------------------------------------
// EXIF orientation (reference: PIL.ImageOps.exif_transpose)

/// A big-endian TIFF/EXIF block with one IFD entry: Orientation.
fn exif_block(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes());
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_be_bytes());
    t
}

#[test]
fn exif_orientation_png_all_eight_like_pil() {
    // 3×2 RGB, red channel = 10 × index; expected red planes from PIL 13 exif_transpose.
    let raw: Vec<Vec<u8>> = (0..2u8)
        .map(|y| {
            (0..3u8)
                .flat_map(|x| {
                    let v = (y * 3 + x) * 3 * 10;
                    [v, v + 10, v + 20]
                })
                .collect()
        })
        .collect();
    let expected: [&[&[u8]]; 8] = [
        &[&[0, 30, 60], &[90, 120, 150]],
        &[&[60, 30, 0], &[150, 120, 90]],
        &[&[150, 120, 90], &[60, 30, 0]],
        &[&[90, 120, 150], &[0, 30, 60]],
        &[&[0, 90], &[30, 120], &[60, 150]],
        &[&[90, 0], &[120, 30], &[150, 60]],
        &[&[150, 60], &[120, 30], &[90, 0]],
        &[&[60, 150], &[30, 120], &[0, 90]],
    ];
    for (i, exp) in expected.iter().enumerate() {
        let o = i as u16 + 1;
        let png = raw_png(3, 2, 8, 2, &[png_chunk(b"eXIf", &exif_block(o))], &rows8(&raw));
        let img = decode_image(&png, &DecodeLimits::default(), "o.png").unwrap();
        let red: Vec<Vec<u8>> = (0..img.height())
            .map(|y| (0..img.width()).map(|x| img.get_pixel(x, y).0[0]).collect())
            .collect();
        let exp: Vec<Vec<u8>> = exp.iter().map(|r| r.to_vec()).collect();
        assert_eq!(red, exp, "orientation {o}");
    }
}

#[test]
fn exif_orientation_jpeg_app1() {
    // 32×16: left half red, right half blue. Orientation 6 = rotate 90° clockwise → 16×32 with red
    // on top and blue below.
    let img = image::RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            image::Rgb([250, 0, 0])
        } else {
            image::Rgb([0, 0, 250])
        }
    });
    let jpeg = jpeg_of(&img);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(exif_block(6));
    let mut with_exif = jpeg[..2].to_vec();
    with_exif.extend_from_slice(&[0xff, 0xe1]);
    with_exif.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    with_exif.extend(app1);
    with_exif.extend_from_slice(&jpeg[2..]);

    let plain = decode_image(&jpeg, &DecodeLimits::default(), "plain.jpg").unwrap();
    assert_eq!(plain.dimensions(), (32, 16));
    let rotated = decode_image(&with_exif, &DecodeLimits::default(), "rot.jpg").unwrap();
    assert_eq!(rotated.dimensions(), (16, 32));
    let near = |p: [u8; 3], q: [u8; 3]| p.iter().zip(q).all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() <= 12);
    assert!(
        near(rotated.get_pixel(8, 6).0, [250, 0, 0]),
        "{:?}",
        rotated.get_pixel(8, 6)
    );
    assert!(
        near(rotated.get_pixel(8, 26).0, [0, 0, 250]),
        "{:?}",
        rotated.get_pixel(8, 26)
    );
}

// ------------------------------------------------------------------------------------------------
// RGB conversion like PIL's Image.convert("RGB") (expected values computed with PIL 13.0.0)

const V16: [u16; 12] = [0, 1, 127, 128, 255, 256, 257, 1000, 32767, 32768, 65280, 65535];

fn rgb16_rows() -> Vec<u16> {
    let n = V16.len();
    (0..n)
        .flat_map(|i| [V16[i], V16[n - 1 - i], V16[(i + n - 3) % n]])
        .collect()
}

// PIL: RGB/RGBA/LA 16-bit keep the high byte.
const PIL_R: [u8; 12] = [0, 0, 0, 0, 0, 1, 1, 3, 127, 128, 255, 255];
const PIL_G: [u8; 12] = [255, 255, 128, 127, 3, 1, 1, 0, 0, 0, 0, 0];
const PIL_B: [u8; 12] = [128, 255, 255, 0, 0, 0, 0, 0, 1, 1, 3, 127];
// PIL: 16-bit grayscale (mode I;16) is clipped to 255.
const PIL_GRAY16: [u8; 12] = [0, 1, 127, 128, 255, 255, 255, 255, 255, 255, 255, 255];

fn channels(img: &image::RgbImage) -> [Vec<u8>; 3] {
    let px = pixels(img);
    [
        px.iter().map(|p| p[0]).collect(),
        px.iter().map(|p| p[1]).collect(),
        px.iter().map(|p| p[2]).collect(),
    ]
}

#[test]
fn rgba8_drops_alpha_like_pil() {
    let png = raw_png(
        4,
        1,
        8,
        6,
        &[],
        &rows8(&[vec![255, 0, 0, 0, 0, 255, 0, 128, 10, 20, 30, 255, 200, 150, 100, 1]]),
    );
    let img = decode_image(&png, &DecodeLimits::default(), "rgba.png").unwrap();
    assert_eq!(
        pixels(&img),
        vec![[255, 0, 0], [0, 255, 0], [10, 20, 30], [200, 150, 100]]
    );
}

#[test]
fn la8_and_low_bit_gray_like_pil() {
    let png = raw_png(3, 1, 8, 4, &[], &rows8(&[vec![50, 0, 200, 255, 7, 9]]));
    let img = decode_image(&png, &DecodeLimits::default(), "la.png").unwrap();
    assert_eq!(pixels(&img), vec![[50; 3], [200; 3], [7; 3]]);
    // 2-bit gray 0..3 → 0, 85, 170, 255 (packed 00 01 10 11 = 0x1b)
    let png = raw_png(4, 1, 2, 0, &[], &[0, 0x1b]);
    let img = decode_image(&png, &DecodeLimits::default(), "g2.png").unwrap();
    assert_eq!(pixels(&img), vec![[0; 3], [85; 3], [170; 3], [255; 3]]);
}

#[test]
fn palette_with_transparency_gives_palette_colours() {
    let extra = [
        png_chunk(b"PLTE", &[1, 2, 3, 250, 128, 7, 40, 50, 60]),
        png_chunk(b"tRNS", &[0, 128]),
    ];
    let png = raw_png(4, 1, 8, 3, &extra, &rows8(&[vec![0, 1, 2, 1]]));
    let img = decode_image(&png, &DecodeLimits::default(), "p.png").unwrap();
    assert_eq!(
        pixels(&img),
        vec![[1, 2, 3], [250, 128, 7], [40, 50, 60], [250, 128, 7]]
    );
}

#[test]
fn png16_rgb_rgba_la_gray_like_pil() {
    let rgb = rgb16_rows();
    let png = raw_png(12, 1, 16, 2, &[], &rows16(std::slice::from_ref(&rgb)));
    let img = decode_image(&png, &DecodeLimits::default(), "rgb16.png").unwrap();
    assert_eq!(channels(&img), [PIL_R.to_vec(), PIL_G.to_vec(), PIL_B.to_vec()]);

    let rgba: Vec<u16> = rgb.chunks(3).flat_map(|c| [c[0], c[1], c[2], 1000]).collect();
    let png = raw_png(12, 1, 16, 6, &[], &rows16(&[rgba]));
    let img = decode_image(&png, &DecodeLimits::default(), "rgba16.png").unwrap();
    assert_eq!(channels(&img), [PIL_R.to_vec(), PIL_G.to_vec(), PIL_B.to_vec()]);

    let la: Vec<u16> = (0..12).flat_map(|i| [V16[i], V16[11 - i]]).collect();
    let png = raw_png(12, 1, 16, 4, &[], &rows16(&[la]));
    let img = decode_image(&png, &DecodeLimits::default(), "la16.png").unwrap();
    assert_eq!(channels(&img), [PIL_R.to_vec(), PIL_R.to_vec(), PIL_R.to_vec()]);

    let png = raw_png(12, 1, 16, 0, &[], &rows16(&[V16.to_vec()]));
    let img = decode_image(&png, &DecodeLimits::default(), "g16.png").unwrap();
    assert_eq!(
        channels(&img),
        [PIL_GRAY16.to_vec(), PIL_GRAY16.to_vec(), PIL_GRAY16.to_vec()]
    );

    // With tRNS, PIL still opens it as I;16 and clips.
    let png = raw_png(
        12,
        1,
        16,
        0,
        &[png_chunk(b"tRNS", &1000u16.to_be_bytes())],
        &rows16(&[V16.to_vec()]),
    );
    let img = decode_image(&png, &DecodeLimits::default(), "g16t.png").unwrap();
    assert_eq!(channels(&img)[0], PIL_GRAY16.to_vec());
}

#[test]
fn tiff16_rgb_and_gray_like_pil() {
    let rgb = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(12, 1, rgb16_rows()).unwrap();
    let mut out = Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Tiff).unwrap();
    let img = decode_image(out.get_ref(), &DecodeLimits::default(), "rgb16.tif").unwrap();
    assert_eq!(channels(&img), [PIL_R.to_vec(), PIL_G.to_vec(), PIL_B.to_vec()]);

    let gray = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(12, 1, V16.to_vec()).unwrap();
    let mut out = Cursor::new(Vec::new());
    gray.write_to(&mut out, image::ImageFormat::Tiff).unwrap();
    let img = decode_image(out.get_ref(), &DecodeLimits::default(), "g16.tif").unwrap();
    assert_eq!(channels(&img)[1], PIL_GRAY16.to_vec());
}

#[test]
fn gif_first_frame_like_pil() {
    // 4×2 screen, 4-colour global palette, transparent index 1, a 2×2 frame at (1, 0).
    let hex = "474946383961040002008103000a141ec8643200ff005a5a5a21f90401000001002c010000000200020000020404437105003b";
    let gif: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let img = decode_image(&gif, &DecodeLimits::default(), "t.gif").unwrap();
    let f = [200, 100, 50];
    assert_eq!(
        pixels(&img),
        vec![f, [10, 20, 30], f, f, f, [0, 255, 0], [90, 90, 90], f]
    );
}

#[test]
fn other_formats_round_trip() {
    let img = test_image(13, 11);
    for fmt in [
        image::ImageFormat::Bmp,
        image::ImageFormat::Tiff,
        image::ImageFormat::WebP,
        image::ImageFormat::Gif,
    ] {
        let mut out = Cursor::new(Vec::new());
        if fmt == image::ImageFormat::Gif {
            // GIF quantises; use a 2-colour image so the round trip is exact.
            let two = image::RgbImage::from_fn(13, 11, |x, y| {
                if (x + y) % 2 == 0 {
                    image::Rgb([0, 0, 0])
                } else {
                    image::Rgb([255, 255, 255])
                }
            });
            two.write_to(&mut out, fmt).unwrap();
            assert_eq!(
                decode_image(out.get_ref(), &DecodeLimits::default(), "x.gif").unwrap(),
                two
            );
            continue;
        }
        img.write_to(&mut out, fmt).unwrap();
        // The name says PNG: the format comes from the bytes.
        assert_eq!(
            decode_image(out.get_ref(), &DecodeLimits::default(), "misnamed.png").unwrap(),
            img,
            "{fmt:?}"
        );
    }
}
