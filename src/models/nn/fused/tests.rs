//! The unfused chain of every op (what runs on the CPU) against hand-written loops over plain `f32`
//! vectors, on small random inputs: odd token counts, two sequences, the `zero_cond_t` split, a
//! broadcast modulation row.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::models::nn::linear::{ggml_type_id, linear, Linear, LinearWeight, GGML_DATA, GGML_TYPE};

/// Deterministic values in roughly [−amp, amp] (a small LCG), never all zero.
fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / ((1u64 << 24) as f32); // [0, 1)
            amp * (2.0 * u - 1.0)
        })
        .collect()
}

fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: worst error {worst:e} > {tol:e}");
}

/// Shift and scale rows for `bt` sequences of `d` channels, split or not, with their plain values.
struct ModCase {
    shift: [Tensor; 2],
    scale: [Tensor; 2],
    values: [(Vec<f32>, Vec<f32>); 2],
}

fn mod_case(bt: usize, d: usize, seed: u64) -> ModCase {
    let v = |k: u64| values(bt * d, seed + k, 0.8);
    let values = [(v(1), v(2)), (v(3), v(4))];
    ModCase {
        shift: [tensor(&values[0].0, &[bt, d]), tensor(&values[1].0, &[bt, d])],
        scale: [tensor(&values[0].1, &[bt, d]), tensor(&values[1].1, &[bt, d])],
        values,
    }
}

fn ln_mod_reference(
    x: &[f32],
    (b, s, d): (usize, usize, usize),
    m: &ModCase,
    bt: usize,
    split: Option<usize>,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        let row_p = if bt == 1 { 0 } else { bi };
        for si in 0..s {
            let g = usize::from(split.is_some_and(|n| si >= n));
            let (shift, scale) = (&m.values[g].0[row_p * d..][..d], &m.values[g].1[row_p * d..][..d]);
            let row = &x[(bi * s + si) * d..][..d];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + 1e-6).sqrt();
            for c in 0..d {
                let n = (row[c] as f64 - mean) * rstd;
                out[(bi * s + si) * d + c] = (n * (1.0 + scale[c] as f64) + shift[c] as f64) as f32;
            }
        }
    }
    out
}

#[test]
fn layernorm_modulate_matches_the_formula() {
    for (b, s, d, bt, split) in [
        (2, 7, 24, 2, None),
        (2, 9, 16, 2, Some(4)),
        (1, 5, 40, 1, Some(2)),
        (2, 3, 8, 1, None),
        (1, 6, 32, 1, Some(9)),
    ] {
        let xv: Vec<f32> = values(b * s * d, 7, 3.0).iter().map(|v| v + 0.5).collect();
        let x = tensor(&xv, &[b, s, d]);
        let m = mod_case(bt, d, 11);
        let p = |g: usize| ShiftScale {
            shift: &m.shift[g],
            scale: &m.scale[g],
        };
        let spec = match split {
            None => PerToken::All(p(0)),
            Some(n) => PerToken::Split {
                n,
                head: p(0),
                tail: p(1),
            },
        };
        let got = layernorm_modulate(&x, 1e-6, spec).unwrap();
        assert_eq!(got.dims(), &[b, s, d]);
        let want = ln_mod_reference(&xv, (b, s, d), &m, bt, split);
        assert_close(
            &flat(&got),
            &want,
            2e-5,
            &format!("ln-mod b{b} s{s} d{d} bt{bt} {split:?}"),
        );
    }
}

#[test]
fn gate_residual_matches_the_formula() {
    for (b, s, d, bt, split, with_bias) in [
        (2, 7, 24, 2, None, true),
        (2, 9, 16, 2, Some(5), true),
        (1, 5, 8, 1, Some(1), false),
        (2, 3, 12, 1, None, false),
    ] {
        let (xv, yv) = (values(b * s * d, 1, 2.0), values(b * s * d, 2, 2.0));
        let gv = [values(bt * d, 3, 1.0), values(bt * d, 4, 1.0)];
        let bv = values(d, 5, 0.5);
        let (x, y) = (tensor(&xv, &[b, s, d]), tensor(&yv, &[b, s, d]));
        let g = [tensor(&gv[0], &[bt, d]), tensor(&gv[1], &[bt, d])];
        let bias = tensor(&bv, &[d]);
        let spec = match split {
            None => PerToken::All(&g[0]),
            Some(n) => PerToken::Split {
                n,
                head: &g[0],
                tail: &g[1],
            },
        };
        let got = gate_residual(&x, &y, with_bias.then_some(&bias), spec).unwrap();
        let mut want = vec![0f32; xv.len()];
        for bi in 0..b {
            for si in 0..s {
                let grp = usize::from(split.is_some_and(|n| si >= n));
                let row_g = if bt == 1 { 0 } else { bi };
                for c in 0..d {
                    let i = (bi * s + si) * d + c;
                    let bias = if with_bias { bv[c] } else { 0.0 };
                    want[i] = xv[i] + gv[grp][row_g * d + c] * (yv[i] + bias);
                }
            }
        }
        assert_close(&flat(&got), &want, 1e-6, &format!("gate b{b} s{s} d{d} {split:?}"));
    }
}

