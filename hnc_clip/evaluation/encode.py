"""Batched, L2-normalised image and text embeddings of a CLIP or SigLIP model (the only code here that runs it).

Scoring code talks to an `Encoder` (two methods), so tests can swap in a fake encoder whose similarities they
choose, and the unique-encoding logic in `hnc_clip.evaluation.tasks` can be checked by counting what reaches the
encoder.

Contract for images: `encode_images(refs)` returns one row per reference; a row of an image that could not be decoded
is NaN, and the encoder lists the file and the error in `unreadable`. Scoring code drops (and counts, naming
examples) every item that needs such an image, instead of one corrupt file aborting a whole run.

`pair_cosines` turns the two tables and index arrays into similarities: the one routine the pairwise task and every
benchmark score with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import IMAGE_ERRORS
from ..families import family_of
from .images import ImageRef, load_image

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Encoder(Protocol):
    """Maps images and texts to L2-normalised embeddings `[N, D]` (float32, CPU; NaN rows = unreadable images)."""

    def encode_images(self, images: Sequence[ImageRef | Image.Image]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def text_keys(encoder: Encoder, texts: Sequence[str]) -> list:
    """What the text tower sees of each text (its token ids after truncation, where the encoder tokenizes; the text
    itself otherwise): two captions with one key get one embedding, so a pair of them cannot be told apart."""
    keys = getattr(encoder, "text_keys", None)
    return keys(texts) if keys is not None else list(texts)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_clip(model_name_or_path: str, device: str | torch.device | None = None):
    """`(model, processor)` in eval mode on `device`, the model as its family's class (`CLIPModel`, `SiglipModel`,
    ...: `hnc_clip.families`): safetensors only and never remote code."""
    from transformers import AutoConfig, AutoProcessor

    from ..modeling import check_finite_weights

    config = AutoConfig.from_pretrained(model_name_or_path)
    model = family_of(config).cls.from_pretrained(model_name_or_path, config=config, use_safetensors=True)
    check_finite_weights(model, model_name_or_path)
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    return model.to(torch.device(device) if device else default_device()).eval(), processor


class _DecodedImages(torch.utils.data.Dataset):
    """Decodes and preprocesses one image per item inside a DataLoader worker: ({key: tensor} or None, error), the
    keys being the model family's image inputs (`pixel_values` [3, H, W], and SigLIP 2's mask and shapes)."""

    def __init__(self, images: Sequence, image_processor, keys: Sequence[str] = ("pixel_values",)):
        self.images, self.image_processor, self.keys = images, image_processor, keys

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            out = self.image_processor(images=[load_image(self.images[i])], return_tensors="pt")
            return {k: out[k][0] for k in self.keys}, None
        except IMAGE_ERRORS as err:
            return None, f"{type(err).__name__}: {err}"


def _collate(batch):
    return [pixels for pixels, _ in batch], [error for _, error in batch]


class ClipEncoder:
    """`Encoder` over a Hugging Face `CLIPModel` + `CLIPProcessor`.

    Images are decoded in `num_workers` DataLoader workers, one batch at a time, so a gallery of 100k images never
    sits in memory as PIL objects and decoding overlaps the forward pass. Texts are truncated to the text tower's
    `max_position_embeddings` (77 for OpenAI CLIP): SugarCrepe and HNC have captions longer than that in tokens.

    `precision` is fp32 by default, as the published numbers are; `bf16`/`fp16` run the towers under autocast (on a
    GPU about twice as fast, and a few near-tie decisions flip).
    """

    def __init__(
        self,
        model,
        processor,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool = True,
        precision: str = "fp32",
        num_workers: int = 0,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: choose from {list(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.progress = progress
        self.precision = precision
        self.num_workers = num_workers
        self.max_text_length = model.config.text_config.max_position_embeddings
        self.unreadable: dict[str, str] = {}  # file -> decode error, across all calls
        # SigLIP: captions padded to the tower's length and no mask, as it was trained (`hnc_clip.families`).
        self.family = family_of(model)
        self.dim = self.family.embedding_dim(model.config)

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, self.dim)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageRef | Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            return self._empty()
        loader = torch.utils.data.DataLoader(
            _DecodedImages(images, self.processor.image_processor, ("pixel_values", *self.family.pixel_inputs)),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        out, start = [], 0
        bar = tqdm(total=len(images), desc="encode images", disable=not self.progress, leave=False)
        for inputs, errors in loader:
            ok = [i for i, x in enumerate(inputs) if x is not None]
            rows = torch.full((len(inputs), self.dim), float("nan"))
            if ok:
                # The image processor's own settings, as in training (a Siglip2Processor call would apply defaults)
                batch = {k: torch.stack([inputs[i][k] for i in ok]).to(self.device) for k in inputs[ok[0]]}
                with self._autocast():
                    feats = self.model.get_image_features(**batch).pooler_output  # [B_ok, D]
                rows[ok] = F.normalize(feats.float(), dim=-1).cpu()
            for i, error in enumerate(errors):
                if error is not None:
                    ref = images[start + i]
                    self.unreadable[getattr(ref, "file", repr(ref))] = error
            out.append(rows)
            start += len(inputs)
            bar.update(len(inputs))
        bar.close()
        return torch.cat(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="encode texts", disable=not self.progress or not texts, leave=False):
            batch = list(texts[start : start + self.batch_size])
            tokens = self.processor(
                text=batch, **self.family.text_kwargs(self.max_text_length), return_tensors="pt"
            ).to(self.device)
            mask = tokens.get("attention_mask") if self.family.text_attention_mask else None
            with self._autocast():
                feats = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=mask).pooler_output
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else self._empty()

    def text_keys(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Each text's token ids as `encode_texts` feeds them (truncated to the tower's length, padding dropped)."""
        if not texts:
            return []
        tokens = self.processor(text=list(texts), **self.family.text_kwargs(self.max_text_length))
        masks = tokens.get("attention_mask") or [[1] * len(ids) for ids in tokens["input_ids"]]
        return [tuple(i for i, m in zip(ids, mask) if m) for ids, mask in zip(tokens["input_ids"], masks)]


