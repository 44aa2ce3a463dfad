#!/bin/bash
# One call on the lent GPU machine: GPU tests, kernel micro-benchmarks against torch, and qwen-edit vs
# diffusers 0.42.1 on the same card. Expects (carried, git-ignored):
#   .gpu/qwen-edit.xz, .gpu/gpu_all.xz   xz'd binaries built here with --features cudnn (CUDA 13.0)
#   .whl/diffusers-0.42.1-py3-none-any.whl
# Usage: bash bench/device_run.sh PHASE...   phases: tests micro transformer vae text offload load
# Writes logs and JSON under $OUT (or /tmp/out).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/b
for f in .gpu/*.xz; do xz -dc "$f" > /tmp/b/$(basename "$f" .xz); done; chmod +x /tmp/b/*
NV=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null)
for d in "$NV"/*/lib "$NV"/cu13/lib; do [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH QWEN_EDIT_FIXTURES=$PWD/tests/fixtures RUST_LOG=${RUST_LOG:-warn} PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null && export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
QE=/tmp/b/qwen-edit
# Peak GPU memory of a command (whole process incl. context), sampled by nvidia-smi every 100 ms.
peak() { local tag=$1; shift; nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.$tag & local p=$!
  "$@"; local rc=$?; kill $p 2>/dev/null; wait $p 2>/dev/null
  echo "PEAK $tag $(sort -n /tmp/mem.$tag | tail -1) MiB" | tee -a "$OUT/peak.txt"; return $rc; }
B="--json --warmup 1 --iters 3"
for phase in "$@"; do
  echo "=== $phase $(date +%T)"
  case $phase in
    tests)
      timeout ${TESTS_TIMEOUT:-240} /tmp/b/gpu_all --test-threads=1 --nocapture > "$OUT/tests.log" 2>&1; echo "tests rc=$?"
      grep -E "^test |test result|panicked|FAILED" "$OUT/tests.log" | tail -60 ;;
    micro)
      timeout 150 /tmp/b/gpu_all --ignored --test-threads=1 --nocapture ${MICRO:-bench} > "$OUT/micro.log" 2>&1; echo "micro rc=$?"
      grep -E "\| (cudnn|torch|flash|candle) |fused|decode|encode" "$OUT/micro.log" | grep -v "first call" | head -60
      timeout 90 python3 kernels/bench_torch_ref.py > "$OUT/torch_ref.log" 2>&1; grep "| torch |" "$OUT/torch_ref.log" ;;
    transformer)
      peak ours_tr $QE bench $B --component transformer --size 1024 --size 512 --refs 1 --refs 2 > "$OUT/ours_tr.json"
      QWEN_EDIT_NO_FUSED=1 QWEN_EDIT_NO_CUDNN=1 $QE bench $B --component transformer --size 1024 --refs 1 > "$OUT/ours_tr_plain.json"
      QWEN_EDIT_NO_CUDNN=1 $QE bench $B --component transformer --size 1024 --refs 1 > "$OUT/ours_tr_nocudnn.json"
      QWEN_EDIT_NO_FUSED=1 $QE bench $B --component transformer --size 1024 --refs 1 > "$OUT/ours_tr_nofused.json"
      peak ref_tr timeout 300 python3 bench/diffusers_bench.py --json --iters 3 --only transformer > "$OUT/ref_tr.json"
      tail -c 1500 "$OUT"/ours_tr*.json "$OUT/ref_tr.json" ;;
    vae)
      peak ours_vae $QE bench $B --component vae --size 1024 > "$OUT/ours_vae.json"
      QWEN_EDIT_NO_FUSED=1 QWEN_EDIT_NO_CUDNN=1 $QE bench $B --component vae --size 1024 > "$OUT/ours_vae_plain.json"
      peak ref_vae python3 bench/diffusers_bench.py --json --iters 3 --only vae > "$OUT/ref_vae.json"
      tail -c 800 "$OUT"/ours_vae*.json "$OUT/ref_vae.json" ;;
    text)
      peak ours_te $QE bench $B --component text-encoder > "$OUT/ours_te.json"
      peak ref_te python3 bench/diffusers_bench.py --json --iters 3 --only text_encoder > "$OUT/ref_te.json"
      tail -c 800 "$OUT/ours_te.json" "$OUT/ref_te.json" ;;
    offload)  # issue 13: every weight format with and without offload, then the 24/48 GB caps, then PSNR
      O="$QE bench --json --warmup 1 --iters 2 --component transformer --size 1024 --refs 1"
      $O --configs ${CONFIGS:-bf16,fp8,q8_0,q4_k,bf16+offload,fp8+offload,q8_0+offload,q4_k+offload} > "$OUT/offload.json" 2> "$OUT/offload.err"
      echo "offload rc=$?"; tail -12 "$OUT/offload.err"
      $O --max-gpu-memory 24G --configs ${CAP24:-q4_k+offload,fp8+offload} > "$OUT/cap24.json" 2> "$OUT/cap24.err"; echo "cap24 rc=$?"; tail -5 "$OUT/cap24.err"
      $O --max-gpu-memory 48G --configs ${CAP48:-fp8} > "$OUT/cap48.json" 2> "$OUT/cap48.err"; echo "cap48 rc=$?"; tail -4 "$OUT/cap48.err"
      timeout 200 $O --psnr --configs ${PSNR:-bf16,fp8,q8_0} > "$OUT/psnr.json" 2> "$OUT/psnr.err"; echo "psnr rc=$?"; tail -6 "$OUT/psnr.err"
      tail -c 1500 "$OUT/offload.json" ;;
    *) echo "unknown phase $phase" ;;
  esac
done
echo "=== done $(date +%T)"
