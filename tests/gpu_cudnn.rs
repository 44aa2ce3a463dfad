//! GPU tests of the cuDNN paths (feature `cudnn`; run on a machine with an NVIDIA GPU and libcudnn.so.9):
//! - cuDNN fused attention against an f32 reference (candle matmul + softmax on the same GPU), for the
//!   transformer's shapes (H24 D128, S 8448 and 4352), odd lengths, B = 2, Sq ≠ Skv, D = 80, causal and
//!   an additive key mask: max |err| / max |ref| ≤ 1e-2;
//! - cuDNN conv2d against candle's conv2d in f32 on the CPU for the VAE's shapes (3×3 pad 1, 1×1,
//!   3×3 stride 2 after the (0, 1, 0, 1) zero pad, 3 → 96 … 384 channels, odd sizes), with and without
//!   bias, in bf16 (≤ 1e-2) and f32 (≤ 1e-4);
//! - the dispatch (`attention`, `nn::conv::Conv2d`, a random full-size VAE) agrees with the fallback,
//!   and switching cuDNN off (`set_enabled`, the switch behind `QWEN_EDIT_NO_CUDNN`) falls back.
//!
//! Outputs are filled with NaN before cuDNN writes them (`set_poison_outputs`), so an unwritten element
//! fails. The tests share process-wide switches, so each takes `LOCK`.
//!
//! `bench_cudnn_vs_fallback` (ignored by default) prints the timing table that
//! `kernels/bench_torch_ref.py` prints for torch:
//! `cargo test --release --features cudnn --test gpu_cudnn -- --ignored --nocapture bench`.
#![cfg(feature = "cudnn")]

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use qwen_edit::models::nn::attention::{attention, AttnMask};
use qwen_edit::models::nn::conv::Conv2d;
use qwen_edit::models::nn::cudnn::{self, SdpaMask};
use qwen_edit::models::nn::flash;
use qwen_edit::models::presets;
use qwen_edit::models::random::RandomWeights;
use qwen_edit::models::vae::{AutoencoderKLQwenImage, VaeConfig};

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests and resets the switches (cuDNN on, outputs poisoned).
fn setup() -> (MutexGuard<'static, ()>, Device) {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Shows the shim's plan choices and fallback reasons (RUST_LOG overrides the default).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "qwen_edit=debug".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    cudnn::set_enabled(Some(true));
    cudnn::set_poison_outputs(true);
    let dev = Device::new_cuda(0).expect("these tests need a CUDA GPU");
    if let Err(e) = cudnn::version() {
        panic!("cuDNN did not load: {e}");
    }
    (guard, dev)
}

fn randn(shape: &[usize], std: f32, dtype: DType, dev: &Device) -> Tensor {
    Tensor::randn(0f32, std, shape, dev).unwrap().to_dtype(dtype).unwrap()
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

/// max |got − want| / max |want| in f32 on the CPU; NaN anywhere gives NaN (and fails `<`).
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let got = got.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let want = want.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(got.dims(), want.dims());
    let nan = got
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .any(|v| !v.is_finite());
    if nan {
        return f32::NAN;
    }
    max_abs(&(&got - &want).unwrap()) / max_abs(&want).max(1e-12)
}

/// softmax(q·kᵀ·scale + bias)·v in f32 on q's device, 512 query rows at a time. `bias`: `[B, Skv]`
/// additive key bias (f32) or `None`; `causal`: query i sees keys 0..=i.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, causal: bool, scale: f64) -> Tensor {
    let (b, _, sq, _) = q.dims4().unwrap();
    let skv = k.dim(2).unwrap();
    let q = q.to_dtype(DType::F32).unwrap();
    let kt = k
        .to_dtype(DType::F32)
        .unwrap()
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap();
    let v = v.to_dtype(DType::F32).unwrap();
    let mut outs = Vec::new();
    let mut start = 0;
    while start < sq {
        let len = 512.min(sq - start);
        let qc = q.narrow(2, start, len).unwrap().contiguous().unwrap();
        let mut s = (qc.matmul(&kt).unwrap() * scale).unwrap(); // [B, H, len, Skv]
        if let Some(bias) = bias {
            s = s.broadcast_add(&bias.reshape((b, 1, 1, skv)).unwrap()).unwrap();
        }
        if causal {
            let rows: Vec<f32> = (start..start + len)
                .flat_map(|i| (0..skv).map(move |j| if j <= i { 0.0 } else { -1e30 }))
                .collect();
            let m = Tensor::from_vec(rows, (1, 1, len, skv), q.device()).unwrap();
            s = s.broadcast_add(&m).unwrap();
        }
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        outs.push(p.matmul(&v).unwrap());
        start += len;
    }
    Tensor::cat(&outs, 2).unwrap()
}

