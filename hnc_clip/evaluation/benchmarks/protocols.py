"""Official protocols: per benchmark, the numbers its paper reports, computed as its own code computes them.

Each function takes the encoded items of one benchmark and returns `{"headline": <the number the table shows>,
..., "by_type": {...}, "count_by_type": {...}}` plus the bookkeeping of `EncodedItems.bookkeeping()`. The rules
(ties, filters, averages) are documented per benchmark in `hnc_clip.evaluation.benchmarks.registry` and
`eval/README.md`.
"""

from __future__ import annotations

import functools

import numpy as np

from ..metrics import load_metric
from .aro_relations import ARO_EXCLUDED_RELATIONS
from .items import EncodedItems, by_type, choice_margins, group_sims
from .readers import MMVP_CATEGORIES, VALSE_INSTRUMENTS

ARO_MIN_ATTRIBUTE_COUNT = 25  # VG_Attribution.evaluate_scores keeps attribute pairs with >= 25 test cases


@functools.cache
def _metric(name: str):
    return load_metric(name)


def _selection(encoded: EncodedItems, tie: str) -> tuple[np.ndarray, dict]:
    """(correct mask [N], caption_selection metric output) for n-way items."""
    true, other = choice_margins(encoded)
    out = _metric("caption_selection").compute(
        true_scores=true.tolist(), best_other_scores=other.tolist(), types=[it.type for it in encoded.items], tie=tie
    )
    correct = true >= other if tie == "right" else true > other
    return correct, out


def _choice_result(encoded: EncodedItems, tie: str) -> dict:
    _, out = _selection(encoded, tie)
    return {
        "accuracy": out["accuracy"],
        "macro_accuracy": out["macro_accuracy"],
        "num_ties": out["num_ties"],
        "by_type": out["accuracy_by_type"],
        "count_by_type": out["count_by_type"],
        **encoded.bookkeeping(),
    }


def hnc_test(encoded: EncodedItems) -> dict:
    """HNC: positive > negative (a tie is wrong); micro accuracy is the headline, per type alongside. Pairs whose
    positive equals the negative were excluded before encoding (counted as `identical_pairs`)."""
    out = _choice_result(encoded, "wrong")
    return {"headline": out["accuracy"], **out}


def sugarcrepe(encoded: EncodedItems) -> dict:
    """SugarCrepe `main_eval.py`: `1 if pos_score > neg_score else 0` per subset; categories are means of subsets."""
    out = _choice_result(encoded, "wrong")
    t = out["by_type"]
    cats = {c: [s for s in t if s.startswith(c)] for c in ("replace", "swap", "add")}
    out.update({c: float(np.mean([t[s] for s in subs])) for c, subs in cats.items() if subs})
    return {"headline": out["macro_accuracy"], **out}


def sugarcrepe_pp(encoded: EncodedItems) -> dict:
    """SugarCrepe++ (`test_*.py`): ITT = cos(I,P1) > cos(I,N) and cos(I,P2) > cos(I,N); TOT = cos(P1,P2) >
    cos(P1,N) and cos(P1,P2) > cos(P2,N); strict, per subset. Headline: ITT averaged over the 5 subsets."""
    itt, tot = [], []
    for i in range(len(encoded.items)):
        s = encoded.sims(i)[0]  # [P1, P2, N]
        t = encoded.text_sims(i)
        itt.append(s[0] > s[2] and s[1] > s[2])
        tot.append(t[0, 1] > t[0, 2] and t[0, 1] > t[1, 2])
    types = [it.type for it in encoded.items]
    itt_t, counts = by_type(itt, types)
    tot_t, _ = by_type(tot, types)
    return {
        "headline": float(np.mean(list(itt_t.values()))),
        "itt_macro": float(np.mean(list(itt_t.values()))),
        "tot_macro": float(np.mean(list(tot_t.values()))),
        "itt": float(np.mean(itt)),
        "tot": float(np.mean(tot)),
        "by_type": {**{f"itt/{k}": v for k, v in itt_t.items()}, **{f"tot/{k}": v for k, v in tot_t.items()}},
        "count_by_type": counts,
        **encoded.bookkeeping(),
    }


def aro_relation(encoded: EncodedItems) -> dict:
    """ARO VG-Relation: captions [false, true], `argmax == 1` (a tie is wrong); accuracy per relation; headline =
    mean over relations outside `ARO_EXCLUDED_RELATIONS` (the official notebook's macro accuracy)."""
    out = _choice_result(encoded, "wrong")
    excluded = frozenset(ARO_EXCLUDED_RELATIONS)
    kept = {r: a for r, a in out["by_type"].items() if r not in excluded}
    out.update(macro_accuracy_all_relations=out.pop("macro_accuracy"), num_relations_kept=len(kept))
    return {"headline": float(np.mean(list(kept.values()))) if kept else float("nan"), **out}


def aro_attribution(encoded: EncodedItems) -> dict:
    """ARO VG-Attribution: `argmax == 1` (a tie is wrong) per `<a1>_<a2>`; headline = mean over pairs with >= 25."""
    out = _choice_result(encoded, "wrong")
    kept = {a: v for a, v in out["by_type"].items() if out["count_by_type"][a] >= ARO_MIN_ATTRIBUTE_COUNT}
    out.update(macro_accuracy_all_pairs=out.pop("macro_accuracy"), num_attribute_pairs_kept=len(kept))
    return {"headline": float(np.mean(list(kept.values()))) if kept else float("nan"), **out}


def aro_order(encoded: EncodedItems) -> dict:
    """ARO COCO/Flickr30k-Order: caption options [true, 4 perturbations], `argmax == 0` -> a tie is right;
    Precision@1 over all test cases."""
    out = _choice_result(encoded, "right")
    return {"headline": out["accuracy"], "precision@1": out["accuracy"], **out}


