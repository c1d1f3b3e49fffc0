"""The collator alone, on a few Python dicts."""

from __future__ import annotations

import pytest
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


def _captions_batch(padding_side: str, omit_padding_mask: bool = True):
    words = "the cup is left right of plate a small red blue mug on under table".split()
    tok = build_word_tokenizer(words, model_max_length=32)
    tok.padding_side = padding_side
    px = torch.rand(3, 32, 32)
    features = [
        {"pixel_values": px, "positive": "a cup", "negative": "the small red cup is left of the blue plate",
         "image_id": "a"},
        {"pixel_values": px, "positive": "the mug is on the table", "negative": "the table is on the mug",
         "image_id": "a"},
    ]
    return tok, HncCollator(tok, max_length=32, omit_padding_mask=omit_padding_mask)(features)


def test_captions_are_right_padded_whatever_the_tokenizer_default():
    tok, batch = _captions_batch("left")
    assert batch["right_padded"] is True
    assert batch["attention_mask"][0].tolist()[:5] == [1, 1, 1, 1, 0]  # "a cup" = BOS a cup EOS, then pads
    # Asked to keep the mask (HF's way), the collator pads on the tokenizer's side and does not vouch for it.
    tok, batch = _captions_batch("left", omit_padding_mask=False)
    assert "right_padded" not in batch
    assert batch["attention_mask"][0].tolist()[-4:] == [1, 1, 1, 1] and batch["attention_mask"][0, 0] == 0


def test_the_omitted_padding_mask_changes_no_embedding():
    """Causal text tower pooled at EOS + right padding: embeddings without the mask equal those with it. The same
    omission on left-padded captions changes them (so the check would catch a collator that padded left)."""
    from hnc_clip.forward import embed
    from hnc_clip.tiny import build_tiny_clip

    tok, batch = _captions_batch("left")
    model = build_tiny_clip(len(tok), image_size=32, num_layers=2).eval()
    with torch.no_grad():
        fast = embed(model, batch)
        masked = embed(model, {**batch, "right_padded": False})
        for name in ("image", "positive", "negative"):
            torch.testing.assert_close(getattr(fast, name), getattr(masked, name), rtol=0, atol=1e-6)
        _, left = _captions_batch("left", omit_padding_mask=False)
        left_masked, left_unmasked = embed(model, left), embed(model, {**left, "right_padded": True})
        assert (left_unmasked.positive - left_masked.positive).abs().max() > 1e-3


def test_a_positives_only_forward_reads_the_first_caption_rows():
    """The `clip` loss encodes the positives only. The collator numbers the distinct captions positives first and
    says how many, so that forward takes rows 0..P-1 (no `torch.unique`, which waits for the GPU). It must equal
    the unique-based fallback and the full forward's positives — also when a hard negative is another pair's
    positive (pair 1's positive is pair 0's negative here)."""
    from hnc_clip.forward import embed, positive_caption_rows
    from hnc_clip.tiny import build_tiny_clip

    tok = build_word_tokenizer("the cup is left right of plate a mug".split(), model_max_length=32)
    left, right = "the cup is left of the plate", "the cup is right of the plate"
    feats = [
        {"pixel_values": torch.rand(3, 32, 32), "positive": left, "negative": right, "image_id": "a"},
        {"pixel_values": torch.rand(3, 32, 32), "positive": right, "negative": "the mug is left of the plate",
         "image_id": "b"},
        {"pixel_values": torch.rand(3, 32, 32), "positive": left, "negative": "a mug", "image_id": "c"},
    ]
    batch = HncCollator(tok, max_length=32)(feats)
    assert batch["positive_captions"] == 2
    rows = positive_caption_rows(batch)
    assert rows.rows == slice(0, 2) and rows.index.tolist() == [0, 1, 0]
    model = build_tiny_clip(len(tok), image_size=32, num_layers=2).eval()
    without_hint = {k: v for k, v in batch.items() if k != "positive_captions"}
    with torch.no_grad():
        fast, fallback, full = (embed(model, batch, with_negatives=False),
                                embed(model, without_hint, with_negatives=False), embed(model, batch))
    assert fast.negative is None and fallback.negative is None
    torch.testing.assert_close(fast.positive, fallback.positive, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast.positive, full.positive, rtol=0, atol=1e-6)


