"""Recall@K for retrieval where a query may have several relevant items (COCO: five captions per image)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Recall@K as used for image-text retrieval (CLIP, ALBEF, CLIP_benchmark): the fraction of queries for which at least
one relevant item is among the top K retrieved. For image->text retrieval on COCO an image has five captions and any
of them counts; for text->image retrieval a caption's only relevant item is its own image.

Inputs are ranked lists, not score matrices, so the scoring loop can keep only the top max(K) ids per query instead
of an images x captions matrix.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): for each query, the ids of the retrieved items, best first. At least
        max(k_values) ids per query (fewer only when the gallery is smaller).
    references (`list` of `list` of `int`): for each query, the ids of all relevant items (at least one).
    k_values (`list` of `int`, *optional*): the K of Recall@K. Defaults to `[1, 5, 10]`.

Returns:
    R@<K> (`float`): one key per K, the fraction of queries with a relevant id among the first K predictions.
    num_queries (`int`).

Examples:

    Example 1-Image->text with two captions per image: image 0 owns captions 0 and 1, image 1 owns 2 and 3.
        >>> import os
        >>> import evaluate
        >>> metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)), keep_in_memory=True)
        >>> results = metric.compute(
        ...     predictions=[[1, 2, 3, 0], [0, 1, 3, 2]],
        ...     references=[[0, 1], [2, 3]],
        ...     k_values=[1, 2],
        ... )
        >>> print(results)
        {'R@1': 0.5, 'R@2': 0.5, 'num_queries': 2}

    Example 2-Text->image: each caption has one relevant image.
        >>> results = metric.compute(predictions=[[0, 1], [0, 1], [1, 0]], references=[[0], [1], [1]], k_values=[1, 2])
        >>> print(results["R@1"], results["R@2"])
        0.6666666666666666 1.0
"""

_CITATION = """
@inproceedings{radford2021clip,
    title = {Learning Transferable Visual Models From Natural Language Supervision},
    author = {Radford, Alec and others},
    booktitle = {ICML},
    year = {2021},
}
"""

DEFAULT_K = (1, 5, 10)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, predictions, references, k_values=DEFAULT_K):
        if len(predictions) == 0:
            raise ValueError("retrieval_recall: no queries to score")
        # Rank (0-based) of the first relevant item per query; a query whose relevant items were not retrieved
        # at all gets rank = len(ranked list), which is never < K for K within the list.
        first_hit = np.empty(len(predictions), dtype=np.int64)
        for q, (ranked, relevant) in enumerate(zip(predictions, references)):
            if not relevant:
                raise ValueError(f"retrieval_recall: query {q} has no relevant item")
            relevant = set(relevant)
            first_hit[q] = next((r for r, item in enumerate(ranked) if item in relevant), len(ranked))
        results = {f"R@{int(k)}": float((first_hit < int(k)).mean()) for k in k_values}
        results["num_queries"] = len(predictions)
        return results
