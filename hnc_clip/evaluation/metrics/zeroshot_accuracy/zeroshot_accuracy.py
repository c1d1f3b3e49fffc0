"""Zero-shot classification accuracy: top-1, top-5 and mean per-class recall."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Zero-shot (or linear-probe) image classification scores as reported by CLIP and CLIP_benchmark: top-1 and top-5
accuracy over images, and mean per-class recall (the top-1 recall of each class, averaged over the classes present
in the references), which is the headline number for unbalanced sets such as FGVC-Aircraft or Caltech-101.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): for each image, class ids ranked best first (at least 5 when there are
        5 classes or more; top-k uses the first k).
    references (`list` of `int`): the true class id of each image.
    k_values (`list` of `int`, *optional*): which top-k accuracies to report. Defaults to `[1, 5]`.

Returns:
    top<k> (`float`): one key per k, the fraction of images whose true class is among the first k predictions.
    mean_per_class_recall (`float`): mean over classes in `references` of that class's top-1 recall.
    num_images (`int`).

Examples:

    Example 1-Three classes, four images.
        >>> import os
        >>> import evaluate
        >>> metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)), keep_in_memory=True)
        >>> results = metric.compute(
        ...     predictions=[[0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 2, 1]],
        ...     references=[0, 0, 2, 1],
        ...     k_values=[1, 2],
        ... )
        >>> print(results["top1"], results["top2"])
        0.5 0.75

    Mean per-class recall: class 0 -> 1/2, class 1 -> 0/1, class 2 -> 1/1, mean = 0.5.
        >>> print(results["mean_per_class_recall"])
        0.5
"""

_CITATION = """
@inproceedings{radford2021clip,
    title = {Learning Transferable Visual Models From Natural Language Supervision},
    author = {Radford, Alec and others},
    booktitle = {ICML},
    year = {2021},
}
"""

DEFAULT_K = (1, 5)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroshotAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://github.com/LAION-AI/CLIP_benchmark"],
        )

    def _compute(self, predictions, references, k_values=DEFAULT_K):
        refs = np.asarray(references, dtype=np.int64)
        if refs.size == 0:
            raise ValueError("zeroshot_accuracy: no images to score")
        # Ragged lists are allowed (fewer than k classes): pad with -1, which never matches a class id.
        width = max(max(int(k) for k in k_values), max(len(p) for p in predictions))
        ranked = np.full((refs.size, width), -1, dtype=np.int64)
        for i, p in enumerate(predictions):
            ranked[i, : len(p)] = p
        hits = ranked == refs[:, None]  # [N, width]: true class at rank r
        results = {f"top{int(k)}": float(hits[:, : int(k)].any(axis=1).mean()) for k in k_values}
        top1 = hits[:, 0]
        results["mean_per_class_recall"] = float(np.mean([top1[refs == c].mean() for c in np.unique(refs)]))
        results["num_images"] = int(refs.size)
        return results
