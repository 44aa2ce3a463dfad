//! LoRA merging and the Lightning presets against diffusers (goldens from
//! tests/fixtures/generate/gen_lora.py): the tiny-plus transformer with one LoRA in four key layouts at
//! scales 1 and 0.5, scale 0, refusal of keys that adapt nothing, the Lightning schedules, and a short
//! tiny Plus pipeline run (Lightning scheduler, no CFG) with the LoRA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qwen_edit::models::lora::LoraFile;
use qwen_edit::models::transformer::QwenImageTransformer2DModel;
use qwen_edit::pipeline::edit::{EditPipeline, EditRequest, LoadOptions, StepObserver};
use qwen_edit::pipeline::layout::ModelFolder;
use qwen_edit::pipeline::lightning::lightning_preset;
use qwen_edit::pipeline::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};

const LAYOUTS: [&str; 4] = ["diffusers", "kohya", "diffsynth", "lightx2v"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn transformer_dir() -> PathBuf {
    fixtures().join("models/tiny-plus/transformer")
}

fn lora_path(layout: &str) -> PathBuf {
    fixtures().join("lora").join(format!("tiny_plus_{layout}.safetensors"))
}

fn lora(layout: &str, scale: f64) -> LoraFile {
    LoraFile {
        path: lora_path(layout),
        scale,
        label: layout.to_string(),
    }
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("golden").join(name), &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max(&(&got - &want).unwrap()) / max(&want).max(1e-12)
}

fn forward(model: &QwenImageTransformer2DModel, g: &HashMap<String, Tensor>) -> Tensor {
    let shapes: Vec<(usize, usize, usize)> = g["img_shapes"]
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|r| (r[0] as usize, r[1] as usize, r[2] as usize))
        .collect();
    model
        .forward(
            &g["hidden_states"],
            &g["encoder_hidden_states"],
            None,
            &g["timestep"],
            &shapes,
        )
        .unwrap()
}

fn load(loras: &[LoraFile], strict: bool) -> anyhow::Result<QwenImageTransformer2DModel> {
    QwenImageTransformer2DModel::load_with_loras(&transformer_dir(), DType::F32, &Device::Cpu, loras, strict)
        .map(|(m, _)| m)
}

#[test]
fn every_layout_matches_diffusers_at_scales_1_and_half() {
    let g = golden("lora_transformer.safetensors");
    let base = load(&[], true).unwrap();
    let e = rel_err(&forward(&base, &g), &g["output.base"]);
    assert!(e < 1e-4, "no LoRA: relative error {e}");
    for layout in LAYOUTS {
        for (scale, tag) in [(1.0, "1.0"), (0.5, "0.5")] {
            let (model, reports) = QwenImageTransformer2DModel::load_with_loras(
                &transformer_dir(),
                DType::F32,
                &Device::Cpu,
                &[lora(layout, scale)],
                true,
            )
            .unwrap_or_else(|e| panic!("{layout}: {e:#}"));
            // 14 modules in each of the 2 blocks + 4 top-level ones.
            assert_eq!(reports[0].modules, 32, "{layout}");
            assert!(reports[0].skipped.is_empty());
            let want = &g[&format!("output.{layout}.scale{tag}")];
            let e = rel_err(&forward(&model, &g), want);
            assert!(e < 1e-4, "{layout} @ {scale}: relative error {e}");
        }
    }
    // Two files stack: 0.5 + 0.5 of the same LoRA is the LoRA at 1.
    let model = load(&[lora("kohya", 0.5), lora("diffsynth", 0.5)], true).unwrap();
    let e = rel_err(&forward(&model, &g), &g["output.diffusers.scale1.0"]);
    assert!(e < 1e-4, "stacked: relative error {e}");
}

#[test]
fn scale_zero_equals_no_lora() {
    let g = golden("lora_transformer.safetensors");
    let base = forward(&load(&[], true).unwrap(), &g);
    let zero = forward(&load(&[lora("kohya", 0.0)], true).unwrap(), &g);
    assert_eq!(rel_err(&zero, &base), 0.0);
}

/// Writes the kohya-layout LoRA with the tensors `extra` added (candle's writer drops the header
/// metadata, so not the diffusers file: its alpha is in the metadata).
fn lora_with(dir: &Path, name: &str, extra: &[(&str, Vec<usize>)]) -> PathBuf {
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(lora_path("kohya"), &Device::Cpu).unwrap();
    for (key, shape) in extra {
        tensors.insert(
            key.to_string(),
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn keys_that_adapt_nothing_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = lora_with(
        tmp.path(),
        "extra.safetensors",
        &[
            ("transformer.transformer_blocks.5.attn.to_q.lora_A.weight", vec![4, 64]),
            ("transformer.transformer_blocks.5.attn.to_q.lora_B.weight", vec![64, 4]),
        ],
    );
    let file = LoraFile {
        path: path.clone(),
        scale: 1.0,
        label: "extra".into(),
    };
    let err = load(std::slice::from_ref(&file), true).expect_err("strict refuses");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("transformer.transformer_blocks.5.attn.to_q.lora_A.weight"),
        "{msg}"
    );
    assert!(msg.contains("2 keys adapt nothing"), "{msg}");
    assert_eq!(qwen_edit::error::exit_code(&err), 3);
    // Not strict: the matching modules are merged (same output as the plain file), the rest reported.
    let (model, reports) =
        QwenImageTransformer2DModel::load_with_loras(&transformer_dir(), DType::F32, &Device::Cpu, &[file], false)
            .unwrap();
    assert_eq!(reports[0].modules, 32);
    assert_eq!(reports[0].skipped.len(), 2);
    let g = golden("lora_transformer.safetensors");
    let e = rel_err(&forward(&model, &g), &g["output.diffusers.scale1.0"]);
    assert!(e < 1e-4, "non-strict: relative error {e}");

    // A shape that does not fit, and text-encoder keys, are named too.
    let path = lora_with(
        tmp.path(),
        "te.safetensors",
        &[
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                vec![4, 16],
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                vec![16, 4],
            ),
        ],
    );
    let msg = format!(
        "{:#}",
        load(
            &[LoraFile {
                path,
                scale: 1.0,
                label: "te".into()
            }],
            true
        )
        .err()
        .unwrap()
    );
    assert!(
        msg.contains("text encoder") && msg.contains("lora_te_text_model_encoder_layers_0_mlp_fc1"),
        "{msg}"
    );
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(lora_path("kohya"), &Device::Cpu).unwrap();
    let key = "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight";
    tensors.insert(key.into(), Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap());
    let path = tmp.path().join("shape.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let msg = format!(
        "{:#}",
        load(
            &[LoraFile {
                path,
                scale: 1.0,
                label: "shape".into()
            }],
            true
        )
        .err()
        .unwrap()
    );
    assert!(msg.contains(key) && msg.contains("do not fit"), "{msg}");
}

