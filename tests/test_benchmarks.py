"""Every registry benchmark on a fixture in its official on-disk layout: the number equals an independent
re-implementation of the benchmark's official computation (written here after the official code, which is named
in each test), with the same fake embeddings. Plus the registry's own behaviour: names, suites, missing files."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hnc_clip.evaluation.benchmarks import REGISTRY, SUITES, BenchmarkError, BenchmarkNotFound, expand, locate
from hnc_clip.evaluation.benchmarks.protocols import ARO_EXCLUDED_RELATIONS
from hnc_clip.evaluation.benchmarks.runner import run_benchmark

from . import benchmark_fixtures as fx

DATA = Path(__file__).parent / "data"


def run(name: str, root: Path) -> dict:
    return run_benchmark(fx.FakeEncoder(), REGISTRY[name], str(root))


def rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------


def test_registry_covers_the_issue_and_every_entry_is_documented():
    required = {
        "hnc_test",
        "sugarcrepe",
        "sugarcrepe_pp",
        "aro_vg_relation",
        "aro_vg_attribution",
        "aro_coco_order",
        "aro_flickr30k_order",
        "winoground",
        "valse",
        "whatsup",
        "vl_checklist",
        "eqben",
        "mmvp_vlm",
        "imagenet1k",
        "cifar10",
        "cifar100",
        "coco_5k",
        "flickr30k_1k",
    }
    assert required <= set(REGISTRY)
    assert set(SUITES["compositionality"]) == set(fx.BUILDERS)
    readme = (Path(__file__).resolve().parent.parent / "eval" / "README.md").read_text()
    for b in REGISTRY.values():
        assert b.source and b.protocol and b.license and b.layout and b.verified, b.name
        assert f"`{b.name}`" in readme, f"eval/README.md does not list {b.name}"
        if b.shape not in ("retrieval", "classification"):
            assert b.read is not None and b.score is not None, b.name


def test_expand_names_and_suites():
    names = [b.name for b in expand(["sugarcrepe", "compositionality", "cifar10"])]
    assert names[0] == "sugarcrepe" and names.count("sugarcrepe") == 1 and names[-1] == "cifar10"
    assert len(expand("all")) == len(REGISTRY)
    with pytest.raises(BenchmarkError) as err:
        expand(["sugarcrepe", "winogrande"])
    assert (
        "winogrande" in str(err.value) and "aro_vg_relation" in str(err.value) and "compositionality" in str(err.value)
    )


def test_missing_benchmark_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkNotFound) as err:
        locate(REGISTRY["sugarcrepe_pp"], str(tmp_path))
    message = str(err.value)
    assert "hf download Aman-J/SugarCrepe_pp --repo-type dataset" in message
    assert str(tmp_path / "sugarcrepe_pp") in message and "val2017" in message
    with pytest.raises(BenchmarkNotFound, match="gdown --id 1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3"):
        locate(REGISTRY["aro_vg_relation"], str(tmp_path))
    fx.build_sugarcrepe(tmp_path / "sugarcrepe")
    assert locate(REGISTRY["sugarcrepe"], str(tmp_path)) == str(tmp_path / "sugarcrepe")


def test_hub_download_goes_to_the_benchmark_folder(tmp_path, monkeypatch):
    # The Hub cannot be reached here: the download call is replaced, the rest (where, what, then check) is real.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def fake_snapshot(repo_id, repo_type, local_dir, allow_patterns, cache_dir):
        calls.append((repo_id, repo_type, allow_patterns))
        fx.build_mmvp(Path(local_dir))

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    root = locate(REGISTRY["mmvp_vlm"], str(tmp_path))
    assert calls == [("MMVP/MMVP_VLM", "dataset", None)] and root == str(tmp_path / "mmvp_vlm")
    assert locate(REGISTRY["mmvp_vlm"], str(tmp_path)) == root and len(calls) == 1  # found: no second download


# ---------------------------------------------------------------------------------------------------------------------
# 2-way / n-way
# ---------------------------------------------------------------------------------------------------------------------


def test_hnc_test_excludes_identical_pairs(tmp_path):
    root = fx.build_hnc_test(tmp_path / "hnc")
    out = run("hnc_test", root)
    data = json.loads((root / "hnc_clean_strict_test.json").read_text())
    correct, identical = [], 0
    for image, caps in data.items():
        img = rgb(root / "images" / image)
        for k in range(0, len(caps), 2):
            pos, neg = caps[str(k)]["caption"], caps[str(k + 1)]["caption"]
            if pos == neg:
                identical += 1
                continue
            correct.append(fx.sim(img, pos) > fx.sim(img, neg))
    assert identical == 1 and out["identical_pairs"] == 1 and out["num_input_items"] == 18
    assert out["num_items"] == 17 and out["headline"] == pytest.approx(np.mean(correct))


def test_sugarcrepe_as_main_eval(tmp_path):
    root = fx.build_sugarcrepe(tmp_path / "sc")
    out = run("sugarcrepe", root)
    per = {}
    for path in sorted((root / "data").glob("*.json")):
        hits = []
        for rec in json.loads(path.read_text()).values():  # main_eval.py: 1 if pos_score > neg_score else 0
            img = rgb(root / "val2017" / rec["filename"])
            hits.append(1 if fx.sim(img, rec["caption"]) > fx.sim(img, rec["negative_caption"]) else 0)
        per[path.stem] = np.mean(hits)
    assert out["by_type"] == pytest.approx(per)
    assert per["swap_att"] == 0.0 and out["num_ties"] >= 10  # swapped words: exact ties, counted wrong
    assert out["headline"] == pytest.approx(np.mean(list(per.values())))
    assert out["replace"] == pytest.approx(np.mean([per["replace_att"], per["replace_obj"], per["replace_rel"]]))


def test_sugarcrepe_pp_itt_tot(tmp_path):
    root = fx.build_sugarcrepe_pp(tmp_path / "scpp")
    out = run("sugarcrepe_pp", root)
    itt, tot = {}, {}
    for path in sorted((root / "data").glob("*.json")):
        a, b = [], []
        for line in json.loads(path.read_text()):  # scpp VLMs/test_NegCLIP.py test()
            img = rgb(root / "val2017" / line["filename"])
            p1, p2, n = line["caption"], line["caption2"], line["negative_caption"]
            cos_p1, cos_p2, cos_neg = fx.sim(img, p1), fx.sim(img, p2), fx.sim(img, n)
            t1, t2, tn = (fx.text_vec(x) for x in (p1, p2, n))
            a.append(cos_p1 > cos_neg and cos_p2 > cos_neg)
            b.append(t1 @ t2 > t1 @ tn and t1 @ t2 > t2 @ tn)
        itt[path.stem], tot[path.stem] = np.mean(a), np.mean(b)
    assert out["headline"] == pytest.approx(np.mean(list(itt.values())))
    assert out["tot_macro"] == pytest.approx(np.mean(list(tot.values())))


def _aro_reference(root: Path, annotation: str, kind: str) -> dict[str, tuple[float, int]]:
    """ARO's evaluate_scores: scores N x 1 x 2 over [false, true], preds = argmax, correct = preds == 1."""
    data = json.loads((root / annotation).read_text())
    scores = []
    for case in data:
        img = rgb(root / "images" / case["image_path"])
        img = img.crop(
            (case["bbox_x"], case["bbox_y"], case["bbox_x"] + case["bbox_w"], case["bbox_y"] + case["bbox_h"])
        )
        scores.append([[fx.sim(img, case["false_caption"]), fx.sim(img, case["true_caption"])]])
    correct = np.argmax(np.squeeze(np.array(scores), axis=1), axis=-1) == 1
    keys = np.array(
        [c["relation_name"] if kind == "relation" else f"{c['attributes'][0]}_{c['attributes'][1]}" for c in data]
    )
    return {k: (correct[keys == k].mean(), int((keys == k).sum())) for k in np.unique(keys)}


