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
