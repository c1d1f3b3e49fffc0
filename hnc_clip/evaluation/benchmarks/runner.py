"""Run one registry benchmark with an `Encoder`: read its files, encode once, apply its official protocol."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..encode import Encoder, text_keys
from ..images import ImageRef
from ..tasks import score_retrieval, score_zeroshot
from . import readers
from .items import MAX_EXAMPLES, BenchmarkData, encode_items
from .registry import Benchmark
from .zeroshot_metadata import CIFAR_TEMPLATES, IMAGENET_CLASSNAMES, IMAGENET_TEMPLATES

logger = logging.getLogger(__name__)


def identical_items(data: BenchmarkData, encoder: Encoder | None = None) -> tuple[list, list]:
    """(items whose true caption equals a distractor as the text tower sees it, those of them that differ only past
    the tower's length): such an item cannot be answered, whatever the model."""
    choice = [it for it in data.items if hasattr(it, "correct")]
    texts = list(dict.fromkeys(c for it in choice for c in it.captions))
    key = dict(zip(texts, text_keys(encoder, texts) if encoder is not None else texts))
    same, truncated = [], []
    for it in choice:
        true = it.captions[it.correct]
        others = [c for j, c in enumerate(it.captions) if j != it.correct]
        if any(key[c] == key[true] for c in others):
            same.append(it)
            if true not in others:
                truncated.append(it)
    return same, truncated


def drop_identical(data: BenchmarkData, encoder: Encoder | None = None) -> tuple[BenchmarkData, dict]:
    """Items whose true caption equals one of its distractors (as the text tower sees it, with `encoder`) cannot be
    answered: removed, counted and named."""
    same, truncated = identical_items(data, encoder)
    if not same:
        return data, {"identical_pairs": 0}
    logger.warning("%s: %d item(s) whose true caption equals a distractor (%d only after truncation) are excluded",
                   data.root, len(same), len(truncated))  # fmt: skip
    ids = {id(it) for it in same}
    kept = BenchmarkData(data.root, [it for it in data.items if id(it) not in ids], data.parse_skips, data.meta)
    return kept, {"identical_pairs": len(same), "identical_after_truncation": len(truncated),
                  "identical_examples": [it.item_id for it in same[:MAX_EXAMPLES]]}  # fmt: skip


def zeroshot_prompts(bench: Benchmark, data: BenchmarkData) -> tuple[list[str], list[str]]:
    """(class names, templates): OpenAI's for ImageNet-1k and CIFAR, the shards' own files for the others."""
    if bench.name == "imagenet1k":
        return list(IMAGENET_CLASSNAMES), list(IMAGENET_TEMPLATES)
    names = data.meta.get("classnames")
    if not names:
        raise FileNotFoundError(f"{data.root}/classnames.txt is missing: zero-shot needs the class names")
    if bench.name in ("cifar10", "cifar100"):
        return names, list(CIFAR_TEMPLATES)
    templates = data.meta.get("templates")
    if not templates:
        raise FileNotFoundError(f"{data.root}/zeroshot_classification_templates.txt is missing")
    return names, templates


def run_benchmark(encoder: Encoder, bench: Benchmark, root: str, allow_absolute: bool = False) -> dict:
    """The benchmark's results: `headline`, its official numbers, the per-type table and the skip bookkeeping."""
    if bench.shape == "classification":
        data = readers.read_classification(root)
        classnames, templates = zeroshot_prompts(bench, data)
        refs = [ImageRef(os.path.join(root, r.file), r.bbox, r.member) for r in data.items]
        out = score_zeroshot(encoder, refs, data.meta["labels"], classnames, templates)
        if len(classnames) < 5:  # CLIP_benchmark reports acc5 as NaN below five classes
            out["top5"] = float("nan")
        out["num_input_items"] = len(refs) + sum(data.parse_skips.values())
        return {"headline": out["top1"], **out}
    if bench.shape == "retrieval":
        annotation = bench.meta.get("annotation", "")
        data = readers.read_retrieval(root, annotation, bench.meta.get("image_folder", ""))
        out = score_retrieval(encoder, data.items, root, allow_absolute=allow_absolute)
        out["mean_R@1"] = float(np.mean([out["image_to_text_R@1"], out["text_to_image_R@1"]]))
        return {"headline": out["mean_R@1"], **out}
    data = bench.read(root)
    identical = {}
    if bench.exclude_identical:
        data, identical = drop_identical(data, encoder)
    else:  # the official protocol scores them (as wrong, or as a tie): counted and named, not dropped
        _, truncated = identical_items(data, encoder)
        identical = {"identical_after_truncation": len(truncated)}
        if truncated:
            logger.warning("%s: %d item(s) whose true caption equals a distractor only after truncation to the text "
                           "tower's length, e.g. %s: no model can answer them", root, len(truncated),
                           truncated[0].item_id)  # fmt: skip
            identical["identical_examples"] = [it.item_id for it in truncated[:MAX_EXAMPLES]]
    encoded = encode_items(encoder, data, allow_absolute=allow_absolute)
    out = bench.score(encoded)
    out.update(identical)
    out["num_input_items"] += identical.get("identical_pairs", 0)
    return out
