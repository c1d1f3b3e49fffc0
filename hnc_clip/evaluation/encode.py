"""Batched, L2-normalised image and text embeddings of a CLIP or SigLIP model (the only code here that runs it).

Scoring code talks to an `Encoder` (two methods), so tests can swap in a fake encoder whose similarities they
choose, and the unique-encoding logic in `hnc_clip.evaluation.tasks` can be checked by counting what reaches the
encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .images import ImageRef, load_image


class Encoder(Protocol):
    """Anything that maps images and texts to L2-normalised embeddings `[N, D]` (float32, CPU)."""

    def encode_images(self, images: Sequence[ImageRef | Image.Image]) -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_clip(model_name_or_path: str, device: str | torch.device | None = None):
    """`(model, processor)` in eval mode on `device`, the model as its family's class (`CLIPModel`, `SiglipModel`,
    ...: `hnc_clip.families`): safetensors only and never remote code."""
    from transformers import AutoConfig, AutoProcessor

    from ..families import family_of

    config = AutoConfig.from_pretrained(model_name_or_path)
    model = family_of(config).cls.from_pretrained(model_name_or_path, config=config, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    return model.to(torch.device(device) if device else default_device()).eval(), processor


class ClipEncoder:
    """`Encoder` over a Hugging Face `CLIPModel` + `CLIPProcessor`.

    Images are opened lazily, one batch at a time, so a gallery of 100k images never sits in memory as PIL objects.
    Texts are truncated to the text tower's `max_position_embeddings` (77 for OpenAI CLIP): SugarCrepe and HNC have
    captions longer than that in tokens, and position ids past it would index out of range.
    """

    def __init__(
        self,
        model,
        processor,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        progress: bool = True,
    ):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.progress = progress
        self.max_text_length = model.config.text_config.max_position_embeddings
        from ..families import family_of

        # SigLIP: captions padded to the tower's length and no mask, as it was trained (`hnc_clip.families`).
        self.family = family_of(model)
        self.dim = self.family.embedding_dim(model.config)

    def _autocast(self):
        # bf16 on CUDA roughly halves encoding time; on CPU autocast is slower than fp32, so it stays off there.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self, n: int, desc: str):
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, disable=not self.progress or n == 0, leave=False)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageRef | Image.Image]) -> torch.Tensor:
        out = []
        for start in self._batches(len(images), "encode images"):
            batch = [load_image(images[i]) for i in range(start, min(start + self.batch_size, len(images)))]
            # The image processor's own settings, as in training (a Siglip2Processor call would apply its defaults)
            inputs = self.processor.image_processor(images=batch, return_tensors="pt").to(self.device)
            extra = {k: inputs[k] for k in self.family.pixel_inputs}
            with self._autocast():
                feats = self.model.get_image_features(pixel_values=inputs["pixel_values"], **extra).pooler_output
            out.append(F.normalize(feats.float(), dim=-1).cpu())  # [B, D]
        return torch.cat(out) if out else torch.empty(0, self.dim)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in self._batches(len(texts), "encode texts"):
            batch = list(texts[start : start + self.batch_size])
            tokens = self.processor(
                text=batch, **self.family.text_kwargs(self.max_text_length), return_tensors="pt"
            ).to(self.device)
            mask = tokens.get("attention_mask") if self.family.text_attention_mask else None
            with self._autocast():
                feats = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=mask).pooler_output
            out.append(F.normalize(feats.float(), dim=-1).cpu())  # [B, D]
        return torch.cat(out) if out else torch.empty(0, self.dim)
