#!/usr/bin/env bash
# One prepared GPU benchmark run (H100, 16 cores), ~7 minutes at most: every step has its own `timeout`, and
# each writes its JSON/log under $OUT as it goes, so one failure or overrun does not lose the other numbers.
#
#   OUT=/some/dir bash bench/gpu_run.sh        # from the repository root; datasets/ijson/... already installed
#
# Steps (worst case = the sum of the timeouts, 7 min):
#   0. environment record                                      (seconds)
#   1. test_image_cache.py: the cache = on-the-fly pixels with the torchvision image backend   timeout  60 s
#   2. data_pipeline.py: PIL vs cache vs nvJPEG, per worker and through 16 workers            timeout  60 s
#   3. train_throughput.py ViT-B/32, batch 256: hf_default vs ours vs ours_cache             timeout 150 s
#   4. train_throughput.py: ours vs ours_compile vs ours_cache_compile (compile in warm-up)   timeout 150 s
# Not here: the DeepSpeed smoke runs (added separately).

set -x
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
OUT=${OUT:?set OUT to the output directory}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: we cd to the repository root next
PY=${PYTHON:-$(command -v python || command -v python3)}
cd "$(dirname "$0")/.."

# 0. What ran where.
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  $PY -c "import torch, transformers, torchvision; print(torch.__version__, torch.version.cuda, transformers.__version__, torchvision.__version__)"
  $PY -c "import datasets, ijson; print('datasets', datasets.__version__, 'ijson', ijson.backend)"
} > "$OUT/env.txt" 2>&1

# 1. Equality of the cached and on-the-fly pixels under the torchvision backend (CPU-only here it is PIL).
if [ -z "${SKIP_TESTS:-}" ] && $PY -c "import pytest" 2>/dev/null; then
  timeout -k 5 60 $PY -m pytest -q -p no:cacheprovider tests/test_image_cache.py > "$OUT/test_image_cache.log" 2>&1
  echo "test_image_cache rc=$?" >> "$OUT/status.txt"
fi

# 2. Image path: images/s per worker (1 thread) and through a 16-worker DataLoader; nvJPEG on the GPU.
timeout -k 5 60 $PY bench/data_pipeline.py --device cuda --num_workers 16 --images 2048 \
  --output "$OUT/data_pipeline.json" > "$OUT/data_pipeline.log" 2>&1
echo "data_pipeline rc=$?" >> "$OUT/status.txt"

# 3. Training step, same run: HF-default-like vs ours vs ours + image cache (30 measured steps after 5 warm-up).
timeout -k 10 150 $PY bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 --num_workers 16 \
  --steps 30 --warmup_steps 5 --image_cache \
  --output "$OUT/train_throughput.json" > "$OUT/train_throughput.log" 2>&1
echo "train_throughput rc=$?" >> "$OUT/status.txt"

# 4. torch.compile, same run as its own uncompiled reference (compile + the dynamic-length recompile fall in the
#    5 warm-up steps; the second compiled variant reuses inductor's on-disk cache from the first).
timeout -k 10 150 $PY bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 --num_workers 16 \
  --steps 30 --warmup_steps 5 --variants ours ours_compile ours_cache_compile \
  --output "$OUT/train_throughput_compile.json" > "$OUT/train_throughput_compile.log" 2>&1
echo "train_throughput_compile rc=$?" >> "$OUT/status.txt"

# The tables, in one place.
for f in data_pipeline train_throughput train_throughput_compile; do
  echo "== $f"; grep -A12 -E "^(path|speedup)" "$OUT/$f.log" | grep -v "^wrote"
done > "$OUT/summary.txt" 2>&1
cat "$OUT/status.txt" "$OUT/summary.txt"
