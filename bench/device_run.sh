#!/usr/bin/env bash
# The one command run on a lent H100 (see the device tool): install the carried wheels, run the GPU benchmarks
# (bench/gpu_run.sh) and the DeepSpeed ZeRO-2/3 smoke runs, and pack every result into $OUT/results.tgz.
#   (carry .whl)  bash bench/device_run.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DEST=$OUT
RES=/tmp/results; mkdir -p $RES
OUT=$RES SKIP_TESTS=1 timeout -k 10 370 bash bench/gpu_run.sh > $RES/gpu_run.log 2>&1
echo "gpu_run rc=$?" >> $RES/status.txt
timeout -k 10 200 python3 bench/deepspeed_smoke.py --output_dir /tmp/ds --steps 5 > $RES/deepspeed.log 2>&1
echo "deepspeed_smoke rc=$?" >> $RES/status.txt
cp /tmp/ds/deepspeed_smoke.json $RES/ 2>/dev/null
tar czf $DEST/results.tgz -C $RES .
cat $RES/status.txt $RES/summary.txt 2>/dev/null
grep -h '^{' $RES/deepspeed.log | cut -c1-600
tail -c 1500 $RES/deepspeed.log
