"""Benchmark models built in code (random init, offline) and the FLOP count of a training step."""

from __future__ import annotations

import torch
from transformers import CLIPConfig, CLIPModel

from hnc_clip.tiny import EOS_ID

MAX_TEXT_LENGTH = 77


def clip_config(model: str, vocab_size: int) -> CLIPConfig:
    """`vitb32`: `CLIPConfig()` defaults (ViT-B/32 sizes); `tiny`: a small CLIP with the same 224-pixel data path."""
    # Our word tokenizer puts EOS at id 3; with eos_token_id == 2 CLIP would pool at argmax(input_ids) instead.
    special = dict(eos_token_id=EOS_ID, bos_token_id=2, pad_token_id=0)
    if model == "vitb32":
        return CLIPConfig(text_config=dict(max_position_embeddings=MAX_TEXT_LENGTH, **special))
    if model == "tiny":
        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=MAX_TEXT_LENGTH,
                **special,
            ),
            vision_config=dict(
                image_size=224,
                patch_size=32,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=2,
            ),
            projection_dim=64,
        )
    raise ValueError(f"--model must be tiny or vitb32, got {model!r}")


def build_model(config: CLIPConfig, attn: str, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel._from_config(config, attn_implementation=attn)


class FlopCounter:
    """FLOPs of one training step (forward + backward) for U images and T captions of length L:
    U·f_image + T·f_text(L), each counted once on the meta device (a tower's FLOPs are linear in its batch) and
    memoised. U and T are what the step really encodes: the collator encodes each distinct image and caption of a
    batch once, so U ≤ B pairs and T ≤ 2B. The U×T logit matmul (< 0.01 % of a step) is left out."""

    def __init__(self, config: CLIPConfig):
        self.config = config
        self.per_image: int | None = None
        self.per_caption: dict[int, int] = {}
        self.model = None

    def _count(self, fn) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        if self.model is None:
            with torch.device("meta"):
                # eager: its bmm's count the attention FLOPs on meta; the kernel does not change the math.
                self.model = CLIPModel._from_config(self.config, attn_implementation="eager")
        counter = FlopCounterMode(display=False)
        with counter:
            fn(self.model).pooler_output.sum().backward()
        return counter.get_total_flops()

    def __call__(self, images: int, texts: int, length: int) -> int:
        if self.per_image is None:
            size = self.config.vision_config.image_size
            pixels = torch.zeros(1, 3, size, size, device="meta")
            self.per_image = self._count(lambda m: m.get_image_features(pixel_values=pixels))
        if length not in self.per_caption:
            # No attention_mask: masking adds no matmul FLOPs, and building it calls .item() (not on meta).
            ids = torch.full((1, length), 5, dtype=torch.long, device="meta")
            self.per_caption[length] = self._count(lambda m: m.get_text_features(input_ids=ids))
        return images * self.per_image + texts * self.per_caption[length]
