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

    assert losses_for("sigmoid") == ["clip", "dpo", "hnc", "pairwise"]
    assert losses_for("softmax") == sorted(LOSSES)
    for name in ("thesis_l2", "kl_teacher", "negclip"):
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
