"""Scoring loops on hand-built cases (a fake encoder with chosen similarities) and unique encoding on a tiny CLIP."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hnc_clip.evaluation.benchmarks.items import ImageCaptions
from hnc_clip.evaluation.encode import pair_cosines
from hnc_clip.evaluation.formats import load_pairs
from hnc_clip.evaluation.images import ImageRef
from hnc_clip.evaluation.linear_probe import linear_probe_rankings, split_per_class
from hnc_clip.evaluation.tasks import (
    evaluate_pairwise,
    evaluate_retrieval,
    evaluate_zeroshot,
    pairwise_scores,
    random_negative_index,
    score_pairwise,
    score_retrieval,
    score_zeroshot,
    zeroshot_classifier,
)

pytestmark = pytest.mark.usefixtures("eval_single_thread")


class FakeEncoder:
    """Embeddings looked up by image file name / text, so every similarity is chosen by the test; records calls."""

    def __init__(self, images: dict[str, list[float]], texts: dict[str, list[float]]):
        self.images, self.texts = images, texts
        self.image_calls: list[list[str]] = []
        self.text_calls: list[list[str]] = []

    def encode_images(self, images):
        names = [os.path.basename(ref.file) for ref in images]
        self.image_calls.append(names)
        return F.normalize(torch.tensor([self.images[n] for n in names], dtype=torch.float32), dim=-1)

    def encode_texts(self, texts):
        self.text_calls.append(list(texts))
        return F.normalize(torch.tensor([self.texts[t] for t in texts], dtype=torch.float32), dim=-1)


def _touch_images(folder, names):
    for name in names:
        Image.new("RGB", (8, 8)).save(os.path.join(folder, name))
    return str(folder)


def _pair(image, pos, neg, type_):
    return {
        "pair_id": f"{image}/{pos}/{neg}",
        "image_id": image,
        "image_file": image,
        "positive": pos,
        "negative": neg,
        "type": type_,
        "bbox": None,
    }


# Unit vectors, so each cosine is a dot product that can be read off: A=(1,0), B=(0,1).
IMAGES = {"A.jpg": [1.0, 0.0], "B.jpg": [0.0, 1.0]}
TEXTS = {"a1": [0.8, 0.6], "n1": [0.6, 0.8], "n2": [1.0, 0.0], "b1": [0.0, 1.0], "n3": [0.28, 0.96]}
PAIRS = [
    _pair("A.jpg", "a1", "n1", "rel"),  # 0.8 vs 0.6   correct, ratio 1.33
    _pair("A.jpg", "a1", "n2", "rel"),  # 0.8 vs 1.0   wrong
    _pair("B.jpg", "b1", "n3", "att"),  # 1.0 vs 0.96  correct, ratio 1.04 < 1.05
    _pair("B.jpg", "b1", "n1", "att"),  # 1.0 vs 0.8   correct, ratio 1.25
    _pair("A.jpg", "a1", "n3", "rel"),  # 0.8 vs 0.28  correct, ratio 2.86
]


def test_pairwise_hand_computed(tmp_path):
    encoder = FakeEncoder(IMAGES, TEXTS)
    out = score_pairwise(encoder, PAIRS, _touch_images(tmp_path, IMAGES), thresholds=[1.0, 1.05, 1.1])
    assert out["accuracy"] == pytest.approx(4 / 5)
    assert out["accuracy_by_type"] == pytest.approx({"att": 1.0, "rel": 2 / 3})
    assert out["macro_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["ratio_accuracy@1.00"] == pytest.approx(4 / 5)
    assert out["ratio_accuracy@1.05"] == pytest.approx(3 / 5)
    assert out["ratio_accuracy@1.10"] == pytest.approx(3 / 5)
    assert out["mean_positive_similarity"] == pytest.approx(0.88, abs=1e-6)
    assert out["mean_negative_similarity"] == pytest.approx(0.728, abs=1e-6)
    assert out["mean_margin"] == pytest.approx(0.152, abs=1e-6)
    # Random negatives come from the other image: A's pairs get b1 (cos 0), B's pairs get a1 (cos 0.6).
    assert out["mean_random_negative_similarity"] == pytest.approx((0 + 0 + 0.6 + 0.6 + 0) / 5, abs=1e-6)
    assert out["random_negative_accuracy"] == 1.0
    assert (out["num_pairs"], out["num_images"], out["num_captions"]) == (5, 2, 5)
    assert (out["missing_images"], out["skipped_pairs"]) == (0, 0)


def test_pair_cosines_are_float64_dot_products_of_the_rows():
    """The one similarity of the pairwise task and every benchmark, against numpy on the rows in float64: chunking
    changes no bit, equal rows tie exactly, and a float32 sum's rounding (~1e-8 at D = 512) is not in it."""
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(7, 512), dim=-1), F.normalize(torch.randn(9, 512), dim=-1)
    b[8] = b[3]
    rng = np.random.default_rng(0)
    ai, bi = rng.integers(0, 7, 40), rng.integers(0, 9, 40)
    ref = np.einsum("pd,pd->p", a.numpy().astype(np.float64)[ai], b.numpy().astype(np.float64)[bi])
    out = pair_cosines(a, ai, b, bi)
    assert out.dtype == np.float64 and out.shape == (40,)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-15)
    assert np.abs((a[ai] * b[bi]).sum(-1).double().numpy() - ref).max() > 1e-12  # what float32 sums would report
    assert (pair_cosines(a, ai, b, bi, chunk=3) == out).all()
    assert pair_cosines(a, ai[:5], b, np.full(5, 3)).tolist() == pair_cosines(a, ai[:5], b, np.full(5, 8)).tolist()
    assert pair_cosines(a, ai[:0], b, bi[:0]).shape == (0,)