def _aro_notebook_symmetric() -> list[str]:
    """The `symmetric` list of ARO's 'Replicate ARO!' notebook, read from its line quoted in tests/data."""
    line = next(
        ln for ln in (DATA / "aro_notebook_symmetric.txt").read_text().splitlines() if ln.startswith("symmetric = ")
    )
    return ast.literal_eval(line.split("=", 1)[1].strip())


def test_aro_exclusion_list_is_the_official_notebooks():
    official = _aro_notebook_symmetric()
    assert len(official) == 157 and len(set(official)) == 157
    assert ARO_EXCLUDED_RELATIONS == tuple(official)  # every relation, spelled and ordered as the notebook


def test_aro_vg_relation_macro_without_the_excluded_relations(tmp_path):
    root = fx.build_aro_vg(tmp_path / "vgr", "relation")
    out = run("aro_vg_relation", root)
    ref = _aro_reference(root, "visual_genome_relation.json", "relation")
    # the notebook: `df = df[~df.Relation.isin(symmetric)]; df.Accuracy.mean()` ('next to', 'reaching for' drop)
    symmetric = set(_aro_notebook_symmetric())
    assert out["headline"] == pytest.approx(np.mean([v for k, (v, _) in ref.items() if k not in symmetric]))
    assert out["num_relations_kept"] == 2
    assert out["macro_accuracy_all_relations"] == pytest.approx(np.mean([v for v, _ in ref.values()]))
    assert out["by_type"] == pytest.approx({k: v for k, (v, _) in ref.items()})


