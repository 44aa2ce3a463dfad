//! `AutoencoderKLQwenImage` against diffusers 0.42.1 (golden tensors from branch `fixtures`), f32 CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qwen_edit::models::vae::{self, AutoencoderKLQwenImage, TilingMode};

const REL_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir(model: &str) -> PathBuf {
    let name = match model {
        "a" => "tiny-edit",
        "b" => "tiny-plus",
        other => panic!("unknown fixture model {other}"),
    };
    fixtures().join("models").join(name).join("vae")
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("golden").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get<'a>(g: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    g.get(key).unwrap_or_else(|| panic!("golden tensor {key} missing"))
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |got - want| / max |want| <= `REL_TOL`.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_close_tol(what, got, want, REL_TOL)
}

fn assert_close_tol(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = got.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let diff = max_abs(&(&got - want).unwrap());
    let scale = max_abs(want);
    let rel = diff / scale.max(f32::MIN_POSITIVE);
    eprintln!("{what}: max abs diff {diff:.3e}, max abs ref {scale:.3e}, rel {rel:.3e}");
    assert!(
        rel <= tol,
        "{what}: relative error {rel:.3e} > {tol:e} (max abs diff {diff:.3e})"
    );
}

fn load(model: &str) -> AutoencoderKLQwenImage {
    AutoencoderKLQwenImage::load(&model_dir(model), DType::F32, &Device::Cpu).unwrap()
}

fn check_encode_decode(model: &str, h: usize, w: usize) {
    let vae = load(model);
    let g = golden(&format!("vae_{model}_{h}x{w}"));
    let image = get(&g, "image");
    let f = vae.spatial_scale_factor();
    let z = vae.encode(image).unwrap();
    assert_eq!(z.dims(), &[1, vae.config().z_dim, h / f, w / f]);
    assert_close(&format!("{model} {h}x{w} encode"), &z, get(&g, "latent_mean"));
    let x = vae.decode(get(&g, "decode_input")).unwrap();
    assert_close(&format!("{model} {h}x{w} decode"), &x, get(&g, "decoded"));
}

#[test]
fn model_a_64x48() {
    check_encode_decode("a", 64, 48);
}

#[test]
fn model_a_40x56() {
    check_encode_decode("a", 40, 56);
}

#[test]
fn model_b_64x64() {
    check_encode_decode("b", 64, 64);
}

#[test]
fn model_b_96x80() {
    check_encode_decode("b", 96, 80);
}

#[test]
fn scale_factors() {
    assert_eq!(load("a").spatial_scale_factor(), 4);
    assert_eq!(load("b").spatial_scale_factor(), 8);
}

#[test]
fn model_b_tiled_320x384() {
    let mut vae = load("b");
    let g = golden("vae_b_tiled_320x384");
    let image = get(&g, "image");
    let latent = get(&g, "decode_input");

    // Off (default): the plain path.
    assert_eq!(vae.tiling(), TilingMode::Off);
    assert_close(
        "b 320x384 encode untiled",
        &vae.encode(image).unwrap(),
        get(&g, "latent_mean_untiled"),
    );
    assert_close(
        "b 320x384 decode untiled",
        &vae.decode(latent).unwrap(),
        get(&g, "decoded_untiled"),
    );

    // Auto: 256-pixel tiles every 192 pixels, blended.
    vae.set_tiling(TilingMode::Auto);
    assert_close(
        "b 320x384 encode tiled",
        &vae.encode(image).unwrap(),
        get(&g, "latent_mean"),
    );
    assert_close(
        "b 320x384 decode tiled",
        &vae.decode(latent).unwrap(),
        get(&g, "decoded"),
    );
}

#[test]
fn auto_tiling_leaves_small_inputs_alone() {
    let mut vae = load("b");
    let g = golden("vae_b_96x80");
    vae.set_tiling(TilingMode::Auto);
    assert_close(
        "b 96x80 encode (auto, below the tile size)",
        &vae.encode(get(&g, "image")).unwrap(),
        get(&g, "latent_mean"),
    );
    assert_close(
        "b 96x80 decode (auto, below the tile size)",
        &vae.decode(get(&g, "decode_input")).unwrap(),
        get(&g, "decoded"),
    );
}

