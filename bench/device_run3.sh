#!/usr/bin/env bash
# One GPU command (≤ ~9 min): training throughput first (#6: HF-default-like baseline and our variants in one run),
# then the DeepSpeed ZeRO-3 / FSDP2 smoke runs (#5). Each part has its own timeout; results land in $OUT as they
# finish. Carry .whl (datasets, evaluate, ijson, deepspeed 0.18.9, hjson, dill, multiprocess, pydantic...).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch, transformers, accelerate; print(torch.__version__, transformers.__version__, accelerate.__version__)" | tee -a $OUT/gpu.txt
timeout -k 10 ${TT_TIMEOUT:-300} python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 \
  --num_workers 16 --steps 20 --warmup_steps 5 \
  --variants ours_cache ours_cache_group8 hf_default ours ours_cache_compile ours_cache_group8_compile \
  --output $OUT/train_throughput.json > $OUT/train_throughput.log 2>&1
echo "train_throughput rc=$?" | tee -a $OUT/status.txt
tail -12 $OUT/train_throughput.log
timeout -k 10 ${DS_TIMEOUT:-220} python3 bench/deepspeed_smoke.py --output_dir /tmp/ds --steps 3 \
  --runs zero3:hnc zero3:kl_teacher fsdp:hnc > $OUT/deepspeed.log 2>&1
echo "deepspeed_smoke rc=$?" | tee -a $OUT/status.txt
cp /tmp/ds/deepspeed_smoke.json $OUT/ 2>/dev/null
grep -h '^{' $OUT/deepspeed.log | cut -c1-600