def test_pairwise_encodes_each_image_and_caption_once(tmp_path):
    encoder = FakeEncoder(IMAGES, TEXTS)
    pairwise_scores(encoder, PAIRS * 3, _touch_images(tmp_path, IMAGES))
    assert len(encoder.image_calls) == 1 and sorted(encoder.image_calls[0]) == ["A.jpg", "B.jpg"]
    assert len(encoder.text_calls) == 1 and sorted(encoder.text_calls[0]) == sorted(TEXTS)


def test_random_negative_always_from_another_image():
    image_index = np.array([0] * 50 + [1] * 2 + [2])  # one image dominates: the fallback path is exercised
    j = random_negative_index(image_index, seed=3)
    assert (image_index[j] != image_index).all()
    assert (random_negative_index(image_index, seed=3) == j).all()  # deterministic
    assert random_negative_index(np.zeros(4, dtype=np.int64)) is None


def test_missing_images_are_counted_and_skipped(tmp_path):
    image_dir = _touch_images(tmp_path, ["A.jpg"])  # B.jpg missing
    out = score_pairwise(FakeEncoder(IMAGES, TEXTS), PAIRS, image_dir)
    assert out["missing_images"] == 1
    assert out["skipped_pairs"] == 2 and out["num_pairs"] == 3
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert "random_negative_accuracy" not in out  # one image left: no other image to draw from


def test_all_images_missing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the 2 images"):
        score_pairwise(FakeEncoder(IMAGES, TEXTS), PAIRS, str(tmp_path))