/// Copies the fixture folder of model b into a temp dir with `edit` applied to its tensors.
fn broken_folder(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let src = model_dir("b");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = HashMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            tensors.extend(candle_core::safetensors::load(&p, &Device::Cpu).unwrap());
        }
    }
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> anyhow::Error {
    match AutoencoderKLQwenImage::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_is_named() {
    let key = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight";
    let dir = broken_folder(|t| {
        assert!(t.remove(key).is_some(), "fixture lacks {key}");
    });
    let err = load_err(dir.path());
    let msg = format!("{err:#}");
    assert!(msg.contains(key) && msg.contains("missing"), "{msg}");
    assert_eq!(qwen_edit::error::exit_code(&err), 4, "{msg}");
}

#[test]
fn misshaped_tensor_is_named() {
    let key = "encoder.mid_block.attentions.0.to_qkv.weight";
    let dir = broken_folder(|t| {
        let w = t.get(key).unwrap_or_else(|| panic!("fixture lacks {key}"));
        let (o, i, _, _) = w.dims4().unwrap();
        t.insert(
            key.to_string(),
            Tensor::zeros((o, i, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(dir.path());
    let msg = format!("{err:#}");
    assert!(msg.contains(key) && msg.contains("shape"), "{msg}");
    assert_eq!(qwen_edit::error::exit_code(&err), 4, "{msg}");
}

#[test]
fn time_convs_are_not_needed() {
    let dir = broken_folder(|t| {
        let before = t.len();
        t.retain(|k, _| !k.contains("time_conv"));
        assert!(t.len() < before, "fixture has no time_conv tensors");
    });
    let vae = AutoencoderKLQwenImage::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let g = golden("vae_b_64x64");
    assert_close(
        "b 64x64 encode without time_conv",
        &vae.encode(get(&g, "image")).unwrap(),
        get(&g, "latent_mean"),
    );
}

#[test]
fn missing_folder_is_model_missing() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&dir.path().join("vae"));
    assert_eq!(qwen_edit::error::exit_code(&err), 4, "{err:#}");
}

#[test]
fn latent_normalisation_round_trip() {
    let vae = load("b");
    let cfg = vae.config();
    let z = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, 3, 5), &Device::Cpu).unwrap();
    let n = vae.normalize_latents(&z).unwrap();
    // Channel 1: (z - mean) / std.
    let (m, s) = (cfg.latents_mean[1] as f32, cfg.latents_std[1] as f32);
    let z1: Vec<f32> = z.narrow(1, 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let n1: Vec<f32> = n.narrow(1, 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in z1.iter().zip(&n1) {
        assert_eq!(*b, (a - m) / s);
    }
    let back = vae.denormalize_latents(&n).unwrap();
    assert!(max_abs(&(back - &z).unwrap()) < 1e-5);
}

#[test]
fn pixels_round_trip_u8_and_u16() {
    // Every 8-bit value, as a 16×16 RGB image (each channel shifted).
    let (h, w) = (16usize, 16usize);
    let rgb: Vec<u8> = (0..h * w)
        .flat_map(|p| [p as u8, (p as u8).wrapping_add(85), 255 - p as u8])
        .collect();
    let x = vae::preprocess_buffer(&rgb, h, w, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[1, 3, h, w]);
    // Red channel at pixel 1 is 1/255 * 2 - 1.
    let r1 = x
        .narrow(3, 1, 1)
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert_eq!(r1, 2.0 * (1.0f32 / 255.0) - 1.0);
    assert_eq!(vae::postprocess_u8(&x).unwrap(), rgb);
    let wide: Vec<u16> = rgb.iter().map(|&v| v as u16 * 257).collect();
    assert_eq!(vae::postprocess_u16(&x).unwrap(), wide);

    // The same through an image::RgbImage.
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb.clone()).unwrap();
    let y = vae::preprocess(&img, &Device::Cpu).unwrap();
    assert_eq!(max_abs(&(y - &x).unwrap()), 0.0);

    // Out of range values clamp; bad shapes are refused.
    let big = Tensor::new(&[3f32, -3., 0.], &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    assert_eq!(vae::postprocess_u8(&big).unwrap(), vec![255, 0, 128]);
    assert!(vae::postprocess_u8(&x.narrow(1, 0, 2).unwrap()).is_err());
    assert!(vae::preprocess_buffer(&rgb[1..], h, w, &Device::Cpu).is_err());
}

#[cfg(feature = "cuda")]
fn bf16_on(t: &Tensor, dev: &Device) -> Tensor {
    t.to_device(dev).unwrap().to_dtype(DType::BF16).unwrap()
}

/// The production path: bf16 on CUDA against the f32 goldens (run with `--features cuda` on a GPU).
#[cfg(feature = "cuda")]
#[test]
fn model_b_bf16_cuda() {
    // 2e-2, or 1.25× the drift of diffusers itself in bf16 on the same golden (golden/bf16_drift.json).
    let drift: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/bf16_drift.json"))
            .unwrap(),
    )
    .unwrap();
    let tol = |case: &str, op: &str| (1.25 * drift[case][op].as_f64().unwrap() as f32).max(2e-2);
    let dev = Device::new_cuda(0).unwrap();
    let mut vae = AutoencoderKLQwenImage::load(&model_dir("b"), DType::BF16, &dev).unwrap();
    let g = golden("vae_b_96x80");
    let z = vae.encode(&bf16_on(get(&g, "image"), &dev)).unwrap();
    assert_eq!(z.dtype(), DType::BF16);
    assert_close_tol(
        "b 96x80 bf16 cuda encode",
        &z,
        get(&g, "latent_mean"),
        tol("vae_b_96x80", "encode"),
    );
    let x = vae.decode(&bf16_on(get(&g, "decode_input"), &dev)).unwrap();
    assert_close_tol(
        "b 96x80 bf16 cuda decode",
        &x,
        get(&g, "decoded"),
        tol("vae_b_96x80", "decode"),
    );
    assert_eq!(vae::postprocess_u8(&x).unwrap().len(), 96 * 80 * 3);

    let g = golden("vae_b_tiled_320x384");
    vae.set_tiling(TilingMode::Auto);
    let z = vae.encode(&bf16_on(get(&g, "image"), &dev)).unwrap();
    let case = "vae_b_tiled_320x384";
    assert_close_tol(
        "b 320x384 bf16 cuda encode tiled",
        &z,
        get(&g, "latent_mean"),
        tol(case, "encode"),
    );
    let x = vae.decode(&bf16_on(get(&g, "decode_input"), &dev)).unwrap();
    assert_close_tol(
        "b 320x384 bf16 cuda decode tiled",
        &x,
        get(&g, "decoded"),
        tol(case, "decode"),
    );

    // De-normalisation in bf16 runs on the device too.
    let n = vae.normalize_latents(&z).unwrap();
    let back = vae.denormalize_latents(&n).unwrap();
    assert_close_tol(
        "bf16 latent normalisation round trip",
        &back,
        &z.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap(),
        2e-2,
    );
}
