#!/usr/bin/env bash
# Second, shorter GPU command: DeepSpeed smoke runs (ZeRO-2, ZeRO-3, kl_teacher under ZeRO-3) and the training
# throughput of our recipe with and without the image cache. Results packed into $OUT/results.tgz.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEST=$OUT; RES=/tmp/results; mkdir -p $RES
timeout -k 10 150 python3 bench/deepspeed_smoke.py --output_dir /tmp/ds --steps 5 > $RES/deepspeed.log 2>&1
echo "deepspeed_smoke rc=$?" >> $RES/status.txt
cp /tmp/ds/deepspeed_smoke.json $RES/ 2>/dev/null
timeout -k 10 90 python3 bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 --num_workers 16 \
  --steps 20 --warmup_steps 3 --variants ours ours_cache --output $RES/train_throughput2.json > $RES/tt2.log 2>&1
echo "train_throughput rc=$?" >> $RES/status.txt
tar czf $DEST/results.tgz -C $RES .
cat $RES/status.txt
grep -h '^{' $RES/deepspeed.log | cut -c1-700
python3 -c "import json; [print(v['name'], v.get('samples_per_s'), v.get('tflops_per_s'), v.get('error')) for v in json.load(open('$RES/train_throughput2.json'))['variants']]"
