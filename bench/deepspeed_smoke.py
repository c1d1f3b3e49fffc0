#!/usr/bin/env python
"""DeepSpeed ZeRO-2 / ZeRO-3 smoke run of a ViT-B/32-sized CLIP through `accelerate launch run_hnc_clip.py`.

Builds a random-init CLIP of ViT-B/32 sizes (transformers' `CLIPConfig()` defaults) with a word tokenizer, a small
HNC-schema train file with GQA-sized JPEGs, trains a few bf16 steps under each ZeRO config (plus `kl_teacher` under
ZeRO-3, whose frozen reference must stay whole and untrained), then reloads each output with
`CLIPModel.from_pretrained` and checks it. Needs a GPU and `deepspeed`. Prints and writes a JSON summary.

    python bench/deepspeed_smoke.py --output_dir /tmp/ds_smoke [--steps 5] [--num_processes 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from hnc_clip.data.hnc import HncPair, hnc_train_entry, write_hnc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
OBJECTS = ["cup", "plate", "fork", "table", "chair", "dog", "cat", "car"]
RELATIONS = ["left of", "right of", "above", "below", "behind", "in front of"]


def make_data(root: str, n_images: int = 64, pairs_per_image: int = 8, seed: int = 0) -> tuple[str, str, list[str]]:
    rng = random.Random(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    data, texts = {}, []
    for i in range(n_images):
        image_id = str(1000 + i)
        pixels = np.random.default_rng(i).integers(0, 255, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(image_dir, f"{image_id}.jpg"), quality=90)
        pairs = []
        for _ in range(pairs_per_image):
            a, b = rng.sample(OBJECTS, 2)
            col, rel = rng.choice(COLOURS), rng.choice(RELATIONS)
            positive, negative = f"the {col} {a} is {rel} the {b}.", f"the {col} {b} is {rel} the {a}."
            pairs.append(HncPair(positive, negative, "relation_subj"))
            texts += [pairs[-1].positive, pairs[-1].negative]
        data[image_id] = hnc_train_entry(pairs)
    path = write_hnc(os.path.join(root, "train.json"), data)
    return path, image_dir, texts


def make_model(root: str, texts: list[str]) -> str:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from hnc_clip.tiny import EOS_ID, build_image_processor, build_word_tokenizer, words_of

    tok = build_word_tokenizer(words_of(texts), model_max_length=77)
    config = CLIPConfig()  # ViT-B/32: 224 px, patch 32, 12×768 vision, 12×512 text, 512 projection
    config.text_config.vocab_size = len(tok)
    config.text_config.eos_token_id = EOS_ID
    config.text_config.bos_token_id, config.text_config.pad_token_id = 2, 0
    model = CLIPModel(config)
    out = os.path.join(root, "vitb32")
    model.save_pretrained(out)
    CLIPProcessor(image_processor=build_image_processor(224), tokenizer=tok).save_pretrained(out)
    return out


def run(config: str, model: str, train: str, images: str, out: str, steps: int, nproc: int, loss: str) -> dict:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(REPO, config),
        "--num_processes", str(nproc), os.path.join(REPO, "run_hnc_clip.py"),
        "--model_name_or_path", model, "--train_file", train, "--image_dir", images, "--output_dir", out,
        "--do_train", "--max_steps", str(steps), "--per_device_train_batch_size", "64", "--bf16",
        "--learning_rate", "1e-5", "--loss_type", loss, "--logging_steps", "1", "--save_strategy", "no",
        "--dataloader_num_workers", "4", "--report_to", "none",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = round(time.time() - t0, 1)
    result = {"config": config, "loss_type": loss, "returncode": proc.returncode, "seconds": seconds}
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-3000:]
        return result
    result.update(check_reload(model, out))
    return result


def check_reload(init_dir: str, out: str) -> dict:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    init = CLIPModel.from_pretrained(init_dir).state_dict()
    tuned = CLIPModel.from_pretrained(out, use_safetensors=True)
    CLIPProcessor.from_pretrained(out)
    sd = tuned.state_dict()
    finite = all(torch.isfinite(v.float()).all().item() for v in sd.values())
    moved = sum(not torch.equal(init[k].to(sd[k].dtype), sd[k]) for k in sd)
    history = json.load(open(os.path.join(out, "trainer_state.json")))["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "reloaded_params": sum(v.numel() for v in sd.values()),
        "same_shapes_as_init": all(init[k].shape == sd[k].shape for k in sd),
        "tensors_changed": moved,
        "tensors_total": len(sd),
        "all_finite": finite,
        "losses": losses,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="/tmp/ds_smoke")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument(
        "--runs", nargs="+", default=["zero2:hnc", "zero3:hnc", "zero3:kl_teacher"],
        help="config:loss_type pairs; config is a file name in accelerate_configs/ without .yaml",
    )
    args = p.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    train, images, texts = make_data(args.output_dir)
    model = make_model(args.output_dir, texts)
    runs = [(f"accelerate_configs/{run.split(':')[0]}.yaml", run.split(":")[1]) for run in args.runs]
    results = []
    for config, loss in runs:
        name = f"{os.path.basename(config)[:-5]}_{loss}"
        r = run(config, model, train, images, os.path.join(args.output_dir, name), args.steps, args.num_processes,
                loss)
        print(json.dumps(r), flush=True)
        results.append(r)
    with open(os.path.join(args.output_dir, "deepspeed_smoke.json"), "w") as f:
        json.dump(results, f, indent=1)
    sys.exit(0 if all(r["returncode"] == 0 for r in results) else 1)


if __name__ == "__main__":
    main()
