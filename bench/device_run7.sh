#!/usr/bin/env bash
# GPU command (≤ ~7 min), carry .whl. device_run6.sh's profile showed 40-66 ms GPU gaps inside cuDNN attention
# (a new execution plan per new batch shape) and 15 ms/step in cuDNN's 32x32 patch convolution at batch 1,024.
# Since: SDPA without cuDNN, patch embedding as a matmul, no blocking scalar copy in the same-image mask.
# Measured here: the fixed recipe against the baseline in one process, a profile of the best variant, and two
# ablations (conv patch embedding; cuDNN attention) at batch 1,024 compiled.
# Setup, run and packing of the results: bench/device_throughput.sh.
exec bash bench/device_throughput.sh 400 --profile ours_cache_b1024_compile ours_cache \
  --variants ours_cache_b1024_compile hf_default ours_cache ours_cache_group8 ours_cache_b1024 ours_cache_compile \
  ours_cache_b1024_compile_conv ours_cache_b1024_compile_cudnn
