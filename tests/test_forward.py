"""`hnc_clip.forward.build_loss_inputs`'s extras against plain reference computations."""

from __future__ import annotations

import pytest
import torch

from hnc_clip.forward import build_loss_inputs

from .dist_parity import global_batch
from .helpers import tiny


def test_squared_distance_to_the_start_equals_the_per_parameter_sum():
    """`build_loss_inputs(theta0=...)`'s ‖θ−θ₀‖² (multi-tensor kernels) against a plain loop over the parameters:
    value and gradient after the weights moved, and a zero (not NaN) gradient at θ = θ₀."""
    model = tiny()
    batch = global_batch()
    theta0 = [(p, p.detach().clone()) for p in model.parameters()]
    at_start = build_loss_inputs(model, batch, theta0=theta0).param_sq_dist
    at_start.backward()
    assert at_start.item() == 0 and all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    model.zero_grad()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    got = build_loss_inputs(model, batch, theta0=theta0).param_sq_dist
    got.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = sum(((p - p0) ** 2).sum() for p, p0 in theta0)
    reference.backward()
    assert got.item() == pytest.approx(reference.item(), rel=1e-12)
    for p, gr in zip(model.parameters(), grads):
        torch.testing.assert_close(gr, p.grad, rtol=1e-9, atol=1e-15)


def test_token_embeddings_are_the_towers_per_position_outputs_in_the_joint_space():
    """`embed(with_tokens=True)`: each caption's token at the position its tower pools (EOS) is, normalised, the
    caption's embedding; the class token through the same layer norm and projection as the patches is the image's
    embedding (so the patches are in the joint space, not the tower's width); the mask drops the start token and
    padding; a batch storing each distinct image once gives the rows of the one that repeats it."""
    import torch.nn.functional as F

    from hnc_clip.forward import embed

    model = tiny()
    batch = global_batch()
    batch["attention_mask"][3, 4:] = 0  # a short positive caption
    e = embed(model, batch, with_tokens=True)
    tok = e.tokens
    b, q = batch["pixel_values"].shape[0], (32 // 8) ** 2
    assert tok.image.shape == (b, q, 16) and tok.positive.shape == (b, 7, 16) and tok.negative.shape == (b, 7, 16)
    full = [i for i in range(b) if i != 3]
    torch.testing.assert_close(F.normalize(tok.positive[full, -1], dim=-1), e.positive[full], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(F.normalize(tok.negative[:, -1], dim=-1), e.negative, rtol=1e-10, atol=1e-12)
    hidden = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state  # [B, 1 + Q, H]
    cls = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 0]))
    torch.testing.assert_close(F.normalize(cls, dim=-1), e.image, rtol=1e-10, atol=1e-12)
    expected = torch.ones(b, 7, dtype=torch.bool)
    expected[:, 0] = False
    expected[3, 4:] = False
    assert torch.equal(tok.positive_mask, expected) and bool(tok.negative_mask[:, 1:].all())

    shared = {**batch, "pixel_values": batch["pixel_values"][[0, 1, 2, 3, 4, 6, 7]],
              "image_index": torch.tensor([0, 1, 2, 3, 4, 1, 5, 6])}  # image 5 is image 1 (global_batch)  # fmt: skip
    again = embed(model, shared, with_tokens=True).tokens
    torch.testing.assert_close(again.image, tok.image, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(again.positive, tok.positive, rtol=0, atol=0)


def test_token_embeddings_need_the_negatives():
    from hnc_clip.forward import embed

    with pytest.raises(ValueError, match="encode the negatives too"):
        embed(tiny(), global_batch(), with_negatives=False, with_tokens=True)
