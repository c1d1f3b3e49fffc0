"""Contrastive-aware accumulation (GradCache) equals one large batch: loss and gradients, then whole runs."""

from __future__ import annotations

import pytest
import torch

from hnc_clip.forward import build_loss_inputs
from hnc_clip.gradcache import gradcache_backward
from hnc_clip.losses import LOSSES, LossConfig

from .dist_parity import G, global_batch
from .helpers import run, tiny, weights


@pytest.mark.parametrize("loss_type", ["clip", "hnc", "pairwise"])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_gradcache_equals_full_batch(loss_type, chunk):
    batch = global_batch()
    cfg = LossConfig(hard_negative_weight=0.7)
    full_model, cached_model = tiny(), tiny()

    spec = LOSSES[loss_type]
    inp = build_loss_inputs(full_model, batch, with_negatives=spec.uses_negatives)
    full = torch.stack(list(spec.fn(inp, cfg).values())).sum()
    full.backward()

    loss, components, local, scale, _ = gradcache_backward(
        cached_model, batch, chunk, spec.fn, cfg, with_negatives=spec.uses_negatives
    )
    assert loss.item() == pytest.approx(full.item(), rel=1e-12)
    assert len(local) == G
    assert (local.negative is None) == (not spec.uses_negatives)  # `clip` never encodes the hard negatives
    assert scale.item() == pytest.approx(inp.logit_scale.item(), rel=1e-12)
    for (name, p), q in zip(full_model.named_parameters(), cached_model.parameters()):
        if p.grad is None:
            assert q.grad is None or torch.count_nonzero(q.grad) == 0, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("case", ["siglip_hnc", "siglip_clip", "hnc_k3", "siglip_hnc_k3", "fsc_clip_missing",
                                  "ce_clip_missing", "fsc_clip_local"])
def test_gradcache_equals_full_batch_for_siglip_and_k_negatives(case):
    """SigLIP's sigmoid (its logit bias takes its gradient in step 2), K = 3 negatives per pair, FSC-CLIP (with its
    local term: the cached token and patch embeddings) and CE-CLIP (whose thresholds, computed once over the whole
    batch in step 2, are those of the full batch)."""
    from .dist_parity import FAMILY_CASES, carried_state, loss_and_config

    build, make_batch, loss_type, contrastive = FAMILY_CASES[case]
    batch = make_batch()
    full_state, cached_state = carried_state(loss_type), carried_state(loss_type)
    spec, full_cfg = loss_and_config(loss_type, contrastive, full_state)
    tokens = spec.needs_tokens(full_cfg)
    assert tokens == (case == "fsc_clip_local")
    full_model, cached_model = build(), build()
    inp = build_loss_inputs(full_model, batch, with_negatives=spec.uses_negatives, with_tokens=tokens)
    full_out = spec.fn(inp, full_cfg)
    full = torch.stack(list(full_out.values())).sum()
    full.backward()
    _, cfg = loss_and_config(loss_type, contrastive, cached_state)
    loss, components, *_ = gradcache_backward(cached_model, batch, 3, spec.fn, cfg, with_negatives=spec.uses_negatives,
                                              with_tokens=tokens)  # fmt: skip
    assert loss.item() == pytest.approx(full.item(), rel=1e-12)
    assert components.keys() == full_out.keys()
    if full_state is not None:
        torch.testing.assert_close(cached_state["ce_clip_thresholds"], full_state["ce_clip_thresholds"], rtol=1e-12,
                                   atol=1e-14)
    for (name, p), q in zip(full_model.named_parameters(), cached_model.parameters()):
        if p.grad is None:
            assert q.grad is None or torch.count_nonzero(q.grad) == 0, name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert full_model.logit_bias.grad is not None if contrastive == "sigmoid" else True


def test_plain_accumulation_is_not_the_same():
    """The reason GradCache exists: averaging per-micro-batch losses gives another loss and other gradients."""
    batch = global_batch()
    cfg = LossConfig()
    model = tiny()
    full = torch.stack(list(LOSSES["hnc"].fn(build_loss_inputs(model, batch), cfg).values())).sum()
    from hnc_clip.gradcache import split_batch

    halves = [
        torch.stack(list(LOSSES["hnc"].fn(build_loss_inputs(model, c), cfg).values())).sum()
        for c in split_batch(batch, G // 2)
    ]
    assert (sum(halves) / 2).item() != pytest.approx(full.item(), rel=1e-3)


def test_trainer_with_gradcache_matches_plain_run(tmp_path, tiny_clip_dir, sample_image_dir):
    common = ("--optim", "sgd", "--max_steps", "2", "--per_device_train_batch_size", "8", "--mask_same_image", "true")
    _, plain = run(tmp_path / "a", tiny_clip_dir, sample_image_dir, *common)
    _, cached = run(tmp_path / "b", tiny_clip_dir, sample_image_dir, *common, "--gradcache_chunk_size", "3")
    a, b = weights(plain), weights(cached)
    moved = [k for k in a if not torch.equal(a[k], weights(tiny_clip_dir)[k])]
    assert moved
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_gradcache_rejects_reference_losses():
    from hnc_clip.scripts import train as train_app

    with pytest.raises(ValueError, match="gradcache_chunk_size does not support --loss_type dpo"):
        train_app.parse_args(["--output_dir", "x", "--loss_type", "dpo", "--gradcache_chunk_size", "4"])




def test_shared_image_and_caption_encodings_equal_per_row_encodings():
    """The collator's de-duplication (image_index / text_index) changes no embedding, loss or gradient."""
    batch = global_batch()
    batch["input_ids"][G + 3] = batch["input_ids"][3]  # a negative that repeats a positive's caption
    ids = [tuple(r.tolist()) for r in batch["input_ids"]]
    texts = list(dict.fromkeys(ids))
    images = [0, 1, 2, 3, 4, 6, 7]  # row 5 shows the image of row 1
    shared = {
        "pixel_values": batch["pixel_values"][images],
        "image_index": torch.tensor([0, 1, 2, 3, 4, 1, 5, 6]),
        "input_ids": torch.tensor(texts),
        "attention_mask": torch.ones(len(texts), batch["input_ids"].shape[1], dtype=torch.long),
        "text_index": torch.tensor([texts.index(t) for t in ids]),
        "image_ids": batch["image_ids"],
    }
    assert len(texts) == 2 * G - 1
    cfg = LossConfig(hard_negative_weight=0.7)
    a, b = tiny(), tiny()
    la = torch.stack(list(LOSSES["hnc"].fn(build_loss_inputs(a, batch), cfg).values())).sum()
    lb = torch.stack(list(LOSSES["hnc"].fn(build_loss_inputs(b, shared), cfg).values())).sum()
    la.backward()
    lb.backward()
    assert lb.item() == pytest.approx(la.item(), rel=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12)
    # and GradCache expands the shared layout back to rows correctly
    c = tiny()
    loss, *_ = gradcache_backward(c, shared, 3, LOSSES["hnc"].fn, cfg)
    assert loss.item() == pytest.approx(la.item(), rel=1e-12)

