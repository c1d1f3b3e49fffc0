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

from hnc_clip.losses import (
    LOSSES,
    Embeddings,
    LossConfig,
    LossInputs,
    TokenEmbeddings,
    loss_components,
    similarity_stats,
)
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


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_uses_weight_says_whether_lambda_changes_the_loss(name):
    """`LossSpec.uses_weight` (what the search and the demo read to leave λ out) against the loss itself: λ = 1
    and λ = 3 give different totals exactly for the losses that declare it, in every contrastive form."""
    spec = LOSSES[name]
    _, emb = make_embeddings(seed=4, requires_grad=False)
    _, ref_emb = make_embeddings(seed=5, requires_grad=False)
    ref = inputs(ref_emb, scale=5.0)
    for kind in ("softmax", *spec.variants):
        fn = spec.for_contrastive(kind).fn
        bias = torch.tensor(-1.0, dtype=torch.float64) if kind == "sigmoid" else None
        inp = LossInputs(emb, emb, torch.tensor(10.0, dtype=torch.float64), 0, ref, None, logit_bias=bias)
        if kind == "sigmoid":
            inp.reference = LossInputs(ref_emb, ref_emb, torch.tensor(5.0, dtype=torch.float64), 0, logit_bias=bias)
        totals = [float(sum(fn(inp, LossConfig(hard_negative_weight=w)).values())) for w in (1.0, 3.0)]
        assert (totals[0] != totals[1]) == spec.uses_weight, (name, kind, totals)


def test_schedules():
    a = SimpleNamespace(hard_negative_weight=1.0, hard_negative_weight_min=0.2, hard_negative_warmup_steps=10,
                        hard_negative_step_size=0.25, hard_negative_step_every=4)
    assert [SCHEDULES["constant"](t, a) for t in (0, 50)] == [1.0, 1.0]
    assert SCHEDULES["linear"](0, a) == pytest.approx(0.2)
    assert SCHEDULES["linear"](5, a) == pytest.approx(0.6)
    assert SCHEDULES["linear"](100, a) == pytest.approx(1.0)
    assert [SCHEDULES["step"](t, a) for t in (0, 3, 4, 8, 12, 100)] == pytest.approx([0.2, 0.2, 0.45, 0.7, 0.95, 1.0])
    # λ_min above λ: `linear` is a decay from λ_min to λ (the demo's 8 → 2), clipped at λ after the ramp
    decay = SimpleNamespace(**{**vars(a), "hard_negative_weight": 2.0, "hard_negative_weight_min": 8.0})
    assert [SCHEDULES["linear"](t, decay) for t in (0, 5, 10, 400)] == pytest.approx([8.0, 5.0, 2.0, 2.0])


# ---------------------------------------------------------------------------------------------------------------------
# K hard negatives per pair: the layout N[k·B + i] = pair i's k-th negative (`hnc_clip.losses`), against loops.

K = 3


def make_k_embeddings(seed=0, k=K):
    g = torch.Generator().manual_seed(seed)
    img, pos = (F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    neg = F.normalize(torch.randn(k * B, D, generator=g, dtype=torch.float64), dim=-1)
    leaves = [t.clone().requires_grad_() for t in (img, pos, neg)]
    return leaves, Embeddings(*leaves)


def own(neg, i, k):
    return neg[k * B + i]


def ref_hn_k(img, pos, neg, s):
    rows = [ce_row([s * dot(img[i], pos[j]) for j in range(B)] + [s * dot(img[i], neg[m]) for m in range(K * B)],
                   i) for i in range(B)]
    return sum(rows) / B


def ref_pairwise_k(img, pos, neg, s):
    return sum(ce_row([s * dot(img[i], pos[i])] + [s * dot(img[i], own(neg, i, k)) for k in range(K)], 0)
               for i in range(B)) / B


def ref_thesis_k(img, pos, neg, s, w):
    i2t = []
    for i in range(B):
        row = [s * dot(img[i], pos[j]) for j in range(B)]
        row += [s * dot(img[i], neg[m]) * (w if m % B == i else 1.0) for m in range(K * B)]
        i2t.append(ce_row(row, i))
    t2i = [ce_row([s * dot(pos[i], img[j]) for j in range(B)], i) for i in range(B)]
    return 0.5 * (sum(i2t) / B + sum(t2i) / B)


def check_k(loss_type, cfg, reference_fn):
    leaves, emb = make_k_embeddings()
    out = LOSSES[loss_type].fn(inputs(emb), cfg)
    total = torch.stack(list(out.values())).sum()
    total.backward()
    ref_leaves, _ = make_k_embeddings()
    ref = reference_fn(*ref_leaves)
    ref.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-9)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-8, atol=1e-12)


def test_k_negatives_hnc():
    check_k("hnc", LossConfig(hard_negative_weight=0.5),
            lambda i, p, n: ref_clip(i, p, S) + 0.5 * ref_hn_k(i, p, n, S))


def test_k_negatives_pairwise():
    check_k("pairwise", LossConfig(hard_negative_weight=0.7),
            lambda i, p, n: ref_clip(i, p, S) + 0.7 * ref_pairwise_k(i, p, n, S))


def test_k_negatives_thesis_l2():
    check_k("thesis_l2", LossConfig(hard_negative_weight=1.5), lambda i, p, n: ref_thesis_k(i, p, n, S, 1.5))


def test_k_negatives_negclip():
    check_k("negclip", LossConfig(), lambda i, p, n: ref_thesis_k(i, p, n, S, 1.0))


