"""The three evaluation tasks as plain functions: encode what is unique, score, hand the scores to a metric module.

Each task comes in two layers:

- `score_*(encoder, ...)` takes any `hnc_clip.evaluation.encode.Encoder` (tests use a fake one with chosen
  similarities);
- `evaluate_*(model, processor, ...)` wraps a Hugging Face `CLIPModel` + `CLIPProcessor` in a `ClipEncoder`.

Unique encoding: HNC test has ~9 pairs per image and train ~121, and every positive recurs once per negative, so
each distinct image (file + crop box) and each distinct caption is encoded exactly once and pairs index into the
embedding tables. That is what makes `bench/eval_encoding.py` several times faster than encoding per pair.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .benchmarks.items import ImageCaptions
from .encode import ClipEncoder, Encoder, pair_cosines, text_keys, unreadable_rows
from .images import ImageRef, resolve_image
from .linear_probe import linear_probe_rankings
from .metrics import load_metric

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (1.0, 1.05, 1.1)
DEFAULT_K = (1, 5, 10)


@functools.cache
def _metric(name: str):
    # Loading copies the script into the HF modules cache and imports it: do it once per process, not per model.
    return load_metric(name)


def unique_index(items: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """(distinct items in first-seen order, index of each item into that list)."""
    position: dict = {}
    index = np.fromiter((position.setdefault(x, len(position)) for x in items), dtype=np.int64, count=len(items))
    return list(position), index


MAX_EXAMPLES = 5  # how many skipped items each reason names in the results


def _present_images(
    refs: Sequence[ImageRef], image_dir: str | None, allow_absolute: bool = False
) -> tuple[dict[ImageRef, ImageRef], list[str]]:
    """({reference: resolved reference} for existing images, [missing files]), each distinct reference checked once.

    A file outside `image_dir` (`../x`, or an absolute path without `allow_absolute`) counts as missing.
    """
    found, missing = {}, []
    for ref in dict.fromkeys(refs):
        resolved = resolve_image(image_dir, ref, allow_absolute=allow_absolute)
        if resolved is None:
            missing.append(ref.file)
        else:
            found[ref] = resolved
    if missing:
        logger.warning(
            "%d image(s) missing under %r (or outside it), e.g. %s; their items are skipped",
            len(missing),
            image_dir,
            missing[0],
        )
    if not found:
        raise FileNotFoundError(
            f"none of the {len(missing)} images was found under --image_dir {image_dir!r} (e.g. {missing[:3]})"
        )
    return found, missing


def _unreadable(encoder: Encoder, images: Sequence[ImageRef], emb: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """(mask [I] of images that could not be decoded, their '<file>: <error>' descriptions)."""
    bad = unreadable_rows(emb).numpy()
    errors = getattr(encoder, "unreadable", {})
    names = [f"{images[i].file}: {errors.get(images[i].file, 'unreadable')}" for i in np.flatnonzero(bad)]
    if names:
        logger.warning("%d image(s) could not be decoded, e.g. %s; their items are skipped", len(names), names[0])
    return bad, names


# ---------------------------------------------------------------------------------------------------------------------
# Pairwise: positive vs hard negative
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PairwiseScores:
    """Per-pair cosine similarities of the pairs that could be scored, plus what was skipped and why."""

    positive: np.ndarray  # [P] sim(image, positive)
    negative: np.ndarray  # [P] sim(image, hard negative)
    random_negative: np.ndarray | None  # [P] sim(image, another image's positive); None with a single image
    types: list[str]
    pair_ids: list[str]
    num_images: int
    num_texts: int
    missing_images: int
    skipped_pairs: int
    unreadable_images: int = 0
    identical_pairs: int = 0  # the same text, or the same tokens after truncation (`identical_after_truncation`)
    identical_after_truncation: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few named skipped items


def random_negative_index(image_index: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """For each pair i a pair j (seeded) whose image differs from i's; None when all pairs share one image."""
    n = len(image_index)
    if n == 0 or np.unique(image_index).size < 2:
        return None
    rng = np.random.default_rng(seed)
    j = rng.integers(0, n, size=n)
    for _ in range(32):  # rejection sampling: each round keeps the draws that already hit another image
        same = image_index[j] == image_index
        if not same.any():
            return j
        j[same] = rng.integers(0, n, size=int(same.sum()))
    for i in np.flatnonzero(image_index[j] == image_index):  # one image dominates: draw from the others directly
        j[i] = rng.choice(np.flatnonzero(image_index != image_index[i]))
    return j