def test_retrieval_hand_computed_with_several_captions_per_image(tmp_path):
    images = {"A.jpg": [1, 0, 0], "B.jpg": [0, 1, 0], "C.jpg": [0, 0, 1]}
    texts = {"a1": [1, 0, 0], "a2": [0.28, 0.96, 0], "b1": [0.6, 0.8, 0], "c1": [0, 0.6, 0.8], "c2": [0.8, 0, 0.6]}
    items = [
        ImageCaptions(ImageRef("A.jpg"), ["a1", "a2"]),
        ImageCaptions(ImageRef("B.jpg"), ["b1"]),
        ImageCaptions(ImageRef("C.jpg"), ["c1", "c2"]),
    ]
    encoder = FakeEncoder(images, texts)
    out = score_retrieval(encoder, items, _touch_images(tmp_path, images), k_values=(1, 2, 5))
    # i2t: A -> a1 (own); B -> a2 (A's) then b1; C -> c1 (own).
    assert out["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert out["image_to_text_R@2"] == 1.0
    # t2i: a1 -> A; a2 -> B then A; b1 -> B; c1 -> C; c2 -> A then C.
    assert out["text_to_image_R@1"] == pytest.approx(3 / 5)
    assert out["text_to_image_R@2"] == 1.0
    assert out["text_to_image_R@5"] == 1.0
    assert (out["num_images"], out["num_captions"], out["missing_images"]) == (3, 5, 0)
    assert len(encoder.image_calls) == 1 and len(encoder.text_calls) == 1


def test_retrieval_same_caption_on_two_images(tmp_path):
    # "x" describes both images: as in CLIP_benchmark it is two gallery entries (encoded once) with equal scores, and
    # as a t2i query each copy wants its own image.
    images = {"A.jpg": [1, 0], "B.jpg": [0, 1]}
    texts = {"x": [1, 0.1], "b": [0, 1]}
    items = [ImageCaptions(ImageRef("A.jpg"), ["x"]), ImageCaptions(ImageRef("B.jpg"), ["x", "b"])]
    encoder = FakeEncoder(images, texts)
    out = score_retrieval(encoder, items, _touch_images(tmp_path, images), k_values=(1,))
    assert encoder.text_calls == [["x", "b"]]  # encoded once
    assert out["image_to_text_R@1"] == 1.0  # A: its own "x" entry comes first among the two tied copies (topk order)
    assert out["text_to_image_R@1"] == pytest.approx(2 / 3)  # the copy of "x" owned by B retrieves A first
    assert out["num_captions"] == 3


def test_zeroshot_hand_computed(tmp_path):
    templates = ["a {}", "the {}"]
    texts = {"a cat": [1, 0], "the cat": [0.6, 0.8], "a dog": [0, 1], "the dog": [0, 1]}
    images = {"x1.jpg": [1, 0], "x2.jpg": [0, 1], "x3.jpg": [1, 0.1]}
    encoder = FakeEncoder(images, texts)
    classifier = zeroshot_classifier(encoder, ["cat", "dog"], templates)
    expected_cat = F.normalize(torch.tensor([0.8, 0.4]), dim=0)  # mean of (1, 0) and (0.6, 0.8), re-normalised
    assert torch.allclose(classifier[0], expected_cat, atol=1e-6)
    refs = [ImageRef(n) for n in images]
    out = score_zeroshot(encoder, refs, [0, 1, 1], ["cat", "dog"], templates)
    assert out["top1"] == pytest.approx(2 / 3)  # x3 (labelled dog) looks like a cat
    assert out["top5"] == 1.0
    assert out["mean_per_class_recall"] == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="2 classes"):
        score_zeroshot(encoder, refs, [0, 1, 2], ["cat", "dog"], templates)


