"""Old against new, on every fixture the evaluation tests build: the two similarity routines (`tasks.rowwise_cosine`,
float32 sums; `EncodedItems.sims`, float64) became `encode.pair_cosines` (float64), and the two Karpathy readers
(`formats._karpathy_records`, `readers.read_retrieval`'s list branch, and `_read_order`'s) became
`readers.read_karpathy`. The old code is copied here verbatim from main (5861bac) and swapped in with monkeypatch."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hnc_clip.evaluation import formats, tasks
from hnc_clip.evaluation.benchmarks import REGISTRY, readers
from hnc_clip.evaluation.benchmarks.aro_order import OrderPerturber, order_test_cases, spacy_nltk_perturber
from hnc_clip.evaluation.benchmarks.items import BenchmarkData, ChoiceItem, EncodedItems, ImageCaptions
from hnc_clip.evaluation.benchmarks.runner import run_benchmark
from hnc_clip.evaluation.formats import load_image_captions, load_pairs
from hnc_clip.evaluation.images import ImageRef
from hnc_clip.evaluation.records import DataFileError, Record, records

from . import benchmark_fixtures as fx

# --- old code, verbatim -------------------------------------------------------------------------------------------


def old_rowwise_cosine(a, a_index, b, b_index, chunk=65536):
    out = np.empty(len(a_index), dtype=np.float64)
    for start in range(0, len(a_index), chunk):
        ai = torch.from_numpy(a_index[start : start + chunk])
        bi = torch.from_numpy(b_index[start : start + chunk])
        out[start : start + chunk] = (a[ai] * b[bi]).sum(-1).double().numpy()  # [chunk]
    return out


def old_sims(self, i):
    img = self.image_table[torch.from_numpy(self.image_index[i])].double()
    txt = self.text_table[torch.from_numpy(self.text_index[i])].double()
    return (img[:, None, :] * txt[None, :, :]).sum(-1).numpy()


def old_text_sims(self, i):
    txt = self.text_table[torch.from_numpy(self.text_index[i])].double()
    return (txt[:, None, :] * txt[None, :, :]).sum(-1).numpy()


def old_karpathy_records(path):
    missing = 0
    for rec in records(path, formats._load_json(path, list, formats.COCO_KARPATHY)):
        if not rec.has("image", "caption"):
            missing += 1
            continue
        image = ImageRef(rec.text("image"))
        for caption in rec.text_or_texts("caption"):
            yield image, caption
    if missing:
        formats.logger.warning(f"{path}: {missing} records without 'image' and 'caption' skipped")


def old_read_order(root, annotation, perturber=None):
    _records, _needs = readers._records, readers._needs
    cases_path = os.path.join(root, annotation.replace(".json", "_test_cases.json"))
    if os.path.isfile(cases_path) and perturber is None:
        cases = [{"image": c.text("image"), "caption_options": c.texts("caption_options")}
                 for c in _records(cases_path, list) if _needs(c, "image", "caption_options")]  # fmt: skip
    else:
        path = os.path.join(root, annotation)
        annotation_records = [{"image": a.text("image"), "caption": a.texts("caption")}
                              for a in _records(path, list) if _needs(a, "image", "caption")]  # fmt: skip
        cases = order_test_cases(annotation_records, perturber or spacy_nltk_perturber())
        with open(cases_path, "w", encoding="utf-8") as f:
            json.dump(cases, f)
    items = [ChoiceItem(str(i), ImageRef(c["image"]), list(c["caption_options"]), 0) for i, c in enumerate(cases)]
    return BenchmarkData(root, items, Counter(), {"test_cases": cases_path})


def old_read_retrieval(root, annotation, image_folder=""):
    wds, _json, _needs = readers.wds, readers._json, readers._needs
    if os.path.isfile(os.path.join(root, "test", "nshards.txt")):
        samples, broken = wds.retrieval_samples(root)
        return BenchmarkData(root, [ImageCaptions(r, c) for r, c in samples], Counter(broken_sample=broken))
    path = os.path.join(root, annotation)
    if annotation.endswith(".txt"):
        by_image = {}
        with open(path, encoding="utf-8-sig") as f:
            f.readline()
            for n, line in enumerate(f, 2):
                if line.strip():
                    if ".jpg," not in line:
                        raise DataFileError(f"{path}: line {n}: expected <image>.jpg,<caption>, got {line[:80]!r}")
                    image, caption = line.strip().split(".jpg,", 1)
                    by_image.setdefault(image + ".jpg", []).append(caption)
        items = [ImageCaptions(ImageRef(os.path.join(image_folder, k)), v) for k, v in by_image.items()]
        return BenchmarkData(root, items, Counter())
    data = _json(path)
    if isinstance(data, dict):
        coco = Record(path, "the top level", data)
        if not coco.has("images", "annotations"):
            raise DataFileError(f"{path}: a JSON object without 'images' and 'annotations' (COCO format), nor a "
                                "list of {image, caption: [..]} records")  # fmt: skip
        files = {}
        for img in records(path, {f"images[{i}]": v for i, v in enumerate(data["images"])}):
            _needs(img, "id", "file_name")
            files[img.value["id"]] = img.text("file_name")
        caps = {}
        for ann in records(path, {f"annotations[{i}]": v for i, v in enumerate(data["annotations"])}):
            _needs(ann, "image_id", "caption")
            caps.setdefault(ann.value["image_id"], []).append(ann.text("caption"))
        items = [ImageCaptions(ImageRef(os.path.join(image_folder, files[i])), caps.get(i, [])) for i in sorted(files)]
        return BenchmarkData(root, [it for it in items if it.captions], Counter())
    items = [ImageCaptions(ImageRef(rec.text("image")), rec.texts("caption"))
             for rec in records(path, data) if _needs(rec, "image", "caption")]  # fmt: skip
    return BenchmarkData(root, items, Counter())


@pytest.fixture
def old(monkeypatch):
    """Swap the old code in for the new (call it to switch)."""

    def switch():
        monkeypatch.setattr(tasks, "pair_cosines", old_rowwise_cosine)
        monkeypatch.setattr(EncodedItems, "sims", old_sims)
        monkeypatch.setattr(EncodedItems, "text_sims", old_text_sims)
        monkeypatch.setattr(formats, "_karpathy_captions", old_karpathy_records)
        monkeypatch.setattr(readers, "_read_order", old_read_order)
        monkeypatch.setattr(readers, "read_retrieval", old_read_retrieval)

    return switch


def same(a, b) -> bool:
    """Exact equality, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# --- the fixtures -------------------------------------------------------------------------------------------------


