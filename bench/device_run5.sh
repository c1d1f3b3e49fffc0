#!/usr/bin/env bash
# The next GPU command (≤ ~8 min): throughput of the one-sync step with the baseline in the same process, a
# profile of ours_cache (3 steps after its measured ones: op table + Chrome trace), then the compile variants
# last (their first compile is the slow part). Carry .whl (datasets, evaluate, ijson, deepspeed wheel, ...).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
timeout -k 5 ${TT_TIMEOUT:-420} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --profile ours_cache --profile_dir $OUT/profile \
  --variants ours_cache ours_cache_group8 hf_default ours ours_cache_compile ours_cache_group8_compile \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
grep -A9 "^speedup" $OUT/train_throughput.log
head -30 $OUT/profile/ours_cache_ops.txt 2>/dev/null
