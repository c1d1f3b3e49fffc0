"""One evaluation pipeline: `--task pairwise --data_file X` and `--benchmark NAME` read a file of one layout the same
way and count the same score.

On every benchmark fixture in its official layout (`tests/benchmark_fixtures.py`) the pairwise task on the
benchmark's own files and the registry benchmark give the same items (image, true caption, distractor, type) and the
same accuracy per type; and both equal an independent computation from the JSON with the fixture's similarity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hnc_clip.evaluation.benchmarks import REGISTRY
from hnc_clip.evaluation.benchmarks.runner import run_benchmark
from hnc_clip.evaluation.formats import load_pairs
from hnc_clip.evaluation.tasks import score_pairwise

from . import benchmark_fixtures as fx

# benchmark -> (builder, its data files under the root, the image folder the files' paths are relative to)
CASES = {
    "hnc_test": (fx.build_hnc_test, ["hnc_clean_strict_test.json"], "images"),
    "sugarcrepe": (fx.build_sugarcrepe, [], "val2017"),
    "aro_vg_relation": (lambda root: fx.build_aro_vg(root, "relation"), ["visual_genome_relation.json"], "images"),
    "aro_vg_attribution": (
        lambda root: fx.build_aro_vg(root, "attribution"),
        ["visual_genome_attribution.json"],
        "images",
    ),
}


def _build(name: str, tmp_path: Path) -> tuple[Path, list[str], str]:
    build, files, images = CASES[name]
    root = build(tmp_path / name)
    paths = [str(root / f) for f in files] or sorted(str(p) for p in (root / "data").glob("*.json"))
    return root, paths, str(root / images)


def _reference(name: str, paths: list[str], image_dir: str) -> dict[str, list[tuple[float, float]]]:
    """type -> [(sim(image, true), sim(image, distractor))] straight from the JSON, as the benchmarks' own code reads
    it; pairs whose two captions are the same text are left out (they cannot be answered)."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if name == "hnc_test":
            for image, caps in data.items():
                for k in range(0, len(caps), 2):
                    rows.append((image, None, caps[str(k)]["caption"], caps[str(k + 1)]["caption"],
                                 caps[str(k)]["type"]))  # fmt: skip
        elif name == "sugarcrepe":
            subset = Path(path).stem
            rows += [(r["filename"], None, r["caption"], r["negative_caption"], subset) for r in data.values()]
        else:
            for r in data:
                box = (r["bbox_x"], r["bbox_y"], r["bbox_x"] + r["bbox_w"], r["bbox_y"] + r["bbox_h"])
                type_ = r["relation_name"] if "relation_name" in r else "_".join(r["attributes"])
                rows.append((r["image_path"], box, r["true_caption"], r["false_caption"], type_))
    out: dict[str, list[tuple[float, float]]] = {}
    for image, box, true, false, type_ in rows:
        if true == false:
            continue
        img = Image.open(Path(image_dir) / image).convert("RGB")
        img = img.crop(box) if box else img
        out.setdefault(type_, []).append((fx.sim(img, true), fx.sim(img, false)))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_pairwise_task_and_benchmark_give_the_same_items_and_numbers(name, tmp_path):
    root, paths, image_dir = _build(name, tmp_path)
    bench = REGISTRY[name]

    pairs = load_pairs(paths)
    items = bench.read(str(root)).items
    as_pairs = sorted((p["image_file"], p["bbox"], p["positive"], p["negative"], p["type"]) for p in pairs)
    as_items = sorted(
        (str(Path(it.image.file).relative_to(Path(image_dir).name)), it.image.bbox, it.captions[it.correct],
         it.captions[1 - it.correct], it.type)
        for it in items
    )  # fmt: skip
    assert as_pairs == as_items and len(pairs) == len(items) > 0

    task = score_pairwise(fx.FakeEncoder(), pairs, image_dir)
    benchmark = run_benchmark(fx.FakeEncoder(), bench, str(root))
    ref = _reference(name, paths, image_dir)
    ref_accuracy = {t: sum(p > n for p, n in v) / len(v) for t, v in sorted(ref.items())}
    ref_count = {t: len(v) for t, v in sorted(ref.items())}

    assert task["accuracy_by_type"] == ref_accuracy and task["count_by_type"] == ref_count
    identical = task["identical_pairs"]
    assert identical == sum(p["positive"] == p["negative"] for p in pairs)
    if bench.exclude_identical or identical == 0:
        # the same pairs are scored: the same numbers, to the bit
        assert benchmark["by_type"] == task["accuracy_by_type"]
        assert benchmark["count_by_type"] == task["count_by_type"]
        assert benchmark["accuracy"] == task["accuracy"] and benchmark["num_items"] == task["num_pairs"]
    else:
        # the official protocol scores a pair of two equal captions (a tie: wrong) where the pairwise task drops it
        scored = {t: round(a * ref_count[t]) for t, a in ref_accuracy.items()}
        assert {t: round(a * benchmark["count_by_type"][t]) for t, a in benchmark["by_type"].items()} == scored
        assert sum(benchmark["count_by_type"].values()) == sum(ref_count.values()) + identical


