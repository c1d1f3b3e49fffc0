#!/usr/bin/env bash
# Shared body of the throughput commands run on the device (device_run6.sh onwards; carry .whl):
#   bash bench/device_throughput.sh TIMEOUT_S [train_throughput.py flags: --profile ... --variants ...]
# Installs the carried wheels, records the GPU and CPU in $OUT/status.txt, runs bench/train_throughput.py on
# ViT-B/32 (batch 256 unless a variant says otherwise; 16,384 images so a random 1,024-pair batch is as mixed as
# real HNC's, img/pair ≈ 0.97) under `timeout`, packs the profiles into $OUT/profile.tgz (≤ 8 files come back)
# and prints the table; first, bench/attention_backends.py times SDPA's backends on the same shapes. TT_TIMEOUT
# overrides TIMEOUT_S.
set -u
timeout_s=${TT_TIMEOUT:-$1}; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -m1 "Model name"; } | tee $OUT/status.txt
# SDPA backends on the step's own attention shapes (~1 min; ATTENTION_TIMEOUT=0 skips it)
if [ "${ATTENTION_TIMEOUT:-90}" != 0 ]; then
  timeout -k 5 "${ATTENTION_TIMEOUT:-90}" python3 bench/attention_backends.py --device cuda \
    --backends flash efficient math --output $OUT/attention.json > $OUT/attention.log 2>&1
  echo "attention_backends rc=$?" | tee -a $OUT/status.txt
  tail -n 15 $OUT/attention.log | cut -c1-200
fi
timeout -k 5 "$timeout_s" python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --images 16384 --profile_dir $OUT/profile "$@" \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
tar czf $OUT/profile.tgz -C $OUT profile 2>/dev/null && rm -rf $OUT/profile
grep -A16 "^speedup" $OUT/train_throughput.log | cut -c1-1500
