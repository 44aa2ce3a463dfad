#!/usr/bin/env python3
"""torch's side of the cuDNN comparison: times torch's SDPA and F.conv2d (NCHW, bf16, with bias) on the
shapes of `bench_cudnn_vs_fallback` in tests/gpu_cudnn.rs and prints the same table, so both can run in
one call on the same card and be compared row by row.

Timing as on the Rust side: median wall time of 20 runs after 5 warm-ups, with
torch.cuda.synchronize() around each run. TFLOP/s counts 4·B·H·S²·D for attention and
2·K·C·R·S·OH·OW for a convolution. torch's defaults are kept (SDPA picks cuDNN on Hopper;
torch.backends.cudnn.benchmark is off, as in diffusers); `sdpa-cudnn` forces the cuDNN backend.

Usage: python3 kernels/bench_torch_ref.py
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, warm=5, runs=20):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def row(case, path, ms, flop):
    print(f"| {case} | {path} | {ms:.3f} | {flop / ms / 1e9:.0f} |")


CONVS = [
    ("ref 256→256 @512²", 256, 256, 512, False),
    ("dec 384→384 @128²", 384, 384, 128, False),
    ("dec 384→384 @256²", 384, 384, 256, False),
    ("dec up 384→192 @256²", 384, 192, 256, False),
    ("dec up 384→192 @512²", 384, 192, 512, False),
    ("dec 192→192 @512²", 192, 192, 512, False),
    ("dec up 192→96 @1024²", 192, 96, 1024, False),
    ("dec 96→96 @1024²", 96, 96, 1024, False),
    ("dec out 96→3 @1024²", 96, 3, 1024, False),
    ("enc in 3→96 @1024²", 3, 96, 1024, False),
    ("enc 96→96 @1024²", 96, 96, 1024, False),
    ("enc down 96 s2 @1024²", 96, 96, 1024, True),
    ("enc 192→192 @512²", 192, 192, 512, False),
    ("enc down 192 s2 @512²", 192, 192, 512, True),
    ("enc 384→384 @256²", 384, 384, 256, False),
    ("enc down 384 s2 @256²", 384, 384, 256, True),
    ("enc 384→384 @128²", 384, 384, 128, False),
]


@torch.inference_mode()
def main():
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print("| case | path | ms | TFLOP/s |")
    print("|---|---|---|---|")
    for s in (8448, 4352, 12518):
        h, d = 24, 128
        q, k, v = (torch.randn(1, h, s, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flop = 4.0 * h * s * s * d
        case = f"sdpa B1 H{h} S{s} D{d}"
        row(case, "torch", time_ms(lambda: F.scaled_dot_product_attention(q, k, v)), flop)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            row(case, "sdpa-cudnn", time_ms(lambda: F.scaled_dot_product_attention(q, k, v)), flop)
        del q, k, v
    for name, c, k, size, down in CONVS:
        x = torch.randn(1, c, size, size, device=dev, dtype=torch.bfloat16)
        if down:
            x = F.pad(x, (0, 1, 0, 1))
        padding, stride = (0, 2) if down else (1, 1)
        w = torch.randn(k, c, 3, 3, device=dev, dtype=torch.bfloat16) * 0.02
        b = torch.randn(k, device=dev, dtype=torch.bfloat16) * 0.02
        out = size // 2 if down else size
        flop = 2.0 * k * c * 9 * out * out
        row(name, "torch", time_ms(lambda: F.conv2d(x, w, b, stride=stride, padding=padding)), flop)
        del x, w, b


if __name__ == "__main__":
    main()
