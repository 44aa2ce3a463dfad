//! Streaming offload on CUDA (build with `--features cuda`; run on a machine with an NVIDIA GPU, with
//! `QWEN_EDIT_FIXTURES` pointing at tests/fixtures when the source tree is elsewhere):
//! - the tiny fixtures streamed through the copy stream give bit-identical outputs to the resident
//!   model (f32 and bf16, fp8 at load, GGUF with mixed block types), for prefetch 0, 1, 2, two calls each;
//! - a mid-size random model (8 blocks of width 1536, copy-bound) in bf16, fp8, Q8_0 and Q4_K streamed
//!   with prefetch 0 to 4 equals the resident one bit for bit: a copy that overwrote a slot still in use,
//!   or a block that ran before its copy landed, would show here;
//! - the copy statistics (bytes, GB/s, page-locked host memory) and the device memory it saves.
#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use qwen_edit::models::offload::{watch, OffloadOptions};
use qwen_edit::models::quant::ggml::{GgmlLinears, GgmlSource};
use qwen_edit::models::quant::{transformer_fp8_select, WeightFormat};
use qwen_edit::models::random::{linear_shapes, probe_shapes, RandomWeights};
use qwen_edit::models::transformer::{QwenImageTransformer2DModel, TransformerConfig, TransformerWeights};
use qwen_edit::models::weights::ComponentWeights;

fn fixtures() -> PathBuf {
    match std::env::var_os("QWEN_EDIT_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Inputs of one forward: `(hidden_states, encoder_hidden_states, mask, timestep, img_shapes)`.
struct Inputs {
    x: Tensor,
    ctx: Tensor,
    mask: Option<Tensor>,
    t: Tensor,
    shapes: Vec<(usize, usize, usize)>,
}

impl Inputs {
    fn golden(name: &str, dev: &Device) -> Self {
        let g: HashMap<String, Tensor> =
            candle_core::safetensors::load(fixtures().join("golden").join(format!("{name}.safetensors")), dev).unwrap();
        let shapes = g["img_shapes"]
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .map(|r| (r[0] as usize, r[1] as usize, r[2] as usize))
            .collect();
        Self {
            x: g["hidden_states"].clone(),
            ctx: g["encoder_hidden_states"].clone(),
            mask: g.get("encoder_hidden_states_mask").cloned(),
            t: g["timestep"].clone(),
            shapes,
        }
    }

    fn run(&self, model: &QwenImageTransformer2DModel) -> Tensor {
        model
            .forward(&self.x, &self.ctx, self.mask.as_ref(), &self.t, &self.shapes)
            .unwrap()
    }
}

/// Streamed (prefetch 0..=max, two calls each) equals resident bit for bit.
fn assert_equal(
    label: &str,
    inputs: &Inputs,
    resident: &QwenImageTransformer2DModel,
    streamed: &QwenImageTransformer2DModel,
    max: usize,
) {
    let want = inputs.run(resident);
    let want_bits = bits(&want);
    for prefetch in 0..=max {
        streamed.set_offload_prefetch(prefetch);
        for call in 0..2 {
            let got = inputs.run(streamed);
            assert!(
                bits(&got) == want_bits,
                "{label}: prefetch {prefetch}, call {call}: max diff {}",
                max_diff(&got, &want)
            );
        }
        let s = streamed.offload_stats().unwrap().unwrap();
        assert_eq!(s.bytes, s.host_bytes, "{label}");
        eprintln!(
            "{label}: prefetch {prefetch}: {:.1} MB per call in {:.2} ms ({:.1} GB/s), pinned {}",
            s.bytes as f64 / 1e6,
            s.copy_ms,
            s.gb_per_s().unwrap_or(0.0),
            s.pinned
        );
    }
}

fn tiny(
    opts: TransformerWeights,
    dtype: DType,
    dev: &Device,
) -> (QwenImageTransformer2DModel, QwenImageTransformer2DModel) {
    let dir = fixtures().join("models/tiny-plus/transformer");
    let resident = QwenImageTransformer2DModel::load_with(&dir, dtype, dev, &opts)
        .unwrap()
        .0;
    let streamed = QwenImageTransformer2DModel::load_with(
        &dir,
        dtype,
        dev,
        &TransformerWeights {
            offload: Some(OffloadOptions::default()),
            ..opts
        },
    )
    .unwrap()
    .0;
    assert!(streamed.is_streamed());
    (resident, streamed)
}

#[test]
fn tiny_streamed_transformer_is_bit_identical_on_cuda() {
    let dev = cuda();
    let inputs = Inputs::golden("transformer_b_2ref_zc", &dev);
    for dtype in [DType::F32, DType::BF16] {
        let (r, s) = tiny(TransformerWeights::default(), dtype, &dev);
        assert_equal(&format!("tiny {dtype:?}"), &inputs, &r, &s, 2);
        let fp8 = TransformerWeights {
            format: WeightFormat::Fp8,
            ..Default::default()
        };
        let (r, s) = tiny(fp8, dtype, &dev);
        assert_equal(&format!("tiny fp8 {dtype:?}"), &inputs, &r, &s, 2);
    }
    // GGUF: Q8_0 blocks, Q4_K for block 1's 256-wide down projections.
    let tmp = tempfile::tempdir().unwrap();
    let w = ComponentWeights::open(&fixtures().join("models/tiny-plus/transformer")).unwrap();
    let mut quantized = Vec::new();
    for f in w.files() {
        for (name, t) in candle_core::safetensors::load(f, &Device::Cpu).unwrap() {
            let t = t.to_dtype(DType::F32).unwrap();
            let ty = match (name.starts_with("transformer_blocks."), t.rank()) {
                (true, 2) if name.starts_with("transformer_blocks.1.") && t.dim(1).unwrap() % 256 == 0 => {
                    GgmlDType::Q4K
                }
                (true, 2) => GgmlDType::Q8_0,
                _ => GgmlDType::F32,
            };
            quantized.push((name, QTensor::quantize(&t, ty).unwrap()));
        }
    }
    let file = tmp.path().join("tiny.gguf");
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&file).unwrap(), &[], &refs).unwrap();
    let opts = TransformerWeights {
        file: Some(file),
        ..Default::default()
    };
    let (r, s) = tiny(opts, DType::BF16, &dev);
    assert_equal("tiny gguf bf16", &inputs, &r, &s, 2);
}