def test_k_negatives_dpo_averages_every_preference():
    leaves, emb = make_k_embeddings(seed=0)
    _, ref_emb = make_k_embeddings(seed=1)
    beta = 0.3
    out = LOSSES["dpo"].fn(inputs(emb, reference=inputs(ref_emb, scale=5.0)),
                           LossConfig(dpo_beta=beta, dpo_contrastive_weight=0.0))
    i, p, n = [x.detach() for x in leaves]
    ri, rp, rn = [x.detach() for x in (ref_emb.image, ref_emb.positive, ref_emb.negative)]
    terms = [math.log1p(math.exp(-beta * float((S * dot(i[a], p[a]) - 5.0 * dot(ri[a], rp[a]))
                                                - (S * dot(i[a], own(n, a, k)) - 5.0 * dot(ri[a], own(rn, a, k))))))
             for a in range(B) for k in range(K)]
    assert out["dpo_loss"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_k_negatives_similarity_stats_count_every_pair():
    img = torch.eye(2)
    neg = torch.stack([img[0], -img[1], -img[0], img[1]])  # k-major: pair 0's are rows 0 and 2, pair 1's rows 1, 3
    stats = {k: float(v) for k, v in similarity_stats(Embeddings(img, img.clone(), neg)).items()}
    assert stats["cos_hard_negative"] == pytest.approx(0.0)  # (1 - 1 - 1 + 1) / 4
    assert stats["hard_negative_accuracy"] == pytest.approx(0.5)  # positives beat 2 of their 4 negatives


# ---------------------------------------------------------------------------------------------------------------------
# NegCLIP, against a faithful re-implementation of vinid/neg_clip: `src/training/train.py` (train_one_epoch) builds
# images = cat([images, new_images]) and texts = cat([texts, new_texts, hard_captions, new_hard]); the model returns
# normalised features and exp(logit_scale); `src/open_clip/loss.py` ClipLoss.forward (world_size 1) computes the rest.


def negclip_official(images, new_images, texts, new_texts, hard_captions, new_hard, logit_scale):
    image_features = torch.cat([images, new_images])
    text_features = torch.cat([torch.cat([torch.cat([texts, new_texts]), hard_captions]), new_hard])
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(logits_per_image.shape[0], dtype=torch.long)
    total_loss = (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text[:len(logits_per_image)], labels)
    ) / 2
    return total_loss


def test_negclip_equals_the_official_code():
    """The batch of B rows with their hard (nearest-neighbour) images as B further pairs: value and gradient of
    every embedding and of the logit scale; and `hnc` is not NegCLIP (the issue's finding, here at s = 14.3)."""
    g = torch.Generator().manual_seed(7)
    parts = [F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
             for _ in range(6)]
    scale = torch.tensor(14.3, dtype=torch.float64, requires_grad=True)
    want = negclip_official(*parts, scale)
    want.backward()
    want_grads = [p.grad.clone() for p in parts] + [scale.grad.clone()]
    for p in [*parts, scale]:
        p.grad = None

    images, new_images, texts, new_texts, hard, new_hard = parts
    emb = Embeddings(torch.cat([images, new_images]), torch.cat([texts, new_texts]), torch.cat([hard, new_hard]))
    inp = LossInputs(emb, emb, scale, 0)
    got = torch.stack(list(LOSSES["negclip"].fn(inp, LossConfig(mask_same_image=False)).values())).sum()
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    for g_got, g_want in zip([p.grad for p in parts] + [scale.grad], want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)
    hnc = torch.stack(list(LOSSES["hnc"].fn(inp, LossConfig(mask_same_image=False)).values())).sum()
    assert hnc.item() > 1.5 * got.item()


# ---------------------------------------------------------------------------------------------------------------------
# SigLIP's sigmoid forms, against per-pair loops: −(1/B) Σ_i Σ_j log σ(y_ij (s⟨i, t_j⟩ + b)).


def logsig(x):
    return -torch.log1p(torch.exp(-x))


def ref_sigmoid(img, pos, s, b, same=None):
    same = same or (lambda i, j: False)
    total = 0.0
    for i in range(B):
        for j in range(B):
            if j != i and same(i, j):
                continue
            y = 1.0 if j == i else -1.0
            total = total - logsig(y * (s * dot(img[i], pos[j]) + b))
    return total / B


def ref_sigmoid_negatives(img, neg, s, b):
    return sum(-logsig(-(s * dot(img[i], neg[j]) + b)) for i in range(B) for j in range(neg.shape[0])) / B


def sigmoid_inputs(leaves, scale, bias, ids=None, reference=None):
    emb = Embeddings(*leaves, image_ids=ids)
    return LossInputs(emb, emb, scale, 0, reference, None, logit_bias=bias)


@pytest.mark.parametrize("loss_type", ["clip", "hnc", "pairwise"])
def test_sigmoid_forms_match_reference(loss_type):
    """Value and gradient of the embeddings, of the scale and of the bias; same-image pairs left out."""
    ids = torch.tensor([4, 4, 1, 2, 3])
    same = lambda i, j: ids[i] == ids[j]  # noqa: E731
    cfg = LossConfig(hard_negative_weight=0.6)
    refs = {
        "clip": lambda i, p, n, s, b: ref_sigmoid(i, p, s, b, same),
        "hnc": lambda i, p, n, s, b: ref_sigmoid(i, p, s, b, same) + 0.6 * ref_sigmoid_negatives(i, n, s, b),
        "pairwise": lambda i, p, n, s, b: ref_sigmoid(i, p, s, b, same) + 0.6 * ref_pairwise(i, p, n, s),
    }

    def leaves_and_params():
        leaves, _ = make_embeddings(seed=3)
        return leaves, torch.tensor(10.0, dtype=torch.float64, requires_grad=True), \
            torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)

    leaves, s, b = leaves_and_params()
    out = LOSSES[loss_type].for_contrastive("sigmoid").fn(sigmoid_inputs(leaves, s, b, ids), cfg)
    got = torch.stack(list(out.values())).sum()
    got.backward()
    ref_leaves, rs, rb = leaves_and_params()
    want = refs[loss_type](*ref_leaves, rs, rb)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    for x, y in zip([*leaves, s, b], [*ref_leaves, rs, rb]):
        if y.grad is None:  # `clip` has no negatives: they get no gradient in either
            assert x.grad is None or torch.count_nonzero(x.grad) == 0
            continue
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-8, atol=1e-12)