def _retrieval_roots(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    samples = [(i, [fx.caption(rng, 3) for _ in range(5)]) for i in range(6)]
    samples[2][1][0] = samples[3][1][0] = "a dog on a table"
    wds = fx.build_wds(tmp_path / "wds" / "coco_5k", samples, shards=2)
    flickr, coco, cocofmt = tmp_path / "flickr30k_1k", tmp_path / "coco_5k", tmp_path / "cocofmt" / "coco_5k"
    lines = ["image,caption"]
    ann, images, annotations = [], [], []
    for c, caps in samples:
        fx.save_image(flickr / "flickr30k-images" / f"{1000 + c}.jpg", c)
        lines += [f"{1000 + c}.jpg,{cap}" for cap in caps]
        for root in (coco, cocofmt):
            fx.save_image(root / "val2014" / f"COCO_val2014_{c:012d}.jpg", c)
        ann.append({"image": f"val2014/COCO_val2014_{c:012d}.jpg", "caption": caps})
        images.append({"id": c, "file_name": f"val2014/COCO_val2014_{c:012d}.jpg"})
        annotations += [{"image_id": c, "caption": cap} for cap in caps]
    (flickr / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    fx.write_json(coco / "coco_karpathy_test.json", ann)
    fx.write_json(cocofmt / "coco_karpathy_test.json", {"images": images, "annotations": annotations})
    return {"coco_5k/wds": wds, "flickr30k_1k": flickr, "coco_5k": coco, "coco_5k/coco_format": cocofmt}


PAIRWISE = {  # name -> (builder, data files under the root, image folder), as tests/test_evaluation_pipeline.py
    "hnc_test": (fx.build_hnc_test, ["hnc_clean_strict_test.json"], "images"),
    "sugarcrepe": (fx.build_sugarcrepe, [], "val2017"),
    "aro_vg_relation": (lambda r: fx.build_aro_vg(r, "relation"), ["visual_genome_relation.json"], "images"),
    "aro_vg_attribution": (lambda r: fx.build_aro_vg(r, "attribution"), ["visual_genome_attribution.json"], "images"),
}


def _both(old, fn):
    new = fn()
    old()
    return fn(), new


# --- the comparisons ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.BUILDERS))
def test_every_benchmark_fixture_old_and_new_identical(name, tmp_path, old):
    root = fx.BUILDERS[name](tmp_path / name)
    before, after = _both(old, lambda: run_benchmark(fx.FakeEncoder(), REGISTRY[name], str(root)))
    assert same(before, after), (before, after)


@pytest.mark.parametrize("annotation", ["coco_karpathy_test.json", "flickr30k_test.json"])
def test_order_from_the_annotation_old_and_new_identical(annotation, tmp_path, old):
    root = fx.build_order(tmp_path / "order", annotation, write_cases=False)

    def read():
        data = readers._read_order(str(root), annotation, OrderPerturber(fx.hand_tagger, fx.hand_tokenizer, seed=1))
        return [(it.image, it.captions) for it in data.items], Path(data.meta["test_cases"]).read_text()

    before, after = _both(old, read)
    assert before == after and before[0]


def test_every_retrieval_fixture_old_and_new_identical(tmp_path, old):
    roots = _retrieval_roots(tmp_path)

    def scores():
        return {k: run_benchmark(fx.FakeEncoder(), REGISTRY[k.split("/")[0]], str(r)) for k, r in roots.items()}

    before, after = _both(old, scores)
    assert same(before, after), (before, after)


def test_every_retrieval_file_old_and_new_identical(tmp_path, eval_sample_files, old, caplog):
    karpathy = fx.write_json(tmp_path / "coco_karpathy_test.json", [
        {"image": "val2014/1.jpg", "caption": ["a dog.", "a brown dog.", "a dog."]},
        {"image": "val2014/2.jpg", "caption": "a cat."},
        {"image": "val2014/2.jpg", "caption": "a grey cat."},
        {"image": "val2014/3.jpg"},
        {"image": "val2014/4.jpg", "caption": ["  ", " spaced "]},
    ])  # fmt: skip
    wrong = fx.write_json(tmp_path / "wrong" / "coco_karpathy_test.json", [{"image": "a.jpg", "caption": 3}])

    def read():
        caplog.clear()
        files = (karpathy, *eval_sample_files.values())
        out = [[(i.image, i.captions) for i in load_image_captions(str(p))] for p in files]
        with pytest.raises(DataFileError) as err:
            load_image_captions(str(wrong))
        return out, str(err.value), [r.getMessage() for r in caplog.records]

    before, after = _both(old, read)
    assert before == after and "1 records without" in before[2][0]


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_pairwise_old_and_new_same_decisions(name, tmp_path, old):
    build, files, images = PAIRWISE[name]
    root = build(tmp_path / name)
    paths = [str(root / f) for f in files] or sorted(str(p) for p in (root / "data").glob("*.json"))
    pairs = load_pairs(paths)

    def run():
        scores = tasks.pairwise_scores(fx.FakeEncoder(), pairs, str(root / images))
        return scores, tasks.pairwise_metrics(scores)

    (s0, m0), (s1, m1) = _both(old, run)
    means = {k for k in m0 if k.startswith("mean_")}
    assert same({k: v for k, v in m0.items() if k not in means}, {k: v for k, v in m1.items() if k not in means})
    for a, b in ((s0.positive, s1.positive), (s0.negative, s1.negative), (s0.random_negative, s1.random_negative)):
        print(name, "max |float32 - float64| per pair", float(np.abs(a - b).max()))
    print(name, {k: (m0[k], m1[k], m0[k] - m1[k]) for k in sorted(means)})
    assert all(abs(m0[k] - m1[k]) < 1e-6 for k in means)