struct Case {
    b: usize,
    h: usize,
    sq: usize,
    skv: usize,
    d: usize,
}

fn case(b: usize, h: usize, sq: usize, skv: usize, d: usize) -> Case {
    Case { b, h, sq, skv, d }
}

fn check_sdpa(dev: &Device, c: &Case, mask: &str) -> Option<f32> {
    let q = randn(&[c.b, c.h, c.sq, c.d], 1.0, DType::BF16, dev);
    let k = randn(&[c.b, c.h, c.skv, c.d], 1.0, DType::BF16, dev);
    let v = randn(&[c.b, c.h, c.skv, c.d], 1.0, DType::BF16, dev);
    let scale = 1.0 / (c.d as f64).sqrt();
    // Key bias: batch 0 drops its last quarter of keys, batch 1 a span in the middle.
    let bias = (mask == "keys").then(|| {
        let rows: Vec<f32> = (0..c.b)
            .flat_map(|bi| {
                (0..c.skv).map(move |j| {
                    let drop = if bi % 2 == 0 {
                        j >= c.skv * 3 / 4
                    } else {
                        (c.skv / 3..c.skv / 2).contains(&j)
                    };
                    if drop {
                        -1e30
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Tensor::from_vec(rows, (c.b, c.skv), dev).unwrap()
    });
    let sdpa_mask = match (mask, &bias) {
        ("causal", _) => SdpaMask::Causal,
        (_, Some(b)) => SdpaMask::KeyBias(b),
        _ => SdpaMask::None,
    };
    let got = cudnn::sdpa(&q, &k, &v, sdpa_mask, scale).unwrap()?;
    assert_eq!(got.dims(), &[c.b, c.h, c.sq, c.d]);
    assert_eq!(got.dtype(), DType::BF16);
    let want = reference(&q, &k, &v, bias.as_ref(), mask == "causal", scale);
    Some(rel_err(&got, &want))
}

#[test]
fn cudnn_sdpa_matches_f32_reference() {
    let (_g, dev) = setup();
    let cases = [
        case(1, 24, 8448, 8448, 128),
        case(1, 24, 4352, 4352, 128),
        case(1, 24, 1001, 1001, 128),
        case(2, 4, 777, 777, 128),
        case(2, 3, 1000, 777, 128),
        case(1, 16, 1296, 1296, 80),
        case(2, 5, 333, 1001, 64),
    ];
    for c in &cases {
        let e = check_sdpa(&dev, c, "none")
            .unwrap_or_else(|| panic!("cuDNN SDPA declined B{} H{} Sq{} Skv{} D{}", c.b, c.h, c.sq, c.skv, c.d));
        println!(
            "SDPA B{} H{} Sq{} Skv{} D{}: rel err {e:.2e}",
            c.b, c.h, c.sq, c.skv, c.d
        );
        assert!(
            e < 1e-2,
            "B{} H{} Sq{} Skv{} D{}: rel err {e}",
            c.b,
            c.h,
            c.sq,
            c.skv,
            c.d
        );
    }
}

#[test]
fn cudnn_sdpa_causal_matches_f32_reference() {
    let (_g, dev) = setup();
    for c in [case(2, 28, 300, 300, 128), case(1, 4, 1501, 1501, 128)] {
        let e = check_sdpa(&dev, &c, "causal").unwrap_or_else(|| panic!("cuDNN SDPA declined causal S{}", c.sq));
        println!("SDPA causal B{} H{} S{}: rel err {e:.2e}", c.b, c.h, c.sq);
        assert!(e < 1e-2, "causal S{}: rel err {e}", c.sq);
    }
}

/// The key-bias variant is optional: if cuDNN rejects a broadcast bias the dispatch uses the flash
/// kernel (logged once), and this test only reports it.
#[test]
fn cudnn_sdpa_key_bias_matches_f32_reference_when_taken() {
    let (_g, dev) = setup();
    for c in [case(2, 4, 300, 300, 128), case(2, 3, 1000, 777, 128)] {
        match check_sdpa(&dev, &c, "keys") {
            Some(e) => {
                println!("SDPA key bias B{} Sq{} Skv{}: rel err {e:.2e}", c.b, c.sq, c.skv);
                assert!(e < 1e-2, "key bias Sq{} Skv{}: rel err {e}", c.sq, c.skv);
            }
            None => println!(
                "SDPA key bias B{} Sq{} Skv{}: declined by cuDNN (flash kernel used)",
                c.b, c.sq, c.skv
            ),
        }
    }
}

#[test]
fn attention_dispatch_uses_cudnn_and_falls_back_when_off() {
    let (_g, dev) = setup();
    let c = case(1, 8, 1024, 1024, 128);
    let q = randn(&[c.b, c.h, c.sq, c.d], 1.0, DType::BF16, &dev);
    let k = randn(&[c.b, c.h, c.skv, c.d], 1.0, DType::BF16, &dev);
    let v = randn(&[c.b, c.h, c.skv, c.d], 1.0, DType::BF16, &dev);
    let scale = 1.0 / (c.d as f64).sqrt();
    let want = reference(&q, &k, &v, None, false, scale);
    let direct = cudnn::sdpa(&q, &k, &v, SdpaMask::None, scale)
        .unwrap()
        .expect("cuDNN declined");
    let via = attention(&q, &k, &v, AttnMask::None, scale).unwrap();
    // Same plan, same inputs: the dispatch returns cuDNN's result bit for bit.
    assert_eq!(rel_err(&via, &direct), 0.0);
    cudnn::set_enabled(Some(false));
    assert!(cudnn::sdpa(&q, &k, &v, SdpaMask::None, scale).unwrap().is_none());
    let fallback = attention(&q, &k, &v, AttnMask::None, scale).unwrap();
    cudnn::set_enabled(Some(true));
    let (e_cudnn, e_flash) = (rel_err(&via, &want), rel_err(&fallback, &want));
    println!("dispatch: cuDNN rel err {e_cudnn:.2e}, fallback {e_flash:.2e}");
    assert!(e_cudnn < 1e-2 && e_flash < 1e-2);
    assert!(
        rel_err(&fallback, &via) > 0.0,
        "the fallback should be a different kernel"
    );
}

/// One conv case: input `[n, c, h, w]`, kernel `k×k` to `out` channels; `pad01` applies the
/// downsampler's (0, 1, 0, 1) zero pad first.
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    out: usize,
    k: usize,
    padding: usize,
    stride: usize,
    pad01: bool,
}

fn check_conv(dev: &Device, cc: &ConvCase, dtype: DType, with_bias: bool) -> f32 {
    let fan_in = (cc.c * cc.k * cc.k) as f32;
    let mut x = randn(&[cc.n, cc.c, cc.h, cc.w], 1.0, dtype, dev);
    if cc.pad01 {
        x = x.pad_with_zeros(3, 0, 1).unwrap().pad_with_zeros(2, 0, 1).unwrap();
    }
    let w = randn(&[cc.out, cc.c, cc.k, cc.k], 1.0 / fan_in.sqrt(), dtype, dev);
    let b = with_bias.then(|| randn(&[cc.out], 0.5, dtype, dev));
    let got = cudnn::conv2d(&x, &w, b.as_ref(), cc.padding, cc.stride)
        .unwrap()
        .unwrap_or_else(|| panic!("cuDNN declined conv x {:?} w {:?} {dtype:?}", x.dims(), w.dims()));
    assert_eq!(got.dtype(), dtype);
    // Reference: the same (rounded) values, f32 on the CPU.
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let mut want = cpu(&x).conv2d(&cpu(&w), cc.padding, cc.stride, 1, 1).unwrap();
    if let Some(b) = &b {
        want = want.broadcast_add(&cpu(b).reshape((1, cc.out, 1, 1)).unwrap()).unwrap();
    }
    rel_err(&got, &want)
}

fn vae_conv_cases() -> Vec<ConvCase> {
    let c3 = |n, c, h, w, out| ConvCase {
        n,
        c,
        h,
        w,
        out,
        k: 3,
        padding: 1,
        stride: 1,
        pad01: false,
    };
    let c1 = |c, h, w, out| ConvCase {
        n: 1,
        c,
        h,
        w,
        out,
        k: 1,
        padding: 0,
        stride: 1,
        pad01: false,
    };
    let down = |c, h, w| ConvCase {
        n: 1,
        c,
        h,
        w,
        out: c,
        k: 3,
        padding: 0,
        stride: 2,
        pad01: true,
    };
    vec![
        c3(1, 3, 67, 53, 96),  // encoder conv_in, odd sizes
        c3(1, 96, 64, 64, 96), // 96-channel resnet
        c3(2, 96, 33, 31, 96), // batch 2, odd
        c3(1, 96, 48, 40, 3),  // decoder conv_out
        c3(1, 192, 40, 40, 192),
        c3(1, 384, 33, 31, 384),
        c3(1, 384, 32, 32, 192), // upsampler conv
        c3(1, 16, 24, 24, 384),  // decoder conv_in
        c3(1, 384, 24, 24, 32),  // encoder conv_out
        c1(96, 32, 32, 192),     // resnet shortcut
        c1(384, 17, 19, 1152),   // attention to_qkv
        c1(16, 24, 24, 16),      // post_quant_conv
        down(96, 64, 64),
        down(192, 33, 35),
        down(384, 32, 32),
    ]
}

#[test]
fn cudnn_conv2d_bf16_matches_cpu_f32() {
    let (_g, dev) = setup();
    for (i, cc) in vae_conv_cases().iter().enumerate() {
        let with_bias = i % 3 != 2;
        let e = check_conv(&dev, cc, DType::BF16, with_bias);
        println!(
            "conv bf16 {}→{} k{} s{} {}×{} bias {with_bias}: rel err {e:.2e}",
            cc.c, cc.out, cc.k, cc.stride, cc.h, cc.w
        );
        assert!(
            e < 1e-2,
            "conv {}→{} k{} s{} {}×{}: rel err {e}",
            cc.c,
            cc.out,
            cc.k,
            cc.stride,
            cc.h,
            cc.w
        );
    }
}

#[test]
fn cudnn_conv2d_f32_matches_cpu_f32() {
    let (_g, dev) = setup();
    for cc in vae_conv_cases().iter().step_by(3) {
        let e = check_conv(&dev, cc, DType::F32, true);
        println!(
            "conv f32 {}→{} k{} s{} {}×{}: rel err {e:.2e}",
            cc.c, cc.out, cc.k, cc.stride, cc.h, cc.w
        );
        assert!(
            e < 1e-4,
            "f32 conv {}→{} k{} s{}: rel err {e} (TF32 used?)",
            cc.c,
            cc.out,
            cc.k,
            cc.stride
        );
    }
}

#[test]
fn conv_layer_uses_cudnn_and_falls_back_when_off() {
    let (_g, dev) = setup();
    let w = randn(&[96, 96, 3, 3], 0.03, DType::BF16, &dev);
    let b = randn(&[96], 0.5, DType::BF16, &dev);
    let x = randn(&[1, 96, 64, 64], 1.0, DType::BF16, &dev);
    let layer = Conv2d::new(w.clone(), Some(b.clone()), 1, 1);
    let via = layer.forward(&x).unwrap();
    let direct = cudnn::conv2d(&x, &w, Some(&b), 1, 1).unwrap().expect("cuDNN declined");
    assert_eq!(rel_err(&via, &direct), 0.0);
    cudnn::set_enabled(Some(false));
    assert!(cudnn::conv2d(&x, &w, Some(&b), 1, 1).unwrap().is_none());
    let fallback = layer.forward(&x).unwrap();
    cudnn::set_enabled(Some(true));
    let candle = layer.forward_candle(&x).unwrap();
    assert_eq!(
        rel_err(&fallback, &candle),
        0.0,
        "with cuDNN off the layer is candle's conv2d"
    );
    let e = rel_err(&via, &candle);
    println!("conv layer: cuDNN vs candle rel diff {e:.2e}");
    assert!(e < 1e-2);
}

#[test]
fn random_vae_with_cudnn_matches_fallback() {
    // bf16 through cuDNN and through candle's conv each drift from the f32 result by a few 1e-2 on a
    // random VAE (rounding compounds over ~30 convolutions), so they are compared with the f32 run of the
    // same weights (the device RNG reseeded: f32 draws, bf16 is their rounding), not with each other.
    let (_g, dev) = setup();
    let cfg: VaeConfig = serde_json::from_str(presets::VAE).unwrap();
    let build = |dtype| {
        dev.set_seed(20_261_206).unwrap();
        AutoencoderKLQwenImage::new(&cfg, RandomWeights::var_builder(dtype, &dev)).unwrap()
    };
    let (vae16, vae32) = (build(DType::BF16), build(DType::F32));
    let img = Tensor::rand(-1f32, 1.0, (1, 3, 256, 192), &dev).unwrap();
    let img16 = img.to_dtype(DType::BF16).unwrap();
    let z = vae16.encode(&img16).unwrap();
    let x = vae16.decode(&z).unwrap();
    let z32 = vae32.encode(&img).unwrap();
    let x32 = vae32.decode(&z32).unwrap();
    cudnn::set_enabled(Some(false));
    let z_ref = vae16.encode(&img16).unwrap();
    let x_ref = vae16.decode(&z_ref).unwrap();
    cudnn::set_enabled(Some(true));
    let (ez, ex) = (rel_err(&z, &z32), rel_err(&x, &x32));
    let (pz, px) = (rel_err(&z_ref, &z32), rel_err(&x_ref, &x32));
    println!(
        "random VAE 256×192 bf16 vs f32: cuDNN latents {ez:.2e} decoded {ex:.2e}; candle latents {pz:.2e} decoded {px:.2e}; \
         cuDNN vs candle {:.2e}",
        rel_err(&x, &x_ref)
    );
    assert_eq!(x.dims(), &[1, 3, 256, 192]);
    assert!(ez <= (1.5 * pz).max(2e-2), "latents: cuDNN {ez}, candle {pz}");
    assert!(ex <= (1.5 * px).max(2e-2), "decoded: cuDNN {ex}, candle {px}");
}

/// Median wall time (ms) of `f` over 20 runs after 5 warm-ups, synchronising around each run.
fn time_ms(dev: &Device, f: impl FnMut() -> Tensor) -> f64 {
    time_ms_n(dev, 5, 20, f)
}

fn time_ms_n(dev: &Device, warm: usize, runs: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    for _ in 0..warm {
        drop(f());
    }
    dev.synchronize().unwrap();
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let y = f();
            dev.synchronize().unwrap();
            let e = t.elapsed().as_secs_f64() * 1e3;
            drop(y);
            e
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[(runs - 1) / 2] + ms[runs / 2]) / 2.0
}

fn row(case: &str, path: &str, ms: f64, flop: f64) {
    println!("| {case} | {path} | {ms:.3} | {:.0} |", flop / ms / 1e9);
}

/// The timing table of `kernels/bench_torch_ref.py`, for cuDNN and the fallback path of each case.
#[test]
#[ignore]
fn bench_cudnn_vs_fallback() {
    let (_g, dev) = setup();
    cudnn::set_poison_outputs(false);
    println!("| case | path | ms | TFLOP/s |");
    println!("|---|---|---|---|");
    for s in [8448usize, 4352, 12518] {
        let (h, d) = (24usize, 128usize);
        let q = randn(&[1, h, s, d], 1.0, DType::BF16, &dev);
        let k = randn(&[1, h, s, d], 1.0, DType::BF16, &dev);
        let v = randn(&[1, h, s, d], 1.0, DType::BF16, &dev);
        let scale = 1.0 / (d as f64).sqrt();
        let flop = 4.0 * (h * s * s * d) as f64;
        let case = format!("sdpa B1 H{h} S{s} D{d}");
        // The first call of a shape builds its plan (heuristics, kernel compilation): what a new
        // prompt length costs once.
        let t = Instant::now();
        drop(
            cudnn::sdpa(&q, &k, &v, SdpaMask::None, scale)
                .unwrap()
                .expect("declined"),
        );
        dev.synchronize().unwrap();
        println!(
            "| {case} | cudnn first call | {:.3} | – |",
            t.elapsed().as_secs_f64() * 1e3
        );
        let t = time_ms(&dev, || {
            cudnn::sdpa(&q, &k, &v, SdpaMask::None, scale)
                .unwrap()
                .expect("declined")
        });
        row(&case, "cudnn", t, flop);
        let t = time_ms(&dev, || flash::flash_attention(&q, &k, &v, None, scale, false).unwrap());
        row(&case, "flash", t, flop);
    }
    // (name, c_in, c_out, size, stride 2 after the (0, 1, 0, 1) pad)
    let convs: [(&str, usize, usize, usize, bool); 17] = [
        ("ref 256→256 @512²", 256, 256, 512, false),
        ("dec 384→384 @128²", 384, 384, 128, false),
        ("dec 384→384 @256²", 384, 384, 256, false),
        ("dec up 384→192 @256²", 384, 192, 256, false),
        ("dec up 384→192 @512²", 384, 192, 512, false),
        ("dec 192→192 @512²", 192, 192, 512, false),
        ("dec up 192→96 @1024²", 192, 96, 1024, false),
        ("dec 96→96 @1024²", 96, 96, 1024, false),
        ("dec out 96→3 @1024²", 96, 3, 1024, false),
        ("enc in 3→96 @1024²", 3, 96, 1024, false),
        ("enc 96→96 @1024²", 96, 96, 1024, false),
        ("enc down 96 s2 @1024²", 96, 96, 1024, true),
        ("enc 192→192 @512²", 192, 192, 512, false),
        ("enc down 192 s2 @512²", 192, 192, 512, true),
        ("enc 384→384 @256²", 384, 384, 256, false),
        ("enc down 384 s2 @256²", 384, 384, 256, true),
        ("enc 384→384 @128²", 384, 384, 128, false),
    ];
    for (name, c, k, size, down) in convs {
        let mut x = randn(&[1, c, size, size], 1.0, DType::BF16, &dev);
        if down {
            x = x.pad_with_zeros(3, 0, 1).unwrap().pad_with_zeros(2, 0, 1).unwrap();
        }
        let (padding, stride) = if down { (0, 2) } else { (1, 1) };
        let layer = Conv2d::new(
            randn(&[k, c, 3, 3], 0.02, DType::BF16, &dev),
            Some(randn(&[k], 0.02, DType::BF16, &dev)),
            padding,
            stride,
        );
        let out = if down { size / 2 } else { size };
        let flop = 2.0 * (k * c * 9 * out * out) as f64;
        let t = Instant::now();
        drop(layer.forward(&x).unwrap());
        dev.synchronize().unwrap();
        println!(
            "| {name} | cudnn first call | {:.3} | – |",
            t.elapsed().as_secs_f64() * 1e3
        );
        let t = time_ms(&dev, || {
            cudnn::conv2d(&x, layer.weight(), layer.bias(), padding, stride)
                .unwrap()
                .expect("declined")
        });
        row(name, "cudnn", t, flop);
        let t = time_ms(&dev, || layer.forward_candle(&x).unwrap());
        row(name, "candle", t, flop);
    }
    // The whole random VAE at 1024² (bf16), cuDNN on and off: median of 3 after 1 warm-up.
    let cfg: VaeConfig = serde_json::from_str(presets::VAE).unwrap();
    let vae = AutoencoderKLQwenImage::new(&cfg, RandomWeights::var_builder(DType::BF16, &dev)).unwrap();
    let img = randn(&[1, 3, 1024, 1024], 0.5, DType::BF16, &dev);
    let z = vae.encode(&img).unwrap();
    for (path, on) in [("cudnn", true), ("candle", false)] {
        cudnn::set_enabled(Some(on));
        let t = time_ms_n(&dev, 1, 3, || vae.encode(&img).unwrap());
        println!("| vae encode 1024² | {path} | {t:.3} | – |");
        let t = time_ms_n(&dev, 1, 3, || vae.decode(&z).unwrap());
        println!("| vae decode 1024² | {path} | {t:.3} | – |");
    }
    cudnn::set_enabled(Some(true));
}