/// One part of the joint-heads reference: values `[B, S, H·D]`, bias, norm weight, rope angles.
struct PartCase {
    s: usize,
    x: Vec<f32>,
    bias: Option<Vec<f32>>,
    norm: Option<Vec<f32>>,
    angles: Option<Vec<f32>>,
}

fn heads_reference(parts: &[PartCase], b: usize, h: usize, d: usize) -> Vec<f32> {
    let s_total: usize = parts.iter().map(|p| p.s).sum();
    let mut out = vec![0f32; b * h * s_total * d];
    let mut off = 0;
    for p in parts {
        for bi in 0..b {
            for si in 0..p.s {
                for hi in 0..h {
                    let mut v: Vec<f64> = (0..d)
                        .map(|c| {
                            let i = (bi * p.s + si) * h * d + hi * d + c;
                            p.x[i] as f64 + p.bias.as_ref().map_or(0.0, |bv| bv[hi * d + c] as f64)
                        })
                        .collect();
                    if let Some(w) = &p.norm {
                        let ms = v.iter().map(|a| a * a).sum::<f64>() / d as f64;
                        let r = 1.0 / (ms + 1e-6).sqrt();
                        v.iter_mut().zip(w).for_each(|(a, &w)| *a *= r * w as f64);
                    }
                    if let Some(ang) = &p.angles {
                        for k in 0..d / 2 {
                            let t = ang[si * d / 2 + k] as f64;
                            let (x0, x1) = (v[2 * k], v[2 * k + 1]);
                            v[2 * k] = x0 * t.cos() - x1 * t.sin();
                            v[2 * k + 1] = x0 * t.sin() + x1 * t.cos();
                        }
                    }
                    let o = ((bi * h + hi) * s_total + off + si) * d;
                    for c in 0..d {
                        out[o + c] = v[c] as f32;
                    }
                }
            }
        }
        off += p.s;
    }
    out
}

#[test]
fn joint_heads_match_norm_rope_and_layout() {
    let (b, h, d) = (2usize, 3usize, 8usize);
    let make = |s: usize, seed: u64, norm: bool, rope: bool| PartCase {
        s,
        x: values(b * s * h * d, seed, 2.0),
        bias: Some(values(h * d, seed + 1, 0.3)),
        norm: norm.then(|| values(d, seed + 2, 0.5).iter().map(|v| v + 1.0).collect()),
        angles: rope.then(|| values(s * d / 2, seed + 3, 3.0)),
    };
    // Text (5 tokens) then image (7 tokens) with norm + RoPE; V-like parts without either.
    for (norm, rope) in [(true, true), (false, false), (true, false)] {
        let cases = [make(5, 10, norm, rope), make(7, 20, norm, rope)];
        let tensors: Vec<_> = cases
            .iter()
            .map(|c| {
                let ang = c.angles.as_ref().map(|a| tensor(a, &[c.s, d / 2]));
                (
                    tensor(&c.x, &[b, c.s, h * d]),
                    c.bias.as_ref().map(|v| tensor(v, &[h * d])),
                    c.norm.as_ref().map(|v| tensor(v, &[d])),
                    ang.map(|a| (a.cos().unwrap(), a.sin().unwrap())),
                )
            })
            .collect();
        let parts: Vec<HeadsPart> = tensors
            .iter()
            .map(|(x, bias, norm, rope)| HeadsPart {
                x,
                bias: bias.as_ref(),
                norm: norm.as_ref(),
                rope: rope.as_ref().map(|(c, s)| (c, s)),
            })
            .collect();
        let got = joint_heads(&parts, h, d, 1e-6).unwrap();
        assert_eq!(got.dims(), &[b, h, 12, d]);
        let want = heads_reference(&cases, b, h, d);
        assert_close(
            &flat(&got),
            &want,
            2e-5,
            &format!("joint heads norm {norm} rope {rope}"),
        );
    }
}