def test_sigmoid_hnc_at_unit_weight_is_siglip_over_positives_and_negatives():
    """λ = 1: exactly SigLIP's loss (big_vision, as transformers' SiglipModel computes it for a square batch) over
    the texts [P; N] with the B·K negatives as extra texts no image is paired with."""
    leaves, _ = make_k_embeddings(seed=5)
    s, b = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    got = sum(LOSSES["hnc"].for_contrastive("sigmoid").fn(sigmoid_inputs(leaves, s, b), LossConfig()).values())
    img, pos, neg = leaves
    logits = s * img @ torch.cat([pos, neg]).T + b  # [B, (1+K)·B]
    labels = -torch.ones_like(logits)
    labels[:, :B] += 2 * torch.eye(B, dtype=logits.dtype)
    want = -F.logsigmoid(labels * logits).sum(-1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_sigmoid_dpo_has_the_dpo_term_and_sigmoid_contrast():
    leaves, emb = make_embeddings(seed=0)
    _, ref_emb = make_embeddings(seed=1, requires_grad=False)
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64)
    ref = LossInputs(ref_emb, ref_emb, torch.tensor(5.0, dtype=torch.float64), 0, logit_bias=b)
    cfg = LossConfig(dpo_beta=0.3, dpo_contrastive_weight=0.5)
    out = LOSSES["dpo"].for_contrastive("sigmoid").fn(sigmoid_inputs(leaves, s, b, reference=ref), cfg)
    plain = LOSSES["dpo"].fn(LossInputs(emb, emb, s, 0, ref), LossConfig(dpo_beta=0.3, dpo_contrastive_weight=0.0))
    assert out["dpo_loss"].item() == pytest.approx(plain["dpo_loss"].item(), rel=1e-12)  # the bias cancels
    want = 0.5 * ref_sigmoid(*[t.detach() for t in leaves[:2]], s, b)
    assert out["contrastive_loss"].item() == pytest.approx(want.item(), rel=1e-9)


def test_loss_forms_per_family():
    from hnc_clip.losses import losses_for

    assert losses_for("sigmoid") == ["clip", "dpo", "fsc_clip", "hnc", "pairwise"]
    assert losses_for("softmax") == sorted(LOSSES)
    for name in ("thesis_l2", "kl_teacher", "negclip", "ce_clip"):
        with pytest.raises(ValueError, match="no sigmoid form"):
            LOSSES[name].for_contrastive("sigmoid")
    _, emb = make_embeddings()
    with pytest.raises(ValueError, match="logit_bias"):
        LOSSES["hnc"].for_contrastive("sigmoid").fn(inputs(emb), LossConfig())


# ---------------------------------------------------------------------------------------------------------------------
# Pairs without (some of) their hard negatives (`Embeddings.negative_mask`): plain captions no rule applied to. The
# references leave the missing negatives out of every candidate set by construction, and their pairs' own-pair
# terms contribute 0 to means over all B pairs.

# K = 3 slots per pair, k-major [K·B]: pair 1 has none, pair 3 only its first
MISSING = [(k, i) for k in range(K) for i in (1,)] + [(1, 3), (2, 3)]


def negative_mask() -> torch.Tensor:
    mask = torch.ones(K, B, dtype=torch.bool)
    for k, i in MISSING:
        mask[k, i] = False
    return mask.reshape(-1)


def real(m: int) -> bool:
    return (m // B, m % B) not in MISSING


def ref_hn_masked(img, pos, neg, s):
    rows = [ce_row([s * dot(img[i], pos[j]) for j in range(B)]
                   + [s * dot(img[i], neg[m]) for m in range(K * B) if real(m)], i) for i in range(B)]
    return sum(rows) / B


def ref_pairwise_masked(img, pos, neg, s):
    return sum(ce_row([s * dot(img[i], pos[i])] + [s * dot(img[i], own(neg, i, k)) for k in range(K)
                                                    if real(k * B + i)], 0) for i in range(B)) / B


def ref_thesis_masked(img, pos, neg, s, w):
    i2t = []
    for i in range(B):
        row = [s * dot(img[i], pos[j]) for j in range(B)]
        row += [s * dot(img[i], neg[m]) * (w if m % B == i else 1.0) for m in range(K * B) if real(m)]
        i2t.append(ce_row(row, i))
    t2i = [ce_row([s * dot(pos[i], img[j]) for j in range(B)], i) for i in range(B)]
    return 0.5 * (sum(i2t) / B + sum(t2i) / B)


def check_masked(loss_type, cfg, reference_fn, contrastive="softmax", bias=None):
    leaves, emb = make_k_embeddings()
    emb.negative_mask = negative_mask()
    inp = inputs(emb)
    inp.logit_bias = bias
    out = LOSSES[loss_type].for_contrastive(contrastive).fn(inp, cfg)
    total = torch.stack(list(out.values())).sum()
    total.backward()
    ref_leaves, _ = make_k_embeddings()
    ref = reference_fn(*ref_leaves)
    ref.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-9)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-8, atol=1e-12)
    missing = [k * B + i for k, i in MISSING]
    assert torch.count_nonzero(leaves[2].grad[missing]) == 0  # a stand-in gets no gradient
    return out


@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_missing_negatives_hnc(lam):
    check_masked("hnc", LossConfig(hard_negative_weight=lam),
                 lambda i, p, n: ref_clip(i, p, S) + lam * ref_hn_masked(i, p, n, S))


def test_missing_negatives_pairwise_gives_contrastive_only_for_a_pair_without_any():
    out = check_masked("pairwise", LossConfig(hard_negative_weight=0.7),
                       lambda i, p, n: ref_clip(i, p, S) + 0.7 * ref_pairwise_masked(i, p, n, S))
    assert torch.isfinite(out["hard_negative_loss"])


