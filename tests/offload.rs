//! Streaming offload on the CPU (the same capture, packing, slot ring and schedule as on CUDA, with
//! synchronous copies): the streamed transformer gives bit-identical outputs to the resident one on the
//! tiny fixtures — stored weights, LoRA merged, fp8 at load, GGUF with mixed GGML block types, bf16 —
//! for every prefetch depth and over repeated calls; the pipeline with `--memory offload`; the bench
//! configurations (`--configs`) through the whole command on a tiny config.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use qwen_edit::cli::{parse_bench_config, BenchConfig, BenchWeights};
use qwen_edit::models::lora::LoraFile;
use qwen_edit::models::offload::OffloadOptions;
use qwen_edit::models::quant::ggml::{GgmlLinears, GgmlSource};
use qwen_edit::models::quant::{transformer_fp8_select, WeightFormat};
use qwen_edit::models::random::{linear_shapes, probe_shapes, RandomWeights};
use qwen_edit::models::transformer::{QwenImageTransformer2DModel, TransformerConfig, TransformerWeights};
use qwen_edit::models::weights::{read_config, ComponentWeights};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn transformer_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model).join("transformer")
}

/// One golden input of a tiny transformer.
struct Case {
    g: HashMap<String, Tensor>,
}

impl Case {
    fn load(name: &str) -> Self {
        let path = fixtures().join("golden").join(format!("{name}.safetensors"));
        Self {
            g: candle_core::safetensors::load(path, &Device::Cpu).unwrap(),
        }
    }

    fn run(&self, model: &QwenImageTransformer2DModel) -> Tensor {
        let shapes: Vec<(usize, usize, usize)> = self.g["img_shapes"]
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .map(|r| (r[0] as usize, r[1] as usize, r[2] as usize))
            .collect();
        model
            .forward(
                &self.g["hidden_states"],
                &self.g["encoder_hidden_states"],
                self.g.get("encoder_hidden_states_mask"),
                &self.g["timestep"],
                &shapes,
            )
            .unwrap()
    }
}

/// The two tiny transformers with an input each: (model folder, golden case).
const MODELS: [(&str, &str); 2] = [
    ("tiny-edit", "transformer_a_1ref_mask"),
    ("tiny-plus", "transformer_b_2ref_zc"),
];

fn load(model: &str, dtype: DType, opts: &TransformerWeights) -> QwenImageTransformer2DModel {
    QwenImageTransformer2DModel::load_with(&transformer_dir(model), dtype, &Device::Cpu, opts)
        .unwrap()
        .0
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

/// The streamed model (prefetch 0, 1, 2 and 5 on 2 blocks) equals the resident one bit for bit, on
/// two calls in a row each; the statistics count one copy of every block per call.
fn assert_streamed_equal(model: &str, case: &str, dtype: DType, opts: TransformerWeights) {
    let case = Case::load(case);
    let resident = load(model, dtype, &opts);
    assert!(!resident.is_streamed());
    assert!(resident.offload_stats().unwrap().is_none());
    let want = bits(&case.run(&resident));
    assert!(want.iter().any(|&b| b != 0));
    let streamed = load(
        model,
        dtype,
        &TransformerWeights {
            offload: Some(OffloadOptions::with_prefetch(0)),
            ..opts
        },
    );
    assert!(streamed.is_streamed());
    for prefetch in [0, 1, 2, 5] {
        streamed.set_offload_prefetch(prefetch);
        for call in 0..2 {
            let got = bits(&case.run(&streamed));
            assert!(
                got == want,
                "{model} {dtype:?}: prefetch {prefetch}, call {call} differs"
            );
        }
        let stats = streamed.offload_stats().unwrap().unwrap();
        assert_eq!(stats.prefetch, prefetch);
        assert_eq!(stats.slots, (prefetch + 1).min(2));
        assert_eq!(stats.blocks, 2);
        assert_eq!(stats.bytes, stats.host_bytes, "every block copied once per call");
        assert!(stats.host_bytes > 0 && !stats.pinned);
    }
}

#[test]
fn streamed_transformer_is_bit_identical() {
    for (model, case) in MODELS {
        assert_streamed_equal(model, case, DType::F32, TransformerWeights::default());
    }
}

#[test]
fn streamed_transformer_in_bf16_is_bit_identical() {
    let (model, case) = MODELS[0];
    assert_streamed_equal(model, case, DType::BF16, TransformerWeights::default());
}

#[test]
fn streamed_transformer_with_fp8_weights_is_bit_identical() {
    for (model, case) in MODELS {
        let opts = TransformerWeights {
            format: WeightFormat::Fp8,
            ..Default::default()
        };
        assert_streamed_equal(model, case, DType::F32, opts);
    }
}

#[test]
fn streamed_transformer_with_a_lora_is_bit_identical() {
    let lora = LoraFile {
        path: fixtures().join("lora/tiny_plus_diffusers.safetensors"),
        scale: 0.7,
        label: "tiny".into(),
    };
    let opts = TransformerWeights {
        loras: vec![lora.clone()],
        ..Default::default()
    };
    assert_streamed_equal("tiny-plus", MODELS[1].1, DType::F32, opts);
    // The LoRA really changed the weights.
    let case = Case::load(MODELS[1].1);
    let plain = bits(&case.run(&load("tiny-plus", DType::F32, &TransformerWeights::default())));
    let merged = TransformerWeights {
        loras: vec![lora],
        offload: Some(OffloadOptions::default()),
        ..Default::default()
    };
    assert!(bits(&case.run(&load("tiny-plus", DType::F32, &merged))) != plain);
}

/// A GGUF file of tiny-plus whose blocks use different GGML types (Q8_0 in block 0, Q4_K for block 1's
/// 256-wide down projections and Q8_0 for its other Linear weights): the slots are sized per name for
/// the largest block, and the type ids are served from the host.
#[test]
fn streamed_transformer_from_gguf_with_mixed_block_types_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let w = ComponentWeights::open(&transformer_dir("tiny-plus")).unwrap();
    let mut tensors = Vec::new();
    for f in w.files() {
        tensors.extend(candle_core::safetensors::load(f, &Device::Cpu).unwrap());
    }
    let quantized: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = t.to_dtype(DType::F32).unwrap();
            let ty = if name.starts_with("transformer_blocks.") && t.rank() == 2 {
                if name.starts_with("transformer_blocks.1.") && t.dim(1).unwrap() % 256 == 0 {
                    GgmlDType::Q4K
                } else {
                    GgmlDType::Q8_0
                }
            } else {
                GgmlDType::F32
            };
            (name, QTensor::quantize(&t, ty).unwrap())
        })
        .collect();
    assert!(quantized.iter().any(|(_, q)| q.dtype() == GgmlDType::Q4K));
    let file = dir.path().join("tiny.gguf");
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&file).unwrap(), &[], &refs).unwrap();
    let opts = TransformerWeights {
        file: Some(file),
        ..Default::default()
    };
    assert_streamed_equal("tiny-plus", MODELS[1].1, DType::F32, opts);
}

