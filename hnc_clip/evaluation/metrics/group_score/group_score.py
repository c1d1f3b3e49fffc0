"""Winoground's text, image and group scores over 2x2 groups (two images, two captions)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Each group has captions c0, c1 and images i0, i1, with c0 describing i0 and c1 describing i1; s(c, i) is a
similarity. As in Thrush et al. (2022) and EqBen's `cal_wino_score` (strict comparisons, so a tie is wrong):

- text score: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1)  (each image picks its caption);
- image score: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0)  (each caption picks its image);
- group score: both.
"""

_KWARGS_DESCRIPTION = """
Args:
    c0_i0, c0_i1, c1_i0, c1_i1 (`list` of `float`): the four similarities of each group.

Returns:
    text_score, image_score, group_score (`float`), num_groups (`int`).

Examples:

    Example 1-One group right both ways, one right only text-wise.
        >>> import os
        >>> import evaluate
        >>> metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)), keep_in_memory=True)
        >>> out = metric.compute(c0_i0=[0.9, 0.5], c0_i1=[0.1, 0.6], c1_i0=[0.2, 0.4], c1_i1=[0.8, 0.7])
        >>> print(out["text_score"], out["image_score"], out["group_score"])
        1.0 0.5 0.5
"""

_CITATION = """
@inproceedings{thrush2022winoground,
    title = {Winoground: Probing Vision and Language Models for Visio-Linguistic Compositionality},
    author = {Thrush, Tristan and Jiang, Ryan and Bartolo, Max and Singh, Amanpreet and Williams, Adina and
              Kiela, Douwe and Ross, Candace},
    booktitle = {CVPR},
    year = {2022},
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroupScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"c0_i0": datasets.Value("float64"), "c1_i1": datasets.Value("float64")}),
            reference_urls=["https://huggingface.co/datasets/facebook/winoground"],
        )

    def _compute(self, c0_i0, c1_i1, c0_i1, c1_i0):
        c0_i0, c0_i1, c1_i0, c1_i1 = (np.asarray(x, dtype=np.float64) for x in (c0_i0, c0_i1, c1_i0, c1_i1))
        if c0_i0.size == 0:
            raise ValueError("group_score: no groups to score")
        text = (c0_i0 > c1_i0) & (c1_i1 > c0_i1)
        image = (c0_i0 > c0_i1) & (c1_i1 > c1_i0)
        return {
            "text_score": float(text.mean()),
            "image_score": float(image.mean()),
            "group_score": float((text & image).mean()),
            "num_groups": int(c0_i0.size),
        }
