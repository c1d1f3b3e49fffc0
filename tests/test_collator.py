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
    assert batch["skipped_images"].item() == 1  # the unreadable one is dropped and counted
    # both kept pairs show image "a": it is stacked once and indexed twice
    assert batch["pixel_values"].shape == (1, 3, 4, 4)
    assert batch["image_index"].tolist() == [0, 0]
    ids = batch["input_ids"][batch["text_index"]]
    # [positives; negatives], padded to the longest caption in the batch (7 words + BOS + EOS), not to 77
    assert ids.shape == (4, 9)
    assert tok.decode(ids[0], skip_special_tokens=True) == "the cup is left of the plate"
    assert tok.decode(ids[2], skip_special_tokens=True) == "the cup is right of the plate"
    assert tok.decode(ids[1], skip_special_tokens=True) == "a cup"
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["image_ids"][0] == batch["image_ids"][1] == image_group_id("a")


def test_distinct_images_are_stacked_in_order_of_appearance():
    tok = build_word_tokenizer("a b c".split())
    px = [torch.full((3, 2, 2), float(i)) for i in range(3)]
    feats = [{"pixel_values": px[i], "positive": "a", "negative": "b", "image_id": name}
             for i, name in enumerate(["x", "y", "x"])]
    feats[2]["pixel_values"] = px[0]  # the same image file gives the same pixels
    batch = HncCollator(tok)(feats)
    assert batch["image_index"].tolist() == [0, 1, 0]
    assert torch.equal(batch["pixel_values"][batch["image_index"]], torch.stack([px[0], px[1], px[0]]))


def test_repeated_captions_are_tokenized_once():
    tok = build_word_tokenizer("a red blue circle is left right of".split())
    feats = [
        {"pixel_values": torch.zeros(3, 2, 2), "positive": "a red circle is left of a blue circle",
         "negative": neg, "image_id": "x"}
        for neg in ("a red circle is right of a blue circle", "a blue circle is left of a red circle")
    ]
    batch = HncCollator(tok)(feats)
    assert batch["input_ids"].shape[0] == 3  # one positive (shared) + two negatives
    rows = batch["input_ids"][batch["text_index"]]  # [2B, L] = [positives; negatives]
    decoded = [tok.decode(r, skip_special_tokens=True) for r in rows]
    assert decoded == [feats[0]["positive"], feats[1]["positive"], feats[0]["negative"], feats[1]["negative"]]


def test_truncates_to_max_length_keeping_eos():
    tok = build_word_tokenizer("the cup is left right of plate a".split(), model_max_length=77)
    batch = HncCollator(tok, max_length=5)(features())
    assert batch["input_ids"].shape[1] == 5
    # EOS (id 3) stays the last real token, so CLIP's EOS pooling still finds it.
    assert (batch["input_ids"][0] == 3).nonzero().flatten().tolist() == [4]


def test_image_group_id_is_stable():
    assert image_group_id("2386621") == image_group_id("2386621") != image_group_id("2386622")
