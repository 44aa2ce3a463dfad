//! GPU tests of the fused element-wise kernels (`kernels/fused.cu`, `models::nn::fused`); build with
//! `--features cuda` and run on a machine with an NVIDIA GPU:
//! - each kernel in bf16 against the op-by-op path in f32 on the same (bf16-rounded) inputs, at the
//!   real shapes (8422 tokens split at 4096, dim 3072, 24 heads × 128, MLP 12288) and at small odd
//!   ones that take the scalar (unaligned) variants: max |error| / max |reference| ≤ 1e-2;
//! - one full-size block with random weights, fused against `QWEN_EDIT_NO_FUSED` (≤ 2e-2), and both
//!   against the same block in f32;
//! - `fused_micro_bench` (`--ignored`): ms per op and per block, fused vs unfused.
#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use qwen_edit::models::nn::fused::{self, HeadsPart, PerToken, ShiftScale};
use qwen_edit::models::nn::linear::Linear;
use qwen_edit::models::presets;
use qwen_edit::models::transformer::block::{BlockInputs, QwenImageTransformerBlock};
use qwen_edit::models::transformer::embed::{QwenEmbedRope, RopeFreqs};
use qwen_edit::models::transformer::TransformerConfig;

/// Real sizes: 1024² output + one 1024² reference (2 × 4096 image tokens) and 230 prompt tokens.
const S_TXT: usize = 230;
const S_NOISE: usize = 4096;
const S_IMG: usize = 2 * S_NOISE;
const S: usize = S_TXT + S_IMG + 96; // 8422 tokens as in the measured forward
const DIM: usize = 3072;
const HEADS: usize = 24;
const HEAD_DIM: usize = 128;
const MLP: usize = 4 * DIM;
const EPS: f64 = 1e-6;

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

/// `mean + std · N(0, 1)` in f32, rounded to bf16 and back (so both paths read identical values).
fn randn(shape: impl Into<Shape>, mean: f32, std: f32, dev: &Device) -> Tensor {
    Tensor::randn(mean, std, shape, dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap()
}

/// A bf16 copy of `t` that starts 1 element into its allocation (not 16-byte aligned).
fn misaligned_bf16(t: &Tensor) -> Tensor {
    let flat = bf16(t).flatten_all().unwrap();
    let padded = Tensor::cat(&[&flat.narrow(0, 0, 1).unwrap(), &flat], 0).unwrap();
    let view = padded
        .narrow(0, 1, flat.dim(0).unwrap())
        .unwrap()
        .reshape(t.shape())
        .unwrap();
    assert!(view.is_contiguous());
    view
}

/// max |got − want| / max |want| (on the device, in f32).
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
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
    let e = max(&(&got - &want).unwrap()) / max(&want).max(1e-12);
    assert!(e.is_finite(), "NaN or inf in the output");
    e
}

/// Runs `f` fused and checks that it launched a kernel.
fn fused_run<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let before = fused::launches();
    let r = fused::with_enabled(true, f);
    assert!(fused::launches() > before, "{what}: no fused kernel ran");
    r
}

/// Modulation rows as the block takes them: chunks of a `[rows, 6·d]` Linear output (strided views).
fn mod_rows(rows: usize, d: usize, dev: &Device) -> Tensor {
    randn((rows, 6 * d), 0.0, 0.5, dev)
}