class CachedEncoder:
    """Memoises another encoder per image reference and per text, so benchmarks sharing images (SugarCrepe and
    SugarCrepe++ both use COCO val2017) encode each one once per model."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self._images: dict = {}
        self._texts: dict[str, torch.Tensor] = {}

    @property
    def unreadable(self) -> dict[str, str]:
        return getattr(self.encoder, "unreadable", {})

    def _lookup(self, keys: Sequence, cache: dict, encode) -> torch.Tensor:
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            cache.update(zip(todo, encode(todo)))
        if not keys:
            return encode([])
        return torch.stack([cache[k] for k in keys])

    def encode_images(self, images: Sequence[ImageRef]) -> torch.Tensor:
        return self._lookup(list(images), self._images, self.encoder.encode_images)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._lookup(list(texts), self._texts, self.encoder.encode_texts)

    def text_keys(self, texts: Sequence[str]) -> list:
        return text_keys(self.encoder, texts)


def unreadable_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Boolean mask `[N]` of rows that are NaN (images that could not be decoded)."""
    return torch.isnan(embeddings).any(dim=-1) if embeddings.numel() else torch.zeros(len(embeddings), dtype=bool)


def pair_cosines(
    a: torch.Tensor, a_index: np.ndarray, b: torch.Tensor, b_index: np.ndarray, chunk: int = 512
) -> np.ndarray:
    """`[P]` float64: `a[a_index[i]] . b[b_index[i]]` for each i, the cosine of each (row, row) pair of two
    L2-normalised tables: the one similarity the pairwise task and every benchmark score with.

    Each entry is its own dot product, never a matmul: a matmul may round columns differently (SIMD blocks), and then
    two identical captions would not tie, while the tie rules of the benchmarks depend on exactly that. Chunked so
    the `[chunk, D]` gathers stay in cache (at D = 768, 512 rows run 4x faster than 16384).
    """
    out = np.empty(len(a_index), dtype=np.float64)
    for start in range(0, len(a_index), chunk):
        ai = torch.from_numpy(np.ascontiguousarray(a_index[start : start + chunk], dtype=np.int64))
        bi = torch.from_numpy(np.ascontiguousarray(b_index[start : start + chunk], dtype=np.int64))
        # float64: float32 x float32 products are exact and the sum errs by ~1e-16, so rounding never decides a rank
        out[start : start + chunk] = (a[ai].double() * b[bi].double()).sum(-1).numpy()  # [chunk]
    return out