@pytest.mark.parametrize("lam", [0.0, 1.5])
def test_missing_negatives_thesis_l2_and_negclip(lam):
    check_masked("thesis_l2", LossConfig(hard_negative_weight=lam), lambda i, p, n: ref_thesis_masked(i, p, n, S, lam))
    check_masked("negclip", LossConfig(), lambda i, p, n: ref_thesis_masked(i, p, n, S, 1.0))


def test_missing_negatives_sigmoid_hnc():
    bias = torch.tensor(-2.0, dtype=torch.float64)

    def ref(i, p, n):
        kept = torch.stack([n[m] for m in range(K * B) if real(m)])
        return ref_sigmoid(i, p, S, -2.0) + 0.4 * ref_sigmoid_negatives(i, kept, S, -2.0)

    check_masked("hnc", LossConfig(hard_negative_weight=0.4, mask_same_image=False), ref, "sigmoid", bias)


def test_missing_negatives_dpo_counts_only_real_preferences():
    leaves, emb = make_k_embeddings(seed=0)
    _, ref_emb = make_k_embeddings(seed=1)
    emb.negative_mask = ref_emb.negative_mask = negative_mask()
    beta = 0.3
    out = LOSSES["dpo"].fn(inputs(emb, reference=inputs(ref_emb, scale=5.0)),
                           LossConfig(dpo_beta=beta, dpo_contrastive_weight=0.0))
    i, p, n = [x.detach() for x in leaves]
    ri, rp, rn = [x.detach() for x in (ref_emb.image, ref_emb.positive, ref_emb.negative)]
    terms = [math.log1p(math.exp(-beta * float((S * dot(i[a], p[a]) - 5.0 * dot(ri[a], rp[a]))
                                                - (S * dot(i[a], own(n, a, k)) - 5.0 * dot(ri[a], own(rn, a, k))))))
             for a in range(B) for k in range(K) if real(k * B + a)]
    assert out["dpo_loss"].item() == pytest.approx(sum(terms) / (K * B), rel=1e-9)  # a missing slot adds 0


def test_missing_negatives_similarity_stats_over_real_negatives_only():
    img = torch.eye(2)
    neg = torch.stack([img[0], -img[1], -img[0], img[1]])  # k-major: pair 0's are rows 0 and 2, pair 1's rows 1, 3
    mask = torch.tensor([True, True, True, False])  # pair 1's second negative is missing
    stats = {k: float(v) for k, v in similarity_stats(Embeddings(img, img.clone(), neg, negative_mask=mask)).items()}
    assert stats["cos_hard_negative"] == pytest.approx((1 - 1 - 1) / 3)
    assert stats["hard_negative_accuracy"] == pytest.approx(2 / 3)
    none = torch.zeros(4, dtype=torch.bool)
    stats = similarity_stats(Embeddings(img, img.clone(), neg, negative_mask=none))
    assert math.isnan(float(stats["hard_negative_accuracy"]))  # no evidence, not a score of 0


# ---------------------------------------------------------------------------------------------------------------------
# FSC-CLIP, against a re-implementation of ytaek-oh/fsc-clip `src/training/losses/loss.py` (world size 1):
# `Global_HNLoss.forward` (`_fill_empty_negatives`, `ClipLoss.forward` over the positives, the per-image logits over
# [positive; its negatives]) with `neg_loss_name="focal_loss"` and `neg_label_smoothing` set: `_focal_loss_with_nsr`.
# Its text features are [B positives; the real negatives only], type-major, and `neg_text_masks` is [N·B] type-major.


def fsc_focal_with_nsr_official(logits, labels, gamma, label_smoothing, valid_neg_mask):
    assert labels.ndim == 1 and torch.all(labels == 0)
    num_cls_per_row = valid_neg_mask.sum(dim=-1) + 1
    num_batch, num_cls = logits.size(0), logits.size(1)
    labels_2d = torch.zeros((num_batch, num_cls), dtype=logits.dtype)
    labels_2d[:, 0] = (1.0 - label_smoothing) + label_smoothing / num_cls_per_row
    labels_2d[:, 1:] = label_smoothing / num_cls_per_row.unsqueeze(-1)
    labels_2d[:, 1:] *= valid_neg_mask
    celoss_2d = -1.0 * F.log_softmax(logits, dim=-1)  # -log(p)
    celoss_2d *= torch.pow(1.0 - torch.exp(-celoss_2d), gamma)  # -(1-p)^r log(p)
    return torch.sum(labels_2d * celoss_2d, dim=-1).mean()


def fsc_global_hn_official(image_features, text_features, neg_text_masks, logit_scale, gamma, smoothing, weight):
    lbs = image_features.shape[0]
    text_features, neg_text_features = text_features[:lbs], text_features[lbs:]
    filled = torch.zeros((neg_text_masks.size(0), neg_text_features.shape[1]), dtype=neg_text_features.dtype)
    filled[neg_text_masks > 0] = neg_text_features
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(lbs)
    clip_loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    neg = torch.stack(filled.split(lbs, dim=0), dim=1)  # (B, N, D)
    neg_logits_per_img = logit_scale * torch.einsum(
        "bkd,bld->bkl", image_features.unsqueeze(1), torch.cat((text_features.unsqueeze(1), neg), dim=1)).squeeze(1)
    neg_labels = torch.zeros(lbs, dtype=torch.long)
    valid_neg_mask = torch.stack(neg_text_masks.split(lbs, dim=0), dim=1)
    valid_neg_weight = torch.any(valid_neg_mask > 0, dim=1)
    clip_neg_loss = fsc_focal_with_nsr_official(neg_logits_per_img[valid_neg_weight], neg_labels[valid_neg_weight],
                                                gamma, smoothing, valid_neg_mask[valid_neg_weight])
    return clip_loss + weight * clip_neg_loss


