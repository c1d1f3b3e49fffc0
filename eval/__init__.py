"""Evaluation suite for CLIP models fine-tuned with Hard Negative Captions.

Tasks (each a plain scoring function in `eval.tasks`, with metrics as local `evaluate` modules in `eval/metrics/`):

- pairwise: positive vs hard-negative caption selection (HNC, Structure-CLIP/COCO, SugarCrepe, ARO VG-R / VG-A);
- retrieval: image->text and text->image Recall@1/5/10;
- zeroshot: zero-shot classification on an image folder (+ optional linear probe).

`python eval/run_eval.py --help` is the command line; `eval.run_eval.run(args)` the same from Python. The public
functions are re-exported here lazily so `import eval.metrics` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_pairwise": "eval.tasks",
    "evaluate_retrieval": "eval.tasks",
    "evaluate_zeroshot": "eval.tasks",
    "score_pairwise": "eval.tasks",
    "score_retrieval": "eval.tasks",
    "score_zeroshot": "eval.tasks",
    "load_pairs": "eval.formats",
    "load_image_captions": "eval.formats",
    "detect_format": "eval.formats",
    "ClipEncoder": "eval.encode",
    "load_clip": "eval.encode",
    "wise_interpolate": "eval.wise",
    "EvalArguments": "eval.run_eval",
    "run": "eval.run_eval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
