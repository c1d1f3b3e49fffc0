"""N-way caption selection: does the true caption score highest among an image's caption options?"""

from collections import defaultdict

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Each item is one image with K caption options, one of them true. The item is correct when the true caption's score
is the highest. Ties are decided as the benchmark's official code decides them, by where it puts the true caption
before its `argmax` (which returns the first maximum): ARO's VG-Relation/VG-Attribution put it last (a tie is
wrong), ARO's COCO/Flickr30k-Order, What'sUp and CLIP_benchmark put it first (a tie is right); SugarCrepe, VALSE and
VL-CheckList compare with a strict `>` (a tie is wrong).

Returns the micro accuracy over items, the accuracy and count per type, and their unweighted mean (macro).

With `thresholds`, also the continuity statistics of 2-way items (true caption vs hard negative), which move even
when no item flips and so are useful during training: mean true and other scores, mean margin, and the
ratio-threshold accuracy Acc@tau (correct when s+/s- > tau, computed as s+ > tau * s- so that it stays defined when
s- <= 0; Acc@1 is the accuracy with a tie wrong). With `random_scores` (another image's true caption), their mean and
the accuracy against them.
"""

_KWARGS_DESCRIPTION = """
Args:
    true_scores (`list` of `float`): score of the true caption, one per item.
    best_other_scores (`list` of `float`): the highest score among the item's other captions.
    types (`list` of `str`, *optional*): type of each item (e.g. ARO's relation name); default one type `all`.
    tie (`str`, *optional*): `"wrong"` (default) or `"right"`.
    thresholds (`list` of `float`, *optional*): the tau values of Acc@tau; adds the continuity statistics.
    random_scores (`list` of `float`, *optional*): score of a random other image's true caption, one per item.

Returns:
    accuracy (`float`), macro_accuracy (`float`), accuracy_by_type (`dict`), count_by_type (`dict`),
    num_items (`int`), num_ties (`int`).
    With `thresholds`: mean_positive_similarity, mean_negative_similarity, mean_margin (`float`) and
    ratio_accuracy@<tau> (`float`, one key per threshold, tau written with two decimals: `ratio_accuracy@1.05`).
    With `random_scores`: mean_random_negative_similarity, random_negative_accuracy (`float`).

Examples:

    Example 1-A tie decides the result.
        >>> import os
        >>> import evaluate
        >>> metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)), keep_in_memory=True)
        >>> wrong = metric.compute(true_scores=[0.3, 0.2], best_other_scores=[0.1, 0.2])
        >>> right = metric.compute(true_scores=[0.3, 0.2], best_other_scores=[0.1, 0.2], tie="right")
        >>> print(wrong["accuracy"], right["accuracy"], right["num_ties"])
        0.5 1.0 1

    Example 2-Per type and macro.
        >>> out = metric.compute(true_scores=[1, 1, 1, 0], best_other_scores=[0, 0, 0, 1], types=["a", "a", "a", "b"])
        >>> print(out["accuracy"], out["macro_accuracy"], out["accuracy_by_type"])
        0.75 0.5 {'a': 1.0, 'b': 0.0}

    Example 3-Ratio thresholds: 0.25 / 0.20 = 1.25 passes tau = 1.1, 0.22 / 0.21 = 1.05 does not.
        >>> out = metric.compute(true_scores=[0.25, 0.22], best_other_scores=[0.20, 0.21], thresholds=[1.0, 1.1])
        >>> print(out["ratio_accuracy@1.00"], out["ratio_accuracy@1.10"])
        1.0 0.5
"""

_CITATION = """
@inproceedings{yuksekgonul2023when,
    title = {When and Why Vision-Language Models Behave like Bags-Of-Words, and What to Do About It?},
    author = {Yuksekgonul, Mert and Bianchi, Federico and Kalluri, Pratyusha and Jurafsky, Dan and Zou, James},
    booktitle = {ICLR},
    year = {2023},
}
"""

TIES = ("wrong", "right")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionSelection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"true_scores": datasets.Value("float64"), "best_other_scores": datasets.Value("float64")}
            ),
            reference_urls=["https://github.com/mertyg/vision-language-models-are-bows"],
        )

    def _compute(self, true_scores, best_other_scores, types=None, tie="wrong", thresholds=None, random_scores=None):
        if tie not in TIES:
            raise ValueError(f"caption_selection: tie must be one of {TIES}, got {tie!r}")
        true = np.asarray(true_scores, dtype=np.float64)
        other = np.asarray(best_other_scores, dtype=np.float64)
        if true.size == 0:
            raise ValueError("caption_selection: no items to score")
        types = ["all"] * true.size if types is None else [str(t) for t in types]
        if len(types) != true.size:
            raise ValueError(f"caption_selection: {len(types)} types for {true.size} items")
        correct = true >= other if tie == "right" else true > other
        per_type = defaultdict(list)
        for t, c in zip(types, correct.tolist()):
            per_type[t].append(c)
        by_type = {t: float(np.mean(per_type[t])) for t in sorted(per_type)}
        results = {
            "accuracy": float(correct.mean()),
            "macro_accuracy": float(np.mean(list(by_type.values()))),
            "accuracy_by_type": by_type,
            "count_by_type": {t: len(per_type[t]) for t in sorted(per_type)},
        }
        if thresholds is not None:
            results.update(
                mean_positive_similarity=float(true.mean()),
                mean_negative_similarity=float(other.mean()),
                mean_margin=float((true - other).mean()),
            )
            for tau in thresholds:
                # s+ / s- > tau, written multiplicatively so a negative or zero s- does not flip or break the test.
                results[f"ratio_accuracy@{float(tau):.2f}"] = float((true > float(tau) * other).mean())
        if random_scores is not None:
            rand = np.asarray(random_scores, dtype=np.float64)
            if rand.size != true.size:
                raise ValueError(f"caption_selection: {rand.size} random scores for {true.size} items")
            results["mean_random_negative_similarity"] = float(rand.mean())
            results["random_negative_accuracy"] = float((true > rand).mean())
        results.update(num_items=int(true.size), num_ties=int((true == other).sum()))
        return results
