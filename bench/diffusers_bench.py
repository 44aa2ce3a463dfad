"""Reference timings: diffusers 0.42.1 on the same card, same shapes, random full-size weights.

Usage (on the GPU machine, diffusers wheel carried in .whl/):
    pip install -q --no-index --no-deps --target /tmp/site .whl/diffusers-0.42.1-*.whl
    PYTHONPATH=/tmp/site python3 bench/diffusers_bench.py --json > ref.json

Prints one JSON object: {"card", "torch", "diffusers", "results": [{"name", "ms", "peak_gb"}]}.
The shapes match `qwen-edit bench` (same names): transformer forward at 1024² with 1 and 2 reference
images and at 512², VAE encode/decode at 1024².
"""
import argparse
import json
import time

import torch


def timed(fn, warmup=2, iters=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def randomize(module, std=0.02):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--txt-len", type=int, default=230)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--only", default="", help="comma list: transformer,vae")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import diffusers
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    dev = torch.device("cuda")
    dt = torch.bfloat16
    results = []
    only = set(filter(None, args.only.split(",")))
    with torch.inference_mode():
        if not only or "transformer" in only:
            torch.set_default_dtype(dt)  # build directly in bf16 (80 GB in f32 otherwise)
            with torch.device(dev):
                tr = QwenImageTransformer2DModel(zero_cond_t=True)
            torch.set_default_dtype(torch.float32)
            randomize(tr)
            tr.eval()
            for name, shapes in [
                ("transformer_1024_1ref", [(1, 64, 64), (1, 64, 64)]),
                ("transformer_1024_2ref", [(1, 64, 64), (1, 64, 64), (1, 64, 64)]),
                ("transformer_512_1ref", [(1, 32, 32), (1, 32, 32)]),
            ]:
                s_img = sum(f * h * w for f, h, w in shapes)
                x = torch.randn(1, s_img, 64, device=dev, dtype=dt)
                c = torch.randn(1, args.txt_len, 3584, device=dev, dtype=dt)
                t = torch.tensor([0.5], device=dev, dtype=dt)
                torch.cuda.reset_peak_memory_stats()
                ms = timed(lambda: tr(hidden_states=x, encoder_hidden_states=c, timestep=t, img_shapes=[shapes],
                                      return_dict=False), iters=args.iters)
                results.append({"name": name, "ms": ms, "tokens": s_img + args.txt_len,
                                "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
            del tr
            torch.cuda.empty_cache()
        if not only or "vae" in only:
            torch.set_default_dtype(dt)
            with torch.device(dev):
                vae = AutoencoderKLQwenImage()
            torch.set_default_dtype(torch.float32)
            randomize(vae)
            vae.eval()
            img = torch.rand(1, 3, 1, 1024, 1024, device=dev, dtype=dt) * 2 - 1
            z = torch.randn(1, 16, 1, 128, 128, device=dev, dtype=dt)
            torch.cuda.reset_peak_memory_stats()
            results.append({"name": "vae_encode_1024", "ms": timed(lambda: vae.encode(img), iters=args.iters),
                            "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
            torch.cuda.reset_peak_memory_stats()
            results.append({"name": "vae_decode_1024", "ms": timed(lambda: vae.decode(z), iters=args.iters),
                            "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
    out = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "results": results}
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
