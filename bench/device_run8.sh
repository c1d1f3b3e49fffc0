#!/usr/bin/env bash
# The next GPU command (≤ ~9.5 min: run it with timeout_s 590), carry .whl.
# device_run7.sh left MFU at 21 % (ViT-B/32, batch 1,024, compiled: 166 ms per step, 136 ms of GPU kernels).
# Two causes, each measured here against the default with the baseline in the same process:
# 1. The GPU idled ~18 % of a step: the CPU waited ~17 ms per step for the finite-loss check (`.item()` after the
#    backward), then the GPU waited while the CPU queued the optimizer step and the next forward. Since the fourth
#    session the fused AdamW skips a NaN step itself (`found_inf`, hnc_clip/step_guard.py): no host sync in a step.
#    `_hostsync` is the old way.
# 2. Flash attention's backward was 25 % of the GPU time (its tiles suit long sequences; here 50 and ~22 tokens).
#    It accumulates dQ in an fp32 buffer padded to 128 query rows per sequence (flash-attn 2's mha_bwd:
#    seqlen_q_rounded), zeroed by flash_bwd_dot_do_o (5.2 ms/step) and converted by flash_bwd_convert_dq
#    (4.9 ms/step): 2.6x the rows at 50 tokens, 5.8x at 22 (~0.4-0.5 GB per layer). `_math` (batched matmuls +
#    softmax, fused by inductor) and `_efficient` (memory-efficient kernel) instead.
# Also batch 2,048 and the whole model as one graph (`_full`). Profiles of the default and of `_math`. First
# (device_throughput.sh), bench/attention_backends.py: the backends alone on the step's attention shapes.
# Setup, run and packing of the results: bench/device_throughput.sh.
# Ordered by what the target needs first (a timeout keeps the finished rows): the run-7 trace says the compiled
# batch-1,024 step is about as CPU-bound as GPU-bound (~148 ms of CPU work per step, 136 ms of GPU kernels), so
# batch 2,048 (the same CPU work for twice the GPU work) comes right after the default and the baseline; last,
# `_cppwrap` (inductor's C++ wrapper: less CPU per compiled call; ran on CPU with inductor here).
exec bash bench/device_throughput.sh 450 --profile ours_cache_b1024_compile ours_cache_b1024_compile_math \
  --variants ours_cache_b1024_compile hf_default ours_cache_b2048_compile ours_cache_b1024_compile_math \
  ours_cache_b1024_compile_hostsync ours_cache_b1024_compile_full ours_cache_b1024_compile_efficient \
  ours_cache_b1024_compile_cppwrap
