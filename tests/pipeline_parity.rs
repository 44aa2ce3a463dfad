//! The whole tiny Edit and Plus pipelines against diffusers (goldens in tests/fixtures/golden,
//! made by tests/fixtures/generate/gen_pipeline.py): initial noise, latents after every step and the
//! output image, f32 on the CPU; and the `edit` command run as a user would.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qwen_edit::pipeline::edit::{EditPipeline, EditRequest, StepObserver};
use qwen_edit::pipeline::latents::pack;
use qwen_edit::pipeline::layout::ModelFolder;
use qwen_edit::pipeline::noise::torch_randn;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("golden").join(name), &Device::Cpu).unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    assert_eq!(got.dims(), want.dims());
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale.max(1e-12)
}

#[derive(Default)]
struct Capture(Vec<Tensor>);

impl StepObserver for Capture {
    fn on_step(&mut self, _step: usize, latents: &Tensor) {
        self.0.push(latents.clone());
    }
}

fn png(name: &str) -> image::RgbImage {
    image::open(fixtures().join("golden").join(name)).unwrap().to_rgb8()
}

fn check_pipeline(model: &str, golden_name: &str, req: EditRequest, lh: usize, lw: usize) {
    let g = golden(golden_name);
    let channels = g["initial_latents"].dim(2).unwrap() / 4;
    // Seeded noise equals torch.randn through diffusers' randn_tensor.
    let noise = torch_randn(req.seed, &[1, 1, channels, lh, lw], DType::F32, &Device::Cpu).unwrap();
    let packed = pack(&noise.reshape((1, channels, lh, lw)).unwrap()).unwrap();
    assert_eq!(rel_err(&packed, &g["initial_latents"]), 0.0, "initial noise");

    let folder = ModelFolder::open(&fixtures().join("models").join(model)).unwrap();
    let pipe = EditPipeline::load(&folder, &Device::Cpu, DType::F32).unwrap();
    let mut cap = Capture::default();
    let out = pipe.run(&req, &mut cap).unwrap();
    let steps = g.keys().filter(|k| k.starts_with("latents_step")).count();
    assert_eq!(cap.0.len(), steps);
    for (i, lat) in cap.0.iter().enumerate() {
        let e = rel_err(lat, &g[&format!("latents_step{i}")]);
        assert!(e < 1e-4, "{model}: latents after step {i}: relative error {e}");
    }
    // Output in [0, 1] as output_type="pt", within 1/255.
    let img01 = ((&out.image * 0.5).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
    let diff = (img01 - &g["output"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    assert!(diff <= 1.0 / 255.0, "{model}: output differs by {diff}");
}

#[test]
fn tiny_edit_pipeline_matches_diffusers() {
    let req = EditRequest {
        images: vec![png("pipeline_edit_input0.png")],
        prompt: "make the sky purple".into(),
        negative_prompt: Some(" ".into()),
        steps: Some(3),
        true_cfg_scale: Some(4.0),
        seed: 0,
        width: Some(40),
        height: Some(56),
        ref_size: None,
    };
    // tiny-edit's VAE downsamples 4×: a 56×40 output is a 14×10 latent.
    check_pipeline("tiny-edit", "pipeline_edit.safetensors", req, 14, 10);
}

#[test]
fn tiny_plus_pipeline_with_two_images_matches_diffusers() {
    let req = EditRequest {
        images: vec![png("pipeline_plus_input0.png"), png("pipeline_plus_input1.png")],
        prompt: "put the cat on the sofa".into(),
        negative_prompt: Some(" ".into()),
        steps: Some(2),
        true_cfg_scale: Some(4.0),
        seed: 7,
        width: Some(48),
        height: Some(64),
        ref_size: None,
    };
    check_pipeline("tiny-plus", "pipeline_plus.safetensors", req, 8, 6);
}

#[test]
fn edit_command_writes_the_reference_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let model = fixtures().join("models/tiny-edit");
    let input = fixtures().join("golden/pipeline_edit_input0.png");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit"))
        .args([
            "edit",
            input.to_str().unwrap(),
            "-p",
            "make the sky purple",
            "--negative-prompt",
            " ",
        ])
        .args([
            "--steps",
            "3",
            "--true-cfg-scale",
            "4",
            "--seed",
            "0",
            "--width",
            "40",
            "--height",
            "56",
        ])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["seed"], 0);
    assert_eq!(summary["width"], 40);
    assert_eq!(summary["height"], 56);
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["outputs"][0], out.to_str().unwrap());
    for stage in ["load", "encode_prompt", "encode_images", "denoise", "decode", "total"] {
        assert!(summary["timings"][stage].as_f64().is_some(), "timing {stage}");
    }
    let got = image::open(&out).unwrap().to_rgb8();
    let want = png("pipeline_edit_output.png");
    assert_eq!(got.dimensions(), want.dimensions());
    let max = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(max <= 1, "edit output differs from diffusers by {max}/255");
    // Refuses to overwrite.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit"))
        .args([
            "edit",
            input.to_str().unwrap(),
            "-p",
            "x",
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["--device", "cpu", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
}
