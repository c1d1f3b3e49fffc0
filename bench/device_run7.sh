#!/usr/bin/env bash
# GPU command (≤ ~7 min), carry .whl. device_run6.sh's profile showed 40-66 ms GPU gaps inside cuDNN attention
# (a new execution plan per new batch shape) and 15 ms/step in cuDNN's 32x32 patch convolution at batch 1,024.
# Since: SDPA without cuDNN, patch embedding as a matmul, no blocking scalar copy in the same-image mask.
# Measured here: the fixed recipe against the baseline in one process, a profile of the best variant, and two
# ablations (conv patch embedding; cuDNN attention) at batch 1,024 compiled.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -m1 "Model name"; } | tee $OUT/status.txt
timeout -k 5 ${TT_TIMEOUT:-400} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --images 16384 --profile ours_cache_b1024_compile ours_cache --profile_dir $OUT/profile \
  --variants ours_cache_b1024_compile hf_default ours_cache ours_cache_group8 ours_cache_b1024 ours_cache_compile \
  ours_cache_b1024_compile_conv ours_cache_b1024_compile_cudnn \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
tar czf $OUT/profile.tgz -C $OUT profile 2>/dev/null && rm -rf $OUT/profile
grep -A14 "^speedup" $OUT/train_throughput.log | cut -c1-1200