def test_aro_vg_attribution_keeps_pairs_with_25_cases(tmp_path):
    root = fx.build_aro_vg(tmp_path / "vga", "attribution")
    out = run("aro_vg_attribution", root)
    ref = _aro_reference(root, "visual_genome_attribution.json", "attribution")
    assert {k: n for k, (_, n) in ref.items()} == {"red_blue": 30, "big_small": 18}
    assert out["headline"] == pytest.approx(ref["red_blue"][0]) and out["num_attribute_pairs_kept"] == 1


class _OfficialShuffler:
    """ARO's dataset_zoo/perturbations.py functions with the global generators, tags from the hand-tagged table."""

    def shuffle_nouns_and_adj(self, ex):
        doc = fx.ORDER_CAPTIONS[ex]
        text = np.array([t for t, _ in doc])
        noun_idx = [i for i, (_, tag) in enumerate(doc) if tag in ["NN", "NNS", "NNP", "NNPS"]]
        adjective_idx = [i for i, (_, tag) in enumerate(doc) if tag in ["JJ", "JJR", "JJS"]]
        text[noun_idx] = np.random.permutation(text[noun_idx])
        text[adjective_idx] = np.random.permutation(text[adjective_idx])
        return " ".join(text)

    def shuffle_allbut_nouns_and_adj(self, ex):
        doc = fx.ORDER_CAPTIONS[ex]
        text = np.array([t for t, _ in doc])
        noun_adj_idx = [i for i, (_, tag) in enumerate(doc) if tag in ["NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS"]]
        else_idx = np.ones(text.shape[0])
        else_idx[noun_adj_idx] = 0
        else_idx = else_idx.astype(bool)
        text[else_idx] = np.random.permutation(text[else_idx])
        return " ".join(text)

    @staticmethod
    def _trigrams(sentence):
        trigrams, trigram = [], []
        for i in range(len(sentence)):
            trigram.append(sentence[i])
            if i % 3 == 2:
                trigrams.append(trigram[:])
                trigram = []
        if trigram:
            trigrams.append(trigram)
        return trigrams

    def shuffle_within_trigrams(self, ex):
        trigrams = self._trigrams([t for t, _ in fx.ORDER_CAPTIONS[ex]])
        for trigram in trigrams:
            random.shuffle(trigram)
        return " ".join([" ".join(trigram) for trigram in trigrams])

    def shuffle_trigrams(self, ex):
        trigrams = self._trigrams([t for t, _ in fx.ORDER_CAPTIONS[ex]])
        random.shuffle(trigrams)
        return " ".join([" ".join(trigram) for trigram in trigrams])


def _pre_caption(caption, max_words=50):  # ARO dataset_zoo/retrieval.py
    import re

    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    caption_words = caption.split(" ")
    if len(caption_words) > max_words:
        caption = " ".join(caption_words[:max_words])
    return caption


@pytest.mark.parametrize(
    "name,annotation", [("aro_coco_order", "coco_karpathy_test.json"), ("aro_flickr30k_order", "flickr30k_test.json")]
)
def test_aro_order_matches_the_official_perturbations_and_ties_count_right(tmp_path, name, annotation):
    from hnc_clip.evaluation.benchmarks import readers
    from hnc_clip.evaluation.benchmarks.aro_order import OrderPerturber

    root = fx.build_order(tmp_path / name, annotation, write_cases=False)
    # The official construction, seeded as main_aro.py's seed_all(1) seeds the global generators.
    random.seed(1)
    np.random.seed(1)
    shuffler = _OfficialShuffler()
    fns = [
        shuffler.shuffle_nouns_and_adj,
        shuffler.shuffle_allbut_nouns_and_adj,
        shuffler.shuffle_within_trigrams,
        shuffler.shuffle_trigrams,
    ]
    official = []
    for ann in json.loads((root / annotation).read_text()):
        for cap in ann["caption"]:
            official.append(
                {
                    "image": ann["image"],
                    "caption_options": [_pre_caption(cap, 30)] + [_pre_caption(f(cap), 30) for f in fns],
                }
            )
    read = readers.read_coco_order if annotation.startswith("coco") else readers.read_flickr_order
    data = read(str(root), OrderPerturber(fx.hand_tagger, fx.hand_tokenizer, seed=1))
    assert json.loads(Path(data.meta["test_cases"]).read_text()) == official
    # COCO_Order.evaluate_scores: preds = argmax over the options, correct = preds == 0 (the first maximum)
    scores = [[[fx.sim(rgb(root / c["image"]), o) for o in c["caption_options"]]] for c in official]
    correct = np.argmax(np.squeeze(np.array(scores), axis=1), axis=-1) == 0
    out = run(name, root)  # reads the test cases written above
    assert out["headline"] == pytest.approx(np.mean(correct))
    assert out["headline"] == 1.0 and out["num_ties"] == 4  # bag-of-words embeddings: every perturbation ties


