#!/usr/bin/env bash
# Prepared for the next session with a device (≤ ~6 min: timeout_s 420; carry .whl). Run 9 met the targets with the
# default (`--sdpa_backends efficient math`, regional compile, batch 1,024: 25.5 % MFU) but that step is CPU-bound
# (107.5 ms of GPU kernels in a 144 ms step). Run 8 measured the two ways out with flash attention: the whole model
# as one graph (28.9 %) and batch 2,048 (26.7 %). Here both with memory-efficient attention, the whole graph first
# (~2 min of compilation; it decides whether `--compile_regions false` should become the default), then the HF
# baseline and the regional default, all in one process (a timeout keeps the finished rows).
export ATTENTION_TIMEOUT=0
exec bash bench/device_throughput.sh 380 --profile ours_cache_b1024_compile_full \
  --variants ours_cache_b1024_compile_full hf_default ours_cache_b2048_compile ours_cache_b1024_compile
