#!/usr/bin/env bash
# Run 9 (≤ ~5 min: timeout_s 300; carry .whl). What run 8 found (bench/README.md):
# - the compiled default (regional, batch 1,024) ran 24.8 % MFU; the whole model as one graph (`_full`) 28.9 %;
# - eager, the memory-efficient SDPA kernel's forward + backward ran 3x faster than flash on both towers' shapes;
# - the compiled `_math`/`_efficient` rows were not what they said: torch.compile's on-disk caches key a graph by
#   its code, not by the SDPA backends enabled around it, so they reran the default's flash graph (fixed since:
#   HncTrainer tags the cache key with the backends).
# Since then the GPU default is `--sdpa_backends efficient math`. Here, in one process and in this order (a
# timeout keeps the finished rows): that default, the HF baseline, the default before it (`_flash`), and the
# whole-model graph with the new default (`_full`, ~2 min of compilation). Profile of the default. The attention
# micro-benchmark is skipped (run 8 has its eager rows; its compiled rows were the cache bug).
export ATTENTION_TIMEOUT=0
exec bash bench/device_throughput.sh 250 --profile ours_cache_b1024_compile \
  --variants ours_cache_b1024_compile hf_default ours_cache_b1024_compile_flash ours_cache_b1024_compile_full