def test_valse_mturk_filter_and_acc_r(tmp_path):
    from hnc_clip.evaluation.benchmarks.readers import VALSE_PIECES

    root = fx.build_valse(tmp_path / "valse")
    out = run("valse", root)
    per = {}
    for piece in ("existence", "counting_hard", "actant_swap", "foil_it"):
        annotation, image_dir = VALSE_PIECES[piece]
        hits = []
        for foil in json.loads((root / annotation).read_text()).values():  # lxmert_valse_eval.py
            if foil["mturk"]["caption"] >= 2:
                img = rgb(root / image_dir / foil["image_file"])
                hits.append(fx.sim(img, foil["caption"]) > fx.sim(img, foil["foil"]))
        per[piece] = np.mean(hits)
    assert out["by_type"] == pytest.approx(per) and out["parse_skipped_not_validated"] == 8
    assert out["headline"] == pytest.approx(np.mean(list(per.values())))


def test_whatsup_individual_pair_and_set(tmp_path):
    root = fx.build_whatsup(tmp_path / "whatsup")
    out = run("whatsup", root)
    dataset = json.loads((root / "data" / "controlled_images_dataset.json").read_text())
    scores = [[[fx.sim(rgb(root / d["image_path"]), c) for c in d["caption_options"]]] for d in dataset]
    correct = np.argmax(np.squeeze(np.array(scores), axis=1), axis=-1) == 0  # Controlled_Images.evaluate_scores
    eval_dict = {}
    for d, c in zip(dataset, correct):
        name = d["image_path"].split("/")[-1]
        eval_dict.setdefault((name.split("_")[0], name.split("_")[-1][:-5]), {})[name.split("_")[1]] = c
    pair = sum(bool(v["left"] and v["right"]) + bool(v["on"] and v["under"]) for v in eval_dict.values())
    sets = sum(sum(v.values()) == 4 for v in eval_dict.values())
    qa = json.loads((root / "data" / "coco_qa_two_obj.json").read_text())
    qa_scores = [[[fx.sim(rgb(root / f"data/val2017/{str(q[0]).zfill(12)}.jpg"), c) for c in q[1:3]]] for q in qa]
    qa_correct = np.argmax(np.squeeze(np.array(qa_scores), axis=1), axis=-1) == 0
    assert out["by_type"]["controlled_a"] == pytest.approx(correct.mean())
    assert out["by_type"]["controlled_a/pair"] == pytest.approx(pair * 100 / (len(dataset) / 2) / 100)
    assert out["by_type"]["controlled_a/set"] == pytest.approx(sets * 100 / (len(dataset) / 4) / 100)
    assert out["headline"] == pytest.approx(np.mean([correct.mean(), qa_correct.mean()]))


def test_vl_checklist_itc(tmp_path):
    root = fx.build_vl_checklist(tmp_path / "vlc")
    out = run("vl_checklist", root)
    per = {}
    for path in sorted((root / "data").rglob("*.json")):
        rel = path.relative_to(root / "data").as_posix()
        img_root = "hake" if "hake" in rel else "swig" if "swig" in rel else "vg"  # the corpus yaml IMG_ROOTs
        hits = []
        for image_path, texts in json.loads(path.read_text()):  # evaluate.py task "itc"
            img = rgb(root / img_root / image_path)
            hits.append(fx.sim(img, texts["POS"][0]) > fx.sim(img, texts["NEG"][0]))
        per[rel[:-5]] = np.mean(hits)
    assert out["by_type"] == pytest.approx(per)
    cats = {c: np.mean([v for k, v in per.items() if k.startswith(c)]) for c in ("Attribute", "Object", "Relation")}
    assert out["headline"] == pytest.approx(np.mean(list(cats.values())))


# ---------------------------------------------------------------------------------------------------------------------
# 2x2
# ---------------------------------------------------------------------------------------------------------------------


def _wino(c0_i0, c0_i1, c1_i0, c1_i1):
    text = (c0_i0 > c1_i0) and (c1_i1 > c0_i1)
    image = (c0_i0 > c0_i1) and (c1_i1 > c1_i0)
    return text, image, text and image


def test_winoground_text_image_group(tmp_path):
    root = fx.build_winoground(tmp_path / "wino")
    out = run("winoground", root)
    rows = []
    for line in (root / "data" / "examples.jsonl").read_text().splitlines():
        ex = json.loads(line)
        i0, i1 = (rgb(root / "data" / "images" / f"{ex[k]}.png") for k in ("image_0", "image_1"))
        c0, c1 = ex["caption_0"], ex["caption_1"]
        rows.append(_wino(fx.sim(i0, c0), fx.sim(i1, c0), fx.sim(i0, c1), fx.sim(i1, c1)))
    text, image, group = (np.mean(col) for col in zip(*rows))
    assert (out["text_score"], out["image_score"], out["group_score"]) == pytest.approx((text, image, group))
    assert out["headline"] == pytest.approx(group)


