//! Weight formats on the CPU against f32: the transformer with fp8 weights quantized at load and from a
//! pre-quantized "scaled fp8" single file (ComfyUI layout), GGUF files (plain float tensors through the
//! whole tiny transformer; Q8_0 / Q6_K / Q5_K / Q4_K Linear weights against the f32 GEMM).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use qwen_edit::models::nn::linear::{linear, LinearWeight};
use qwen_edit::models::quant::fp8::quantize_rows;
use qwen_edit::models::quant::gguf::GgufWeights;
use qwen_edit::models::quant::WeightFormat;
use qwen_edit::models::transformer::{QwenImageTransformer2DModel, TransformerWeights};
use qwen_edit::models::weights::ComponentWeights;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn transformer_dir() -> PathBuf {
    fixtures().join("models/tiny-plus/transformer")
}

/// max |a − b| / max |b|.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    let d = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let m = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
}

struct Case {
    g: HashMap<String, Tensor>,
}

impl Case {
    fn load() -> Self {
        let g = candle_core::safetensors::load(
            fixtures().join("golden/transformer_b_2ref_zc.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        Self { g }
    }

    fn run(&self, model: &QwenImageTransformer2DModel) -> Tensor {
        let shapes: Vec<(usize, usize, usize)> = self.g["img_shapes"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .map(|r| (r[0] as usize, r[1] as usize, r[2] as usize))
            .collect();
        model
            .forward(
                &self.g["hidden_states"],
                &self.g["encoder_hidden_states"],
                None,
                &self.g["timestep"],
                &shapes,
            )
            .unwrap()
    }

    fn want(&self) -> &Tensor {
        &self.g["output"]
    }
}

fn load(opts: &TransformerWeights) -> QwenImageTransformer2DModel {
    QwenImageTransformer2DModel::load_with(&transformer_dir(), DType::F32, &Device::Cpu, opts)
        .unwrap()
        .0
}

fn stored_tensors() -> Vec<(String, Tensor)> {
    let w = ComponentWeights::open(&transformer_dir()).unwrap();
    let mut out = Vec::new();
    for f in w.files() {
        out.extend(candle_core::safetensors::load(f, &Device::Cpu).unwrap());
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn is_block_linear(name: &str, t: &Tensor) -> bool {
    name.starts_with("transformer_blocks.") && name.ends_with(".weight") && t.rank() == 2
}

#[test]
fn fp8_at_load_stays_close_to_f32() {
    let case = Case::load();
    let dense = rel_err(&case.run(&load(&TransformerWeights::default())), case.want());
    assert!(dense < 1e-4, "dense {dense}");
    let fp8 = load(&TransformerWeights {
        format: WeightFormat::Fp8,
        ..Default::default()
    });
    let e = rel_err(&case.run(&fp8), case.want());
    eprintln!("fp8 at load: rel err {e:.3e} (dense {dense:.1e})");
    // e4m3 rounds each weight by up to 2^-4 (~2 % on average); through two blocks the output moves
    // by a few percent, and visibly more than f32 rounding (so the weights really were quantized).
    assert!(e > 1e-3 && e < 0.08, "fp8 rel err {e}");
}

/// A ComfyUI-style "scaled fp8" single file: `model.diffusion_model.` prefix, e4m3 block weights with a
/// per-tensor `scale_weight`, everything else as stored.
#[test]
fn pre_quantized_scaled_fp8_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in stored_tensors() {
        let key = format!("model.diffusion_model.{name}");
        if is_block_linear(&name, &t) {
            let t = t.to_dtype(DType::F32).unwrap();
            let amax = t
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = amax / 448.0;
            let q = (t / scale as f64).unwrap().to_dtype(DType::F8E4M3).unwrap();
            let module = name.strip_suffix(".weight").unwrap();
            out.insert(key, q);
            out.insert(
                format!("model.diffusion_model.{module}.scale_weight"),
                Tensor::new(scale, &Device::Cpu).unwrap(),
            );
        } else {
            out.insert(key, t);
        }
    }
    let file = dir.path().join("qwen_image_edit_fp8_e4m3fn_scaled.safetensors");
    candle_core::safetensors::save(&out, &file).unwrap();

    let model = load(&TransformerWeights {
        file: Some(file.clone()),
        ..Default::default()
    });
    let case = Case::load();
    let e = rel_err(&case.run(&model), case.want());
    eprintln!("scaled fp8 file: rel err {e:.3e}");
    assert!(e > 1e-3 && e < 0.1, "scaled fp8 rel err {e}");

    // LoRAs cannot be merged into it: a clear error, not a wrong merge.
    let lora = qwen_edit::models::lora::LoraFile {
        path: fixtures().join("lora/tiny_plus_diffusers.safetensors"),
        scale: 1.0,
        label: "tiny".into(),
    };
    let err = QwenImageTransformer2DModel::load_with(
        &transformer_dir(),
        DType::F32,
        &Device::Cpu,
        &TransformerWeights {
            file: Some(file),
            loras: vec![lora],
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("pre-quantized fp8"), "{err:#}");
}

/// The whole tiny transformer from a GGUF file (its dims are not multiples of the GGML block sizes,
/// so the Linear weights are F16 and the rest F32, as converters store such tensors), names prefixed.
#[test]
fn gguf_file_with_float_tensors_runs_the_transformer() {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, QTensor)> = stored_tensors()
        .into_iter()
        .map(|(name, t)| {
            let ty = if t.rank() == 2 { GgmlDType::F16 } else { GgmlDType::F32 };
            (
                format!("model.diffusion_model.{name}"),
                QTensor::quantize(&t, ty).unwrap(),
            )
        })
        .collect();
    let file = dir.path().join("tiny.gguf");
    let arch = gguf_file::Value::String("qwen_image".into());
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(
        &mut std::fs::File::create(&file).unwrap(),
        &[("general.architecture", &arch)],
        &refs,
    )
    .unwrap();

    let w = GgufWeights::open(&file).unwrap();
    assert_eq!(w.architecture(), Some("qwen_image"));
    assert!(w.tensor_types().iter().any(|(n, _)| n == "img_in.weight"));
    let model = load(&TransformerWeights {
        file: Some(file),
        ..Default::default()
    });
    let case = Case::load();
    let e = rel_err(&case.run(&model), case.want());
    eprintln!("gguf (f16 linears): rel err {e:.3e}");
    assert!(e < 5e-3, "gguf rel err {e}");
}

/// GGML block formats through [`linear`]: the weight stays quantized on the device, the output equals
/// the GEMM with the dequantized weight, and stays within each format's precision of the f32 GEMM.
#[test]
fn ggml_block_linears_match_the_f32_gemm() {
    let dev = Device::Cpu;
    let (inp, out) = (512usize, 96usize);
    let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.1, out, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 7, inp), &dev).unwrap();
    let want = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Bounds on the max error relative to the output's max: ~2^-8 · √in growth for Q8_0 … Q4_K.
    for (ty, bound) in [
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q6K, 0.03),
        (GgmlDType::Q5K, 0.06),
        (GgmlDType::Q4K, 0.12),
    ] {
        let qw = QTensor::quantize(&w, ty).unwrap();
        let qb = QTensor::quantize(&b, GgmlDType::F32).unwrap();
        let file = dir.path().join(format!("{ty:?}.gguf"));
        gguf_file::write(
            &mut std::fs::File::create(&file).unwrap(),
            &[],
            &[("blk.proj.weight", &qw), ("blk.proj.bias", &qb)],
        )
        .unwrap();
        let vb = VarBuilder::from_backend(Box::new(GgufWeights::open(&file).unwrap()), DType::F32, dev.clone());
        let lin = linear(inp, out, vb.pp("blk").pp("proj")).unwrap();
        let LinearWeight::Ggml(q) = lin.weight() else {
            panic!("{ty:?}: the weight was not kept quantized");
        };
        assert_eq!(q.dtype(), ty);
        let got = lin.forward(&x).unwrap();
        let deq = qw.dequantize(&dev).unwrap();
        let exact = x
            .broadcast_matmul(&deq.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(rel_err(&got, &exact) < 1e-5, "{ty:?}: not the dequantized GEMM");
        let e = rel_err(&got, &want);
        eprintln!("{ty:?}: rel err vs f32 {e:.3e}");
        assert!(e < bound && e > 1e-5, "{ty:?}: rel err {e} (bound {bound})");
        // As a plain tensor (e.g. for a LoRA merge) the weight is dequantized.
        let vb = VarBuilder::from_backend(Box::new(GgufWeights::open(&file).unwrap()), DType::F32, dev.clone());
        let plain = vb.get((out, inp), "blk.proj.weight").unwrap();
        assert!(rel_err(&plain, &deq) < 1e-6);
    }
}

/// fp8 per-row quantization of a Linear against the f32 GEMM (the path `--weights fp8` takes).
#[test]
fn fp8_linear_matches_the_f32_gemm() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (64, 256), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (5, 256), &dev).unwrap();
    let (q, s) = quantize_rows(&w).unwrap();
    let mut map = HashMap::new();
    map.insert("l.weight".to_string(), q);
    map.insert("l.weight_scale".to_string(), s);
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
    let lin = qwen_edit::models::nn::linear::linear_no_bias(256, 64, vb.pp("l")).unwrap();
    assert!(matches!(lin.weight(), LinearWeight::Fp8 { .. }));
    let got = lin.forward(&x).unwrap();
    let want = x.matmul(&w.t().unwrap()).unwrap();
    let e = rel_err(&got, &want);
    eprintln!("fp8 linear: rel err {e:.3e}");
    assert!(e > 1e-4 && e < 0.05, "{e}");
    let dense = lin.dense_weight(DType::F32).unwrap();
    assert!(rel_err(&x.matmul(&dense.t().unwrap()).unwrap(), &got) < 1e-5);
}

