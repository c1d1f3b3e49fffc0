"""The collator alone, on a few Python dicts."""

from __future__ import annotations

import torch

from hnc_clip.data import HncCollator, image_group_id
from hnc_clip.tiny import build_word_tokenizer


def features():
    px = torch.zeros(3, 4, 4)
    return [
        {"pixel_values": px, "positive": "the cup is left of the plate", "negative": "the cup is right of the plate",
         "image_id": "a"},
        {"pixel_values": None, "positive": "unreadable image", "negative": "x", "image_id": "b"},
        {"pixel_values": px + 1, "positive": "a cup", "negative": "a plate", "image_id": "a"},
    ]


def test_layout_dynamic_padding_and_skips():
    tok = build_word_tokenizer("the cup is left right of plate a".split(), model_max_length=77)
    batch = HncCollator(tok, max_length=77)(features())
    assert batch["pixel_values"].shape == (2, 3, 4, 4)  # the unreadable one is dropped...
    assert batch["skipped_images"].item() == 1  # ...and counted
    ids = batch["input_ids"]
    # [positives; negatives], padded to the longest caption in the batch (7 words + BOS + EOS), not to 77
    assert ids.shape == (4, 9)
    assert tok.decode(ids[0], skip_special_tokens=True) == "the cup is left of the plate"
    assert tok.decode(ids[2], skip_special_tokens=True) == "the cup is right of the plate"
    assert tok.decode(ids[1], skip_special_tokens=True) == "a cup"
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["image_ids"][0] == batch["image_ids"][1] == image_group_id("a")


def test_truncates_to_max_length_keeping_eos():
    tok = build_word_tokenizer("the cup is left right of plate a".split(), model_max_length=77)
    batch = HncCollator(tok, max_length=5)(features())
    assert batch["input_ids"].shape[1] == 5
    # EOS (id 3) stays the last real token, so CLIP's EOS pooling still finds it.
    assert (batch["input_ids"][0] == 3).nonzero().flatten().tolist() == [4]


def test_image_group_id_is_stable():
    assert image_group_id("2386621") == image_group_id("2386621") != image_group_id("2386622")
