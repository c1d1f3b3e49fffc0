#!/usr/bin/env python
"""Fine-tune CLIP with Hard Negative Captions (HNC): the same as `hnc-clip-train` (code in
`hnc_clip/scripts/train.py`).

    python run_hnc_clip.py --train_file hnc_train.json --image_dir gqa/images --output_dir out --do_train [flags]
    python run_hnc_clip.py config.yaml          # or config.json: the same fields
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml run_hnc_clip.py ...
"""

import sys

from hnc_clip.scripts.train import cli

if __name__ == "__main__":
    sys.exit(cli())
