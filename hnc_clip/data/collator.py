"""The collator: pairs with their pixels → one batch (`HncBatch`) that `hnc_clip.forward.embed` encodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

if TYPE_CHECKING:
    import torch


class HncBatch(TypedDict, total=False):
    """What `HncCollator` returns and `hnc_clip.forward.embed` / `HncTrainer.compute_loss` read (shapes in the
    collator's docstring). A batch whose every image was unreadable holds only `pixel_values` (0 rows) and
    `skipped_images`."""

    pixel_values: torch.Tensor  # [U, 3, H, W] float, or uint8 [U, H, W, 3] from the image cache
    pixel_affine: torch.Tensor  # [2, 3] (a; b): uint8 pixels x are normalised as x·a − b on the device
    image_index: torch.Tensor  # [B] pair i's image row
    input_ids: torch.Tensor  # [T, L] each distinct caption once
    attention_mask: torch.Tensor  # [T, L]
    text_index: torch.Tensor  # [2B] rows of [positives; negatives] in input_ids
    positive_captions: int  # input_ids rows 0..positive_captions-1 are the distinct positives
    image_ids: torch.Tensor  # [B] int64 per image (same-image masking)
    skipped_images: torch.Tensor  # [] pairs dropped for an unreadable image
    kept_rows: torch.Tensor  # [B'] int64 the input position of each pair kept
    truncated_captions: torch.Tensor  # [] captions cut to max_length
    right_padded: bool  # the text tower may ignore attention_mask (causal, pooled at EOS)


# A caption longer than this many characters per allowed token is cut at the character level before tokenizing:
# no tokenizer of CLIP's kind packs more into one token, so the cut never removes words the model could have seen,
# and an adversarially long caption (100,000 characters) costs no more than a long one.
MAX_CHARS_PER_TOKEN = 32


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
          "kept_rows":      [B'] int64    each kept pair's position in the input (to drop repeated ones later),
          "right_padded":   True          (with `omit_padding_mask`) the text tower may ignore attention_mask}
    where B' = B minus the pairs whose image could not be read (counted in `skipped_images`).
    HNC captions are ~10–20 tokens, so padding to the batch's longest instead of 77 saves ~4× text compute; pairs
    of one image (`--group_by_image`, or chance) share one image encoding, and a repeated caption one text encoding.
    """

    tokenizer: object
    max_length: int = 77
    # uint8 pixels (`CachedImageJoin(as_uint8=True)`) are normalised on the device: this [2, 3] (a; b) travels
    # with the batch as "pixel_affine" (`hnc_clip.data.image_cache.pixel_affine`).
    pixel_affine: object = None
    # CLIP's text tower is causal and pools at the EOS token, so with right padding no real token ever attends to a
    # pad: the padding mask changes nothing the loss sees (OpenAI's CLIP has none). Captions are then padded right
    # and the batch says so ("right_padded"); `hnc_clip.forward.embed` leaves the mask out, which lets SDPA take its
    # fused causal kernels (memory-efficient or flash) and skips transformers' mask building (with host syncs that
    # stall the GPU queue). False: pad on the tokenizer's side and pass the mask (what HF's run_clip.py does).
    omit_padding_mask: bool = True

    def __call__(self, features: list[dict]) -> HncBatch:
        import torch

        kept_rows = [i for i, f in enumerate(features) if f.get("pixel_values") is not None]
        kept = [features[i] for i in kept_rows]
        if not kept:  # every image in the batch unreadable: the trainer skips the step and counts them
            return {"pixel_values": torch.zeros(0), "skipped_images": torch.tensor(len(features))}
        rows = [f["positive"] for f in kept] + [f["negative"] for f in kept]  # [2B']
        # Each distinct caption once (positives repeat across an image's pairs), positives first: a positives-only
        # forward (`clip` loss) then encodes rows 0..P-1 without working out which they are on the device.
        texts = list(dict.fromkeys(rows))
        num_positive = len(dict.fromkeys(rows[: len(kept)]))
        # Count the captions that truncation cuts (a caption cut before its distinguishing word makes a pair
        # unlearnable) while keeping every tensor bounded: one token more than allowed tells a cut caption, and
        # padding never exceeds max_length + 1 (untruncated, one 100,000-character caption padded the whole batch).
        side = {"padding_side": "right"} if self.omit_padding_mask else {}
        limit = MAX_CHARS_PER_TOKEN * self.max_length
        cut = sum(len(t) > limit for t in texts)
        texts_in = [t[:limit] for t in texts] if cut else texts
        tok = self.tokenizer(
            texts_in, padding=True, truncation=True, max_length=self.max_length + 1, return_tensors="pt", **side
        )
        lengths = tok["attention_mask"].sum(-1)  # [T]
        over = lengths > self.max_length  # [T]
        truncated = int(over.sum())
        if truncated:
            tok = self.tokenizer(
                texts_in, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt", **side
            )
        if cut:  # cut at the character level but within max_length tokens: cut all the same
            truncated += sum(len(t) > limit and not o for t, o in zip(texts, over.tolist()))
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
            "kept_rows": torch.tensor(kept_rows, dtype=torch.long),
            "truncated_captions": torch.tensor(truncated),
        }
