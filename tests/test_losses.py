"""Each loss against an independent hand computation (value and gradient), plus masking and schedules.

The references below build every logit row with explicit Python loops and take log-sum-exp per row, never
`F.cross_entropy` over a matrix, so a layout bug in `hnc_clip.losses` (wrong labels, wrong candidate set) cannot
cancel out. Gradients of the references come from autograd through those loops.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hnc_clip.losses import LOSSES, Embeddings, LossConfig, LossInputs, loss_components, similarity_stats
from hnc_clip.schedules import SCHEDULES

B, D = 5, 8


def make_embeddings(seed=0, ids=None, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    tensors = [F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1) for _ in range(3)]
    leaves = [t.clone().requires_grad_(requires_grad) for t in tensors]
    return leaves, Embeddings(*leaves, image_ids=ids)


def inputs(emb, scale=10.0, reference=None, sq=None):
    return LossInputs(emb, emb, torch.tensor(scale, dtype=torch.float64), 0, reference, sq)


def lse(xs):
    return torch.logsumexp(torch.stack(list(xs)), 0)


def ce_row(logits, target):
    """−log softmax(logits)[target] over a Python list (masked = None entries are left out)."""
    vals = [x for x in logits if x is not None]
    return lse(vals) - logits[target]


def dot(a, b):
    return (a * b).sum()


def ref_clip(img, pos, s, same=None):
    same = same or (lambda i, j: False)
    keep = lambda i, j: j == i or not same(i, j)  # noqa: E731  (a same-image off-diagonal logit is masked)
    i2t = [ce_row([s * dot(img[i], pos[j]) if keep(i, j) else None for j in range(B)], i) for i in range(B)]
    t2i = [ce_row([s * dot(pos[i], img[j]) if keep(i, j) else None for j in range(B)], i) for i in range(B)]
    return 0.5 * (sum(i2t) / B + sum(t2i) / B)


def ref_hn_global(img, pos, neg, s):
    rows = [ce_row([s * dot(img[i], pos[j]) for j in range(B)] + [s * dot(img[i], neg[j]) for j in range(B)], i)
            for i in range(B)]
    return sum(rows) / B


def ref_pairwise(img, pos, neg, s):
    return sum(ce_row([s * dot(img[i], pos[i]), s * dot(img[i], neg[i])], 0) for i in range(B)) / B


def ref_thesis(img, pos, neg, s, w):
    i2t = []
    for i in range(B):
        row = [s * dot(img[i], pos[j]) for j in range(B)]
        row += [s * dot(img[i], neg[j]) * (w if j == i else 1.0) for j in range(B)]
        i2t.append(ce_row(row, i))
    t2i = [ce_row([s * dot(pos[i], img[j]) for j in range(B)], i) for i in range(B)]
    return 0.5 * (sum(i2t) / B + sum(t2i) / B)


def check(loss_type, cfg, reference_fn, **extra):
    """Loss value and gradients w.r.t. all three embedding sets equal the reference's (autograd through it)."""
    leaves, emb = make_embeddings()
    out = loss_components(LOSSES[loss_type].fn, inputs(emb, **extra), cfg)
    torch.stack(list(out.values())).sum().backward()

    ref_leaves, _ = make_embeddings()
    ref = reference_fn(*ref_leaves)
    ref.backward()
    assert torch.stack(list(out.values())).sum().item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-8, atol=1e-12)
    return out


S = 10.0


def test_clip_loss_matches_reference():
    out = check("clip", LossConfig(), lambda i, p, n: ref_clip(i, p, S))
    assert set(out) == {"contrastive_loss"}


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_hnc_loss_matches_reference(lam):
    out = check("hnc", LossConfig(hard_negative_weight=lam),
                lambda i, p, n: ref_clip(i, p, S) + lam * ref_hn_global(i, p, n, S))
    assert set(out) == {"contrastive_loss", "hard_negative_loss"}


def test_pairwise_loss_matches_reference():
    check("pairwise", LossConfig(hard_negative_weight=0.7),
          lambda i, p, n: ref_clip(i, p, S) + 0.7 * ref_pairwise(i, p, n, S))


def test_thesis_l2_matches_reference():
    sq = torch.tensor(3.0, dtype=torch.float64)
    out = check("thesis_l2", LossConfig(hard_negative_weight=1.5, l2_reg_weight=0.1),
                lambda i, p, n: ref_thesis(i, p, n, S, 1.5) + 0.1 * sq, sq=sq)
    assert out["l2_reg_loss"].item() == pytest.approx(0.3)


def test_hnc_with_zero_weight_gives_no_negative_gradient():
    """λ = 0: the hard-negative term contributes nothing, so the negatives' embeddings get zero gradient."""
    leaves, emb = make_embeddings()
    out = LOSSES["hnc"].fn(inputs(emb), LossConfig(hard_negative_weight=0.0))
    torch.stack(list(out.values())).sum().backward()
    assert torch.count_nonzero(leaves[2].grad) == 0
    assert torch.count_nonzero(leaves[0].grad) > 0
    # ...while with λ > 0 it does move them
    leaves, emb = make_embeddings()
    out = LOSSES["hnc"].fn(inputs(emb), LossConfig(hard_negative_weight=1.0))
    out["hard_negative_loss"].backward()
    assert torch.count_nonzero(leaves[2].grad) > 0


