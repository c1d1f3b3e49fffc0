"""Evaluation library for CLIP models fine-tuned with Hard Negative Captions.

Tasks (each a plain scoring function in `hnc_clip.evaluation.tasks`, with metrics as local `evaluate` modules in
`hnc_clip/evaluation/metrics/`, shipped as package data):

- pairwise: positive vs hard-negative caption selection on a file of a known layout (HNC, Structure-CLIP/COCO,
  SugarCrepe, ARO VG-R / VG-A), read by the benchmark registry's reader for that layout and scored with the
  2-way benchmarks' metric (`caption_selection`);
- retrieval: image->text and text->image Recall@1/5/10;
- zeroshot: zero-shot classification on an image folder (+ optional linear probe);
- named benchmarks (`hnc_clip.evaluation.benchmarks`): the registry, one reader per official layout, the official
  protocols, and the papers' table (`hnc_clip.evaluation.table`);
- published baselines: OpenAI/open_clip checkpoints -> HF CLIP (`hnc_clip.evaluation.convert`).

The application around it is `hnc_clip.scripts.evaluate` (`hnc-clip-eval`, `python eval/run_eval.py`); the steps it
wires are in `hnc_clip.evaluation.pipeline`. The public
functions are re-exported here lazily so `import hnc_clip.evaluation.metrics` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_pairwise": "tasks",
    "evaluate_retrieval": "tasks",
    "evaluate_zeroshot": "tasks",
    "score_pairwise": "tasks",
    "score_retrieval": "tasks",
    "score_zeroshot": "tasks",
    "load_pairs": "formats",
    "load_image_captions": "formats",
    "detect_format": "formats",
    "ClipEncoder": "encode",
    "load_clip": "encode",
    "wise_interpolate": "wise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