def pairwise_scores(
    encoder: Encoder, pairs: Sequence[dict], image_dir: str | None, seed: int = 0, allow_absolute: bool = False
) -> PairwiseScores:
    """Similarities of every pair that can be scored; each distinct image and caption is encoded once.

    Skipped and counted, never scored as wrong: a positive identical to its negative as the text tower sees it (the
    same text, or the same tokens after truncation: SigLIP's 16 tokens cut many captions before the word that
    differs; no caption can beat itself), an image that is missing or outside `image_dir`, and an image that cannot
    be decoded.
    """
    texts = list(dict.fromkeys([p["positive"] for p in pairs] + [p["negative"] for p in pairs]))
    key = dict(zip(texts, text_keys(encoder, texts)))
    same = [key[p["positive"]] == key[p["negative"]] for p in pairs]
    identical = [p for p, s in zip(pairs, same) if s]
    truncated = sum(p["positive"] != p["negative"] for p in identical)
    if identical:
        logger.warning("%d pair(s) have a positive identical to the negative (%d of them only after truncation to "
                       "the text tower's length), e.g. %s; they are not scored", len(identical), truncated,
                       identical[0])  # fmt: skip
    candidates = [p for p, s in zip(pairs, same) if not s]
    refs = [ImageRef(p["image_file"], p.get("bbox")) for p in candidates]
    found, missing = _present_images(refs, image_dir, allow_absolute)
    present = [(p, found[r]) for p, r in zip(candidates, refs) if r in found]

    images, image_index = unique_index([ref for _, ref in present])  # [I], [P0]
    image_emb = encoder.encode_images(images)  # [I, D], NaN rows = unreadable
    bad_image, unreadable = _unreadable(encoder, images, image_emb)
    keep = ~bad_image[image_index] if len(image_index) else np.zeros(0, dtype=bool)
    kept = [pair for pair, k in zip(present, keep) if k]
    if not kept:
        raise ValueError(
            f"pairwise: nothing to score ({len(missing)} missing, {len(unreadable)} unreadable images, "
            f"{len(identical)} identical pairs; e.g. {(unreadable or missing)[:3]})"
        )
    image_index = image_index[keep]
    n = len(kept)
    texts, text_index = unique_index([p["positive"] for p, _ in kept] + [p["negative"] for p, _ in kept])
    pos_index, neg_index = text_index[:n], text_index[n:]  # [P], [P]
    text_emb = encoder.encode_texts(texts)  # [T, D]

    rand = random_negative_index(image_index, seed)  # [P] pair whose positive serves as an easy negative
    examples = {
        "missing_images": missing[:MAX_EXAMPLES],
        "unreadable_images": unreadable[:MAX_EXAMPLES],
        "identical_pairs": [str(p["pair_id"]) for p in identical[:MAX_EXAMPLES]],
    }
    return PairwiseScores(
        positive=pair_cosines(image_emb, image_index, text_emb, pos_index),
        negative=pair_cosines(image_emb, image_index, text_emb, neg_index),
        random_negative=None if rand is None else pair_cosines(image_emb, image_index, text_emb, pos_index[rand]),
        types=[str(p["type"]) for p, _ in kept],
        pair_ids=[str(p["pair_id"]) for p, _ in kept],
        num_images=int((~bad_image).sum()),
        num_texts=len(texts),
        missing_images=len(missing),
        skipped_pairs=len(pairs) - n,
        unreadable_images=len(unreadable),
        identical_pairs=len(identical),
        identical_after_truncation=truncated,
        examples={k: v for k, v in examples.items() if v},
    )