/// Random GGML blocks from [`GgmlLinears`] (what `bench --configs q8_0+offload` builds): the shape
/// probe finds the Linear layers, the selected ones become blocks, and the streamed model runs, finite
/// and the same on every call. (The dense layers come from the unseeded CPU generator, so a resident
/// build has other weights; bit equality of streamed and resident GGML weights is checked on a GGUF file.)
#[test]
fn random_ggml_transformer_streams() {
    let cfg: TransformerConfig = read_config(&transformer_dir("tiny-plus")).unwrap();
    let shapes = probe_shapes(DType::F32, |vb| QwenImageTransformer2DModel::new(&cfg, vb).map(drop)).unwrap();
    let linears = linear_shapes(&shapes);
    assert_eq!(linears["transformer_blocks.1.attn.to_q"], (64, 64));
    assert_eq!(linears["transformer_blocks.0.img_mlp.net.2"], (64, 256));
    assert_eq!(linears["proj_out"], (cfg.proj_out_dim(), 64));
    let case = Case::load(MODELS[1].1);
    for ty in [GgmlDType::Q8_0, GgmlDType::Q4K] {
        let backend = GgmlLinears::new(
            Box::new(RandomWeights),
            ty,
            &linears,
            transformer_fp8_select,
            GgmlSource::Random { seed: 5 },
            DType::F32,
        )
        .unwrap();
        // 14 Linear layers per block; Q8_0 takes all (inputs of 64 or 256), Q4_K the 256-wide ones.
        let want = if ty == GgmlDType::Q8_0 { 2 * 14 } else { 2 * 2 };
        assert_eq!(backend.len(), want, "{ty:?}");
        let streamed = QwenImageTransformer2DModel::new_streamed(
            &cfg,
            Box::new(backend),
            DType::F32,
            &Device::Cpu,
            OffloadOptions::with_prefetch(1),
        )
        .unwrap();
        let out = case.run(&streamed);
        assert!(bits(&out) == bits(&case.run(&streamed)), "{ty:?}: two calls differ");
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0), "{ty:?}");
        let stats = streamed.offload_stats().unwrap().unwrap();
        assert_eq!(stats.bytes, stats.host_bytes);
    }
}

