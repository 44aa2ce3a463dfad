"""Reference timings: diffusers 0.42.1 on the same card, same shapes, random full-size weights.

Usage (on the GPU machine, diffusers wheel carried in .whl/):
    pip install -q --no-index --no-deps --target /tmp/site .whl/diffusers-0.42.1-*.whl
    PYTHONPATH=/tmp/site python3 bench/diffusers_bench.py --json > ref.json

Prints one JSON object: {"card", "torch", "diffusers", "results": [{"name", "ms", "peak_gb"}]}.
The shapes match `qwen-edit bench` (same names): transformer forward at 1024² with 1 and 2 reference
images and at 512², VAE encode/decode at 1024², prompt encoding (Qwen2.5-VL called as the pipelines
call it, with a 392² and a 1008² image). `--save DIR` writes the random transformer there with
`save_pretrained` (for `--load DIR` here and `qwen-edit bench --load DIR`), `--load DIR` times
`from_pretrained` of it onto the GPU.
"""
import argparse
import json
import time

import torch


# text_encoder/config.json of the Qwen-Image-Edit repos (Qwen2.5-VL-7B-Instruct).
TEXT_ENCODER_CONFIG = {
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_act": "silu", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "max_position_embeddings": 128000, "vocab_size": 152064, "tie_word_embeddings": False,
    "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "in_channels": 3, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "out_hidden_size": 3584, "hidden_act": "silu"},
}


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
    ap.add_argument("--save", default="", help="save the random transformer here (save_pretrained)")
    ap.add_argument("--load", default="", help="time from_pretrained of a transformer folder")
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
            if args.save:
                tr.save_pretrained(args.save)
            del tr
            torch.cuda.empty_cache()
        if args.load:
            import os
            size = sum(os.path.getsize(os.path.join(args.load, f)) for f in os.listdir(args.load)
                       if f.endswith(".safetensors"))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr = QwenImageTransformer2DModel.from_pretrained(args.load, torch_dtype=dt, device_map="cuda")
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            results.append({"name": "transformer_load", "ms": secs * 1e3, "gb_per_s": size / 1e9 / secs})
            del tr
            torch.cuda.empty_cache()
        if not only or "text_encoder" in only:
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

            cfg = Qwen2_5_VLConfig(**TEXT_ENCODER_CONFIG)
            torch.set_default_dtype(dt)
            with torch.device(dev):
                te = Qwen2_5_VLForConditionalGeneration(cfg)
            torch.set_default_dtype(torch.float32)
            randomize(te)
            te.eval()
            for name, side in [("prompt_encode_384", 392), ("prompt_encode_1024", 1008)]:
                g = side // 14
                n_img = g * g // 4
                ids = [(i * 7919 + 11) % 150000 for i in range(64)] + [151652] + [151655] * n_img + [151653]
                ids += [(i * 7919 + 5) % 150000 for i in range(48)]
                input_ids = torch.tensor([ids], device=dev)
                mask = torch.ones_like(input_ids)
                pixels = torch.randn(g * g, 1176, device=dev, dtype=dt)
                grid = torch.tensor([[1, g, g]], device=dev)
                torch.cuda.reset_peak_memory_stats()
                ms = timed(lambda: te(input_ids=input_ids, attention_mask=mask, pixel_values=pixels,
                                      image_grid_thw=grid, output_hidden_states=True), iters=args.iters)
                results.append({"name": name, "ms": ms, "tokens": len(ids),
                                "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
            del te
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
