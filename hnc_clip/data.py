"""HNC JSON → `datasets.Dataset` of pairs, with images joined on the fly.

The JSON is streamed into Arrow files (`hnc_clip/convert.py`: column batches, several processes on a large file)
under a cache directory named by a fingerprint of the file's path, size and mtime, so an edited file is
converted again. The files are written into a temporary directory renamed into place when complete: an
interrupted conversion never leaves a cache that a later run trusts. Images are not decoded here: `ImageJoin`
is installed with `with_transform` and loads `<image_dir>/<image_file>` in the DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from .convert import convert
from .hnc_json import PAIR_COLUMNS, detect_schema

logger = logging.getLogger(__name__)

FEATURES = datasets.Features({name: datasets.Value("string") for name in PAIR_COLUMNS})
SKIPS_FILE = "hnc_skips.json"


class EmptySplitError(ValueError):
    """A split has no pairs left (after parsing, filtering and dropping pairs with missing images)."""


class ImageLoadError(RuntimeError):
    """An image is missing or unreadable and `--on_missing_image error` was given."""


def _fingerprint(path: str, schema: str) -> str:
    st = os.stat(path)
    key = f"hnc-v2|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{schema}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def load_hnc_pairs(
    path: str, cache_dir: str | None = None, overwrite_cache: bool = False, num_proc: int | None = None
) -> datasets.Dataset:
    """Stream an HNC file (either schema) into an Arrow-backed `Dataset` of pairs (`PAIR_COLUMNS`).

    `cache_dir`: where converted files live (default: the `datasets` cache). `num_proc`: conversion processes
    (default: one per 64 MiB of file, up to the CPU count).
    """
    schema = detect_schema(path)  # also: missing file / invalid JSON / unknown schema, with the file named
    root = os.path.join(cache_dir or datasets.config.HF_DATASETS_CACHE, "hnc_pairs")
    final = os.path.join(root, _fingerprint(path, schema))
    if overwrite_cache and os.path.isdir(final):
        shutil.rmtree(final)
    if not os.path.isfile(os.path.join(final, SKIPS_FILE)):  # the skips file is written last: its presence = done
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".incomplete-", dir=root)
        try:
            files, skips = convert(path, schema, tmp, FEATURES, num_proc)
            with open(os.path.join(tmp, SKIPS_FILE), "w") as f:
                json.dump({"files": [os.path.basename(p) for p in files], "skips": skips}, f)
            try:
                os.rename(tmp, final)
            except OSError:  # another process (another rank) finished the same conversion first: use theirs
                if not os.path.isfile(os.path.join(final, SKIPS_FILE)):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(final, SKIPS_FILE)) as f:
        done = json.load(f)
    files = [os.path.join(final, name) for name in done["files"]]
    parts = [datasets.Dataset.from_file(p) for p in files]
    ds = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict(
        {name: [] for name in PAIR_COLUMNS}, features=FEATURES
    )
    report_skips(path, len(ds), done["skips"])
    return ds


def report_skips(what: str, kept: int, skips: dict[str, int]) -> None:
    """One summary line per split (counts by reason), never one warning per item."""
    total = sum(skips.values())
    if total:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(skips.items()))
        logger.warning(f"{what}: kept {kept:,} pairs, skipped {total:,} ({reasons})")
    else:
        logger.info(f"{what}: {kept:,} pairs, nothing skipped")


def select_pairs(
    ds: datasets.Dataset,
    caption_types: list[str] | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Apply `--caption_types` then `--max_*_samples`."""
    if caption_types:
        wanted = set(caption_types)
        available = set(ds.unique("type"))
        if unknown := wanted - available:
            logger.warning(
                f"--caption_types {sorted(unknown)} occur nowhere in this split; available: {sorted(available)}"
            )
        ds = ds.filter(
            lambda types: [t in wanted for t in types],
            input_columns="type",
            batched=True,
            num_proc=num_proc,
            desc="Filtering caption types",
        )
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def drop_missing_images(
    ds: datasets.Dataset, image_dir: str, on_missing: str = "skip", num_proc: int | None = None
) -> datasets.Dataset:
    """Check once per unique image that its file exists; drop (and count) or raise for the missing ones.

    ~121 pairs share each GQA image, so this is one `stat` per image, not per pair.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"--image_dir {image_dir!r} does not exist or is not a directory")
    files = ds.unique("image_file")
    missing = {f for f in files if not os.path.isfile(os.path.join(image_dir, f))}
    if not missing:
        return ds
    example = ", ".join(sorted(missing)[:5])
    if on_missing == "error":
        raise ImageLoadError(f"{len(missing)} of {len(files)} images missing under {image_dir} (e.g. {example})")
    before = len(ds)
    ds = ds.filter(
        lambda names: [n not in missing for n in names],
        input_columns="image_file",
        batched=True,
        num_proc=num_proc,
        desc="Dropping pairs with missing images",
    )
    logger.warning(
        f"{len(missing)} of {len(files)} images missing under {image_dir} (e.g. {example}): "
        f"skipped {before - len(ds):,} of {before:,} pairs"
    )
    return ds


def build_split(path: str, data_args, max_samples: int | None, cache_dir: str | None = None) -> datasets.Dataset:
    """Everything a split needs before training: parse, filter, check images, join images lazily."""
    ds = load_hnc_pairs(
        path, cache_dir=cache_dir, overwrite_cache=data_args.overwrite_cache,
        num_proc=data_args.preprocessing_num_workers,
    )
    ds = select_pairs(ds, data_args.caption_types, max_samples, data_args.preprocessing_num_workers)
    if data_args.image_dir is None:
        raise ValueError("--image_dir is required: images are joined from it by file name")
    ds = drop_missing_images(ds, data_args.image_dir, data_args.on_missing_image, data_args.preprocessing_num_workers)
    if len(ds) == 0:
        raise EmptySplitError(f"{path}: no pairs left after filtering (caption_types={data_args.caption_types})")
    return ds


# ---------------------------------------------------------------------------------------------------------------
# On-the-fly image join


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB: grayscale, palette, RGBA and CMYK files all become 3-channel."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


@dataclass
class ImageJoin:
    """`Dataset.with_transform` callable: adds `pixel_values` (a [3, H, W] tensor, or None if unreadable).

    Runs inside DataLoader workers. A file that fails to decode is not an exception there (it would kill the
    run at step 10,000): it becomes `None`, and the collator skips and counts that pair. With
    `on_missing="error"` it raises `ImageLoadError` naming the file instead.
    """

    image_dir: str
    image_processor: object
    on_missing: str = "skip"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        # Each distinct file is decoded and processed once per call: a batch fetched by the DataLoader often holds
        # several pairs of one image (~121 per GQA image; all of them under `--group_by_image`).
        names = list(dict.fromkeys(batch["image_file"]))
        images, readable = [], []
        for name in names:
            path = os.path.join(self.image_dir, name)
            try:
                images.append(load_rgb(path))
                readable.append(name)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if self.on_missing == "error":
                    raise ImageLoadError(f"cannot read image {path}: {err}") from err
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"] if images else []
        by_name = dict(zip(readable, pixels))
        batch["pixel_values"] = [by_name.get(name) for name in batch["image_file"]]
        return batch


def with_images(ds: datasets.Dataset, image_dir: str, image_processor, on_missing: str = "skip") -> datasets.Dataset:
    return ds.with_transform(ImageJoin(image_dir, image_processor, on_missing))


# ---------------------------------------------------------------------------------------------------------------
# Collator


def image_group_id(image_id: str) -> int:
    """A stable int64 id per image (for same-image masking across processes; Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass
class HncCollator:
    """Stack each distinct image once and tokenize [positives; negatives] with dynamic padding.

    In:  [{"pixel_values": Tensor[3, H, W] | None, "positive": str, "negative": str, "image_id": str, ...}] × B
    Out: {"pixel_values":   [U, 3, H, W]  one row per distinct image of the batch (U ≤ B'),
                            (uint8 [U, H, W, 3] from the image cache, + "pixel_affine" [2, 3] to normalise it)
          "image_index":    [B'] int64    row i's image is pixel_values[image_index[i]],
          "input_ids":      [T, L]        each distinct caption of the batch once (T ≤ 2·B'),
          "attention_mask": [T, L]        L = longest caption in the batch (≤ max_length), not 77,
          "text_index":     [2·B'] int64  rows 0..B'-1 positives, B'..2B'-1 their hard negatives, as input_ids rows,
          "positive_captions": int        the distinct positives are input_ids rows 0..positive_captions-1,
          "image_ids":      [B'] int64, "skipped_images": [] int64, "truncated_captions": [] int64,
          "right_padded":   True          (with `omit_padding_mask`) the text tower may ignore attention_mask}
    where B' = B minus the pairs whose image could not be read (counted in `skipped_images`).
    HNC captions are ~10–20 tokens, so padding to the batch's longest instead of 77 saves ~4× text compute; pairs
    of one image (`--group_by_image`, or chance) share one image encoding, and a repeated caption one text encoding.
    """

    tokenizer: object
    max_length: int = 77
    # uint8 pixels (`CachedImageJoin(as_uint8=True)`) are normalised on the device: this [2, 3] (a; b) travels
    # with the batch as "pixel_affine" (`hnc_clip.image_cache.pixel_affine`).
    pixel_affine: object = None
    # CLIP's text tower is causal and pools at the EOS token, so with right padding no real token ever attends to a
    # pad: the padding mask changes nothing the loss sees (OpenAI's CLIP has none). Captions are then padded right
    # and the batch says so ("right_padded"); `hnc_clip.forward.embed` leaves the mask out, which lets SDPA take its
    # fused causal kernels (memory-efficient or flash) and skips transformers' mask building (with host syncs that
    # stall the GPU queue). False: pad on the tokenizer's side and pass the mask (what HF's run_clip.py does).
    omit_padding_mask: bool = True

    def __call__(self, features: list[dict]) -> dict:
        import torch

        kept = [f for f in features if f.get("pixel_values") is not None]
        if not kept:  # every image in the batch unreadable: the trainer skips the step and counts them
            return {"pixel_values": torch.zeros(0), "skipped_images": torch.tensor(len(features))}
        rows = [f["positive"] for f in kept] + [f["negative"] for f in kept]  # [2B']
        # Each distinct caption once (positives repeat across an image's pairs), positives first: a positives-only
        # forward (`clip` loss) then encodes rows 0..P-1 without working out which they are on the device.
        texts = list(dict.fromkeys(rows))
        num_positive = len(dict.fromkeys(rows[: len(kept)]))
        # Tokenize untruncated first: it costs nothing extra in the common case and lets us count the captions
        # that truncation cuts (a caption cut before its distinguishing word makes a pair unlearnable).
        side = {"padding_side": "right"} if self.omit_padding_mask else {}
        tok = self.tokenizer(texts, padding=True, return_tensors="pt", **side)
        lengths = tok["attention_mask"].sum(-1)  # [T]
        truncated = int((lengths > self.max_length).sum())
        if truncated:
            tok = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", **side
            )
        pixels: dict[str, torch.Tensor] = {}  # image_id -> pixels, in order of first appearance
        for f in kept:
            pixels.setdefault(f["image_id"], f["pixel_values"])
        slot = {image_id: i for i, image_id in enumerate(pixels)}
        text_slot = {text: i for i, text in enumerate(texts)}
        stacked = torch.stack(list(pixels.values()))
        extra = {}
        if not torch.is_floating_point(stacked):
            if self.pixel_affine is None:
                raise ValueError("uint8 pixel_values (image cache with as_uint8) need HncCollator(pixel_affine=...)")
            extra["pixel_affine"] = torch.as_tensor(np.stack(self.pixel_affine), dtype=torch.float32)  # [2, 3]
        if self.omit_padding_mask:
            extra["right_padded"] = True
        return {
            **extra,
            "pixel_values": stacked,
            "image_index": torch.tensor([slot[f["image_id"]] for f in kept], dtype=torch.long),
            "text_index": torch.tensor([text_slot[t] for t in rows], dtype=torch.long),
            "positive_captions": num_positive,
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "image_ids": torch.tensor([image_group_id(f["image_id"]) for f in kept], dtype=torch.long),
            "skipped_images": torch.tensor(len(features) - len(kept)),
            "truncated_captions": torch.tensor(truncated),
        }