#[derive(serde::Deserialize)]
struct Schedule {
    mu: f64,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

#[test]
fn lightning_sigmas_equal_diffusers() {
    let text = std::fs::read_to_string(fixtures().join("golden/lightning.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = SchedulerConfig::from_json(&g["config"].to_string()).unwrap();
    for steps in [4usize, 8] {
        let preset = lightning_preset(steps);
        assert_eq!(preset.scheduler, cfg);
        assert_eq!((preset.steps, preset.true_cfg_scale), (steps, 1.0));
        let want: Schedule = serde_json::from_value(g[format!("steps{steps}")].clone()).unwrap();
        let mu = preset
            .scheduler
            .mu(g["image_seq_len"].as_u64().unwrap() as usize)
            .unwrap();
        assert_eq!(mu, want.mu);
        let mut s = FlowMatchEulerScheduler::new(preset.scheduler);
        s.set_timesteps(steps, Some(mu)).unwrap();
        assert_eq!(s.sigmas(), want.sigmas.as_slice(), "{steps} steps");
        assert_eq!(s.timesteps(), want.timesteps.as_slice(), "{steps} steps");
    }
}

#[derive(Default)]
struct Capture(Vec<Tensor>);

impl StepObserver for Capture {
    fn on_step(&mut self, _step: usize, latents: &Tensor) {
        self.0.push(latents.clone());
    }
}

fn lora_pipeline_request() -> EditRequest {
    EditRequest {
        images: vec![image::open(fixtures().join("golden/lora_pipeline_plus_input0.png"))
            .unwrap()
            .to_rgb8()],
        prompt: "paint it like a watercolour".into(),
        negative_prompt: Some(" ".into()),
        steps: Some(2),
        true_cfg_scale: None,
        seed: 11,
        width: Some(32),
        height: Some(48),
        ref_size: None,
    }
}

#[test]
fn tiny_plus_pipeline_with_lora_and_lightning_scheduler_matches_diffusers() {
    let g = golden("lora_pipeline_plus.safetensors");
    let folder = ModelFolder::open(&fixtures().join("models/tiny-plus")).unwrap();
    let opts = LoadOptions {
        loras: vec![lora("kohya", 1.0)],
        lora_strict: true,
        ..LoadOptions::default()
    };
    let mut pipe = EditPipeline::load_with(&folder, &Device::Cpu, DType::F32, &opts).unwrap();
    pipe.set_preset(Some(lightning_preset(4))).unwrap();
    let mut cap = Capture::default();
    let out = pipe.run(&lora_pipeline_request(), &mut cap).unwrap();
    assert!(!out.cfg, "Lightning runs without CFG");
    assert_eq!(out.steps, 2, "the request's steps override the preset's");
    assert_eq!(cap.0.len(), 2);
    for (i, lat) in cap.0.iter().enumerate() {
        let e = rel_err(lat, &g[&format!("latents_step{i}")]);
        assert!(e < 1e-4, "latents after step {i}: relative error {e}");
    }
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
    assert!(diff <= 1.0 / 255.0, "output differs by {diff}");
}

#[test]
fn edit_command_with_lightning_and_a_local_lightning_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.png");
    let input = fixtures().join("golden/lora_pipeline_plus_input0.png");
    let model = fixtures().join("models/tiny-plus");
    let lora = lora_path("kohya");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit"))
        .args(["edit", input.to_str().unwrap(), "-p", "paint it like a watercolour"])
        .args(["--seed", "11", "--width", "32", "--height", "48", "--steps", "2"])
        .args(["--lightning", "4", "--lightning-lora", lora.to_str().unwrap()])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "-o",
            out.to_str().unwrap(),
        ])
        .arg("--json")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 2);
    assert_eq!(summary["cfg"], false);
    assert_eq!(summary["loras"][0]["modules"], 32);
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(fixtures().join("golden/lora_pipeline_plus_output.png"))
        .unwrap()
        .to_rgb8();
    let max = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(max <= 1, "edit output differs from diffusers by {max}/255");

    // A LoRA key that matches nothing: exit 3 naming the key.
    let bad = lora_with(
        tmp.path(),
        "bad.safetensors",
        &[("transformer.not_a_module.lora_A.weight", vec![4, 64])],
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit"))
        .args(["edit", input.to_str().unwrap(), "-p", "x", "--steps", "1"])
        .args(["--lora", &format!("{}@0.8", bad.display())])
        .args(["--model", model.to_str().unwrap(), "--device", "cpu", "-o"])
        .arg(tmp.path().join("bad.png"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("transformer.not_a_module.lora_A.weight"), "{stderr}");
}
