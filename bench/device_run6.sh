#!/usr/bin/env bash
# GPU command (≤ ~8 min), carry .whl. After the host-sync work (one sync per step, no padding mask for the causal
# text tower, non-blocking copies, no per-step sync in the bench's timer): the baseline and ours in one process,
# batch 256 and 1024 (CLIP's usual large batch: the per-step CPU cost of launching kernels is the same at any
# batch), profiles of both (summary in the JSON, op tables + traces in profile.tgz), then the compiled variants.
# 16,384 images so that a random 1,024-pair batch is as mixed as real HNC's (img/pair ≈ 0.97).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -m1 "Model name"; } | tee $OUT/status.txt
timeout -k 5 ${TT_TIMEOUT:-470} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --images 16384 --profile ours_cache ours_cache_b1024 --profile_dir $OUT/profile \
  --variants ours_cache ours_cache_group8 hf_default ours_cache_b1024 ours_cache_b1024_compile ours_cache_compile \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
tar czf $OUT/profile.tgz -C $OUT profile 2>/dev/null && rm -rf $OUT/profile
grep -A12 "^speedup" $OUT/train_throughput.log | cut -c1-1500
