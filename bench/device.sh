#!/usr/bin/env bash
# The one script a device session runs (the `device` tool; carry the wheels its image lacks in .whl/):
#
#   bash bench/device.sh [TIMEOUT_S] [bench/train_throughput.py flags]
#
# With no flags it re-measures the default recipe against the HF-default-like baseline in one process
# (`--variants ours_cache_b1024_compile hf_default`), which every device session does first so that no change costs
# speed unseen; pass `--variants ...` / `--profile ...` for others (names: `bench/train_throughput.py --help`).
# ViT-B/32, 16,384 synthetic GQA-sized JPEGs (a random 1,024-pair batch is as mixed as real HNC's), 20 measured
# steps after 5. Writes under $OUT: status.txt (GPU, CPU, return codes), train_throughput.json/.log, attention.json
# (SDPA backends on the step's shapes; ATTENTION_TIMEOUT=0 skips it), profile.tgz. Record the numbers in
# bench/RESULTS.md with the machine, date, commit and this command.
set -u
OUT=${OUT:?set OUT to the output directory}
timeout_s=${1:-300}
[ $# -gt 0 ] && shift
[ $# -eq 0 ] && set -- --variants ours_cache_b1024_compile hf_default
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -m1 "Model name"; git rev-parse HEAD; } \
  2>&1 | tee "$OUT/status.txt"
if [ "${ATTENTION_TIMEOUT:-90}" != 0 ]; then
  timeout -k 5 "${ATTENTION_TIMEOUT:-90}" python3 bench/attention_backends.py --device cuda \
    --backends flash efficient math --output "$OUT/attention.json" > "$OUT/attention.log" 2>&1
  echo "attention_backends rc=$?" | tee -a "$OUT/status.txt"
  tail -n 15 "$OUT/attention.log" | cut -c1-200
fi
timeout -k 5 "$timeout_s" python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --steps 20 --warmup_steps 5 --images 16384 --profile_dir "$OUT/profile" "$@" \
  --output "$OUT/train_throughput.json" > "$OUT/train_throughput.log" 2>&1
echo "train_throughput rc=$?" | tee -a "$OUT/status.txt"
tar czf "$OUT/profile.tgz" -C "$OUT" profile 2>/dev/null && rm -rf "$OUT/profile"
grep -A16 "^speedup" "$OUT/train_throughput.log" | cut -c1-1500
