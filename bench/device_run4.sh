#!/usr/bin/env bash
# Second GPU command of the session (~5 min): throughput after the step-time diagnosis (cache variants with 4
# workers, uint8 channels-last rows, regional+dynamic compile), then the FSDP2 smoke run. Carry .whl.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout -k 5 ${TT_TIMEOUT:-180} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 15 --warmup_steps 5 \
  --variants ours_cache ours_cache_group8 hf_default ours_cache_compile ours_cache_group8_compile \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
grep -A8 "^speedup" $OUT/train_throughput.log
timeout -k 5 ${DS_TIMEOUT:-70} python3 bench/deepspeed_smoke.py --output_dir /tmp/ds --steps 3 --runs fsdp:hnc \
  > $OUT/fsdp.log 2>&1
echo "fsdp_smoke rc=$?" | tee -a $OUT/status.txt
grep -h '^{' $OUT/fsdp.log | cut -c1-900