/// `--memory offload` through the tiny Plus pipeline: the same pixels as `high`, two runs in a row.
#[test]
fn offload_pipeline_matches_high_memory() {
    use qwen_edit::pipeline::edit::{EditPipeline, EditRequest, LoadOptions};
    use qwen_edit::pipeline::layout::ModelFolder;
    use qwen_edit::pipeline::memory::{MemoryMode, MemoryPlan};

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
        // Small references keep the VAE encode (the slow part on the CPU) short.
        ref_size: Some(64),
    };
    let folder = ModelFolder::open(&fixtures().join("models/tiny-plus")).unwrap();
    let run = |memory| {
        let opts = LoadOptions {
            memory,
            offload_prefetch: 1,
            ..Default::default()
        };
        let pipe = EditPipeline::load_with(&folder, &Device::Cpu, DType::F32, &opts).unwrap();
        let outs: Vec<Vec<u32>> = (0..2).map(|_| bits(&pipe.run(&req, &mut ()).unwrap().image)).collect();
        (pipe.memory().plan, outs)
    };
    let (plan, high) = run(MemoryMode::High);
    assert_eq!(plan, MemoryPlan::High);
    let (plan, offload) = run(MemoryMode::Offload);
    assert_eq!(plan, MemoryPlan::Offload);
    assert!(high[0] == high[1]);
    assert!(
        offload[0] == high[0] && offload[1] == high[0],
        "offload differs from high"
    );
}

#[test]
fn bench_configs_parse() {
    let c = |w, offload| BenchConfig { weights: w, offload };
    assert_eq!(parse_bench_config("bf16"), Ok(c(BenchWeights::Stored, false)));
    assert_eq!(parse_bench_config("stored"), Ok(c(BenchWeights::Stored, false)));
    assert_eq!(parse_bench_config("FP8+offload"), Ok(c(BenchWeights::Fp8, true)));
    assert_eq!(parse_bench_config(" q8_0 "), Ok(c(BenchWeights::Q8_0, false)));
    assert_eq!(parse_bench_config("q4_k+offload"), Ok(c(BenchWeights::Q4K, true)));
    assert!(parse_bench_config("q5_k").unwrap_err().contains("unknown weights"));
    assert!(parse_bench_config("bf16+fast").unwrap_err().contains("+fast"));
    for s in ["bf16", "fp8+offload", "q8_0", "q4_k+offload"] {
        assert_eq!(parse_bench_config(s).unwrap().to_string(), s);
    }
    use clap::Parser;
    let cli = qwen_edit::cli::Cli::try_parse_from([
        "qwen-edit",
        "bench",
        "--configs",
        "bf16,fp8+offload,q4_k",
        "--offload-prefetch",
        "3",
    ])
    .unwrap();
    let qwen_edit::cli::Command::Bench(args) = cli.command else {
        panic!("not bench");
    };
    assert_eq!(
        args.configs,
        vec![
            c(BenchWeights::Stored, false),
            c(BenchWeights::Fp8, true),
            c(BenchWeights::Q4K, false)
        ]
    );
    assert_eq!(args.offload_prefetch, 3);
    assert!(qwen_edit::cli::Cli::try_parse_from(["qwen-edit", "bench", "--configs", "bf16,q2"]).is_err());
}

/// `qwen-edit bench --configs …` end to end on the CPU with the tiny Plus transformer config: one row
/// per configuration with its offload statistics, all finite.
#[test]
fn bench_runs_every_configuration() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit"))
        .args([
            "bench",
            "--device",
            "cpu",
            "--component",
            "transformer",
            "--size",
            "64",
            "--refs",
            "1",
            "--txt-len",
            "8",
            "--warmup",
            "0",
            "--iters",
            "1",
            "--configs",
            "bf16,fp8,q8_0,q4_k,bf16+offload,fp8+offload,q8_0+offload,q4_k+offload",
            "--offload-prefetch",
            "1",
            "--json",
        ])
        .env(
            "QWEN_EDIT_BENCH_TRANSFORMER_CONFIG",
            transformer_dir("tiny-plus").join("config.json"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{json:#}");
    for r in results {
        let name = r["name"].as_str().unwrap();
        let config = r["config"].as_str().unwrap();
        assert!(name.starts_with("transformer_64_1ref_"), "{name}");
        assert!(name.ends_with(config), "{name} vs {config}");
        assert_eq!(r["finite"], true, "{r:#}");
        assert!(r["ms"].as_f64().unwrap() > 0.0);
        if config.ends_with("+offload") {
            assert_eq!(r["prefetch"], 1, "{r:#}");
            assert!(r["host_gb"].as_f64().unwrap() > 0.0, "{r:#}");
            assert!(r["ms_prefetch0"].as_f64().unwrap() > 0.0, "{r:#}");
            assert!(r.get("overlap").is_some(), "{r:#}");
        } else {
            assert!(r.get("prefetch").is_none(), "{r:#}");
        }
    }
}
