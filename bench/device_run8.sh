#!/usr/bin/env bash
# The next GPU command (≤ ~7 min), carry .whl. device_run7.sh left MFU at 21 %: flash attention's backward was 25 %
# of the compiled batch-1,024 step's GPU time (its tiles suit long sequences; here 50 and ~22 tokens). Measured
# here, baseline in the same process: SDPA's math backend (batched matmuls + softmax, fused by inductor) and the
# memory-efficient one against the default, batch 2,048, the whole model compiled as one graph; a profile of
# the math variant.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -m1 "Model name"; } | tee $OUT/status.txt
timeout -k 5 ${TT_TIMEOUT:-400} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --images 16384 --profile ours_cache_b1024_compile_math --profile_dir $OUT/profile \
  --variants ours_cache_b1024_compile hf_default ours_cache_b1024_compile_math ours_cache_b1024_compile_efficient \
  ours_cache_b2048_compile ours_cache_b1024_compile_full ours_cache \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
tar czf $OUT/profile.tgz -C $OUT profile 2>/dev/null && rm -rf $OUT/profile
grep -A12 "^speedup" $OUT/train_throughput.log | cut -c1-1200
