#!/usr/bin/env bash
# GPU command (≤ ~8 min), carry .whl. After the host-sync work (one sync per step, no padding mask for the causal
# text tower, non-blocking copies, no per-step sync in the bench's timer): the baseline and ours in one process,
# batch 256 and 1024 (CLIP's usual large batch: the per-step CPU cost of launching kernels is the same at any
# batch), profiles of both (summary in the JSON, op tables + traces in profile.tgz), then the compiled variants.
# Setup, run and packing of the results: bench/device_throughput.sh.
exec bash bench/device_throughput.sh 470 --profile ours_cache ours_cache_b1024 \
  --variants ours_cache ours_cache_group8 hf_default ours_cache_b1024 ours_cache_b1024_compile ours_cache_compile