def related_embeddings(seed, k, pull=1.0):
    """Positives and negatives near their images (not random directions): the focal weights and CE-CLIP's thresholds
    then take values away from their trivial ones."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    pos = F.normalize(img + 0.5 * pull * torch.randn(B, D, generator=g, dtype=torch.float64), dim=-1)
    neg = F.normalize(img.repeat(k, 1) + pull * torch.randn(k * B, D, generator=g, dtype=torch.float64), dim=-1)
    return [t.clone().requires_grad_() for t in (img, pos, neg)]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("gamma,eps,lam", [(2.0, 0.02, 0.5), (0.5, 0.1, 1.3), (0.0, 0.0, 1.0)])
def test_fsc_clip_equals_the_official_code(k, gamma, eps, lam):
    """Value and gradient of every embedding and of the logit scale, every pair with its K negatives."""
    def run(fn):
        leaves = related_embeddings(3, k)
        scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
        value = fn(*leaves, scale)
        value.backward()
        return value, [*leaves, scale]

    cfg = LossConfig(hard_negative_weight=lam, fsc_focal_gamma=gamma, fsc_label_smoothing=eps, mask_same_image=False)
    got, mine = run(lambda i, p, n, s: sum(LOSSES["fsc_clip"].fn(LossInputs(Embeddings(i, p, n), Embeddings(i, p, n),
                                                                            s, 0), cfg).values()))
    ones = torch.ones(k * B, dtype=torch.float64)  # float32 would round ε/(1+K) in their targets
    want, theirs = run(lambda i, p, n, s: fsc_global_hn_official(i, torch.cat([p, n]), ones, s, gamma, eps, lam))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    for x, y in zip(mine, theirs):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-13)
    if gamma == 0.0 and eps == 0.0:  # no focusing, no smoothing: `pairwise`
        leaves = related_embeddings(3, k)
        emb = Embeddings(*leaves)
        pair = LOSSES["pairwise"].fn(LossInputs(emb, emb, torch.tensor(14.0, dtype=torch.float64), 0), cfg)
        assert sum(pair.values()).item() == pytest.approx(got.item(), rel=1e-12)


def ref_fsc_masked(img, pos, neg, s, gamma, eps, lam):
    """The documented convention for missing negatives: no candidate; a pair without any adds 0 to the mean."""
    total = 0.0
    for i in range(B):
        cols = [s * dot(img[i], pos[i])] + [s * dot(img[i], own(neg, i, k)) for k in range(K) if real(k * B + i)]
        if len(cols) == 1:
            continue
        logz = lse(cols)
        n = len(cols) - 1
        for j, z in enumerate(cols):
            y = (1 - eps + eps / (n + 1)) if j == 0 else eps / (n + 1)
            logp = z - logz
            total = total + y * -((1 - torch.exp(logp)) ** gamma) * logp
    return ref_clip(img, pos, s) + lam * total / B


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_missing_negatives_fsc_clip(gamma):
    """Pair 1 has no negative (its term is 0, finite gradients even for γ < 1), pair 3 one of its three."""
    check_masked("fsc_clip", LossConfig(hard_negative_weight=0.5, fsc_focal_gamma=gamma, fsc_label_smoothing=0.1),
                 lambda i, p, n: ref_fsc_masked(i, p, n, S, gamma, 0.1, 0.5))


def test_sigmoid_fsc_clip_is_siglip_plus_the_focal_term():
    leaves = related_embeddings(4, K)
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    cfg = LossConfig(hard_negative_weight=0.5, mask_same_image=False)
    out = LOSSES["fsc_clip"].for_contrastive("sigmoid").fn(sigmoid_inputs(leaves, s, b), cfg)
    assert out["contrastive_loss"].item() == pytest.approx(ref_sigmoid(*leaves[:2], s, b).item(), rel=1e-10)
    softmax = LOSSES["fsc_clip"].fn(LossInputs(Embeddings(*leaves), Embeddings(*leaves), s, 0), cfg)
    assert out["hard_negative_loss"].item() == pytest.approx(softmax["hard_negative_loss"].item(), rel=1e-12)


# FSC-CLIP's local term, against a re-implementation of the same file's `Local_HNLoss` (`get_per_token_visual_patches`,
# `get_aggregated_local_score`, its forward's loop over negative types and `_fill_empty_negatives`) at world size 1.
# Its image tokens are [B, Q, D] and its text tokens [B positives; the real negatives, type-major] with `attn_mask`
# (`text > 0`, the start token zeroed).

Q, L = 4, 6


def fsc_per_token_patches_official(image_tokens, text_tokens, normalizer, sparsify):
    sim_map = torch.einsum("btd,bpd->btp", text_tokens, image_tokens).detach()
    if normalizer == "minmax":
        sim_max = sim_map.max(dim=-1, keepdim=True)[0]
        sim_min = sim_map.min(dim=-1, keepdim=True)[0]
        sim_map = (sim_map - sim_min) / (sim_max - sim_min)
        if sparsify:
            sim_map[sim_map < 1.0 / image_tokens.size(1)] = 0.0
        sim_map = sim_map / sim_map.sum(dim=-1, keepdim=True)
    else:
        sim_map = sim_map.softmax(dim=-1)
    return F.normalize(torch.einsum("btp,bpd->btd", sim_map, image_tokens), dim=-1)


def fsc_local_score_official(image_tokens, text_tokens, attn_mask, logit_scale):
    text_tokens = F.normalize(text_tokens, dim=-1)
    b, t = image_tokens.shape[:2]
    local_sim = logit_scale * torch.einsum("bd,bd->b", image_tokens.reshape(b * t, -1),
                                           text_tokens.reshape(b * t, -1)).view(b, t)  # fmt: skip
    return torch.logsumexp(local_sim + torch.where(attn_mask > 0, 0.0, float("-inf")), dim=1)


def fsc_local_hn_official(image_tokens, text_tokens, attn_mask, neg_text_masks, logit_scale, gamma, smoothing,
                          weight, normalizer="minmax", sparsify=False):  # fmt: skip
    lbs = image_tokens.shape[0]
    text_tokens, neg_text_tokens = text_tokens[:lbs], text_tokens[lbs:]
    attn_mask, neg_attn_mask = attn_mask[:lbs], attn_mask[lbs:]
    pos = fsc_local_score_official(fsc_per_token_patches_official(image_tokens, text_tokens, normalizer, sparsify),
                                   text_tokens, attn_mask, logit_scale)  # fmt: skip
    sizes = [int(m.sum().item()) for m in neg_text_masks.split(lbs, dim=0)]
    scores = []
    for masks, toks, att in zip(neg_text_masks.split(lbs, dim=0), neg_text_tokens.split(sizes, dim=0),
                                neg_attn_mask.split(sizes, dim=0)):  # fmt: skip
        imgs = image_tokens[masks > 0]
        scores.append(fsc_local_score_official(fsc_per_token_patches_official(imgs, toks, normalizer, sparsify),
                                               toks, att, logit_scale))  # fmt: skip
    scores = torch.cat(scores)
    filled = torch.zeros(neg_text_masks.size(0), dtype=scores.dtype)
    filled[neg_text_masks > 0] = scores
    neg = torch.stack(filled.split(lbs, dim=0), dim=1)
    logits = torch.cat((pos.unsqueeze(1), neg), dim=1)
    valid_neg_mask = torch.stack(neg_text_masks.split(lbs, dim=0), dim=1)
    valid = torch.any(valid_neg_mask > 0, dim=1)
    labels = torch.zeros(lbs, dtype=torch.long)
    return weight * fsc_focal_with_nsr_official(logits[valid], labels[valid], gamma, smoothing, valid_neg_mask[valid])


def token_leaves(seed, k):
    """Patch and caption tokens with some structure (captions near some of their image's patches) and captions of
    different lengths: the min–max weights, the masks and the log-sum-exp then all matter."""
    g = torch.Generator().manual_seed(seed)
    patches = torch.randn(B, Q, D, generator=g, dtype=torch.float64)
    texts = 0.5 * patches.repeat(1 + k, 1, 1)[:, torch.randint(0, Q, (L,), generator=g)]
    texts = texts + torch.randn((1 + k) * B, L, D, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, L + 1, ((1 + k) * B,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]  # [(1+K)·B, L]: real tokens, then padding
    mask[:, 0] = False  # the start token
    return patches.requires_grad_(), texts.requires_grad_(), mask


def local_inputs(k, seed=3, negative_mask=None):
    leaves = related_embeddings(seed, k)
    patches, texts, mask = token_leaves(seed, k)
    tokens = TokenEmbeddings(patches, texts[:B], texts[B:], mask[:B], mask[B:])
    emb = Embeddings(*leaves, negative_mask=negative_mask, tokens=tokens)
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    return LossInputs(emb, emb, scale, 0), [*leaves, patches, texts, scale], mask


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("normalizer,sparsify", [("minmax", False), ("minmax", True), ("softmax", False)])
def test_fsc_clip_local_term_equals_the_official_code(k, normalizer, sparsify):
    """The whole FSC-CLIP loss (global and local terms, the authors' weights) and the gradient of every embedding,
    patch and token and of the logit scale."""
    cfg = LossConfig(hard_negative_weight=0.5, fsc_local_weight=0.2, fsc_local_normalizer=normalizer,
                     fsc_local_sparsify=sparsify, mask_same_image=False)  # fmt: skip
    assert LOSSES["fsc_clip"].needs_tokens(cfg) and not LOSSES["fsc_clip"].needs_tokens(LossConfig())
    inp, mine, _ = local_inputs(k)
    out = LOSSES["fsc_clip"].fn(inp, cfg)
    got = sum(out.values())
    got.backward()
    _, theirs, mask = local_inputs(k)
    i, p, n, patches, texts, s = theirs
    ones = torch.ones(k * B, dtype=torch.float64)
    want = fsc_global_hn_official(i, torch.cat([p, n]), ones, s, 2.0, 0.02, 0.5)
    want = want + fsc_local_hn_official(patches, texts, mask.long(), ones, s, 2.0, 0.02, 0.2, normalizer, sparsify)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert out["local_hard_negative_loss"].item() > 0
    for x, y in zip(mine, theirs):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-13)
    assert mine[3].grad.abs().sum() > 0 and mine[4].grad.abs().sum() > 0  # the term trains patches and tokens


def test_fsc_clip_local_term_with_missing_negatives():
    """A missing negative is no candidate (-inf) and a pair without any adds 0 to the mean over all B, as in the
    global term (the authors' zero-filled score would be a candidate with logit 0); its tokens get no gradient."""
    mask = negative_mask()  # [K·B]
    cfg = LossConfig(hard_negative_weight=0.0, fsc_local_weight=1.0, mask_same_image=False)
    inp, mine, token_mask = local_inputs(K, negative_mask=mask)
    mask = mask.view(K, B)
    out = LOSSES["fsc_clip"].fn(inp, cfg)
    out["local_hard_negative_loss"].backward()
    _, theirs, _ = local_inputs(K)
    patches, texts, s = theirs[3:]
    want = 0.0
    for i in range(B):
        cols = [own_local_score(patches[i], texts[k * B + i], token_mask[k * B + i], s)
                for k in range(1 + K) if k == 0 or mask[k - 1, i]]  # fmt: skip
        if len(cols) == 1:
            continue
        logz, n = lse(cols), len(cols) - 1
        for j, z in enumerate(cols):
            y = (1 - 0.02 + 0.02 / (n + 1)) if j == 0 else 0.02 / (n + 1)
            want = want + y * -((1 - torch.exp(z - logz)) ** 2.0) * (z - logz)
    want = want / B
    want.backward()
    assert out["local_hard_negative_loss"].item() == pytest.approx(want.item(), rel=1e-10)
    for got, ref in zip(mine[3:5], theirs[3:5]):  # patches, tokens
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-8, atol=1e-12)
    missing = [(1 + k) * B + i for k, i in MISSING]
    assert torch.count_nonzero(mine[4].grad[missing]) == 0


def own_local_score(patches, tokens, mask, s):
    """One (image, caption) score token by token: min–max weights from the detached dot products, patch average,
    s·cosine with the token, log-sum-exp over the caption's real tokens."""
    scores = []
    for t in range(tokens.shape[0]):
        if not mask[t]:
            continue
        sims = [dot(tokens[t], patches[q]).detach() for q in range(patches.shape[0])]
        low, high = min(sims), max(sims)
        w = [(x - low) / (high - low) for x in sims]
        avg = sum(wq / sum(w) * patches[q] for q, wq in enumerate(w))
        scores.append(s * dot(F.normalize(avg, dim=0), F.normalize(tokens[t], dim=0)))
    return lse(scores)


def test_local_scores_of_patches_a_token_cannot_tell_apart_are_finite():
    """Identical patches (a flat image region everywhere): min–max weights would be 0/0; they weigh alike, so the
    score is the token's cosine with that patch, and the gradient is finite."""
    from hnc_clip.losses import local_alignment_scores

    patches = torch.ones(1, Q, D, dtype=torch.float64).requires_grad_()
    tokens = torch.randn(1, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, L, dtype=torch.bool)
    score = local_alignment_scores(patches, tokens, mask, torch.tensor(10.0, dtype=torch.float64))
    score.sum().backward()
    cos = F.normalize(tokens[0], dim=-1) @ F.normalize(patches[0, 0].detach(), dim=0)  # [L]
    assert score.item() == pytest.approx(torch.logsumexp(10.0 * cos, 0).item(), rel=1e-12)
    assert torch.isfinite(patches.grad).all()


def test_local_term_is_refused_for_a_family_without_token_embeddings():
    from hnc_clip.families import MODEL_FAMILIES
    from hnc_clip.losses import loss_for_family

    cfg = LossConfig(fsc_local_weight=0.2)
    assert loss_for_family("fsc_clip", MODEL_FAMILIES["clip"], cfg).needs_tokens(cfg)
    with pytest.raises(ValueError, match="--fsc_local_weight 0.2: FSC-CLIP's local term compares caption tokens"):
        loss_for_family("fsc_clip", MODEL_FAMILIES["siglip"], cfg)
    loss_for_family("fsc_clip", MODEL_FAMILIES["siglip"], LossConfig())  # its global terms train SigLIP


# ---------------------------------------------------------------------------------------------------------------------
# CE-CLIP, against a re-implementation of lezhang7/Enhance-FineGrained `src/open_clip/loss.py` (2d07821)
# `Clip_DALoss.forward`'s gathered branch (world_size > 1, not local_loss; here one process holding the global batch)
# with hardnegative, cmr_loss and imc_loss on, `get_cmr_loss` (threshold_type "mean"), `get_imc_loss`, and the clamp
# of the returned thresholds in `src/training/train.py`. Their texts are [B positives; B·4 negatives, pair-major];
# the 4 is K here, and `.squeeze()` of the [B, K, 1] rank logits is `squeeze(-1)` (theirs breaks at K = 1).


def ceclip_cmr_official(gt_logits_per_image, da_logits_per_image, valid_caption_mask, thresholds):
    gt_similarity = gt_logits_per_image.diag().reshape(-1, 1).expand(da_logits_per_image.shape)
    cmr_loss = F.relu(thresholds + da_logits_per_image - gt_similarity) * valid_caption_mask
    mask = da_logits_per_image != 0
    average_similarity_for_types = (da_logits_per_image * mask).sum(dim=0) / mask.sum(dim=0)
    thresholds = (gt_similarity.mean(0) - average_similarity_for_types).expand(gt_similarity.shape).detach()
    return cmr_loss.mean(), thresholds


def ceclip_imc_official(gt_logits_per_image, embedding_matrix):
    gt_similarity = gt_logits_per_image.diag().reshape(-1, 1)
    logtis_matrix = torch.cat([gt_similarity, embedding_matrix], dim=-1)
    labels = torch.zeros(logtis_matrix.shape[0], dtype=torch.long)
    return F.cross_entropy(logtis_matrix, labels)


def ceclip_official(image_features, text_features, valid_caption_mask, logit_scale, thresholds, k,
                    imc_weight=0.2, cmr_weight=0.2, upper_bound=10):
    all_image_features, all_text_features = image_features, text_features  # the gather of one process
    b = image_features.shape[0]
    caption_types = torch.tensor([1] * b + [2] * b * k)
    gt_all_text_features = all_text_features[caption_types == 1]
    da_all_text_features = all_text_features[caption_types == 2]
    gt_len, feature_size = all_image_features.shape[0], all_image_features.shape[-1]
    all_text_features = torch.cat([gt_all_text_features, da_all_text_features])
    logits_per_image = logit_scale * all_image_features @ all_text_features.T
    logits_per_text = logit_scale * gt_all_text_features @ all_image_features.T
    da_logits_per_image = logit_scale * (da_all_text_features.reshape(gt_len, -1, feature_size)
                                         @ all_image_features.unsqueeze(-1)).squeeze(-1) * valid_caption_mask
    cmr_loss, thresholds = ceclip_cmr_official(logits_per_image, da_logits_per_image, valid_caption_mask, thresholds)
    text_embedding_matrix = logit_scale * gt_all_text_features @ da_all_text_features.T
    imc_loss = ceclip_imc_official(logits_per_image, text_embedding_matrix)
    labels = torch.arange(logits_per_image.shape[0])
    total_loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    total_loss = total_loss + cmr_loss * cmr_weight + imc_loss * imc_weight
    return total_loss, torch.clamp(thresholds, 0, upper_bound)  # train.py clamps what the loss returns


def pair_major(neg, k):
    """[K·B, D] k-major (this repo) → [B·K, D] pair-major (CE-CLIP's `reshape(B, K, D)`)."""
    return neg.view(k, B, -1).transpose(0, 1).reshape(k * B, -1)


@pytest.mark.parametrize("k", [1, 3])
def test_ce_clip_equals_the_official_code_over_two_steps(k):
    """Step 1 starts from τ = 0; step 2 (other embeddings) uses the thresholds step 1 left, as their training loop
    passes them on: values, gradients (embeddings and logit scale) and the thresholds themselves."""
    cfg = LossConfig(mask_same_image=False, ce_clip_imc_weight=0.3, ce_clip_cmr_weight=0.7, ce_clip_threshold_max=4.0,
                     state={})
    theirs_tau = torch.tensor(0.0, dtype=torch.float64)
    for step, seed in enumerate((5, 6)):
        leaves = related_embeddings(seed, k, pull=0.6)
        scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
        emb = Embeddings(*leaves)
        got = sum(LOSSES["ce_clip"].fn(LossInputs(emb, emb, scale, 0), cfg).values())
        got.backward()
        ref_leaves = related_embeddings(seed, k, pull=0.6)
        ref_scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)
        img, pos, neg = ref_leaves
        want, theirs_tau = ceclip_official(img, torch.cat([pos, pair_major(neg, k)]), torch.ones(B, k), ref_scale,
                                           theirs_tau, k, imc_weight=0.3, cmr_weight=0.7, upper_bound=4.0)
        want.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-12), step
        for x, y in zip([*leaves, scale], [*ref_leaves, ref_scale]):
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(cfg.state["ce_clip_thresholds"], theirs_tau[0], rtol=1e-12, atol=0)
        if step == 0:  # step 2 then has margins to enforce, not τ = 0
            assert (cfg.state["ce_clip_thresholds"] > 0).all()


