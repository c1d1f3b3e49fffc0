#!/usr/bin/env python
"""Evaluate CLIP checkpoints (the same as `hnc-clip-eval`; code in `hnc_clip/scripts/evaluate.py`).

    python eval/run_eval.py --task pairwise --model_name_or_path openai/clip-vit-base-patch32 outputs/hnc-clip \
        --data_file hnc_test.json --image_dir gqa/images --output_dir outputs/eval
"""

import sys

from hnc_clip.scripts.evaluate import cli

if __name__ == "__main__":
    sys.exit(cli())
