//! Parity of the seeded noise and the flow-match scheduler with the Python reference.
//!
//! Golden files (from the `fixtures` branch): `tests/fixtures/golden/randn.safetensors` holds
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype)` as
//! `seed{S}_{f32|bf16}_{dims joined by x}` (bf16 values may be stored upcast to f32);
//! `tests/fixtures/golden/scheduler.json` holds sigmas/timesteps of `FlowMatchEulerDiscreteScheduler`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use qwen_edit::pipeline::noise::torch_randn;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map(|v| v.into_iter().map(f32::to_bits).collect())
        .unwrap_or_else(|e| panic!("reading tensor: {e}"))
}

#[test]
fn randn_matches_torch_bitwise() {
    let path = golden("randn.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let seeds: [u64; 4] = [0, 42, (1 << 32) + 7, 123_456_789];
    let shapes: [&[usize]; 5] = [
        &[1, 1, 16, 128, 128],
        &[1, 1, 16, 13, 7],
        &[1, 1, 4, 8, 8],
        &[3, 5],
        &[7],
    ];
    let mut checked = 0;
    for seed in seeds {
        for shape in shapes {
            for (dtype, tag) in [(DType::F32, "f32"), (DType::BF16, "bf16")] {
                let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                let name = format!("seed{seed}_{tag}_{}", dims.join("x"));
                let want = tensors
                    .get(&name)
                    .unwrap_or_else(|| panic!("{name} missing in {}", path.display()));
                let got = torch_randn(seed, shape, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got.dtype(), dtype, "{name}");
                assert_eq!(got.dims(), want.dims(), "{name}: shape");
                let (g, w) = (f32_bits(&got), f32_bits(want));
                let bad = g.iter().zip(&w).filter(|(a, b)| a != b).count();
                let first = g.iter().zip(&w).position(|(a, b)| a != b);
                assert_eq!(bad, 0, "{name}: {bad}/{} values differ, first at {first:?}", g.len());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 40);
}

#[test]
fn randn_rejects_unsupported_dtype() {
    assert!(torch_randn(0, &[4], DType::U8, &Device::Cpu).is_err());
}

#[derive(serde::Deserialize)]
struct SchedulerCase {
    config: String,
    steps: usize,
    image_seq_len: usize,
    mu: f64,
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
}

#[test]
fn scheduler_matches_diffusers() {
    use qwen_edit::pipeline::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
    let path = golden("scheduler.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let cases: Vec<SchedulerCase> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing: {e}"));
    assert!(!cases.is_empty());
    let mut inexact = 0;
    for case in &cases {
        let cfg = match case.config.as_str() {
            "qwen" => SchedulerConfig::qwen_image(),
            "lightning" => SchedulerConfig::lightning(),
            other => panic!("unknown config {other}"),
        };
        let label = format!("{} steps={} seq={}", case.config, case.steps, case.image_seq_len);
        let mu = cfg.mu(case.image_seq_len).unwrap_or_else(|| panic!("{label}: no mu"));
        assert!(
            (mu - case.mu).abs() <= 1e-12 * case.mu.abs().max(1.0),
            "{label}: mu {mu} vs {}",
            case.mu
        );
        let mut s = FlowMatchEulerScheduler::new(cfg);
        s.set_timesteps(case.steps, Some(mu))
            .unwrap_or_else(|e| panic!("{label}: {e:#}"));
        assert_eq!(s.sigmas().len(), case.sigmas.len(), "{label}: sigma count");
        assert_eq!(s.timesteps().len(), case.timesteps.len(), "{label}: timestep count");
        for (i, (&g, &w)) in s.sigmas().iter().zip(&case.sigmas).enumerate() {
            assert!((f64::from(g) - w).abs() <= 1e-6, "{label}: sigma[{i}] {g} vs {w}");
            inexact += usize::from(g != w as f32);
        }
        for (i, (&g, &w)) in s.timesteps().iter().zip(&case.timesteps).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{label}: timestep[{i}] {g} vs {w}"
            );
            inexact += usize::from(g != w as f32);
        }
    }
    // Everything is float32 in the reference; we reproduce it exactly.
    assert_eq!(
        inexact, 0,
        "{inexact} sigmas/timesteps differ from the reference in the last bits"
    );
}