def pairwise_metrics(scores: PairwiseScores, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """`caption_selection` on the scores (a tie is wrong, with the continuity statistics), the metric of every 2-way
    benchmark, plus the image/caption/missing counts."""
    results = _metric("caption_selection").compute(
        true_scores=scores.positive.tolist(),
        best_other_scores=scores.negative.tolist(),
        types=scores.types,
        tie="wrong",
        thresholds=list(thresholds),
        random_scores=None if scores.random_negative is None else scores.random_negative.tolist(),
    )
    results["num_pairs"] = results.pop("num_items")
    del results["num_ties"]  # the pairwise keys of results.json stay as they were (ties count in the accuracy)
    results.update(
        num_images=scores.num_images,
        num_captions=scores.num_texts,
        missing_images=scores.missing_images,
        unreadable_images=scores.unreadable_images,
        identical_pairs=scores.identical_pairs,
        identical_after_truncation=scores.identical_after_truncation,
        skipped_pairs=scores.skipped_pairs,
        num_input_pairs=len(scores.positive) + scores.skipped_pairs,
    )
    if scores.examples:
        results["skipped_examples"] = scores.examples
    return results


def score_pairwise(
    encoder: Encoder,
    pairs: Sequence[dict],
    image_dir: str | None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,
) -> dict:
    """Pairwise metrics for any `Encoder` (see `pairwise_metrics` for the keys)."""
    return pairwise_metrics(pairwise_scores(encoder, pairs, image_dir, seed), thresholds)


def evaluate_pairwise(
    model,
    processor,
    pairs: Sequence[dict],
    image_dir: str | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,
) -> dict:
    """Positive-vs-hard-negative accuracy (micro, macro, per type) and similarity statistics of a CLIP model.

    `pairs` are records from `hnc_clip.evaluation.formats.load_pairs` (or `hnc_clip.data.hnc.iter_hnc_pairs`).
    """
    encoder = ClipEncoder(model, processor, batch_size=batch_size, device=device)
    return score_pairwise(encoder, pairs, image_dir, thresholds, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------


def _topk_rows(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 1024) -> list[list[int]]:
    """Top-k gallery ids per query by cosine, chunked so no queries x gallery matrix is ever whole."""
    k = min(k, gallery.shape[0])
    ranked: list[list[int]] = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ gallery.T  # [chunk, G]
        ranked.extend(sims.topk(k, dim=1).indices.tolist())
    return ranked


def score_retrieval(
    encoder: Encoder,
    items: Sequence[ImageCaptions],
    image_dir: str | None,
    k_values: Sequence[int] = DEFAULT_K,
    allow_absolute: bool = False,
) -> dict:
    """Image->text and text->image Recall@K over a gallery where each image has one or more captions.

    As CLIP_benchmark's `zeroshot_retrieval.evaluate`: every caption *entry* is a gallery item, duplicates included
    (a sentence shared by two images is two entries with equal scores; `torch.topk` orders such ties), and each
    caption is a text->image query whose only relevant item is its own image. Image->text is a hit when any of the
    image's own entries is in the top K. Each distinct caption is still encoded once.
    """
    found, missing = _present_images([item.image for item in items], image_dir, allow_absolute)
    present = [item for item in items if item.image in found]
    images, image_index = unique_index([found[item.image] for item in present])
    image_table = encoder.encode_images(images)  # [I, D]
    bad_image, unreadable = _unreadable(encoder, images, image_table)
    kept = [item for item, i in zip(present, image_index) if not bad_image[i]]
    image_index = np.array([i for i in image_index if not bad_image[i]], dtype=np.int64)
    owner = [i for i, item in enumerate(kept) for _ in item.captions]  # [C] image of each caption entry
    captions = [c for item in kept for c in item.captions]  # [C]
    if not captions:
        raise ValueError("retrieval: no captions for the images that exist and decode")

    texts, text_index = unique_index(captions)
    image_emb = image_table[torch.from_numpy(image_index)]  # [N, D]
    text_emb = encoder.encode_texts(texts)[torch.from_numpy(text_index)]  # [C, D], one row per entry

    relevant_texts: list[list[int]] = [[] for _ in kept]  # per image, its caption entries
    for c, i in enumerate(owner):
        relevant_texts[i].append(c)
    kmax = max(k_values)
    recall = _metric("retrieval_recall")
    i2t = recall.compute(
        predictions=_topk_rows(image_emb, text_emb, kmax), references=relevant_texts, k_values=list(k_values)
    )
    t2i = recall.compute(
        predictions=_topk_rows(text_emb, image_emb, kmax), references=[[i] for i in owner], k_values=list(k_values)
    )
    results = {f"image_to_text_R@{k}": i2t[f"R@{k}"] for k in k_values}
    results.update({f"text_to_image_R@{k}": t2i[f"R@{k}"] for k in k_values})
    results["mean_recall"] = float(np.mean([results[key] for key in results]))
    results.update(
        num_images=len(kept),
        num_captions=len(captions),
        missing_images=len(missing),
        unreadable_images=len(unreadable),
        num_input_images=len(items),
    )
    examples = {"missing_images": missing[:MAX_EXAMPLES], "unreadable_images": unreadable[:MAX_EXAMPLES]}
    if any(examples.values()):
        results["skipped_examples"] = {k: v for k, v in examples.items() if v}
    return results


def evaluate_retrieval(
    model,
    processor,
    items: Sequence[ImageCaptions],
    image_dir: str | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    k_values: Sequence[int] = DEFAULT_K,
) -> dict:
    """Recall@K both ways of a CLIP model; `items` from `hnc_clip.evaluation.formats.load_image_captions`."""
    encoder = ClipEncoder(model, processor, batch_size=batch_size, device=device)
    return score_retrieval(encoder, items, image_dir, k_values)


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot classification
# ---------------------------------------------------------------------------------------------------------------------


def fill_template(template: str, classname: str) -> str:
    """A prompt from a template with a `{}` slot (OpenAI's notebooks) or a `{c}` slot (CLIP_benchmark's files)."""
    return template.replace("{c}", classname) if "{c}" in template else template.format(classname)


def zeroshot_classifier(encoder: Encoder, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class embeddings `[C, D]`: per class the mean of its L2-normalised template embeddings, re-normalised.

    The prompt ensemble of Radford et al. (2021), Sec. 3.1.4. All prompts are encoded in one deduplicated call.
    """
    prompts = [fill_template(template, name) for name in classnames for template in templates]
    texts, index = unique_index(prompts)
    emb = encoder.encode_texts(texts)[torch.from_numpy(index)]  # [C * T, D], rows L2-normalised
    mean = emb.view(len(classnames), len(templates), -1).mean(dim=1)  # [C, D]
    return torch.nn.functional.normalize(mean, dim=-1)


class DatasetColumn(Sequence):
    """Lazy view of one column of a `datasets.Dataset`, so images are decoded batch by batch by the encoder."""

    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[int(i)][self.column]


def score_zeroshot(
    encoder: Encoder,
    images: Sequence,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str],
    linear_probe: bool = False,
    seed: int = 0,
) -> dict:
    """Top-1 / top-5 accuracy and mean per-class recall of prompt-ensemble zero-shot classification.

    `images` are PIL images or `ImageRef`s, `labels` class ids into `classnames`. With `linear_probe`, a logistic
    regression on the same image features (deterministic per-class split) adds `linear_probe_*` keys.
    """
    if len(images) == 0:
        raise ValueError("zero-shot: no images")
    if len(images) != len(labels):
        raise ValueError(f"zero-shot: {len(images)} images but {len(labels)} labels")
    if min(labels) < 0 or max(labels) >= len(classnames):
        raise ValueError(
            f"zero-shot: labels span {min(labels)}..{max(labels)} but there are {len(classnames)} classes"
        )
    classifier = zeroshot_classifier(encoder, classnames, templates)  # [C, D]
    image_emb = encoder.encode_images(images)  # [N, D], NaN rows = undecodable
    bad = unreadable_rows(image_emb).numpy()
    if bad.all():
        raise ValueError(f"zero-shot: none of the {len(images)} images could be decoded")
    labels = [int(label) for label, b in zip(labels, bad) if not b]
    image_emb = image_emb[torch.from_numpy(~bad)]
    ranked = _topk_rows(image_emb, classifier, 5)
    metric = _metric("zeroshot_accuracy")
    results = metric.compute(predictions=ranked, references=list(labels), k_values=[1, 5])
    results.update(num_classes=len(classnames), num_templates=len(templates), unreadable_images=int(bad.sum()))
    if bad.any():
        errors = list(getattr(encoder, "unreadable", {}).items())
        results["skipped_examples"] = {"unreadable_images": [f"{f}: {e}" for f, e in errors[:MAX_EXAMPLES]]}
    if linear_probe:
        probe_ranked, probe_labels, backend = linear_probe_rankings(
            image_emb, np.asarray(labels), len(classnames), seed
        )
        probe = metric.compute(predictions=probe_ranked, references=probe_labels, k_values=[1, 5])
        results.update({f"linear_probe_{k}": v for k, v in probe.items()})
        results["linear_probe_backend"] = backend
    return results


def evaluate_zeroshot(
    model,
    processor,
    dataset,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    linear_probe: bool = False,
    seed: int = 0,
) -> dict:
    """Zero-shot classification of a CLIP model on an image-classification `datasets.Dataset` (image + label).

    `dataset` may also be a path to an image folder (`hnc_clip.evaluation.zeroshot_data.load_imagefolder`). Class
    names default to the label names with `_` -> space, templates to
    `hnc_clip.evaluation.zeroshot_data.DEFAULT_TEMPLATES`.
    """
    from .zeroshot_data import DEFAULT_TEMPLATES, default_classname, load_imagefolder

    if isinstance(dataset, str):
        dataset = load_imagefolder(dataset)
    if classnames is None:
        classnames = [default_classname(n) for n in dataset.features["label"].names]
    encoder = ClipEncoder(model, processor, batch_size=batch_size, device=device)
    return score_zeroshot(
        encoder,
        DatasetColumn(dataset, "image"),
        [int(label) for label in dataset["label"]],
        classnames,
        list(templates or DEFAULT_TEMPLATES),
        linear_probe=linear_probe,
        seed=seed,
    )
