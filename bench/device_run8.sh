#!/usr/bin/env bash
# The next GPU command (≤ ~7 min), carry .whl. device_run7.sh left MFU at 21 %: flash attention's backward was 25 %
# of the compiled batch-1,024 step's GPU time (its tiles suit long sequences; here 50 and ~22 tokens). Its backward
# accumulates dQ in an fp32 buffer padded to 128 query rows per sequence (flash-attn 2's mha_bwd: seqlen_q_rounded),
# zeroed by flash_bwd_dot_do_o (5.2 ms/step) and converted by flash_bwd_convert_dq (4.9 ms/step): 2.6x the rows at 50
# tokens, 5.8x at 22 (~0.4-0.5 GB per layer). Measured
# here, baseline in the same process: SDPA's math backend (batched matmuls + softmax, fused by inductor) and the
# memory-efficient one against the default, batch 2,048, the whole model compiled as one graph; a profile of
# the math variant.
# Setup, run and packing of the results: bench/device_throughput.sh.
exec bash bench/device_throughput.sh 400 --profile ours_cache_b1024_compile_math \
  --variants ours_cache_b1024_compile hf_default ours_cache_b1024_compile_math ours_cache_b1024_compile_efficient \
  ours_cache_b2048_compile ours_cache_b1024_compile_full ours_cache
