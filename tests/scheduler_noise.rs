//! Parity of the seeded noise and the flow-match scheduler with the Python reference.
//!
//! Golden files (from the `fixtures` branch): `tests/fixtures/golden/randn.safetensors` holds
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype)` as
//! `seed{S}_{f32|bf16}_{dims joined by x}` (bf16 values may be stored upcast to f32);
//! `tests/fixtures/golden/scheduler.json` holds sigmas/timesteps of `FlowMatchEulerDiscreteScheduler`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use qwen_edit::pipeline::noise::{torch_randn, torch_randn_with_kernel, NormalKernel};

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

/// Parses `[scalar.]seed{S}_{f32|bf16}_{dims joined by x}`.
fn parse_randn_name(name: &str) -> (NormalKernel, u64, DType, Vec<usize>) {
    let (kernel, rest) = match name.strip_prefix("scalar.") {
        Some(rest) => (NormalKernel::Generic, rest),
        None => (NormalKernel::Avx2, name),
    };
    let parts: Vec<&str> = rest.split('_').collect();
    assert_eq!(parts.len(), 3, "unexpected golden name {name}");
    let seed = parts[0]
        .strip_prefix("seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("seed in {name}"));
    let dtype = match parts[1] {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => panic!("dtype {other} in {name}"),
    };
    let dims = parts[2]
        .split('x')
        .map(|d| d.parse().unwrap_or_else(|_| panic!("dims in {name}")))
        .collect();
    (kernel, seed, dtype, dims)
}

#[test]
fn randn_matches_torch_bitwise() {
    let path = golden("randn.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut checked = [0usize; 2];
    for name in names {
        let want = &tensors[name];
        let (kernel, seed, dtype, dims) = parse_randn_name(name);
        let got =
            torch_randn_with_kernel(seed, &dims, dtype, &Device::Cpu, kernel).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.dtype(), dtype, "{name}");
        assert_eq!(got.dims(), want.dims(), "{name}: shape");
        let (g, w) = (f32_bits(&got), f32_bits(want));
        let bad = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        let first = g.iter().zip(&w).position(|(a, b)| a != b);
        assert_eq!(bad, 0, "{name}: {bad}/{} values differ, first at {first:?}", g.len());
        checked[usize::from(kernel == NormalKernel::Generic)] += 1;
    }
    // 4 seeds x 2 dtypes x 5 shapes + the large seed-0 pair, and the generic-kernel f32 repeats.
    assert!(checked[0] >= 42 && checked[1] >= 12, "checked {checked:?}");
}

#[test]
fn randn_rejects_unsupported_dtype() {
    assert!(torch_randn(0, &[4], DType::U8, &Device::Cpu).is_err());
}

#[derive(serde::Deserialize)]
struct SchedulerGolden {
    configs: std::collections::HashMap<String, serde_json::Value>,
    cases: Vec<SchedulerCase>,
}

#[derive(serde::Deserialize)]
struct SchedulerCase {
    config: String,
    steps: usize,
    image_seq_len: usize,
    mu: f64,
    /// `null` where the reference produced NaN.
    sigmas: Vec<Option<f64>>,
    timesteps: Vec<Option<f64>>,
}

#[test]
fn scheduler_matches_diffusers() {
    use qwen_edit::pipeline::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
    let path = golden("scheduler.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let golden: SchedulerGolden = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing: {e}"));
    // The stored configs parse as scheduler_config.json files and equal our presets.
    for (name, preset) in [
        ("qwen", SchedulerConfig::qwen_image()),
        ("lightning", SchedulerConfig::lightning()),
    ] {
        let value = golden
            .configs
            .get(name)
            .unwrap_or_else(|| panic!("config {name} missing"));
        let parsed = SchedulerConfig::from_json(&value.to_string()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(parsed, preset, "{name}");
    }
    assert!(golden.cases.len() >= 20, "only {} cases", golden.cases.len());
    let (mut inexact, mut undefined) = (0, 0);
    for case in &golden.cases {
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
        let result = s.set_timesteps(case.steps, Some(mu));
        if case.sigmas.iter().any(Option::is_none) {
            // The reference divides 0 by 0 (one step with shift_terminal); we refuse that schedule.
            assert!(result.is_err(), "{label}: expected an error for the NaN schedule");
            undefined += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{label}: {e:#}"));
        assert_eq!(s.sigmas().len(), case.sigmas.len(), "{label}: sigma count");
        assert_eq!(s.timesteps().len(), case.timesteps.len(), "{label}: timestep count");
        for (i, (&g, w)) in s.sigmas().iter().zip(&case.sigmas).enumerate() {
            let w = w.unwrap_or(f64::NAN);
            assert!((f64::from(g) - w).abs() <= 1e-6, "{label}: sigma[{i}] {g} vs {w}");
            inexact += usize::from(g != w as f32);
        }
        for (i, (&g, w)) in s.timesteps().iter().zip(&case.timesteps).enumerate() {
            let w = w.unwrap_or(f64::NAN);
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
    assert!(undefined > 0, "the golden file should include the one-step NaN cases");
}