def valse(encoded: EncodedItems) -> dict:
    """VALSE pairwise ranking accuracy acc_r (caption > foil, strict) per piece, on mturk-validated examples.
    Headline: the unweighted mean over the pieces present (ours: the official script prints pieces only)."""
    out = _choice_result(encoded, "wrong")
    instruments: dict[str, list[float]] = {}
    for piece, acc in out["by_type"].items():
        instruments.setdefault(VALSE_INSTRUMENTS.get(piece, piece), []).append(acc)
    out["by_instrument"] = {k: float(np.mean(v)) for k, v in sorted(instruments.items())}
    return {"headline": out["macro_accuracy"], **out}


def _whatsup_key(image_path: str) -> tuple[tuple[str, str], str]:
    """((object, other object), preposition) from `<obj>_<prep>_<other>.jpeg`, as the official eval_dict keys."""
    name = image_path.split("/")[-1]
    parts = name.split("_")
    return (parts[0], parts[-1][:-5]), parts[1]


def whatsup(encoded: EncodedItems) -> dict:
    """What'sUp: the true caption is option 0, `argmax == 0` -> a tie is right; individual accuracy per subset; for
    the controlled subsets also pair accuracy (left+right, on+under / in-front+behind both right) over N/2 and set
    accuracy (all four) over N/4, as `Controlled_Images.evaluate_scores`. Headline: mean individual accuracy over
    the subsets present (ours)."""
    correct, sel = _selection(encoded, "right")
    out = {
        "accuracy": sel["accuracy"],
        "macro_accuracy": sel["macro_accuracy"],
        "num_ties": sel["num_ties"],
        "by_type": dict(sel["accuracy_by_type"]),
        "count_by_type": sel["count_by_type"],
    }
    for subset, pair_preps in (("controlled_a", ("on", "under")), ("controlled_b", ("in-front", "behind"))):
        rows = [(it, c) for it, c in zip(encoded.items, correct) if it.type == subset]
        if not rows:
            continue
        table: dict = {}
        for it, c in rows:
            key, prep = _whatsup_key(it.image.file)
            table.setdefault(key, {})[prep] = bool(c)
        pairs = sum(bool(d.get("left") and d.get("right")) + bool(d.get(pair_preps[0]) and d.get(pair_preps[1]))
                    for d in table.values())  # fmt: skip
        sets = sum(sum(d.values()) == 4 for d in table.values())
        out["by_type"][f"{subset}/pair"] = pairs / (len(rows) / 2)
        out["by_type"][f"{subset}/set"] = sets / (len(rows) / 4)
    individual = [v for k, v in out["by_type"].items() if "/" not in k]
    return {"headline": float(np.mean(individual)), **out, **encoded.bookkeeping()}


def vl_checklist(encoded: EncodedItems) -> dict:
    """VL-CheckList ITC (`vl_checklist/evaluate.py`): correct when POS[0] scores above NEG[0] (a tie is wrong);
    accuracy per annotation file; category (Attribute / Object / Relation) = mean over its files; headline = mean of
    the categories present."""
    out = _choice_result(encoded, "wrong")
    cats: dict[str, list[float]] = {}
    for type_, acc in out["by_type"].items():
        cats.setdefault(type_.split("/")[0], []).append(acc)
    out["by_category"] = {c: float(np.mean(v)) for c, v in sorted(cats.items())}
    return {"headline": float(np.mean(list(out["by_category"].values()))), **out}


def _groups(encoded: EncodedItems) -> dict:
    s = group_sims(encoded)
    out = _metric("group_score").compute(**{k: v.tolist() for k, v in s.items()})
    text = (s["c0_i0"] > s["c1_i0"]) & (s["c1_i1"] > s["c0_i1"])
    image = (s["c0_i0"] > s["c0_i1"]) & (s["c1_i1"] > s["c1_i0"])
    types = [it.type for it in encoded.items]
    per: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, mask in (("text", text), ("image", image), ("group", text & image)):
        acc, counts = by_type(mask, types)
        per.update({f"{name}/{k}": v for k, v in acc.items()})
    return {**out, "by_type": per, "count_by_type": counts}


def winoground(encoded: EncodedItems) -> dict:
    """Winoground text / image / group scores (strict, a tie is wrong), per `collapsed_tag`; headline: group."""
    out = _groups(encoded)
    return {"headline": out["group_score"], **out, **encoded.bookkeeping()}


def eqben(encoded: EncodedItems) -> dict:
    """EqBen: Winoground's scores (`cal_wino_score`, strict) per sub-dataset; headline: group score."""
    out = _groups(encoded)
    return {"headline": out["group_score"], **out, **encoded.bookkeeping()}


def mmvp_vlm(encoded: EncodedItems) -> dict:
    """MMVP-VLM `evaluate_vlm.py`: for each statement, `img1` when softmax(text->images)[img1] > 0.5, i.e.
    s(text, img1) > s(text, img2) (a tie picks img2); a pair is right when both statements pick their ground-truth
    image; score per category = right pairs / 15; headline = mean over the 9 categories."""
    right = []
    for i, item in enumerate(encoded.items):
        s = encoded.sims(i)  # [image, text]
        preds = [0 if s[0, t] > s[1, t] else 1 for t in (0, 1)]
        right.append(preds == item.meta["gt"])
    acc, counts = by_type(right, [it.type for it in encoded.items])
    per_category = {c: acc[c] for c in MMVP_CATEGORIES if c in acc}
    return {
        "headline": float(np.mean(list(per_category.values()))),
        "pair_accuracy": float(np.mean(right)),
        "by_type": per_category,
        "count_by_type": counts,
        **encoded.bookkeeping(),
    }
