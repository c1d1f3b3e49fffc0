"""Hard-negative caption selection accuracy (positive vs hard negative), with continuity metrics."""

from collections import defaultdict

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
For each (image, positive caption, hard-negative caption) triple a model gives two similarities, s+ = sim(image,
positive) and s- = sim(image, negative). The triple is correct when s+ > s- (a tie counts as wrong). This is ARO /
SugarCrepe / HNC "caption selection" accuracy.

Accuracy is reported over pairs (micro, `accuracy`) and as the mean of the per-type accuracies (macro,
`macro_accuracy`), because benchmark types differ a lot in size and a micro average hides the small ones.

Continuity metrics move even when no pair flips, which makes them useful during training: mean s+, mean s-, mean
margin s+ - s-, the ratio-threshold accuracy Acc@tau (correct when s+/s- > tau, computed as s+ > tau * s- so that it
stays defined when s- <= 0; identical to the ratio for the usual positive CLIP cosines, and Acc@1 == accuracy), and,
when random-negative similarities are given (another image's positive caption), their mean and the accuracy
against them.
"""

_KWARGS_DESCRIPTION = """
Args:
    positive_scores (`list` of `float`): sim(image, positive caption), one per pair.
    negative_scores (`list` of `float`): sim(image, hard-negative caption), one per pair.
    types (`list` of `str`, *optional*): caption type of each pair (e.g. `relation`, `replace_att`); enables
        `accuracy_by_type` and a macro average over types. Without it all pairs are one type, `all`.
    random_negative_scores (`list` of `float`, *optional*): sim(image, a random other image's positive caption).
    thresholds (`list` of `float`, *optional*): the tau values of Acc@tau. Defaults to `[1.0, 1.05, 1.1]`.

Returns:
    accuracy (`float`): fraction of pairs with s+ > s- (micro average).
    macro_accuracy (`float`): mean over types of the per-type accuracy.
    accuracy_by_type (`dict` of `str` to `float`), count_by_type (`dict` of `str` to `int`).
    mean_positive_similarity, mean_negative_similarity, mean_margin (`float`).
    ratio_accuracy@<tau> (`float`): one key per threshold, tau written with two decimals (`ratio_accuracy@1.05`).
    mean_random_negative_similarity, random_negative_accuracy (`float`): only with `random_negative_scores`.
    num_pairs (`int`).

Examples:

    Example 1-Two types, one mistake.
        >>> import os
        >>> import evaluate
        >>> metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)), keep_in_memory=True)
        >>> results = metric.compute(
        ...     positive_scores=[0.30, 0.20, 0.25, 0.40],
        ...     negative_scores=[0.10, 0.25, 0.20, 0.10],
        ...     types=["relation", "relation", "attribute", "attribute"],
        ... )
        >>> print(results["accuracy"], results["macro_accuracy"])
        0.75 0.75
        >>> print(results["accuracy_by_type"])
        {'attribute': 1.0, 'relation': 0.5}

    Example 2-Ratio thresholds: 0.25 / 0.20 = 1.25 passes tau = 1.1, 0.22 / 0.21 = 1.05 does not.
        >>> results = metric.compute(positive_scores=[0.25, 0.22], negative_scores=[0.20, 0.21], thresholds=[1.0, 1.1])
        >>> print(results["ratio_accuracy@1.00"], results["ratio_accuracy@1.10"])
        1.0 0.5

    Example 3-Micro and macro differ when the types differ in size.
        >>> results = metric.compute(
        ...     positive_scores=[0.3, 0.3, 0.3, 0.1],
        ...     negative_scores=[0.1, 0.1, 0.1, 0.2],
        ...     types=["a", "a", "a", "b"],
        ...     random_negative_scores=[0.0, 0.1, 0.2, 0.3],
        ... )
        >>> print(results["accuracy"], results["macro_accuracy"], results["random_negative_accuracy"])
        0.75 0.5 0.75
"""

_CITATION = """
@inproceedings{donmez-etal-2023-hnc,
    title = "{HNC}: Leveraging Hard Negative Captions towards Models with Fine-Grained Visual-Linguistic Comprehension
             Capabilities",
    author = {D{\\"o}nmez, Esra and Tilli, Pascal and Yang, Hsiu-Yu and Vu, Ngoc Thang and Silberer, Carina},
    booktitle = "Proceedings of the 27th Conference on Computational Natural Language Learning (CoNLL)",
    year = "2023",
}
"""

DEFAULT_THRESHOLDS = (1.0, 1.05, 1.1)


def _mean(values: np.ndarray) -> float:
    return float(values.mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HardNegativeAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "positive_scores": datasets.Value("float64"),
                    "negative_scores": datasets.Value("float64"),
                }
            ),
            reference_urls=["https://aclanthology.org/2023.conll-1.24/"],
        )

    def _compute(
        self,
        positive_scores,
        negative_scores,
        types=None,
        random_negative_scores=None,
        thresholds=DEFAULT_THRESHOLDS,
    ):
        pos = np.asarray(positive_scores, dtype=np.float64)
        neg = np.asarray(negative_scores, dtype=np.float64)
        if pos.size == 0:
            # A silent 0 would look like a terrible model; an empty evaluation is a data problem.
            raise ValueError("hard_negative_accuracy: no pairs to score")
        types = ["all"] * pos.size if types is None else [str(t) for t in types]
        if len(types) != pos.size:
            raise ValueError(f"hard_negative_accuracy: {len(types)} types for {pos.size} pairs")
        correct = pos > neg

        per_type: dict[str, list[bool]] = defaultdict(list)
        for t, c in zip(types, correct.tolist()):
            per_type[t].append(c)
        accuracy_by_type = {t: float(np.mean(per_type[t])) for t in sorted(per_type)}

        results = {
            "accuracy": _mean(correct),
            "macro_accuracy": float(np.mean(list(accuracy_by_type.values()))),
            "accuracy_by_type": accuracy_by_type,
            "count_by_type": {t: len(per_type[t]) for t in sorted(per_type)},
            "mean_positive_similarity": _mean(pos),
            "mean_negative_similarity": _mean(neg),
            "mean_margin": _mean(pos - neg),
        }
        for tau in thresholds:
            # s+ / s- > tau, written multiplicatively so a negative or zero s- does not flip or break the test.
            results[f"ratio_accuracy@{float(tau):.2f}"] = _mean(pos > float(tau) * neg)
        if random_negative_scores is not None:
            rand = np.asarray(random_negative_scores, dtype=np.float64)
            if rand.size != pos.size:
                raise ValueError(f"hard_negative_accuracy: {rand.size} random-negative scores for {pos.size} pairs")
            results["mean_random_negative_similarity"] = _mean(rand)
            results["random_negative_accuracy"] = _mean(pos > rand)
        results["num_pairs"] = int(pos.size)
        return results
