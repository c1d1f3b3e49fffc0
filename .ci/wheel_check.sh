#!/usr/bin/env bash
# The installed package works: build the wheel of REPO, install it into a fresh venv (no editable install, no source
# tree on the path), then from an empty directory run the console scripts: one train and one eval on the bundled
# real-format HNC sample (tests/data) with a tiny model built in code, and the quick demo.
#   bash .ci/wheel_check.sh REPO WORK_DIR
set -euo pipefail
repo=$(cd "$1" && pwd)
work=$(mkdir -p "$2" && cd "$2" && pwd)
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "${TORCH:-torch==2.13.0}"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
"$py" -m pip install -q "$work"/dist/hnc_clip-*.whl
mkdir -p "$work/run" && cd "$work/run"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PATH="$work/venv/bin:$PATH"
"$py" - "$repo/tests/data" <<'PY'
import json, sys
from pathlib import Path

import hnc_clip
from PIL import Image

from hnc_clip.data import iter_hnc_pairs
from hnc_clip.tiny import save_tiny_clip

assert "site-packages" in hnc_clip.__file__, hnc_clip.__file__  # the installed copy, not a source tree
data = Path(sys.argv[1])
pairs = [p for name in ("hnc_train_sample.json", "hnc_test_sample.json") for p in iter_hnc_pairs(str(data / name))]
Path("images").mkdir()
for i, name in enumerate(sorted({p["image_file"] for p in pairs})):
    Image.new("RGB", (40, 30), (37 * i % 256, 91 * i % 256, 53 * i % 256)).save(f"images/{name}")
save_tiny_clip("tiny", [t for p in pairs for t in (p["positive"], p["negative"])], hidden_size=32, projection_dim=16)
PY
hnc-clip-train --model_name_or_path tiny --train_file "$repo/tests/data/hnc_train_sample.json" \
  --validation_file "$repo/tests/data/hnc_test_sample.json" --image_dir images --output_dir out --do_train --do_eval \
  --max_steps 3 --per_device_train_batch_size 8 --max_eval_samples 32 --use_cpu --report_to none --save_strategy no
test -f out/model.safetensors && test -f out/README.md && test -f out/all_results.json
hnc-clip-eval --model_name_or_path tiny out --data_file "$repo/tests/data/hnc_test_sample.json" --image_dir images \
  --output_dir eval --device cpu --no_plots
test -f eval/results.json
hnc-clip-demo --output_dir demo --quick
test -f demo/report.md
echo "wheel check: train, eval and the quick demo ran from the installed package"