/// `--memory low` (components loaded per run and freed) gives the same pixels as `high`, and two runs
/// in a row work; fp8 weights stay close to the f32 goldens through the whole tiny Plus pipeline.
#[test]
fn low_memory_pipeline_matches_and_fp8_pipeline_is_close() {
    use qwen_edit::pipeline::edit::{EditPipeline, EditRequest, LoadOptions};
    use qwen_edit::pipeline::layout::ModelFolder;
    use qwen_edit::pipeline::memory::{MemoryMode, MemoryPlan};

    let g = candle_core::safetensors::load(fixtures().join("golden/pipeline_plus.safetensors"), &Device::Cpu).unwrap();
    let png = |n: &str| image::open(fixtures().join("golden").join(n)).unwrap().to_rgb8();
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
    let folder = ModelFolder::open(&fixtures().join("models/tiny-plus")).unwrap();
    let want = &g["output"];
    let out01 = |t: &Tensor| ((t * 0.5).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
    let low = LoadOptions {
        memory: MemoryMode::Low,
        ..Default::default()
    };
    let pipe = EditPipeline::load_with(&folder, &Device::Cpu, DType::F32, &low).unwrap();
    assert_eq!(pipe.memory().plan, MemoryPlan::Low);
    for run in 0..2 {
        let out = pipe.run(&req, &mut ()).unwrap();
        let e = rel_err(&out01(&out.image), want);
        assert!(e < 1e-4, "low memory, run {run}: rel err {e}");
    }
    let fp8 = LoadOptions {
        weights: WeightFormat::Fp8,
        memory: MemoryMode::High,
        ..Default::default()
    };
    let pipe = EditPipeline::load_with(&folder, &Device::Cpu, DType::F32, &fp8).unwrap();
    let out = pipe.run(&req, &mut ()).unwrap();
    let diff = (out01(&out.image) - want).unwrap();
    let mse = diff.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let psnr = 10.0 * (1.0 / mse).log10();
    eprintln!("tiny Plus pipeline, fp8 weights vs f32 goldens: PSNR {psnr:.1} dB");
    assert!(psnr > 30.0, "PSNR {psnr}");
}

/// Random GGML blocks (`bench --weights q8_0|q4_k` without `--psnr`) are valid blocks: they dequantize to
/// finite weights with about the asked std and mean 0, the same bytes for a seed and others for
/// another seed, and a Linear built from them computes the GEMM with their dequantized weight.
#[test]
fn random_ggml_blocks_are_valid() {
    use qwen_edit::models::quant::ggml::random_blocks;
    let (out, inp) = (64usize, 1024usize);
    for ty in [GgmlDType::Q8_0, GgmlDType::Q4K] {
        let bytes = random_blocks(ty, out * inp, 0.02, 11).unwrap();
        assert_eq!(bytes.len(), out * inp / ty.block_size() * ty.type_size());
        assert_eq!(
            bytes,
            random_blocks(ty, out * inp, 0.02, 11).unwrap(),
            "{ty:?}: not deterministic"
        );
        assert_ne!(
            bytes,
            random_blocks(ty, out * inp, 0.02, 12).unwrap(),
            "{ty:?}: seed ignored"
        );
        let q = QTensor::new(
            candle_core::quantized::QStorage::from_data(std::borrow::Cow::Borrowed(&bytes), &Device::Cpu, ty).unwrap(),
            (out, inp),
        )
        .unwrap();
        let w = q.dequantize(&Device::Cpu).unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{ty:?}: non-finite weights");
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        eprintln!("{ty:?}: mean {mean:.2e}, std {std:.4}");
        assert!(mean.abs() < 1e-3, "{ty:?}: mean {mean}");
        assert!((std - 0.02).abs() < 0.003, "{ty:?}: std {std}");
        // Every code occurs: Q8_0's 256 (one d for all blocks), Q4_K's nibbles × 6-bit scales and mins.
        let distinct = {
            let mut s: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            s.sort_unstable();
            s.dedup();
            s.len()
        };
        let want = if ty == GgmlDType::Q8_0 { 256 } else { 10_000 };
        assert!(distinct >= want, "{ty:?}: only {distinct} distinct weights");
    }
    assert!(random_blocks(GgmlDType::Q6K, 256, 0.02, 1).is_err());
    assert!(random_blocks(GgmlDType::Q8_0, 33, 0.02, 1).is_err());
}

/// The parallel host quantizer (`bench --psnr` with q8_0 / q4_k) gives exactly candle's blocks, from
/// f32 and from bf16 weights.
#[test]
fn parallel_quantizer_matches_candle() {
    use qwen_edit::models::quant::ggml::quantize;
    let w = Tensor::randn(0f32, 0.02, (37, 512), &Device::Cpu).unwrap();
    for ty in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        let want = QTensor::quantize(&w, ty).unwrap().data().unwrap().into_owned();
        assert_eq!(quantize(&w, ty).unwrap(), want, "{ty:?}");
        let wb = w.to_dtype(DType::BF16).unwrap();
        let want = QTensor::quantize(&wb.to_dtype(DType::F32).unwrap(), ty).unwrap();
        assert_eq!(
            quantize(&wb, ty).unwrap(),
            want.data().unwrap().into_owned(),
            "{ty:?} bf16"
        );
    }
    assert!(quantize(
        &Tensor::zeros((2, 48), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q8_0
    )
    .is_err());
}

/// [`GgmlLinears`] quantizing another backend's weights: the selected Linear layers become GGML blocks of
/// exactly those weights (the GEMM stays within the format's precision of the dense one), the others
/// and the biases pass through.
#[test]
fn ggml_linears_quantize_the_inner_weights() {
    use qwen_edit::models::quant::ggml::{GgmlLinears, GgmlSource};
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (96, 512), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.1, 96, &dev).unwrap();
    let small = Tensor::randn(0f32, 0.05, (8, 48), &dev).unwrap();
    let mut map = HashMap::new();
    map.insert("blk.proj.weight".to_string(), w.clone());
    map.insert("blk.proj.bias".to_string(), b.clone());
    map.insert("blk.small.weight".to_string(), small.clone());
    let linears: HashMap<String, (usize, usize)> =
        [("blk.proj".to_string(), (96, 512)), ("blk.small".to_string(), (8, 48))].into();
    let inner = VarBuilder::from_tensors(map, DType::F32, &dev);
    let x = Tensor::randn(0f32, 1.0, (3, 512), &dev).unwrap();
    let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    for (ty, bound) in [(GgmlDType::Q8_0, 0.01), (GgmlDType::Q4K, 0.12)] {
        struct Tensors(VarBuilder<'static>);
        impl candle_nn::var_builder::SimpleBackend for Tensors {
            fn get(
                &self,
                s: candle_core::Shape,
                n: &str,
                _: candle_nn::Init,
                d: DType,
                _: &Device,
            ) -> candle_core::Result<Tensor> {
                self.0.get(s, n)?.to_dtype(d)
            }
            fn get_unchecked(&self, n: &str, d: DType, _: &Device) -> candle_core::Result<Tensor> {
                self.0.get_unchecked_dtype(n, d)
            }
            fn contains_tensor(&self, n: &str) -> bool {
                self.0.contains_tensor(n)
            }
        }
        let backend = GgmlLinears::new(
            Box::new(Tensors(inner.clone())),
            ty,
            &linears,
            |m| m.starts_with("blk."),
            GgmlSource::Quantize,
            DType::F32,
        )
        .unwrap();
        // 48 inputs are not whole blocks: `blk.small` stays dense.
        assert_eq!(backend.len(), 1);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone());
        let lin = linear(512, 96, vb.pp("blk").pp("proj")).unwrap();
        let LinearWeight::Ggml(q) = lin.weight() else {
            panic!("{ty:?}: not served as GGML blocks");
        };
        assert_eq!(q.dtype(), ty);
        assert_eq!(
            q.data().unwrap().into_owned(),
            QTensor::quantize(&w, ty).unwrap().data().unwrap().into_owned()
        );
        let e = rel_err(&lin.forward(&x).unwrap(), &want);
        assert!(e < bound && e > 1e-5, "{ty:?}: rel err {e}");
        let small_lin = qwen_edit::models::nn::linear::linear_no_bias(48, 8, vb.pp("blk").pp("small")).unwrap();
        assert!(matches!(small_lin.weight(), LinearWeight::Dense(_)));
    }
}