#[test]
fn heads_to_rows_splits_the_joint_sequence() {
    let (b, h, s, d) = (2usize, 3usize, 9usize, 4usize);
    let ov = values(b * h * s * d, 3, 1.0);
    let o = tensor(&ov, &[b, h, s, d]);
    for s_first in [4usize, 1, 8] {
        let (first, rest) = heads_to_rows(&o, s_first).unwrap();
        assert_eq!(first.dims(), &[b, s_first, h * d]);
        assert_eq!(rest.dims(), &[b, s - s_first, h * d]);
        let (f, r) = (flat(&first), flat(&rest));
        for bi in 0..b {
            for si in 0..s {
                for hi in 0..h {
                    for c in 0..d {
                        let src = ov[((bi * h + hi) * s + si) * d + c];
                        let got = if si < s_first {
                            f[(bi * s_first + si) * h * d + hi * d + c]
                        } else {
                            r[(bi * (s - s_first) + si - s_first) * h * d + hi * d + c]
                        };
                        assert_eq!(got, src, "b{bi} s{si} h{hi} c{c}");
                    }
                }
            }
        }
    }
}

#[test]
fn bias_gelu_tanh_matches_the_formula() {
    let (rows, n) = (7usize, 40usize);
    let xv = values(rows * n, 9, 4.0);
    let bv = values(n, 10, 1.0);
    let got = bias_gelu_tanh(&tensor(&xv, &[1, rows, n]), Some(&tensor(&bv, &[n]))).unwrap();
    assert_eq!(got.dims(), &[1, rows, n]);
    let want: Vec<f32> = xv
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let v = (x + bv[i % n]) as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
            (0.5 * v * (1.0 + inner.tanh())) as f32
        })
        .collect();
    assert_close(&flat(&got), &want, 1e-5, "bias gelu");
    // Known values: gelu_tanh(1) = 0.8411920, gelu_tanh(−2) = −0.0454023.
    let y = flat(&bias_gelu_tanh(&tensor(&[1.0, -2.0], &[2]), None).unwrap());
    assert_close(&y, &[0.841_192, -0.045_402_3], 1e-5, "gelu values");
}

#[test]
fn the_switch_is_per_thread_inside_a_scope() {
    let before = enabled();
    let inner = with_enabled(!before, || {
        assert_eq!(enabled(), !before);
        std::thread::spawn(enabled).join().unwrap()
    });
    assert_eq!(enabled(), before);
    assert_eq!(inner, before, "another thread sees the process-wide setting");
    // Nothing launches on the CPU.
    let x = tensor(&values(8, 1, 1.0), &[1, 1, 8]);
    let n = launches();
    bias_gelu_tanh(&x, None).unwrap();
    assert_eq!(launches(), n);
}

fn vb(map: HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

/// `forward_no_bias` + `bias` is `forward` for every weight format, bit for bit.
#[test]
fn linear_without_bias_plus_bias_is_forward() {
    let (inp, out) = (64usize, 24usize);
    let w = tensor(&values(out * inp, 1, 0.1), &[out, inp]);
    let b = tensor(&values(out, 2, 0.5), &[out]);
    let x = tensor(&values(2 * 5 * inp, 3, 1.0), &[2, 5, inp]);

    let dense = Linear::from_weights(w.clone(), Some(b.clone())).unwrap();
    let (q, s) = crate::models::quant::fp8::quantize_rows(&w).unwrap();
    let fp8 = linear(
        inp,
        out,
        vb(HashMap::from([
            ("weight".into(), q),
            ("weight_scale".into(), s),
            ("bias".into(), b.clone()),
        ])),
    )
    .unwrap();
    assert!(matches!(fp8.weight(), LinearWeight::Fp8 { .. }));
    let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let bytes = qt.data().unwrap().to_vec();
    let n = bytes.len();
    let ggml = linear(
        inp,
        out,
        vb(HashMap::from([
            (GGML_DATA.into(), Tensor::from_vec(bytes, n, &Device::Cpu).unwrap()),
            (
                GGML_TYPE.into(),
                Tensor::new(&[ggml_type_id(GgmlDType::Q8_0)], &Device::Cpu).unwrap(),
            ),
            ("bias".into(), b.clone()),
        ])),
    )
    .unwrap();
    assert!(matches!(ggml.weight(), LinearWeight::Ggml(_)));

    for (name, lin) in [("dense", &dense), ("fp8", &fp8), ("ggml", &ggml)] {
        let full = flat(&lin.forward(&x).unwrap());
        let nb = lin.forward_no_bias(&x).unwrap();
        assert_eq!(nb.dims(), &[2, 5, out], "{name}");
        let plus = flat(&nb.broadcast_add(lin.bias().unwrap()).unwrap());
        assert_eq!(full, plus, "{name}");
        let without = flat(&nb);
        assert!(
            full.iter().zip(&without).any(|(a, b)| a != b),
            "{name}: the bias was added"
        );
    }
}
