"""The collator: pairs with their pixels → one batch (`HncBatch`) that `hnc_clip.forward.embed` encodes."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from ..families import PIXEL_INPUTS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
# The pairs whose negative reads as their positive named in the log, per collator (each DataLoader worker its own).
MAX_NAMED_IDENTICAL = 5


class HncBatch(TypedDict, total=False):
    """What `HncCollator` returns and `hnc_clip.forward.embed` / `HncTrainer.compute_loss` read (shapes in the
    collator's docstring). A batch whose every image was unreadable holds only `pixel_values` (0 rows) and
    `skipped_images`."""

    pixel_values: torch.Tensor  # [U, 3, H, W] float, or uint8 [U, H, W, 3] from the image cache
    pixel_attention_mask: torch.Tensor  # [U, N] SigLIP 2 NaFlex: which of the N patch rows are real
    spatial_shapes: torch.Tensor  # [U, 2] SigLIP 2 NaFlex: each image's patch grid
    image_index: torch.Tensor  # [B] pair i's image row
    input_ids: torch.Tensor  # [T, L] each distinct caption once
    attention_mask: torch.Tensor  # [T, L]
    text_index: torch.Tensor  # [(1+K)·B] rows of [positives; negatives 1; ...; negatives K] in input_ids
    positive_captions: int  # input_ids rows 0..positive_captions-1 are the distinct positives
    image_ids: torch.Tensor  # [B] int64 per image (same-image masking)
    skipped_images: torch.Tensor  # [] pairs dropped for an unreadable image
    kept_rows: torch.Tensor  # [B'] int64 the input row of each pair kept (a hard-image pair: the row that brought it)
    input_rows: torch.Tensor  # [B + E] int64 (with hard-image pairs) the input row of every pair, kept or not
    truncated_captions: torch.Tensor  # [] captions cut to max_length
    right_padded: bool  # the text tower may ignore attention_mask (causal, pooled at EOS)
    negative_mask: torch.Tensor  # [K·B] bool (`allow_missing_negatives`): False where a pair has no k-th negative
    counts: dict  # name -> int, the data pipeline's own counts (`count_names`), summed per log like skipped_images
    pair_ids: list  # [B'] str, each kept pair's id (where the records carry one): which samples a step trained on


# A caption longer than this many characters per allowed token is cut at the character level before tokenizing:
# no tokenizer of CLIP's kind packs more into one token, so the cut never removes words the model could have seen,
# and an adversarially long caption (100,000 characters) costs no more than a long one.
MAX_CHARS_PER_TOKEN = 32


def negatives_of(feature: dict) -> list[str]:
    """A pair's hard-negative captions: HNC's one `negative`, or a table row's `negatives` list."""
    negatives = feature.get("negatives")
    return list(negatives) if negatives is not None else [feature["negative"]]


def expand_hard_image_pairs(features: list[dict]) -> list[dict]:
    """Pairs, then the hard-image pairs they bring (`hnc_clip.data.table.HardImagePairs`): NegCLIP's [I; I']."""
    extra = [f["hard_image_pair"] for f in features if f.get("hard_image_pair") is not None]
    return features + extra if extra else features


def per_image_inputs(kept: list[dict], slot: dict[str, int]) -> dict:
    """What the image processor returned beside pixel_values (SigLIP 2 NaFlex: `pixel_attention_mask` [U, N],
    `spatial_shapes` [U, 2]), stacked in pixel_values' row order; {} for fixed-size families."""
    import torch

    first = {}
    for f in kept:
        first.setdefault(f["image_id"], f)
    keys = [k for k in PIXEL_INPUTS if kept[0].get(k) is not None]
    return {k: torch.stack([first[image_id][k] for image_id in slot]) for k in keys}


def image_group_id(image_id: str) -> int:
    """A stable int64 id per image (for same-image masking across processes; Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass
class HncCollator:
    """Stack each distinct image once and tokenize [positives; negatives] with dynamic padding.

    In:  [{"pixel_values": Tensor[3, H, W] | None, "positive": str, "negative": str, "image_id": str, ...}] × B
         (a table row: "negatives": [str] × K' instead of "negative", maybe "hard_image_pair": another such dict)
    Out: {"pixel_values":   [U, 3, H, W]  one row per distinct image of the batch (U ≤ B'),
                            (uint8 [U, H, W, 3] from the image cache, normalised on the device with the
                            collator's `pixel_affine`, which the trainer sends there once)
          "image_index":    [B'] int64    row i's image is pixel_values[image_index[i]],
          "input_ids":      [T, L]        each distinct caption of the batch once (T ≤ 2·B'),
          "attention_mask": [T, L]        L = longest caption in the batch (≤ max_length), not 77,
          "text_index":     [(1+K)·B'] int64  rows 0..B'-1 positives, then K blocks of B' hard negatives (block k:
                            each pair's k-th), as input_ids rows (K = 1 for HNC),
          "positive_captions": int        the distinct positives are input_ids rows 0..positive_captions-1,
          "image_ids":      [B'] int64, "skipped_images": [] int64, "truncated_captions": [] int64,
          "kept_rows":      [B'] int64    each kept pair's input row (a hard-image pair: the row that brought it),
                            to drop the rows repeated to even out the last evaluation batch,
          "input_rows":     [B + E] int64 (with E hard-image pairs) the input row of every pair, kept or not,
          "right_padded":   True          (with `omit_padding_mask`) the text tower may ignore attention_mask,
          "negative_mask":  [K·B'] bool   (with `allow_missing_negatives`) False where pair i has no k-th negative}
    where B' = B plus the hard-image pairs rows bring, minus the pairs whose image could not be read (counted in
    `skipped_images`).
    HNC captions are ~10–20 tokens, so padding to the batch's longest instead of 77 saves ~4× text compute; pairs
    of one image (`--group_by_image`, or chance) share one image encoding, and a repeated caption one text encoding.
    """

    tokenizer: object
    max_length: int = 77
    # uint8 pixels (`CachedImageJoin(as_uint8=True)`) are normalised on the device with this (a; b), [2, 3]
    # (`hnc_clip.data.image_cache.pixel_affine`): constants of the run, not of a batch (`pixel_affine_of`).
    pixel_affine: object = None
    # CLIP's text tower is causal and pools at the EOS token, so with right padding no real token ever attends to a
    # pad: the padding mask changes nothing the loss sees (OpenAI's CLIP has none). Captions are then padded right
    # and the batch says so ("right_padded"); `hnc_clip.forward.embed` leaves the mask out, which lets SDPA take its
    # fused causal kernels (memory-efficient or flash) and skips transformers' mask building (with host syncs that
    # stall the GPU queue). False: pad on the tokenizer's side and pass the mask (what HF's run_clip.py does).
    omit_padding_mask: bool = True
    # "longest": pad to the batch's longest caption. "max_length": every caption padded to `max_length` on the
    # tokenizer's own side, as SigLIP's processor does (the model was trained so and pools the last position).
    padding: str = "longest"
    # K, the hard negatives each pair brings to the loss: a table row with more gives K drawn at random (NegCLIP
    # draws one per step). None: all of them, which must then be equally many in a batch.
    negatives_per_row: int | None = None
    # Plain captions may get fewer than K negatives (none when no rule applied): the missing slots point at the
    # pair's own positive row (nothing more to encode) and are masked, so the pair trains the contrastive term only.
    allow_missing_negatives: bool = False
    # The counts this collator adds to every batch ("counts"), e.g. pairs without a negative; the trainer sums them.
    count_names: tuple = ()

    def __post_init__(self):
        # A negative the text tower reads as its positive (the same text, or the same tokens once truncated to
        # max_length: SigLIP's 16 tokens cut many captions before the word that differs) teaches nothing and
        # pushes the loss's hard-negative term to log 2; counted in every batch, the first few named.
        self.declare_counts("identical_negatives")
        self._named_identical = 0
        if self.allow_missing_negatives:
            self.declare_counts("pairs_without_negative")

    def declare_counts(self, *names: str) -> None:
        """Add counts that every batch carries (zero where nothing happened): the trainer sums them per log."""
        self.count_names = (*self.count_names, *(n for n in names if n not in self.count_names))

    def __call__(self, features: list[dict]) -> HncBatch:
        import torch

        # The input row of each pair: a hard-image pair is its row's (it is dropped or kept with it, never by its
        # position after the B rows, which made the last uneven evaluation batch lose them: 14 pairs scored 11).
        origins = [*range(len(features)), *(i for i, f in enumerate(features) if f.get("hard_image_pair") is not None)]
        features = expand_hard_image_pairs(features)
        positions = [i for i, f in enumerate(features) if f.get("pixel_values") is not None]
        kept = [features[i] for i in positions]
        kept_rows = [origins[i] for i in positions]
        counts = dict.fromkeys(self.count_names, 0)
        extra: dict = {}
        if len(origins) > len(set(origins)):
            extra["input_rows"] = torch.tensor(origins, dtype=torch.long)
        if not kept:  # every image in the batch unreadable: the trainer skips the step and counts them
            empty = {**extra, "pixel_values": torch.zeros(0), "skipped_images": torch.tensor(len(features))}
            return {**empty, "counts": counts} if counts else empty
        negatives = [self._draw_negatives(f) for f in kept]  # [B'][K]
        mask = None
        if self.allow_missing_negatives:
            k = self.negatives_per_row or 1
            mask = [[k_ < len(n) for n in negatives] for k_ in range(k)]  # [K][B']
            negatives = [n + [f["positive"]] * (k - len(n)) for f, n in zip(kept, negatives)]
            counts["pairs_without_negative"] = sum(not n for n in mask[0])
        if len({len(n) for n in negatives}) > 1:  # the loss lays them out as K blocks of B'
            raise ValueError("pairs of one batch bring different numbers of hard negatives; set --negatives_per_row")
        rows = [f["positive"] for f in kept] + [n[k] for k in range(len(negatives[0])) for n in negatives]
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
        if self.padding == "max_length":  # SigLIP: every caption at the tower's length, as it was trained
            tok = self.tokenizer(
                texts_in, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        pixels: dict[str, torch.Tensor] = {}  # image_id -> pixels, in order of first appearance
        for f in kept:
            pixels.setdefault(f["image_id"], f["pixel_values"])
        slot = {image_id: i for i, image_id in enumerate(pixels)}
        text_slot = {text: i for i, text in enumerate(texts)}
        stacked = torch.stack(list(pixels.values()))
        extra.update(per_image_inputs(kept, slot))
        if not torch.is_floating_point(stacked):
            if self.pixel_affine is None:
                raise ValueError("uint8 pixel_values (image cache with as_uint8) need HncCollator(pixel_affine=...)")
        if self.omit_padding_mask:
            extra["right_padded"] = True
        if mask is not None:
            extra["negative_mask"] = torch.tensor(mask, dtype=torch.bool).reshape(-1)  # [K·B'] k-major
        counts["identical_negatives"] = self._identical_negatives(tok, rows, text_slot, kept, mask)
        extra["counts"] = counts
        if all("pair_id" in f for f in kept):
            extra["pair_ids"] = [f["pair_id"] for f in kept]
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

    def _identical_negatives(self, tok, rows: list[str], text_slot: dict, kept: list[dict], mask) -> int:
        """How many (pair, negative) slots hold the same token ids as the pair's positive (masked slots aside)."""
        import torch

        b = len(kept)
        index = torch.tensor([text_slot[t] for t in rows], dtype=torch.long)  # [(1+K)·B']
        pos, neg = index[:b].repeat(len(rows) // b - 1), index[b:]  # [K·B'] each
        ids, attention = tok["input_ids"], tok["attention_mask"]
        same = (ids[pos] == ids[neg]).all(-1) & (attention[pos] == attention[neg]).all(-1)  # [K·B']
        if mask is not None:
            same &= torch.tensor(mask, dtype=torch.bool).reshape(-1)
        found = same.nonzero().flatten().tolist()
        for slot in found[: max(0, MAX_NAMED_IDENTICAL - self._named_identical)]:
            f = kept[slot % b]
            logger.warning(f"pair {f.get('pair_id', f['image_id'])!r}: negative {rows[b + slot]!r} reads as the "
                           f"positive {f['positive']!r} to the text tower ({self.max_length} tokens)")  # fmt: skip
            self._named_identical += 1
        return len(found)

    def _draw_negatives(self, feature: dict) -> list[str]:
        negatives, k = negatives_of(feature), self.negatives_per_row
        if k is not None and len(negatives) > k:
            return random.sample(negatives, k)
        if self.allow_missing_negatives:
            return negatives[: k or 1]
        if not negatives or (k is not None and len(negatives) < k):
            raise ValueError(f"pair {feature.get('pair_id')!r} has {len(negatives)} hard negatives, needs {k or 1}")
        return negatives


class WrapsHncCollator:
    """What the trainer reads off its collator, for a collator around an `HncCollator` (`self.collator`) whose pairs
    may bring no negative."""

    collator: HncCollator

    @property
    def count_names(self) -> tuple:
        return self.collator.count_names

    @property
    def negatives_per_row(self) -> int | None:
        return self.collator.negatives_per_row

    @property
    def allow_missing_negatives(self) -> bool:
        return True

    def declare_counts(self, *names: str) -> None:
        self.collator.declare_counts(*names)

    def collate(self, features: list[dict], counts: dict[str, int]) -> HncBatch:
        """The wrapped collator's batch with this wrapper's own `counts` added to the batch's."""
        batch = self.collator(features)
        batch_counts = batch.setdefault("counts", dict.fromkeys(self.count_names, 0))
        for name, value in counts.items():
            batch_counts[name] += value
        return batch


@dataclass
class NegativesFromCaptions(WrapsHncCollator):
    """A collator around `HncCollator` that makes hard negatives for the pairs that bring none (a plain caption),
    with `generator` (`hnc_clip.negatives.rules.CaptionNegatives`): up to K per pair, seeded by the pair's id, so a
    DataLoader worker, another process or a resumed run makes the same ones. A pair that gets none trains the
    contrastive term only (`allow_missing_negatives`). Counts per batch: `negatives/<rule>` for each negative made,
    `negatives/<reason>` for each caption that got none."""

    collator: HncCollator
    generator: object

    def __post_init__(self):
        from ..negatives.rules import SKIP_REASONS as NO_NEGATIVE

        self.collator.allow_missing_negatives = True
        self.collator.declare_counts("pairs_without_negative",
                                     *(f"negatives/{r}" for r in (*self.generator.rules, *NO_NEGATIVE)))  # fmt: skip

    def __call__(self, features: list[dict]) -> HncBatch:
        k = self.collator.negatives_per_row or 1
        counts: dict[str, int] = {}
        out = []
        for f in features:
            if f.get("pixel_values") is not None and not [n for n in negatives_of(f) if n]:
                made = self.generator.generate(f["positive"], f["pair_id"], k)
                for rule, _ in made.negatives:
                    counts[f"negatives/{rule}"] = counts.get(f"negatives/{rule}", 0) + 1
                if made.reason is not None:
                    counts[f"negatives/{made.reason}"] = counts.get(f"negatives/{made.reason}", 0) + 1
                f = {**f, "negatives": [text for _, text in made.negatives]}
            out.append(f)
        return self.collate(out, counts)
