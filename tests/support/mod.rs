//! Helpers shared by the tests that drive the real binary over many jobs (serve.rs, batch.rs).
//! Jobs are kept cheap for the CPU: the tiny fixture model, 2 steps (the fewest the schedule allows), 32×32 output, 32² references.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const PROMPT: &str = "make the sky purple";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model() -> PathBuf {
    fixtures().join("models/tiny-edit")
}

/// The input image every good job edits.
pub fn input_png() -> PathBuf {
    fixtures().join("golden/pipeline_edit_input0.png")
}

pub fn input_bytes() -> Vec<u8> {
    std::fs::read(input_png()).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The binary with a clean environment for model and log settings.
pub fn qwen_edit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-edit"));
    c.env("NO_COLOR", "1")
        .env_remove("QWEN_EDIT_MODEL")
        .env_remove("RUST_LOG")
        .env_remove("RUNPOD_WEBHOOK_GET_JOB")
        .env_remove("RUNPOD_WEBHOOK_POST_OUTPUT")
        .env_remove("RUNPOD_WEBHOOK_PING")
        .env_remove("BUCKET_ENDPOINT_URL")
        .env("HF_HUB_OFFLINE", "1");
    c
}

/// `--model <tiny> --device cpu`.
pub fn model_args() -> Vec<String> {
    vec![
        "--model".into(),
        model().to_str().unwrap().into(),
        "--device".into(),
        "cpu".into(),
    ]
}

/// The cheap job options as CLI flags of `edit`.
pub fn cheap_cli_args(seed: u64, cfg: f64) -> Vec<String> {
    [
        "--seed",
        &seed.to_string(),
        "--steps",
        "2",
        "--true-cfg-scale",
        &cfg.to_string(),
        "--width",
        "32",
        "--height",
        "32",
        "--ref-size",
        "32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The cheap job options as job JSON keys.
pub fn cheap_job(seed: u64, cfg: f64) -> serde_json::Value {
    serde_json::json!({
        "prompt": PROMPT,
        "seed": seed,
        "steps": 2,
        "true_cfg_scale": cfg,
        "width": 32,
        "height": 32,
        "ref_size": 32,
    })
}

/// What `qwen-edit edit` makes of the input image with these options.
pub fn cli_edit(dir: &Path, seed: u64, cfg: f64, extra: &[&str]) -> image::RgbImage {
    let out = dir.join(format!("cli-{seed}-{cfg}.png"));
    let o = qwen_edit()
        .arg("edit")
        .arg(input_png())
        .args(["-p", PROMPT])
        .args(cheap_cli_args(seed, cfg))
        .args(extra)
        .args(model_args())
        .arg("-o")
        .arg(&out)
        .arg("--overwrite")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "edit failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    image::open(&out).unwrap().to_rgb8()
}

pub fn decode_png(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

/// Kills the child when a test fails before it ended.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    /// Waits up to `limit` for the exit status.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child().try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn sigterm(pid: u32) {
    let s = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(s.success(), "kill -TERM {pid} failed");
}

/// A PNG whose header declares `w`×`h` pixels (and whose data is a stub): a decompression bomb as
/// far as the decoder's limits are concerned.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}