def test_a_huge_caption_costs_no_more_than_a_long_one():
    """A 100,000-character caption is cut before padding: no tensor the tokenizer returns is wider than
    max_length + 1 (padding it untruncated cost +743 MB in its batch), no string it sees is longer than
    `MAX_CHARS_PER_TOKEN` characters per token, and every cut caption is counted — by tokens (the word tokenizer
    gives 50,000 tokens) or by characters (one 60,000-character word is one token)."""
    from hnc_clip.data.collator import MAX_CHARS_PER_TOKEN

    tok = build_word_tokenizer("a b cup".split(), model_max_length=77)
    widths, longest = [], []
    real = type(tok).__call__

    def recording(self, texts, **kwargs):
        longest.append(max(map(len, texts)))
        out = real(self, texts, **kwargs)
        widths.append(out["input_ids"].shape[1])
        return out

    px = torch.zeros(3, 2, 2)
    feats = [{"pixel_values": px, "positive": "a b " * 25_000, "negative": "cup", "image_id": "x"},
             {"pixel_values": px, "positive": "a" * 60_000, "negative": "b", "image_id": "y"},
             {"pixel_values": px, "positive": "a cup", "negative": "b cup", "image_id": "z"}]
    try:
        type(tok).__call__ = recording
        batch = HncCollator(tok, max_length=10)(feats)
    finally:
        type(tok).__call__ = real
    assert max(widths) <= 11 and max(longest) <= MAX_CHARS_PER_TOKEN * 10
    assert batch["input_ids"].shape[1] == 10 and batch["truncated_captions"].item() == 2
    rows = batch["input_ids"][batch["text_index"]]
    assert tok.decode(rows[2], skip_special_tokens=True) == "a cup"  # the short ones are untouched


def test_pairs_without_negatives_get_masked_stand_ins_and_are_counted():
    """`allow_missing_negatives` (plain captions, negatives made by rules): a pair with fewer than K negatives has
    its empty slots pointing at its own positive (no extra encoding), marked False in `negative_mask` [K·B]."""
    tok = build_word_tokenizer("a b c d e".split())
    px = torch.zeros(3, 2, 2)
    feats = [{"pixel_values": px, "positive": "a", "negatives": ["b", "c"], "image_id": "x"},
             {"pixel_values": px, "positive": "d", "negatives": [], "image_id": "y"},
             {"pixel_values": px, "positive": "e", "negatives": ["c"], "image_id": "z"}]
    batch = HncCollator(tok, negatives_per_row=2, allow_missing_negatives=True)(feats)
    assert batch["negative_mask"].tolist() == [True, False, True, True, False, False]  # k-major: [k=0 | k=1]
    rows = [tok.decode(batch["input_ids"][r], skip_special_tokens=True) for r in batch["text_index"].tolist()]
    assert rows == ["a", "d", "e", "b", "d", "c", "c", "d", "e"]  # stand-ins are the pair's own positive
    assert batch["input_ids"].shape[0] == 5  # a b c d e, each once
    assert batch["counts"] == {"pairs_without_negative": 1, "identical_negatives": 0}
    # without the flag a pair lacking negatives is an error, as before (tables skip such rows at load)
    with pytest.raises(ValueError, match="hard negatives"):
        HncCollator(tok, negatives_per_row=2)(feats)


def test_negatives_identical_to_their_positive_after_truncation_are_counted_and_named(caplog):
    """Cut to 4 tokens (BOS, 3 words; SigLIP cuts at 16), "the cup is left ..." and "the cup is right ..." are one
    caption: such a pair used to train silently; now every batch counts it and the first ones are named."""
    import logging

    tok = build_word_tokenizer("the cup is left right of plate a".split())
    px = torch.zeros(3, 4, 4)
    feats = [{"pixel_values": px, "positive": "the cup is left of the plate", "pair_id": "p0",
              "negative": "the cup is right of the plate", "image_id": "a"},
             {"pixel_values": px, "positive": "a cup", "negative": "a plate", "image_id": "b",
              "pair_id": "p1"}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hnc_clip.data.collator"):
        batch = HncCollator(tok, max_length=4)(feats)
    assert batch["counts"]["identical_negatives"] == 1
    assert "pair 'p0': negative 'the cup is right of the plate' reads as the positive" in caplog.text
    assert HncCollator(tok)(feats)["counts"]["identical_negatives"] == 0  # at full length they differ