def test_ce_clip_without_state_starts_from_zero_every_call_and_evaluation_reads_a_copy():
    leaves = related_embeddings(5, K, pull=0.6)
    emb = Embeddings(*leaves)
    inp = LossInputs(emb, emb, torch.tensor(12.0, dtype=torch.float64), 0)
    fresh = [sum(LOSSES["ce_clip"].fn(inp, LossConfig()).values()).item() for _ in range(2)]
    assert fresh[0] == fresh[1]
    state = {"ce_clip_thresholds": torch.full((K,), 3.0, dtype=torch.float64)}
    read_only = dict(state)
    with_tau = sum(LOSSES["ce_clip"].fn(inp, LossConfig(state=read_only)).values()).item()
    assert with_tau > fresh[0]  # a margin τ = 3 adds rank violations
    assert torch.equal(state["ce_clip_thresholds"], torch.full((K,), 3.0, dtype=torch.float64))


def ref_ce_clip_masked(img, pos, neg, s, tau, w_imc=0.2, w_cmr=0.2):
    """The documented convention: a missing negative is no candidate of the contrast, the intra-modal softmax or the
    rank term (its slot adds 0 to the mean over B·K)."""
    reals = [m for m in range(K * B) if real(m)]
    i2t = [ce_row([s * dot(img[i], pos[j]) for j in range(B)] + [s * dot(img[i], neg[m]) for m in reals], i)
           for i in range(B)]
    t2i = [ce_row([s * dot(pos[i], img[j]) for j in range(B)], i) for i in range(B)]
    imc = [ce_row([s * dot(img[i], pos[i])] + [s * dot(pos[i], neg[m]) for m in reals], 0) for i in range(B)]
    cmr = [F.relu(tau[k] + s * dot(img[i], own(neg, i, k)) - s * dot(img[i], pos[i]))
           for i in range(B) for k in range(K) if real(k * B + i)]
    return 0.5 * (sum(i2t) / B + sum(t2i) / B) + w_imc * sum(imc) / B + w_cmr * sum(cmr) / (B * K)