fn check_layernorm_modulate(b: usize, s: usize, d: usize, bt: usize, split: Option<usize>, misalign: bool) {
    let dev = cuda();
    let x = randn((b, s, d), 0.3, 2.0, &dev);
    // Split: rows [0, bt) hold the t modulation and [bt, 2·bt) the t = 0 one, as in the block.
    let m = mod_rows(2 * bt, d, &dev);
    let run = |x: &Tensor, m: &Tensor| {
        let head = m.narrow(0, 0, bt).unwrap().chunk(6, 1).unwrap();
        let tail = m.narrow(0, bt, bt).unwrap().chunk(6, 1).unwrap();
        let p = |c: &[Tensor]| (c[0].clone(), c[1].clone());
        let ((h0, h1), (t0, t1)) = (p(&head), p(&tail));
        let hs = ShiftScale { shift: &h0, scale: &h1 };
        let ts = ShiftScale { shift: &t0, scale: &t1 };
        let spec = match split {
            None => PerToken::All(hs),
            Some(n) => PerToken::Split { n, head: hs, tail: ts },
        };
        fused::layernorm_modulate(x, EPS, spec).unwrap()
    };
    let want = run(&x, &m);
    let xb = if misalign { misaligned_bf16(&x) } else { bf16(&x) };
    let got = fused_run("layernorm_modulate", || run(&xb, &bf16(&m)));
    assert_eq!(got.dtype(), DType::BF16);
    let e = rel_err(&got, &want);
    eprintln!("layernorm_modulate b{b} s{s} d{d} bt{bt} split {split:?} misaligned {misalign}: {e:.2e}");
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn layernorm_modulate_matches_f32() {
    check_layernorm_modulate(1, S, DIM, 1, Some(S_TXT + S_NOISE), false);
    check_layernorm_modulate(1, S, DIM, 1, None, false);
    check_layernorm_modulate(2, 37, 24, 2, Some(11), false);
    check_layernorm_modulate(2, 37, 24, 1, None, true);
    check_layernorm_modulate(2, 5, 20, 2, Some(2), false);
}

fn check_gate_residual(b: usize, s: usize, d: usize, split: Option<usize>, with_bias: bool, misalign: bool) {
    let dev = cuda();
    let x = randn((b, s, d), 0.0, 3.0, &dev);
    let y = randn((b, s, d), 0.1, 1.0, &dev);
    let bias = randn(d, 0.0, 0.2, &dev);
    let m = mod_rows(2 * b, d, &dev);
    let run = |x: &Tensor, y: &Tensor, bias: &Tensor, m: &Tensor| {
        let head = m.narrow(0, 0, b).unwrap().chunk(6, 1).unwrap()[2].clone();
        let tail = m.narrow(0, b, b).unwrap().chunk(6, 1).unwrap()[5].clone();
        let spec = match split {
            None => PerToken::All(&head),
            Some(n) => PerToken::Split {
                n,
                head: &head,
                tail: &tail,
            },
        };
        fused::gate_residual(x, y, with_bias.then_some(bias), spec).unwrap()
    };
    let want = run(&x, &y, &bias, &m);
    let yb = if misalign { misaligned_bf16(&y) } else { bf16(&y) };
    let got = fused_run("gate_residual", || run(&bf16(&x), &yb, &bf16(&bias), &bf16(&m)));
    let e = rel_err(&got, &want);
    eprintln!("gate_residual b{b} s{s} d{d} split {split:?} bias {with_bias} misaligned {misalign}: {e:.2e}");
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn gate_residual_matches_f32() {
    check_gate_residual(1, S, DIM, Some(S_TXT + S_NOISE), true, false);
    check_gate_residual(1, S_TXT, DIM, None, true, false);
    check_gate_residual(2, 37, 24, Some(20), true, false);
    check_gate_residual(2, 37, 24, None, false, true);
    check_gate_residual(2, 9, 12, Some(3), true, false);
}

fn rope_tables(s: usize, d: usize, dev: &Device) -> (Tensor, Tensor) {
    let angles = Tensor::randn(0f32, 3.0, (s, d / 2), dev).unwrap();
    (angles.cos().unwrap(), angles.sin().unwrap())
}

/// Two parts (text, image) with bias; `qk` adds the RMSNorm and RoPE (`false` is the V case).
fn check_joint_heads(b: usize, s: [usize; 2], h: usize, d: usize, qk: bool, misalign: bool) {
    let dev = cuda();
    let xs: Vec<Tensor> = s.iter().map(|&s| randn((b, s, h * d), 0.0, 1.5, &dev)).collect();
    let biases: Vec<Tensor> = s.iter().map(|_| randn(h * d, 0.0, 0.3, &dev)).collect();
    let norms: Vec<Tensor> = s.iter().map(|_| randn(d, 1.0, 0.2, &dev)).collect();
    let ropes: Vec<(Tensor, Tensor)> = s.iter().map(|&s| rope_tables(s, d, &dev)).collect();
    let run = |xs: &[Tensor], biases: &[Tensor], norms: &[Tensor]| {
        let parts: Vec<HeadsPart> = (0..2)
            .map(|i| HeadsPart {
                x: &xs[i],
                bias: Some(&biases[i]),
                norm: qk.then_some(&norms[i]),
                rope: qk.then_some((&ropes[i].0, &ropes[i].1)),
            })
            .collect();
        fused::joint_heads(&parts, h, d, EPS).unwrap()
    };
    let want = run(&xs, &biases, &norms);
    let xb: Vec<Tensor> = xs
        .iter()
        .map(|x| if misalign { misaligned_bf16(x) } else { bf16(x) })
        .collect();
    let bb: Vec<Tensor> = biases.iter().map(bf16).collect();
    let nb: Vec<Tensor> = norms.iter().map(bf16).collect();
    let got = fused_run("joint_heads", || run(&xb, &bb, &nb));
    assert_eq!(got.dims(), &[b, h, s[0] + s[1], d]);
    let e = rel_err(&got, &want);
    eprintln!("joint_heads b{b} s{s:?} h{h} d{d} qk {qk} misaligned {misalign}: {e:.2e}");
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn joint_heads_match_f32() {
    check_joint_heads(1, [S_TXT, S - S_TXT], HEADS, HEAD_DIM, true, false);
    check_joint_heads(1, [S_TXT, S - S_TXT], HEADS, HEAD_DIM, false, false);
    check_joint_heads(2, [7, 33], 3, 16, true, false); // p2 variant, small
    check_joint_heads(2, [5, 9], 3, 16, true, true); // p1 (misaligned)
    check_joint_heads(2, [3, 11], 5, 6, true, false); // p1, D not a multiple of 4
    check_joint_heads(1, [4, 13], 2, 160, true, false); // p1, D > 128
    check_joint_heads(2, [9, 1], 4, 64, false, false);
}

fn check_heads_to_rows(b: usize, h: usize, s: usize, d: usize, s_first: usize) {
    let dev = cuda();
    let o = bf16(&randn((b, h, s, d), 0.0, 1.0, &dev));
    let (wf, wr) = fused::with_enabled(false, || fused::heads_to_rows(&o, s_first).unwrap());
    let (gf, gr) = fused_run("heads_to_rows", || fused::heads_to_rows(&o, s_first).unwrap());
    // A pure copy: bit-identical.
    assert_eq!(rel_err(&gf, &wf), 0.0, "first rows b{b} h{h} s{s} d{d}");
    assert_eq!(rel_err(&gr, &wr), 0.0, "rest rows b{b} h{h} s{s} d{d}");
}

#[test]
fn heads_to_rows_is_exact() {
    check_heads_to_rows(1, HEADS, S, HEAD_DIM, S_TXT);
    check_heads_to_rows(2, 3, 37, 20, 11);
    check_heads_to_rows(2, 5, 9, 16, 8);
    check_heads_to_rows(1, 2, 5, 6, 1);
}

fn check_bias_gelu(shape: &[usize], misalign: bool) {
    let dev = cuda();
    let n = *shape.last().unwrap();
    let x = randn(shape, 0.0, 2.0, &dev);
    let bias = randn(n, 0.0, 0.5, &dev);
    let want = fused::bias_gelu_tanh(&x, Some(&bias)).unwrap();
    let xb = if misalign { misaligned_bf16(&x) } else { bf16(&x) };
    let got = fused_run("bias_gelu_tanh", || {
        fused::bias_gelu_tanh(&xb, Some(&bf16(&bias))).unwrap()
    });
    let e = rel_err(&got, &want);
    eprintln!("bias_gelu_tanh {shape:?} misaligned {misalign}: {e:.2e}");
    assert!(e <= 1e-2, "{e}");
}

#[test]
fn bias_gelu_tanh_matches_f32() {
    check_bias_gelu(&[1, S, MLP], false);
    check_bias_gelu(&[2, 7, 40], false);
    check_bias_gelu(&[2, 7, 40], true);
    check_bias_gelu(&[3, 13], false);
}

/// Random weights generated once per name (f32, on the device) and handed out in any dtype, so the
/// same block can be built in bf16 and in f32. Norm weights are 1 + N(0, 0.1), the rest N(0, 0.02).
#[derive(Clone, Default)]
struct SharedRandom(Arc<Mutex<HashMap<String, Tensor>>>);

impl SimpleBackend for SharedRandom {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut map = self.0.lock().unwrap();
        if let Some(t) = map.get(name) {
            return t.to_dtype(dtype);
        }
        let t = if name.contains("norm") {
            randn(s, 1.0, 0.1, dev)
        } else {
            randn(s, 0.0, 0.02, dev)
        };
        map.insert(name.to_string(), t.clone());
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need the shape of `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        !name.ends_with(".ggml")
            && !name.ends_with("ggml_type")
            && !name.ends_with("scale_weight")
            && !name.ends_with("weight_scale")
    }
}

/// A full-size block (dim 3072, 24 × 128, zero_cond_t) and its inputs.
struct BlockCase {
    cfg: TransformerConfig,
    img: Tensor,
    txt: Tensor,
    temb: Tensor,
    rope: RopeFreqs,
    mask: Tensor,
}

impl BlockCase {
    fn new(img_shapes: &[(usize, usize, usize)], s_txt: usize, dev: &Device) -> Self {
        let cfg: TransformerConfig = serde_json::from_str(presets::TRANSFORMER_2511).unwrap();
        let s_img: usize = img_shapes.iter().map(|&(f, h, w)| f * h * w).sum();
        let rope = QwenEmbedRope::new(cfg.axes_dims_rope, dev)
            .unwrap()
            .forward(img_shapes, s_txt)
            .unwrap();
        // Text keys: the last 5 are padding; image keys are always kept.
        let keep: Vec<f32> = (0..s_txt + s_img)
            .map(|i| if (s_txt - 5..s_txt).contains(&i) { 0.0 } else { 1.0 })
            .collect();
        Self {
            img: randn((1, s_img, DIM), 0.0, 1.0, dev),
            txt: randn((1, s_txt, DIM), 0.0, 1.0, dev),
            // SiLU(temb) rows: t, then t = 0.
            temb: randn((2, DIM), 0.0, 1.0, dev).silu().unwrap(),
            rope,
            mask: Tensor::from_vec(keep, (1, s_txt + s_img), dev).unwrap(),
            cfg,
        }
    }

    fn block(&self, weights: &SharedRandom, dtype: DType, dev: &Device) -> QwenImageTransformerBlock {
        let vb = VarBuilder::from_backend(Box::new(weights.clone()), dtype, dev.clone());
        QwenImageTransformerBlock::new(&self.cfg, vb).unwrap()
    }

    fn forward(&self, block: &QwenImageTransformerBlock, dtype: DType, noise_tokens: usize) -> (Tensor, Tensor) {
        let temb = self.temb.to_dtype(dtype).unwrap();
        let temb_txt = temb.narrow(0, 0, 1).unwrap();
        let inp = BlockInputs {
            temb_img: &temb,
            temb_txt: &temb_txt,
            rope: &self.rope,
            key_mask: Some(&self.mask),
            noise_tokens: Some(noise_tokens),
            attn_chunk_elements: None,
        };
        let img = self.img.to_dtype(dtype).unwrap();
        let txt = self.txt.to_dtype(dtype).unwrap();
        let out = block.forward(&img, &txt, &inp).unwrap();
        (out.img, out.txt)
    }
}

#[test]
fn full_size_block_fused_matches_unfused() {
    let dev = cuda();
    // 512² output + one 512² reference, 77 prompt tokens (odd), the 2511 split at the noise tokens.
    let shapes = [(1usize, 32usize, 32usize), (1, 32, 32)];
    let case = BlockCase::new(&shapes, 77, &dev);
    let weights = SharedRandom::default();
    let block16 = case.block(&weights, DType::BF16, &dev);
    let block32 = case.block(&weights, DType::F32, &dev);
    let before = fused::launches();
    let fused_out = fused::with_enabled(true, || case.forward(&block16, DType::BF16, 1024));
    // 4 LayerNorm+modulate, 4 gated residuals, 3 × 2 joint-head parts, 1 heads-to-rows, 2 GELUs.
    assert_eq!(fused::launches() - before, 17, "not every op of the block ran fused");
    let plain = fused::with_enabled(false, || case.forward(&block16, DType::BF16, 1024));
    let exact = case.forward(&block32, DType::F32, 1024);
    for (name, i) in [("img", 0), ("txt", 1)] {
        let pick = |o: &(Tensor, Tensor)| if i == 0 { o.0.clone() } else { o.1.clone() };
        let e_fu = rel_err(&pick(&fused_out), &pick(&plain));
        let e_f32 = rel_err(&pick(&fused_out), &pick(&exact));
        let e_plain_f32 = rel_err(&pick(&plain), &pick(&exact));
        eprintln!("block {name}: fused vs unfused {e_fu:.2e}; vs f32: fused {e_f32:.2e}, unfused {e_plain_f32:.2e}");
        assert!(e_fu <= 2e-2, "{name}: {e_fu}");
        assert!(
            e_f32 <= (1.5 * e_plain_f32).max(2e-2),
            "{name}: fused drifts further from f32 than unfused"
        );
    }
}

/// Median ms of `f` over 20 runs after 3 warm-up runs, the device synchronised around each.
fn time_ms(dev: &Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    dev.synchronize().unwrap();
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            f();
            dev.synchronize().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn bench(dev: &Device, what: &str, mut f: impl FnMut()) {
    let fused_ms = fused::with_enabled(true, || time_ms(dev, &mut f));
    let plain_ms = fused::with_enabled(false, || time_ms(dev, &mut f));
    println!(
        "{what:<48} fused {fused_ms:8.3} ms   unfused {plain_ms:8.3} ms   ({:.2}×)",
        plain_ms / fused_ms
    );
}

/// `cargo test --release --features cuda --test gpu_fused -- --ignored --nocapture fused_micro_bench`
#[test]
#[ignore]
fn fused_micro_bench() {
    let dev = cuda();
    let x = bf16(&randn((1, S, DIM), 0.0, 1.0, &dev));
    let y = bf16(&randn((1, S, DIM), 0.0, 1.0, &dev));
    let bias = bf16(&randn(DIM, 0.0, 0.1, &dev));
    let m = bf16(&mod_rows(2, DIM, &dev));
    let head = m.narrow(0, 0, 1).unwrap().chunk(6, 1).unwrap();
    let tail = m.narrow(0, 1, 1).unwrap().chunk(6, 1).unwrap();
    let n = S_TXT + S_NOISE;
    println!("shapes: B1 S{S} dim {DIM} ({HEADS}×{HEAD_DIM}), MLP {MLP}, split at {n}");
    bench(&dev, "layernorm_modulate [8422, 3072] split", || {
        let spec = PerToken::Split {
            n,
            head: ShiftScale {
                shift: &head[0],
                scale: &head[1],
            },
            tail: ShiftScale {
                shift: &tail[0],
                scale: &tail[1],
            },
        };
        fused::layernorm_modulate(&x, EPS, spec).unwrap();
    });
    bench(&dev, "gate_residual + bias [8422, 3072] split", || {
        let spec = PerToken::Split {
            n,
            head: &head[2],
            tail: &tail[2],
        };
        fused::gate_residual(&x, &y, Some(&bias), spec).unwrap();
    });
    let xt = bf16(&randn((1, S_TXT, DIM), 0.0, 1.0, &dev));
    let xi = bf16(&randn((1, S - S_TXT, DIM), 0.0, 1.0, &dev));
    let w = bf16(&randn(HEAD_DIM, 1.0, 0.1, &dev));
    let rt = rope_tables(S_TXT, HEAD_DIM, &dev);
    let ri = rope_tables(S - S_TXT, HEAD_DIM, &dev);
    for qk in [true, false] {
        let label = if qk {
            "joint_heads q/k (bias, norm, rope)"
        } else {
            "joint_heads v (bias)"
        };
        bench(&dev, label, || {
            let parts = [
                HeadsPart {
                    x: &xt,
                    bias: Some(&bias),
                    norm: qk.then_some(&w),
                    rope: qk.then_some((&rt.0, &rt.1)),
                },
                HeadsPart {
                    x: &xi,
                    bias: Some(&bias),
                    norm: qk.then_some(&w),
                    rope: qk.then_some((&ri.0, &ri.1)),
                },
            ];
            fused::joint_heads(&parts, HEADS, HEAD_DIM, EPS).unwrap();
        });
    }
    let o = bf16(&randn((1, HEADS, S, HEAD_DIM), 0.0, 1.0, &dev));
    bench(&dev, "heads_to_rows [1, 24, 8422, 128]", || {
        fused::heads_to_rows(&o, S_TXT).unwrap();
    });
    let h = bf16(&randn((1, S, MLP), 0.0, 1.0, &dev));
    let hb = bf16(&randn(MLP, 0.0, 0.1, &dev));
    bench(&dev, "bias_gelu_tanh [8422, 12288]", || {
        fused::bias_gelu_tanh(&h, Some(&hb)).unwrap();
    });

    // One full-size block at 1024² with one reference (8192 image tokens, 230 text tokens).
    let case = BlockCase::new(&[(1, 64, 64), (1, 64, 64)], S_TXT, &dev);
    let weights = SharedRandom::default();
    let block = case.block(&weights, DType::BF16, &dev);
    bench(&dev, "block forward (S 8422, 2511 split)", || {
        case.forward(&block, DType::BF16, S_NOISE);
    });
    // The block's GEMMs alone, for the floor: 6 QKV + 2 out + 4 MLP Linears over the same rows.
    let dense = |o: usize, i: usize| Linear::from_weights(bf16(&randn((o, i), 0.0, 0.02, &dev)), None).unwrap();
    let (lin, up, down) = (dense(DIM, DIM), dense(MLP, DIM), dense(DIM, MLP));
    let gemm_ms = time_ms(&dev, || {
        for _ in 0..4 {
            lin.forward(&x).unwrap();
        }
        up.forward(&x).unwrap();
        down.forward(&h).unwrap();
    });
    println!(
        "{:<48} {gemm_ms:8.3} ms (4 dim² GEMMs + MLP up + down over all 8422 rows)",
        "GEMM floor of one block"
    );
}
