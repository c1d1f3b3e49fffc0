"""Proof that a refactor kept the numerics: the same tiny training runs, weight hashes and log histories.

Trains a tiny CLIP (built in code) on the repository's HNC samples with placeholder images, one run per setting
(the hnc loss with evaluation, CE-CLIP, GradCache, --group_by_image, kl_teacher with its reference, SGD with
--l2_reg_weight, FSC-CLIP's local term plain and under GradCache), 4 steps each on the CPU, and writes each run's
sha256 of model.safetensors and its log history (without timings). Run it once with the old code, once with the
new, and compare:

    git archive <old commit> | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python bench/refactor_parity.py --work /tmp/p_old --output /tmp/old.json
    PYTHONPATH=$PWD python bench/refactor_parity.py --work /tmp/p_new --output /tmp/new.json
    python bench/refactor_parity.py --compare /tmp/old.json /tmp/new.json     # exit 1 on any difference

Both runs share one tiny model (`--model`, built by the first run), so only the code differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
TRAIN, TEST = str(DATA / "hnc_train_sample.json"), str(DATA / "hnc_test_sample.json")
SETTINGS = {
    "hnc_eval": ["--validation_file", TEST, "--do_eval", "--eval_strategy", "steps", "--eval_steps", "2"],
    "ce_clip": ["--loss_type", "ce_clip"],
    "gradcache": ["--gradcache_chunk_size", "4"],
    "group_by_image": ["--group_by_image", "2"],
    "kl_teacher": ["--loss_type", "kl_teacher"],
    "sgd_l2": ["--optim", "sgd", "--l2_reg_weight", "0.1"],
    "fsc_local": ["--loss_type", "fsc_clip", "--fsc_local_weight", "0.5"],  # token embeddings (`with_tokens`)
    "fsc_local_gradcache": ["--loss_type", "fsc_clip", "--fsc_local_weight", "0.5", "--gradcache_chunk_size", "4"],
}


def run_all(work: str, model: str) -> dict:
    import torch
    from PIL import Image

    import hnc_clip
    from hnc_clip.data.hnc import iter_hnc_pairs
    from hnc_clip.scripts import train as app

    torch.set_num_threads(1)  # one thread: the same reduction order on every run
    pairs = list(iter_hnc_pairs(TRAIN)) + list(iter_hnc_pairs(TEST))
    if not os.path.isdir(model):
        from hnc_clip.tiny import save_tiny_clip

        texts = [t for p in pairs for t in (p["positive"], p["negative"])]
        save_tiny_clip(model, texts, image_size=32, hidden_size=32, num_layers=2, projection_dim=16)
    images = os.path.join(work, "images")
    os.makedirs(images, exist_ok=True)
    for i, name in enumerate(sorted({p["image_file"] for p in pairs})):
        Image.new("RGB", (40, 30), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(os.path.join(images, name))
    result = {"hnc_clip": hnc_clip.__file__, "runs": {}}
    for name, extra in SETTINGS.items():
        out = os.path.join(work, name)
        argv = ["--model_name_or_path", model, "--train_file", TRAIN, "--image_dir", images, "--output_dir", out,
                "--cache_dir", os.path.join(work, "cache"), "--do_train", "--max_steps", "4",
                "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
                "--save_strategy", "no", "--use_cpu", "--dataloader_num_workers", "0", "--seed", "0",
                "--report_to", "none", *extra]  # fmt: skip
        app.main(*app.parse_args(argv))
        with open(f"{out}/model.safetensors", "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        with open(f"{out}/trainer_state.json") as f:
            history = json.load(f)["log_history"]
        history = [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in history]
        result["runs"][name] = {"sha256": sha, "log_history": history}
    return result


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    print(f"{a['hnc_clip']}  vs  {b['hnc_clip']}")
    same = True
    for name in a["runs"]:
        x, y = a["runs"][name], b["runs"].get(name, {})
        weights, logs = x["sha256"] == y.get("sha256"), x["log_history"] == y.get("log_history")
        same &= weights and logs
        print(f"{name:20s} weights {'same' if weights else 'DIFFER'}  logs {'same' if logs else 'DIFFER'}  "
              f"{x['sha256'][:16]}")  # fmt: skip
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/refactor_parity", help="Folder of the runs (images, outputs).")
    parser.add_argument("--model", default="/tmp/refactor_parity_tiny_clip", help="The shared tiny CLIP.")
    parser.add_argument("--output", default="bench/results/refactor_parity.json")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="Compare two outputs; exit 1 if they differ.")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_all(args.work, args.model)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    for name, run in result["runs"].items():
        print(f"{name:20s} {run['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