def test_missing_negatives_ce_clip_and_its_thresholds():
    tau = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    state = {"ce_clip_thresholds": tau.clone()}
    check_masked("ce_clip", LossConfig(state=state), lambda i, p, n: ref_ce_clip_masked(i, p, n, S, tau))
    # the new thresholds over the real negatives of each slot only
    leaves, _ = make_k_embeddings()
    i, p, n = [x.detach() for x in leaves]
    gt = sum(S * dot(i[a], p[a]) for a in range(B)) / B
    for k in range(K):
        negs = [S * dot(i[a], own(n, a, k)) for a in range(B) if real(k * B + a)]
        want = min(max(float(gt - sum(negs) / len(negs)), 0.0), 10.0)
        assert state["ce_clip_thresholds"][k].item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_ce_clip_keeps_the_threshold_of_a_slot_without_any_negative():
    leaves, emb = make_k_embeddings()
    mask = torch.ones(K, B, dtype=torch.bool)
    mask[2] = False  # no pair has a third negative
    emb.negative_mask = mask.reshape(-1)
    state = {"ce_clip_thresholds": torch.tensor([1.0, 1.0, 7.5], dtype=torch.float64)}
    out = LOSSES["ce_clip"].fn(inputs(emb), LossConfig(state=state))
    assert all(torch.isfinite(v) for v in out.values())
    assert state["ce_clip_thresholds"][2].item() == 7.5


def test_ce_clip_has_no_sigmoid_form_and_says_why():
    with pytest.raises(ValueError, match="no sigmoid form of this loss: CE-CLIP's intra-modal softmax"):
        LOSSES["ce_clip"].for_contrastive("sigmoid")