def test_eqben_cal_wino_score(tmp_path):
    root = fx.build_eqben(tmp_path / "eqben")
    out = run("eqben", root)
    rows = []
    for rec in json.loads((root / "ann.json").read_text()):
        i0, i1 = rgb(root / "images" / rec["image0"]), rgb(root / "images" / rec["image1"])
        c0, c1 = rec["caption0"], rec["caption1"]
        rows.append(_wino(fx.sim(i0, c0), fx.sim(i1, c0), fx.sim(i0, c1), fx.sim(i1, c1)))
    assert out["group_score"] == pytest.approx(np.mean([r[2] for r in rows]))
    assert out["text_score"] == pytest.approx(np.mean([r[0] for r in rows]))


def test_mmvp_vlm_as_evaluate_vlm(tmp_path):
    import csv

    import torch

    root = fx.build_mmvp(tmp_path / "mmvp")
    out = run("mmvp_vlm", root)
    categories = ["Orientation and Direction", "Presence of Specific Features", "State and Condition"]
    pair_accuracies = {c: 0 for c in categories}
    num_pairs = 0
    with open(root / "Questions.csv") as f:  # scripts/evaluate_vlm.py benchmark_model
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            qid1, qtype1, statement1 = row
            row = next(reader, None)
            if not row:
                break
            qid2, _, statement2 = row
            qid1, qid2 = int(qid1), int(qid2)
            img1 = rgb(root / "MLLM_VLM Images" / qtype1 / f"{qid1}.jpg")
            img2 = rgb(root / "MLLM_VLM Images" / qtype1 / f"{qid2}.jpg")
            probs = []
            for text in ("a photo of " + statement1, "a photo of " + statement2):
                logits = 100 * torch.tensor([fx.sim(img1, text), fx.sim(img2, text)])
                probs.append(logits.softmax(dim=-1).numpy())
            pred1 = "img1" if probs[0][0] > 0.5 else "img2"
            pred2 = "img1" if probs[1][0] > 0.5 else "img2"
            gt1 = "img1" if qid1 % 2 == 1 else "img2"
            gt2 = "img1" if qid2 % 2 == 1 else "img2"
            if pred1 == gt1 and pred2 == gt2:
                pair_accuracies[categories[num_pairs // 15]] += 1
            num_pairs += 1
    per = {c: v / 15 for c, v in pair_accuracies.items()}
    assert out["by_type"] == pytest.approx(per)
    assert out["headline"] == pytest.approx(np.mean(list(per.values())))


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot and retrieval (CLIP_benchmark)
# ---------------------------------------------------------------------------------------------------------------------


def _cb_accuracy(output, target, topk=(1,)):  # clip_benchmark/metrics/zeroshot_classification.py

    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    # the official `float(....numpy())` of a 1-element array; `.item()` is the same number on NumPy 2
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().item() / n for k in topk]


def test_zeroshot_cifar10_as_clip_benchmark(tmp_path):
    import torch
    import torch.nn.functional as F

    from hnc_clip.evaluation.benchmarks.zeroshot_metadata import CIFAR_TEMPLATES

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    samples = [(i, i % 10) for i in range(30)]
    root = fx.build_wds(tmp_path / "cifar10", samples, classnames=classes, templates=["a photo of a {c}."])
    out = run("cifar10", root)
    # zero_shot_classifier: normalised mean of normalised template embeddings (OpenAI's 18 CIFAR templates)
    weights = []
    for name in classes:
        emb = torch.tensor(np.array([fx.text_vec(t.format(name)) for t in CIFAR_TEMPLATES]), dtype=torch.float32)
        w = F.normalize(emb, dim=-1).mean(dim=0)
        weights.append(w / w.norm())
    classifier = torch.stack(weights, dim=1)
    images = torch.tensor(
        np.array([fx.image_vec(Image.new("RGB", (24, 24), fx.colour(c))) for c, _ in samples]), dtype=torch.float32
    )
    logits = 100.0 * F.normalize(images, dim=-1) @ classifier
    target = torch.tensor([t for _, t in samples])
    acc1, acc5 = _cb_accuracy(logits, target, topk=(1, 5))
    pred = logits.argmax(axis=1).numpy()
    balanced = np.mean([(pred[target.numpy() == c] == c).mean() for c in np.unique(target.numpy())])
    assert out["top1"] == pytest.approx(acc1) and out["top5"] == pytest.approx(acc5)
    assert out["mean_per_class_recall"] == pytest.approx(balanced)
    assert out["num_templates"] == 18 and out["num_images"] == 30


def test_imagenet_metadata_are_openais():
    from hnc_clip.evaluation.benchmarks.zeroshot_metadata import IMAGENET_CLASSNAMES, IMAGENET_TEMPLATES

    assert len(IMAGENET_TEMPLATES) == 80 and len(IMAGENET_CLASSNAMES) == 1000
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and IMAGENET_CLASSNAMES[:2] == ("tench", "goldfish")
    assert len(set(IMAGENET_CLASSNAMES)) == 998  # OpenAI's names repeat "missile" and "sunglasses"
    assert IMAGENET_CLASSNAMES.count("missile") == 2 and IMAGENET_CLASSNAMES.count("sunglasses") == 2
    from hnc_clip.evaluation.benchmarks.items import BenchmarkData
    from hnc_clip.evaluation.benchmarks.runner import zeroshot_prompts

    names, templates = zeroshot_prompts(REGISTRY["imagenet1k"], BenchmarkData("x", [], meta={"classnames": ["a"]}))
    assert names == list(IMAGENET_CLASSNAMES) and templates == list(IMAGENET_TEMPLATES)  # not the shards' files
    with pytest.raises(FileNotFoundError, match="zeroshot_classification_templates"):
        zeroshot_prompts(REGISTRY["sun397"], BenchmarkData("x", [], meta={"classnames": ["a"]}))


def _clip_benchmark_recalls(image_vecs, captions_per_image, ks=(1, 5)) -> dict:
    """clip_benchmark/metrics/zeroshot_retrieval.py: every caption a row of `scores`, recall_at_k > 0."""
    import torch

    texts = [(t, i) for i, caps in enumerate(captions_per_image) for t in caps]
    img = torch.tensor(np.array(image_vecs), dtype=torch.float32)
    txt = torch.tensor(np.array([fx.text_vec(t) for t, _ in texts]), dtype=torch.float32)
    scores = txt @ img.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), [i for _, i in texts]] = True

    def recall_at_k(scores, positive_pairs, k):
        nb_texts, nb_images = scores.shape
        topk_indices = torch.topk(scores, k, dim=1)[1]
        nb_positive = positive_pairs.sum(dim=1)
        topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
        positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
        nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
        return nb_true_positive / nb_positive

    out = {}
    for k in ks:
        out[f"text_to_image_R@{k}"] = (recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        out[f"image_to_text_R@{k}"] = (recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
    return out


def _retrieval_samples():
    rng = np.random.default_rng(11)
    samples = []
    for i in range(6):
        caps = [fx.caption(rng, 3) for _ in range(5)]
        if i in (2, 3):
            caps[0] = "a dog on a table"  # the same sentence on two images: two gallery entries in CLIP_benchmark
        samples.append((i, caps))
    return samples


def test_retrieval_keeps_duplicate_captions_as_clip_benchmark(tmp_path):
    samples = _retrieval_samples()
    root = fx.build_wds(tmp_path / "coco_5k", samples, shards=2)
    out = run("coco_5k", root)
    images = [fx.image_vec(Image.new("RGB", (24, 24), fx.colour(c))) for c, _ in samples]
    ref = _clip_benchmark_recalls(images, [caps for _, caps in samples])
    assert {k: out[k] for k in ref} == pytest.approx(ref)
    assert out["num_captions"] == 30  # duplicates kept
    assert out["headline"] == pytest.approx((out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2)


def test_retrieval_annotation_file_layouts(tmp_path):
    samples = _retrieval_samples()
    flickr = tmp_path / "flickr30k_1k"
    lines = ["image,caption"]
    for c, caps in samples:
        fx.save_image(flickr / "flickr30k-images" / f"{1000 + c}.jpg", c)
        lines += [f"{1000 + c}.jpg,{cap}" for cap in caps]  # CLIP_benchmark's Flickr reader splits on ".jpg,"
    (flickr / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    coco = tmp_path / "coco_5k"
    ann = []
    for c, caps in samples:
        fx.save_image(coco / "val2014" / f"COCO_val2014_{c:012d}.jpg", c)
        ann.append({"image": f"val2014/COCO_val2014_{c:012d}.jpg", "caption": caps})
    fx.write_json(coco / "coco_karpathy_test.json", ann)
    images = [fx.image_vec(rgb(flickr / "flickr30k-images" / f"{1000 + c}.jpg")) for c, _ in samples]
    ref = _clip_benchmark_recalls(images, [caps for _, caps in samples])
    for name, root in (("flickr30k_1k", flickr), ("coco_5k", coco)):
        assert locate(REGISTRY[name], str(tmp_path), download=False) == str(root)
        out = run(name, root)
        assert {k: out[k] for k in ref} == pytest.approx(ref), name


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_corrupt_and_escaping_images_are_counted_and_named(tmp_path):
    root = fx.build_sugarcrepe(tmp_path / "sc", subsets=["replace_att"])
    data = json.loads((root / "data" / "replace_att.json").read_text())
    records = list(data.values())
    os.remove(root / "val2017" / records[0]["filename"])  # missing
    (root / "val2017" / records[1]["filename"]).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # lfs
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    records[2]["filename"] = "../../secret.jpg"  # leaves the root: a skip, never read
    (root / "data" / "replace_att.json").write_text(json.dumps(dict(zip(data, records))))
    bench = dataclasses.replace(REGISTRY["sugarcrepe"], read=_only_replace_att)  # one subset only
    out = run_benchmark(fx.FakeEncoder(), bench, str(root))
    assert out["num_input_items"] == 5 and out["num_items"] == 2
    assert out["missing_images"] == 2 and out["unreadable_images"] == 1
    examples = out["skipped_examples"]
    assert any(records[0]["filename"] in e for e in examples["missing_images"])
    assert any("../../secret.jpg" in e for e in examples["missing_images"])
    assert records[1]["filename"] in examples["unreadable_images"][0]


def _only_replace_att(root):
    from collections import Counter

    from hnc_clip.evaluation.benchmarks.items import BenchmarkData, ChoiceItem
    from hnc_clip.evaluation.images import ImageRef

    data = json.loads((Path(root) / "data" / "replace_att.json").read_text())
    items = [
        ChoiceItem(k, ImageRef(f"val2017/{r['filename']}"), [r["caption"], r["negative_caption"]], 0, "replace_att")
        for k, r in data.items()
    ]
    return BenchmarkData(root, items, Counter())


def test_winoground_hub_parquet_is_written_out_in_the_official_layout(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = {"id": [0, 1], "caption_0": ["a dog on a cat", "a red cup"], "caption_1": ["a cat on a dog", "a cup red"],
            "image_0": [Image.new("RGB", (20, 20), fx.colour(i)) for i in (1, 2)],
            "image_1": [Image.new("RGB", (20, 20), fx.colour(i)) for i in (3, 4)],
            "tag": ["t", "t"], "secondary_tag": ["", ""], "num_main_preds": [1, 1],
            "collapsed_tag": ["Relation", "Object"]}  # fmt: skip
    features = datasets.Features({k: datasets.Image() if k.startswith("image") else None for k in rows} | {
        "id": datasets.Value("int64"), "num_main_preds": datasets.Value("int64")})  # fmt: skip
    features = datasets.Features({k: v if v is not None else datasets.Value("string") for k, v in features.items()})
    (tmp_path / "winoground" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "winoground" / "data" / "test.parquet")
    )
    root = locate(REGISTRY["winoground"], str(tmp_path))
    out = run("winoground", Path(root))
    assert out["num_items"] == 2 and set(out["count_by_type"]) == {"Relation", "Object"}
    assert (Path(root) / "data" / "images" / "1_1.png").is_file()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "name, files, where",
    [
        ("eqben", {"ann.json": [{"image0": "a/1.jpg", "caption0": 3, "image1": "a/2.jpg", "caption1": "b"}]},
         r"ann.json: record 0: field 'caption0' holds a number"),
        ("winoground", {"data/examples.jsonl": ['{"id": 0, "caption_0": "a", "caption_1": "b", "image_0": "x", '
                                                '"image_1": "y"}', '{"id": 1, "caption_0": ']},
         r"examples.jsonl: line 2: not valid JSON"),
        ("mmvp_vlm", {"Questions.csv": ["Index,Type,Statement", "1,Color,a red cup", "two,Color,a blue cup"]},
         r"Questions.csv: line 3: expected Index, Type, Statement"),
        ("aro_vg_relation", {"visual_genome_relation.json": [{"image_path": "1.jpg", "true_caption": "a",
                                                              "false_caption": "b", "bbox_x": 0, "bbox_y": 0,
                                                              "bbox_w": 4, "bbox_h": 4}]},
         None),  # no relation_name: counted, not a KeyError
    ],
    ids=["eqben", "winoground", "mmvp", "aro"],
)  # fmt: skip
def test_benchmark_readers_check_every_record_and_name_file_and_record(tmp_path, name, files, where):
    """Readers used to check that a record exists, not its content: a caption of the wrong type reached the
    tokenizer, a broken JSON line or CSV row was a bare JSONDecodeError/ValueError, a missing field a KeyError."""
    from hnc_clip.evaluation.records import DataFileError

    for rel, content in files.items():
        if rel.endswith(".json"):
            fx.write_json(tmp_path / rel, content)
        else:
            _write_lines(tmp_path / rel, content)
    if where is None:
        assert REGISTRY[name].read(str(tmp_path)).parse_skips == {"record_missing_keys": 1}
        return
    with pytest.raises(DataFileError, match=where):
        REGISTRY[name].read(str(tmp_path))


@pytest.mark.parametrize(
    "name, rel, content",
    [
        ("coco_5k", "coco_karpathy_test.json", [{"image": "val2014/1.jpg", "caption": "a man riding a horse"}]),
        ("whatsup", "data/controlled_images_dataset.json", [{"image_path": "a.jpg", "caption_options": "a cup"}]),
        ("aro_coco_order", "coco_karpathy_test.json", [{"image": "val2014/1.jpg", "caption": "a man on a horse"}]),
        ("vl_checklist", "data/Attribute/vg/color.json", [["a.jpg", {"POS": "a red cup", "NEG": ["a blue cup"]}]]),
    ],
)
def test_a_string_where_a_list_belongs_is_refused_not_read_as_characters(tmp_path, name, rel, content):
    """A Karpathy caption given as a string (the train files' layout) used to become one-character captions
    (`list("a man...")`): coco_5k scored 15 "captions" for it."""
    from hnc_clip.evaluation.benchmarks.readers import read_retrieval
    from hnc_clip.evaluation.records import DataFileError

    fx.write_json(tmp_path / rel, content)
    bench = REGISTRY[name]
    read = bench.read or (lambda root: read_retrieval(root, bench.meta["annotation"], bench.meta["image_folder"]))
    with pytest.raises(DataFileError, match=r"holds a string .*a string would be read as its characters"):
        read(str(tmp_path))


@pytest.mark.parametrize("name", ["winoground", "sugarcrepe_pp", "mmvp_vlm"])
def test_item_similarities_are_numpy_cosines_of_the_embeddings(tmp_path, name):
    """`EncodedItems.sims` / `text_sims` (the tables every protocol reads) against numpy's float64 cosines of the
    fixture's float32 embeddings, images opened here; equal captions tie to the bit."""
    from hnc_clip.evaluation.benchmarks.items import encode_items

    root = fx.BUILDERS[name](tmp_path / name)
    encoded = encode_items(fx.FakeEncoder(), REGISTRY[name].read(str(root)))

    def rows(vecs) -> np.ndarray:  # the encoder's float32 rows, widened
        return np.float32(np.array(vecs)).astype(np.float64)

    for i, item in enumerate(encoded.items):
        img = rows([fx.image_vec(rgb(root / ref.file)) for ref in item.images])
        txt = rows([fx.text_vec(c) for c in item.captions])
        np.testing.assert_allclose(encoded.sims(i), img @ txt.T, rtol=0, atol=1e-15)
        np.testing.assert_allclose(encoded.text_sims(i), txt @ txt.T, rtol=0, atol=1e-15)
        for a in range(len(item.captions)):
            for b in range(len(item.captions)):
                if fx.text_vec(item.captions[a]).tolist() == fx.text_vec(item.captions[b]).tolist():
                    assert (encoded.sims(i)[:, a] == encoded.sims(i)[:, b]).all()


def test_karpathy_reader_strict_for_benchmarks_lenient_for_retrieval_files(tmp_path):
    """One reader of `[{image, caption}]`: a benchmark's test file (strict) must be whole and list its captions; the
    `--task retrieval` reading (not strict) also takes the train files' one string per record and counts records
    that lack a field."""
    from hnc_clip.evaluation.benchmarks.readers import read_karpathy
    from hnc_clip.evaluation.records import DataFileError

    data = [{"image": "val2014/1.jpg", "caption": ["a dog.", "a dog."]}, {"image": "val2014/2.jpg", "caption": []}]
    out = read_karpathy("ann.json", data, "coco")
    assert [(it.image.file, it.captions) for it in out.items] == [("coco/val2014/1.jpg", ["a dog.", "a dog."]),
                                                                   ("coco/val2014/2.jpg", [])]  # fmt: skip
    assert out.parse_skips == {}
    train = [{"image": "1.jpg", "caption": "a cat."}, {"image": "2.jpg"}, {"caption": ["x"]}]
    lenient = read_karpathy("ann.json", train, strict=False)
    assert [(it.image.file, it.captions) for it in lenient.items] == [("1.jpg", ["a cat."])]
    assert lenient.parse_skips == {"record_missing_keys": 2}
    with pytest.raises(DataFileError, match=r"ann.json: record 1: expected an object with image, caption"):
        read_karpathy("ann.json", [{"image": "1.jpg", "caption": ["a cat."]}, train[1]])
    with pytest.raises(DataFileError, match=r"record 0: field 'caption' holds a string"):
        read_karpathy("ann.json", train)
    with pytest.raises(DataFileError, match=r"record 0: field 'image' holds a number"):
        read_karpathy("ann.json", [{"image": 3, "caption": 3}], strict=False)


@pytest.mark.parametrize("content, why", [(b"", "empty file"), (b"{}", r"empty JSON object \(\{\}\)"),
                                          (b"[]", r"empty JSON list \(\[\]\)")])  # fmt: skip
def test_benchmark_files_that_are_empty_say_which_and_a_byte_order_mark_is_read(tmp_path, content, why):
    from hnc_clip.evaluation.records import DataFileError

    path = tmp_path / "ann.json"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=f"ann.json: (an )?{why}"):
        REGISTRY["eqben"].read(str(tmp_path))
    record = {"image0": "a/1.jpg", "caption0": "a", "image1": "a/2.jpg", "caption1": "b"}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())
    assert [it.captions for it in REGISTRY["eqben"].read(str(tmp_path)).items] == [["a", "b"]]