def test_every_pair_layout_has_one_reader_and_every_shared_one_is_compared():
    """Each pairwise `--data_format` is read by a registry reader, and each layout that is also a registry benchmark
    (HNC test, SugarCrepe, ARO VG-R / VG-A) is compared above."""
    from hnc_clip.evaluation.benchmarks.registry import FILE_LAYOUTS
    from hnc_clip.evaluation.formats import PAIR_FORMATS

    assert set(FILE_LAYOUTS) == set(PAIR_FORMATS)
    assert set(FILE_LAYOUTS) & set(REGISTRY) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pairwise_metrics_are_the_caption_selection_metric(name, tmp_path):
    """The pairwise task's numbers come from `caption_selection` with the continuity statistics, the metric of every
    2-way benchmark. Before the task's own metric (`hard_negative_accuracy`) was removed the two were compared key by
    key on these scores (identical, in order); now the keys, their order and every value are checked against plain
    numpy on the same scores."""
    import numpy as np

    from hnc_clip.evaluation.tasks import pairwise_metrics, pairwise_scores

    root, paths, image_dir = _build(name, tmp_path)
    scores = pairwise_scores(fx.FakeEncoder(), load_pairs(paths), image_dir)
    task = pairwise_metrics(scores, [1.0, 1.05, 1.1])
    pos, neg, rand = scores.positive, scores.negative, scores.random_negative
    by_type = {t: float(np.mean([p > n for p, n, u in zip(pos, neg, scores.types) if u == t]))
               for t in sorted(set(scores.types))}  # fmt: skip
    expected = {
        "accuracy": float((pos > neg).mean()),
        "macro_accuracy": float(np.mean(list(by_type.values()))),
        "accuracy_by_type": by_type,
        "count_by_type": {t: scores.types.count(t) for t in sorted(set(scores.types))},
        "mean_positive_similarity": float(pos.mean()),
        "mean_negative_similarity": float(neg.mean()),
        "mean_margin": float((pos - neg).mean()),
        **{f"ratio_accuracy@{tau:.2f}": float((pos > tau * neg).mean()) for tau in (1.0, 1.05, 1.1)},
        "mean_random_negative_similarity": float(rand.mean()),
        "random_negative_accuracy": float((pos > rand).mean()),
        "num_pairs": len(pos),
    }
    assert list(task)[: len(expected)] == list(expected)
    assert {k: task[k] for k in expected} == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_pairwise_and_benchmark_similarities_are_numpy_cosines_and_the_same_bits(name, tmp_path):
    """Both paths score with `encode.pair_cosines`: the pairwise task's similarities are numpy's float64 cosine of
    the fixture's float32 embeddings, and the benchmark's (`choice_margins`) are the same numbers to the bit."""
    import numpy as np

    from hnc_clip.evaluation.benchmarks.items import choice_margins, encode_items
    from hnc_clip.evaluation.benchmarks.runner import drop_identical
    from hnc_clip.evaluation.tasks import pairwise_scores

    root, paths, image_dir = _build(name, tmp_path)
    pairs = {str(p["pair_id"]): p for p in load_pairs(paths)}
    scores = pairwise_scores(fx.FakeEncoder(), list(pairs.values()), image_dir)

    def embed(vec) -> np.ndarray:  # the encoder's float32 table row, widened
        return np.float32(vec).astype(np.float64)

    task = {}
    for pair_id, pos, neg in zip(scores.pair_ids, scores.positive, scores.negative):
        p = pairs[pair_id]
        img = Image.open(Path(image_dir) / p["image_file"]).convert("RGB")
        if p["bbox"]:  # ARO's crop of (x, y, w, h)
            x, y, w, h = p["bbox"]
            img = img.crop((x, y, x + w, y + h))
        v = embed(fx.image_vec(img))
        assert pos == pytest.approx(v @ embed(fx.text_vec(p["positive"])), abs=1e-15)
        assert neg == pytest.approx(v @ embed(fx.text_vec(p["negative"])), abs=1e-15)
        task[(p["image_file"], p["bbox"], p["positive"], p["negative"])] = (pos, neg)

    data = REGISTRY[name].read(str(root))
    encoded = encode_items(fx.FakeEncoder(), drop_identical(data)[0], image_dir=None)
    bench = {}
    for item, true, other in zip(encoded.items, *choice_margins(encoded)):
        rel = str(Path(item.image.file).relative_to(Path(image_dir).name))
        bench[(rel, item.image.bbox, item.captions[item.correct], item.captions[1 - item.correct])] = (true, other)
    assert task.keys() <= bench.keys() and len(task) > 0
    assert {k: bench[k] for k in task} == task