def test_same_image_logits_are_masked():
    ids = torch.tensor([7, 7, 1, 2, 3])
    leaves, emb = make_embeddings(ids=ids)
    got = LOSSES["clip"].fn(inputs(emb), LossConfig(mask_same_image=True))["contrastive_loss"]
    same = lambda i, j: ids[i] == ids[j]  # noqa: E731
    assert got.item() == pytest.approx(ref_clip(*[t.detach() for t in leaves[:2]], S, same).item(), rel=1e-9)
    unmasked = LOSSES["clip"].fn(inputs(emb), LossConfig(mask_same_image=False))["contrastive_loss"]
    assert unmasked.item() != pytest.approx(got.item())


def test_kl_teacher_is_hnc_when_student_equals_teacher():
    leaves, emb = make_embeddings()
    _, ref_emb = make_embeddings(requires_grad=False)
    out = LOSSES["kl_teacher"].fn(inputs(emb, reference=inputs(ref_emb)), LossConfig(kl_weight=2.0))
    assert out["kl_loss"].item() == pytest.approx(0.0, abs=1e-12)
    hnc = LOSSES["hnc"].fn(inputs(emb), LossConfig())
    assert (out["contrastive_loss"] + out["hard_negative_loss"]).item() == pytest.approx(
        (hnc["contrastive_loss"] + hnc["hard_negative_loss"]).item())


def test_kl_teacher_matches_reference_kl():
    leaves, emb = make_embeddings(seed=0)
    _, ref_emb = make_embeddings(seed=1, requires_grad=False)
    t = 2.0
    out = LOSSES["kl_teacher"].fn(inputs(emb, reference=inputs(ref_emb)), LossConfig(kl_weight=1.0, kl_temperature=t))
    i, p, n = [x.detach() for x in leaves]
    ri, rp, rn = ref_emb.image, ref_emb.positive, ref_emb.negative

    def kl_rows(student_rows, teacher_rows):
        total = 0.0
        for srow, trow in zip(student_rows, teacher_rows):
            ls, lt = lse(srow), lse(trow)
            total += sum(torch.exp(tv - lt) * ((tv - lt) - (sv - ls)) for sv, tv in zip(srow, trow))
        return float(total) / len(student_rows)

    def i2t(img, pos, neg):
        return [[S * dot(img[a], pos[b]) / t for b in range(B)] + [S * dot(img[a], neg[b]) / t for b in range(B)]
                for a in range(B)]

    def t2i(img, pos):
        return [[S * dot(pos[a], img[b]) / t for b in range(B)] for a in range(B)]

    expected = t * t * 0.5 * (kl_rows(i2t(i, p, n), i2t(ri, rp, rn)) + kl_rows(t2i(i, p), t2i(ri, rp)))
    assert out["kl_loss"].item() == pytest.approx(expected, rel=1e-9)


def test_dpo_matches_reference():
    leaves, emb = make_embeddings(seed=0)
    _, ref_emb = make_embeddings(seed=1, requires_grad=False)
    beta = 0.3
    out = LOSSES["dpo"].fn(inputs(emb, reference=inputs(ref_emb, scale=5.0)),
                           LossConfig(dpo_beta=beta, dpo_contrastive_weight=0.0))
    assert set(out) == {"dpo_loss"}
    i, p, n = [x.detach() for x in leaves]
    expected = 0.0
    for a in range(B):
        margin = (S * dot(i[a], p[a]) - 5.0 * dot(ref_emb.image[a], ref_emb.positive[a])) - (
            S * dot(i[a], n[a]) - 5.0 * dot(ref_emb.image[a], ref_emb.negative[a]))
        expected += math.log1p(math.exp(-beta * float(margin)))
    assert out["dpo_loss"].item() == pytest.approx(expected / B, rel=1e-9)
    out["dpo_loss"].backward()
    assert leaves[0].grad is not None and torch.count_nonzero(leaves[0].grad) > 0


@pytest.mark.parametrize("loss_type", ["kl_teacher", "dpo"])
def test_reference_losses_require_a_reference(loss_type):
    _, emb = make_embeddings()
    with pytest.raises(ValueError, match="reference"):
        LOSSES[loss_type].fn(inputs(emb), LossConfig())


def test_similarity_stats():
    img = torch.eye(3)
    emb = Embeddings(img, img.clone(), -img.clone(), torch.tensor([0, 1, 2]))
    stats = {k: float(v) for k, v in similarity_stats(emb).items()}
    assert stats["cos_positive"] == pytest.approx(1.0)
    assert stats["cos_hard_negative"] == pytest.approx(-1.0)
    assert stats["cos_random_negative"] == pytest.approx(0.0)
    assert stats["hard_negative_accuracy"] == 1.0
    assert stats["margin"] == pytest.approx(2.0)


def test_schedules():
    a = SimpleNamespace(hard_negative_weight=1.0, hard_negative_weight_min=0.2, hard_negative_warmup_steps=10,
                        hard_negative_step_size=0.25, hard_negative_step_every=4)
    assert [SCHEDULES["constant"](t, a) for t in (0, 50)] == [1.0, 1.0]
    assert SCHEDULES["linear"](0, a) == pytest.approx(0.2)
    assert SCHEDULES["linear"](5, a) == pytest.approx(0.6)
    assert SCHEDULES["linear"](100, a) == pytest.approx(1.0)
    assert [SCHEDULES["step"](t, a) for t in (0, 3, 4, 8, 12, 100)] == pytest.approx([0.2, 0.2, 0.45, 0.7, 0.95, 1.0])