/// 8 blocks of width 1536 (12 heads × 128), 1024 tokens: each block's copy takes longer than its
/// compute, so the ring is always full and every wait matters.
const MID: &str = r#"{"attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "in_channels": 64,
 "joint_attention_dim": 512, "num_attention_heads": 12, "num_layers": 8, "out_channels": 16, "patch_size": 2,
 "zero_cond_t": true}"#;

#[test]
fn mid_size_streamed_transformer_is_bit_identical_on_cuda() {
    let dev = cuda();
    let cfg: TransformerConfig = serde_json::from_str(MID).unwrap();
    let dtype = DType::BF16;
    let shapes = probe_shapes(dtype, |vb| QwenImageTransformer2DModel::new(&cfg, vb).map(drop)).unwrap();
    let linears = linear_shapes(&shapes);
    let backend = |name: &str| -> Box<dyn SimpleBackend> {
        let ggml = |ty| -> Box<dyn SimpleBackend> {
            Box::new(
                GgmlLinears::new(
                    Box::new(RandomWeights),
                    ty,
                    &linears,
                    transformer_fp8_select,
                    GgmlSource::Random { seed: 3 },
                    dtype,
                )
                .unwrap(),
            )
        };
        match name {
            "bf16" => RandomWeights::backend(WeightFormat::Native, transformer_fp8_select),
            "fp8" => RandomWeights::backend(WeightFormat::Fp8, transformer_fp8_select),
            "q8_0" => ggml(GgmlDType::Q8_0),
            _ => ggml(GgmlDType::Q4K),
        }
    };
    let g = 16; // 16×16 latent patches per image: 256 noise + 256 reference tokens
    let inputs = Inputs {
        x: (Tensor::randn(0f32, 1.0, (1, 2 * g * g, cfg.in_channels), &dev).unwrap())
            .to_dtype(dtype)
            .unwrap(),
        ctx: Tensor::randn(0f32, 1.0, (1, 64, cfg.joint_attention_dim), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
        mask: None,
        t: Tensor::new(&[0.5f32], &dev).unwrap().to_dtype(dtype).unwrap(),
        shapes: vec![(1, g, g), (1, g, g)],
    };
    for name in ["bf16", "fp8", "q8_0", "q4_k"] {
        dev.set_seed(11).unwrap();
        let resident =
            QwenImageTransformer2DModel::new(&cfg, VarBuilder::from_backend(backend(name), dtype, dev.clone()))
                .unwrap();
        dev.set_seed(11).unwrap();
        watch::trim(&dev);
        let free = watch::mem_info(&dev).unwrap().0;
        let streamed =
            QwenImageTransformer2DModel::new_streamed(&cfg, backend(name), dtype, &dev, OffloadOptions::default())
                .unwrap();
        watch::trim(&dev);
        let held = free.saturating_sub(watch::mem_info(&dev).unwrap().0);
        assert_equal(&format!("mid {name}"), &inputs, &resident, &streamed, 4);
        let s = streamed.offload_stats().unwrap().unwrap();
        assert!(s.pinned, "{name}: host memory not page-locked");
        assert!(s.gb_per_s().unwrap() > 1.0, "{name}: {:?}", s);
        eprintln!(
            "mid {name}: {:.0} MB in host memory, {:.0} MB per slot, {:.0} MB held on the device after load",
            s.host_bytes as f64 / 1e6,
            s.slot_bytes as f64 / 1e6 / s.slots.max(1) as f64,
            held as f64 / 1e6
        );
        // After load only the layers outside the blocks stay on the device (no slots yet).
        assert!(held < s.host_bytes / 4, "{name}: {held} bytes held after load");
    }
}