def test_linear_probe_split_and_fit():
    labels = np.array([0] * 6 + [1] * 6 + [2] * 1)
    train, test = split_per_class(labels, seed=0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 13
    assert (split_per_class(labels, seed=0)[0] == train).all()  # deterministic
    assert 12 in train  # the single-image class goes to train
    gen = torch.Generator().manual_seed(0)
    centers = torch.eye(3) * 3
    feats = centers[torch.from_numpy(labels)] + 0.1 * torch.randn(13, 3, generator=gen)
    ranked, truth, backend = linear_probe_rankings(feats, labels, num_classes=3)
    assert backend in ("sklearn", "torch_lbfgs")
    assert [r[0] for r in ranked] == truth


def test_tiny_clip_encodes_unique_images_and_captions_once(
    eval_tiny_clip_dir, eval_sample_files, eval_sample_image_dir
):
    from hnc_clip.evaluation.encode import load_clip

    model, processor = load_clip(eval_tiny_clip_dir, "cpu")
    rows: Counter = Counter()
    get_image, get_text = model.get_image_features, model.get_text_features

    def count_images(**kwargs):
        rows["images"] += kwargs["pixel_values"].shape[0]
        rows["image_calls"] += 1
        return get_image(**kwargs)

    def count_texts(**kwargs):
        rows["texts"] += kwargs["input_ids"].shape[0]
        return get_text(**kwargs)

    model.get_image_features, model.get_text_features = count_images, count_texts
    pairs = load_pairs(eval_sample_files["test"])
    out = evaluate_pairwise(model, processor, pairs, eval_sample_image_dir, batch_size=64)
    scored = [p for p in pairs if p["positive"] != p["negative"]]  # the sample has one identical pair
    unique_texts = {p["positive"] for p in scored} | {p["negative"] for p in scored}
    assert rows["images"] == 100 and rows["image_calls"] == 2  # 100 images in batches of 64
    assert rows["texts"] == len(unique_texts) < 2 * len(pairs)
    assert out["num_pairs"] == 871 and out["identical_pairs"] == 1 and out["num_input_pairs"] == 872
    assert out["skipped_examples"]["identical_pairs"] == ["n65230/2/3"]
    assert 0.0 <= out["accuracy"] <= 1.0
    assert set(out["accuracy_by_type"]) == {p["type"] for p in pairs}


def test_tiny_clip_retrieval_and_zeroshot(
    eval_tiny_clip_dir, eval_sample_files, eval_sample_image_dir, eval_zeroshot_dir, tmp_path
):
    from hnc_clip.evaluation.encode import load_clip
    from hnc_clip.evaluation.formats import load_image_captions
    from hnc_clip.evaluation.zeroshot_data import load_imagefolder

    model, processor = load_clip(eval_tiny_clip_dir, "cpu")
    items = load_image_captions(eval_sample_files["train"])
    out = evaluate_retrieval(model, processor, items, eval_sample_image_dir)
    assert out["num_images"] == 5 and out["image_to_text_R@10"] >= out["image_to_text_R@1"]
    assert out["text_to_image_R@5"] == 1.0  # only five images in the gallery
    dataset = load_imagefolder(eval_zeroshot_dir, cache_dir=str(tmp_path / "cache"))
    zs = evaluate_zeroshot(model, processor, dataset, linear_probe=True)
    assert zs["num_images"] == 12 and zs["num_classes"] == 3
    assert zs["top5"] == 1.0 and 0.0 <= zs["top1"] <= 1.0
    assert "linear_probe_top1" in zs


def test_linear_probe_sklearn_branch(monkeypatch):
    # scikit-learn is optional and not installed here: a stand-in checks the glue (class columns, ranking).
    import importlib.machinery
    import sys
    import types

    class NearestMeanClassifier:
        def __init__(self, **kwargs):
            pass

        def fit(self, x, y):
            self.classes_ = np.unique(y)
            self.means_ = np.stack([x[y == c].mean(0) for c in self.classes_])
            return self

        def predict_proba(self, x):
            logits = -((x[:, None, :] - self.means_[None]) ** 2).sum(-1)
            e = np.exp(logits - logits.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

    sklearn = types.ModuleType("sklearn")
    sklearn.__spec__ = importlib.machinery.ModuleSpec("sklearn", None)
    linear_model = types.ModuleType("sklearn.linear_model")
    linear_model.LogisticRegression = NearestMeanClassifier
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", linear_model)

    labels = np.array([0, 0, 0, 2, 2, 2])  # class 1 has no images: its column must rank last
    feats = torch.tensor([[3.0, 0], [2.9, 0.1], [3.1, 0], [0, 3.0], [0.1, 2.9], [0, 3.2]])
    ranked, truth, backend = linear_probe_rankings(feats, labels, num_classes=3)
    assert backend == "sklearn"
    assert [r[0] for r in ranked] == truth and all(r[-1] == 1 for r in ranked)


def test_classnames_and_templates_files(tmp_path):
    from hnc_clip.evaluation.zeroshot_data import DEFAULT_TEMPLATES, read_classnames, read_templates

    folders = ["golden_retriever", "tabby_cat"]
    assert read_classnames(None, folders) == ["golden retriever", "tabby cat"]
    (tmp_path / "names.json").write_text('{"tabby_cat": "tabby"}')
    assert read_classnames(str(tmp_path / "names.json"), folders) == ["golden retriever", "tabby"]
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    assert read_classnames(str(tmp_path / "names.txt"), folders) == ["dog", "cat"]
    (tmp_path / "list.json").write_text('["dog"]')
    with pytest.raises(ValueError, match="1 class names for 2 class folders"):
        read_classnames(str(tmp_path / "list.json"), folders)
    assert read_templates(None) == list(DEFAULT_TEMPLATES)
    (tmp_path / "t.json").write_text('["a photo of a {}.", "art of a {}."]')
    assert read_templates(str(tmp_path / "t.json")) == ["a photo of a {}.", "art of a {}."]
    (tmp_path / "bad.json").write_text('["no slot"]')
    with pytest.raises(ValueError, match="slot"):
        read_templates(str(tmp_path / "bad.json"))


def test_pairs_identical_after_truncation_are_counted_not_scored(tmp_path, caplog):
    """A text tower of 5 positions (BOS, 3 words, EOS) reads "the cup is left ..." and "the cup is right ..." as one
    caption: such a pair used to be scored (always wrong: no caption beats itself); now it is counted and named
    with the identical pairs, in pairwise scoring and in the benchmarks."""
    import logging

    from hnc_clip.evaluation.benchmarks.items import BenchmarkData, ChoiceItem
    from hnc_clip.evaluation.benchmarks.runner import drop_identical
    from hnc_clip.evaluation.encode import ClipEncoder, load_clip
    from hnc_clip.evaluation.tasks import evaluate_pairwise
    from hnc_clip.tiny import save_tiny_clip

    texts = ["the cup is left of the plate", "the cup is right of the plate", "a red cup", "a blue cup"]
    model, processor = load_clip(save_tiny_clip(str(tmp_path / "m"), texts, max_position_embeddings=5), "cpu")
    for name in ("x.jpg", "y.jpg"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    pairs = [{"pair_id": "cut", "image_file": "x.jpg", "positive": texts[0], "negative": texts[1], "type": "rel"},
             {"pair_id": "ok", "image_file": "y.jpg", "positive": texts[2], "negative": texts[3],
              "type": "att"}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hnc_clip.evaluation.tasks"):
        out = evaluate_pairwise(model, processor, pairs, str(tmp_path))
    assert out["num_pairs"] == 1 and out["identical_pairs"] == 1 and out["identical_after_truncation"] == 1
    assert out["skipped_examples"]["identical_pairs"] == ["cut"] and "1 of them only after truncation" in caplog.text
    data = BenchmarkData(str(tmp_path), [ChoiceItem("cut", ImageRef("x.jpg"), texts[:2], 0),
                                         ChoiceItem("ok", ImageRef("y.jpg"), texts[2:], 0)])  # fmt: skip
    kept, counts = drop_identical(data, ClipEncoder(model, processor, progress=False))
    assert [it.item_id for it in kept.items] == ["ok"] and counts["identical_after_truncation"] == 1


def test_non_finite_weights_are_refused_at_load(tmp_path, eval_tiny_clip_dir):
    """A checkpoint with a NaN weight used to score 0.0, its NaN image embeddings reported as unreadable images;
    now evaluation, conversion and training refuse it at load, naming the tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hnc_clip.arguments import ModelArguments
    from hnc_clip.evaluation.encode import load_clip
    from hnc_clip.modeling import NonFiniteWeightsError, load_model

    broken = tmp_path / "broken"
    shutil.copytree(eval_tiny_clip_dir, broken)
    state = load_file(broken / "model.safetensors")
    state["visual_projection.weight"][0, 0] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightsError, match=r"broken: 1 weight tensors hold NaN or inf, e.g. "
                                                    r"visual_projection.weight \(1 values\)"):
        load_clip(str(broken), "cpu")
    with pytest.raises(NonFiniteWeightsError, match="visual_projection.weight"):
        load_model(ModelArguments(model_name_or_path=str(broken)))


def test_classnames_and_templates_files_that_are_empty_or_carry_a_bom(tmp_path):
    """Empty, `[]`/`{}` and wrongly typed class-name and template files say which (a bare JSONDecodeError or
    `str()` of a list before); a file with a UTF-8 byte order mark is read."""
    from hnc_clip.evaluation.records import DataFileError
    from hnc_clip.evaluation.zeroshot_data import read_classnames, read_templates

    folders = ["dog", "cat"]
    path = tmp_path / "names.json"
    for content, why in ((b"", "empty file"), (b"[]", r"empty JSON list \(\[\]\)"), (b"{}", r"empty JSON object"),
                         (b'{"cat": ["a", "b"]}', "field 'cat' holds a list")):  # fmt: skip
        path.write_bytes(content)
        with pytest.raises(DataFileError, match=why):
            read_classnames(str(path), folders)
    path.write_bytes(b"\xef\xbb\xbf" + b'["hound", "tabby"]')
    assert read_classnames(str(path), folders) == ["hound", "tabby"]
    (tmp_path / "names.txt").write_bytes(b"\xef\xbb\xbfhound\ntabby\n")
    assert read_classnames(str(tmp_path / "names.txt"), folders) == ["hound", "tabby"]
    path.write_bytes(b"")
    with pytest.raises(DataFileError, match="empty file"):
        read_templates(str(path))
    path.write_bytes(b"\xef\xbb\xbf" + b'["a photo of a {}."]')
    assert read_templates(str(path)) == ["a photo of a {}."]
