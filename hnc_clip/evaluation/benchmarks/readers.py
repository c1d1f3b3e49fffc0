"""One reader per official on-disk layout: benchmark root -> `BenchmarkData` (items + parse skips).

Each reader reads the files exactly as the benchmark's own code does (named in each docstring); image paths stay
relative to the root and are resolved inside it by `encode_items`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter

from ...data.hnc import TEST_SCHEMA
from ..formats import load_pairs
from ..images import ImageRef
from . import wds
from .aro_order import OrderPerturber, order_test_cases, spacy_nltk_perturber
from .items import BenchmarkData, ChoiceItem, GroupItem


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _records(data) -> list[tuple[str, dict]]:
    """(key, record) of a JSON list or a JSON object of records."""
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items()]
    return [(str(i), v) for i, v in enumerate(data)]


# ---------------------------------------------------------------------------------------------------------------------
# 2-way / n-way caption selection
# ---------------------------------------------------------------------------------------------------------------------


def read_hnc_test(root: str) -> BenchmarkData:
    """HNC test (`hnc_clean_strict_test.json`, test schema; positive 2k paired with negative 2k+1); GQA `images/`."""
    skips: Counter = Counter()
    pairs = load_pairs(os.path.join(root, "hnc_clean_strict_test.json"), TEST_SCHEMA, skips=skips)
    items = [
        ChoiceItem(p["pair_id"], ImageRef(os.path.join("images", p["image_file"])), [p["negative"], p["positive"]],
                   1, p["type"])
        for p in pairs
    ]  # fmt: skip
    return BenchmarkData(root, items, skips)


SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_PP_SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def read_sugarcrepe(root: str) -> BenchmarkData:
    """SugarCrepe's `data/<subset>.json` (`{id: {filename, caption, negative_caption}}`), COCO `val2017/` images."""
    items, skips = [], Counter()
    for subset in SUGARCREPE_SUBSETS:
        for key, rec in _records(_json(os.path.join(root, "data", f"{subset}.json"))):
            if not isinstance(rec, dict) or not {"filename", "caption", "negative_caption"} <= rec.keys():
                skips["record_missing_keys"] += 1
                continue
            image = ImageRef(os.path.join("val2017", rec["filename"]))
            items.append(ChoiceItem(f"{subset}/{key}", image, [rec["caption"], rec["negative_caption"]], 0, subset))
    return BenchmarkData(root, items, skips)


def read_sugarcrepe_pp(root: str) -> BenchmarkData:
    """SugarCrepe++'s `data/<subset>.json` (`[{filename, caption, caption2, negative_caption}]`), COCO `val2017/`.

    Captions are [caption (P1), caption2 (P2), negative_caption (N)], as `ImageTextClassificationDataset_sc_mod2`.
    """
    items, skips = [], Counter()
    for subset in SUGARCREPE_PP_SUBSETS:
        for key, rec in _records(_json(os.path.join(root, "data", f"{subset}.json"))):
            if not isinstance(rec, dict) or not {"filename", "caption", "caption2", "negative_caption"} <= rec.keys():
                skips["record_missing_keys"] += 1
                continue
            captions = [rec["caption"], rec["caption2"], rec["negative_caption"]]
            items.append(ChoiceItem(f"{subset}/{key}", ImageRef(os.path.join("val2017", rec["filename"])), captions,
                                    0, subset))  # fmt: skip
    return BenchmarkData(root, items, skips)


def _read_aro_vg(root: str, annotation: str, kind: str) -> BenchmarkData:
    """ARO VG-Relation / VG-Attribution: `images/<image_path>` cropped to the bbox; captions [false, true]."""
    items, skips = [], Counter()
    for i, rec in enumerate(_json(os.path.join(root, annotation))):
        keys = {"image_path", "true_caption", "false_caption", "bbox_x", "bbox_y", "bbox_w", "bbox_h"}
        if not isinstance(rec, dict) or not keys <= rec.keys():
            skips["record_missing_keys"] += 1
            continue
        if kind == "relation":
            type_ = str(rec["relation_name"])
        else:
            type_ = f"{rec['attributes'][0]}_{rec['attributes'][1]}"  # ARO's `all_attributes`
        bbox = tuple(float(rec[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        image = ImageRef(os.path.join("images", rec["image_path"]), bbox)
        items.append(ChoiceItem(str(i), image, [rec["false_caption"], rec["true_caption"]], 1, type_))
    return BenchmarkData(root, items, skips)


def read_aro_relation(root: str) -> BenchmarkData:
    return _read_aro_vg(root, "visual_genome_relation.json", "relation")


def read_aro_attribution(root: str) -> BenchmarkData:
    return _read_aro_vg(root, "visual_genome_attribution.json", "attribution")


def _read_order(root: str, annotation: str, perturber: OrderPerturber | None = None) -> BenchmarkData:
    """ARO Order: test cases from the BLIP-format Karpathy file, written once to `<stem>_test_cases.json`."""
    cases_path = os.path.join(root, annotation.replace(".json", "_test_cases.json"))
    if os.path.isfile(cases_path) and perturber is None:
        cases = _json(cases_path)
    else:
        cases = order_test_cases(_json(os.path.join(root, annotation)), perturber or spacy_nltk_perturber())
        with open(cases_path, "w", encoding="utf-8") as f:
            json.dump(cases, f)
    items = [ChoiceItem(str(i), ImageRef(c["image"]), list(c["caption_options"]), 0) for i, c in enumerate(cases)]
    return BenchmarkData(root, items, Counter(), {"test_cases": cases_path})


def read_coco_order(root: str, perturber: OrderPerturber | None = None) -> BenchmarkData:
    return _read_order(root, "coco_karpathy_test.json", perturber)


def read_flickr_order(root: str, perturber: OrderPerturber | None = None) -> BenchmarkData:
    return _read_order(root, "flickr30k_test.json", perturber)


# VALSE pieces: (annotation file, image folder), relative to the VALSE root as in the official `lxmert_valse_eval.py`
# (`foil_it` reads COCO val2014, there an absolute path; here `coco/val2014/`).
VALSE_PIECES = {
    "existence": ("data/existence.json", "data/visual7w/images/"),
    "plurals": ("data/plurals.json", "data/plurals/test_images/"),
    "counting_hard": ("data/counting_hard.json", "data/visual7w/images/"),
    "counting_small": ("data/counting-small-quant.json", "data/visual7w/images/"),
    "counting_adversarial": ("data/counting_adversarial.json", "data/visual7w/images/"),
    "relations": ("data/relation.json", "data/relations/test_images/"),
    "action_replace": ("data/action-replacement.json", "data/actions/images_512/"),
    "actant_swap": ("data/actions/actant-swap.json", "data/actions/images_512/"),
    "coref": ("data/coreference-standard.json", "data/coref/release_too_many_is_this_in_color/images/"),
    "coref_hard": ("data/coreference-hard.json", "data/coref/release_v18/test_images/"),
    "foil_it": ("data/foil-it.json", "coco/val2014/"),
}
VALSE_INSTRUMENTS = {
    "existence": "existence",
    "plurals": "plurality",
    "counting_hard": "counting",
    "counting_small": "counting",
    "counting_adversarial": "counting",
    "relations": "relations",
    "action_replace": "actions",
    "actant_swap": "actions",
    "coref": "coreference",
    "coref_hard": "coreference",
    "foil_it": "foil_it",
}


def read_valse(root: str) -> BenchmarkData:
    """VALSE pieces present under the root; only examples validated by >= 2 of 3 annotators (`mturk.caption`)."""
    items, skips, pieces = [], Counter(), []
    for piece, (annotation, image_dir) in VALSE_PIECES.items():
        path = os.path.join(root, annotation)
        if not os.path.isfile(path):
            continue
        pieces.append(piece)
        for key, foil in _records(_json(path)):
            if not isinstance(foil, dict) or not {"image_file", "caption", "foil"} <= foil.keys():
                skips["record_missing_keys"] += 1
                continue
            if (foil.get("mturk") or {}).get("caption", 0) < 2:  # valid examples only (validated by mturkers)
                skips["not_validated"] += 1
                continue
            caption = foil["caption"][0] if isinstance(foil["caption"], list) else foil["caption"]
            image = ImageRef(os.path.join(image_dir, foil["image_file"]))
            items.append(ChoiceItem(f"{piece}/{key}", image, [caption, foil["foil"]], 0, piece))
    if not pieces:
        raise FileNotFoundError(f"{root}: no VALSE piece found (expected e.g. {root}/data/existence.json)")
    return BenchmarkData(root, items, skips, {"pieces": pieces})


WHATSUP_SUBSETS = {
    "controlled_a": "data/controlled_images_dataset.json",
    "controlled_b": "data/controlled_clevr_dataset.json",
    "coco_qa_one": "data/coco_qa_one_obj.json",
    "coco_qa_two": "data/coco_qa_two_obj.json",
    "vg_qa_one": "data/vg_qa_one_obj.json",
    "vg_qa_two": "data/vg_qa_two_obj.json",
}


def read_whatsup(root: str) -> BenchmarkData:
    """What'sUp (`dataset_zoo/aro_datasets.py` of whatsup_vlms): the true caption is option 0 in every subset.

    Controlled A/B: `[{image_path, caption_options}]`, `image_path` relative to the root (`data/controlled_images/..`);
    COCO-QA / VG-QA: `[[image_id, true, false]]`, images `data/val2017/<id:012d>.jpg` / `data/vg_images/<id>.jpg`.
    """
    items, skips, subsets = [], Counter(), []
    for subset, annotation in WHATSUP_SUBSETS.items():
        path = os.path.join(root, annotation)
        if not os.path.isfile(path):
            continue
        subsets.append(subset)
        for i, rec in enumerate(_json(path)):
            if subset.startswith("controlled"):
                if not isinstance(rec, dict) or not {"image_path", "caption_options"} <= rec.keys():
                    skips["record_missing_keys"] += 1
                    continue
                image, captions = ImageRef(rec["image_path"]), list(rec["caption_options"])
            else:
                if not isinstance(rec, list) or len(rec) < 3:
                    skips["record_missing_keys"] += 1
                    continue
                name = f"data/val2017/{str(rec[0]).zfill(12)}.jpg" if subset.startswith("coco") else (
                    f"data/vg_images/{rec[0]}.jpg")  # fmt: skip
                image, captions = ImageRef(name), [rec[1], rec[2]]
            items.append(ChoiceItem(f"{subset}/{i}", image, captions, 0, subset))
    if not subsets:
        raise FileNotFoundError(
            f"{root}: no What'sUp subset found (expected e.g. {root}/{WHATSUP_SUBSETS['controlled_a']})"
        )
    return BenchmarkData(root, items, skips, {"subsets": subsets})


def _vl_checklist_image_root(relpath: str) -> str:
    """VL-CheckList's `IMG_ROOT`: `hake/` and `swig/` for those sources, `vg/` for VG and VAW (VAW uses VG images)."""
    lowered = relpath.lower()
    return "hake" if "hake" in lowered else "swig" if "swig" in lowered else "vg"


def read_vl_checklist(root: str) -> BenchmarkData:
    """VL-CheckList ITC: every `data/**/*.json` (`[[image_path, {"POS": [..], "NEG": [..]}]]`); POS[0] vs NEG[0].

    The file's path under `data/` is its type (`Attribute/vg/color`), its first part the category.
    """
    items, skips = [], Counter()
    files = sorted(glob.glob(os.path.join(root, "data", "**", "*.json"), recursive=True))
    if not files:
        raise FileNotFoundError(
            f"{root}: no VL-CheckList annotation under {root}/data/ (e.g. data/Attribute/vg/color.json)"
        )
    for path in files:
        rel = os.path.relpath(path, os.path.join(root, "data"))
        type_ = os.path.splitext(rel)[0].replace(os.sep, "/")
        image_root = _vl_checklist_image_root(rel)
        for i, rec in enumerate(_json(path)):
            try:
                image_path, texts = rec
                pos, neg = texts["POS"][0], texts["NEG"][0]
            except (TypeError, ValueError, KeyError, IndexError):
                skips["record_missing_keys"] += 1
                continue
            items.append(ChoiceItem(f"{type_}/{i}", ImageRef(os.path.join(image_root, image_path)), [pos, neg], 0,
                                    type_))  # fmt: skip
    return BenchmarkData(root, items, skips)


# ---------------------------------------------------------------------------------------------------------------------
# 2x2 groups
# ---------------------------------------------------------------------------------------------------------------------


def read_winoground(root: str) -> BenchmarkData:
    """Winoground's `data/examples.jsonl` (`id, caption_0, caption_1, image_0, image_1, collapsed_tag, ..`) and
    `data/images/<image_k>.png`, the layout of the `facebook/winoground` repository."""
    items, skips = [], Counter()
    with open(os.path.join(root, "data", "examples.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if not {"id", "caption_0", "caption_1", "image_0", "image_1"} <= rec.keys():
                skips["record_missing_keys"] += 1
                continue
            images = [ImageRef(os.path.join("data", "images", f"{rec[k]}.png")) for k in ("image_0", "image_1")]
            captions = [rec["caption_0"], rec["caption_1"]]
            items.append(GroupItem(str(rec["id"]), images, captions, str(rec.get("collapsed_tag", "all"))))
    return BenchmarkData(root, items, skips)


def materialize_winoground(root: str) -> None:
    """The Hub repository's other forms -> the examples.jsonl + images/ layout: `data/images.zip` is unpacked;
    parquet shards (`image_0`/`image_1` as images, the converted form of the repository) are written out as
    `data/images/<id>_<k>.png` with an `examples.jsonl` naming them."""
    import zipfile

    data_dir = os.path.join(root, "data")
    archive = os.path.join(data_dir, "images.zip")
    if not os.path.isdir(os.path.join(data_dir, "images")) and os.path.isfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(data_dir)
    if os.path.isfile(os.path.join(data_dir, "examples.jsonl")):
        return
    shards = sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    if not shards:
        return
    import datasets

    rows = datasets.load_dataset("parquet", data_files=shards, split="train")
    os.makedirs(os.path.join(data_dir, "images"), exist_ok=True)
    with open(os.path.join(data_dir, "examples.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            record = {k: v for k, v in row.items() if k not in ("image_0", "image_1")}
            for k in (0, 1):
                name = f"{row['id']}_{k}"
                row[f"image_{k}"].save(os.path.join(data_dir, "images", f"{name}.png"))
                record[f"image_{k}"] = name
            f.write(json.dumps(record) + "\n")


def read_eqben(root: str) -> BenchmarkData:
    """EqBen's labelled release as its 2x2 readers take it: `ann.json` = `[{image0, caption0, image1, caption1}]`,
    images under `images/`; the sub-dataset (first path part of `image0`) is the type."""
    items, skips = [], Counter()
    for i, rec in enumerate(_json(os.path.join(root, "ann.json"))):
        if not isinstance(rec, dict) or not {"image0", "caption0", "image1", "caption1"} <= rec.keys():
            skips["record_missing_keys"] += 1
            continue
        images = [ImageRef(os.path.join("images", rec[k])) for k in ("image0", "image1")]
        items.append(GroupItem(str(i), images, [rec["caption0"], rec["caption1"]], rec["image0"].split("/")[0]))
    return BenchmarkData(root, items, skips)


MMVP_CATEGORIES = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)


def read_mmvp_vlm(root: str) -> BenchmarkData:
    """MMVP-VLM (`scripts/evaluate_vlm.py`): `Questions.csv` rows (id, type, statement) taken two at a time; images
    `MLLM_VLM Images/<type of the first row>/<id>.jpg`; texts `"a photo of " + statement`; the pair's category is
    `categories[pair_index // 15]`. Stored as a group: images (img1, img2), captions (text1, text2), and in `meta`
    which image each text's ground truth is (odd id -> img1)."""
    items = []
    with open(os.path.join(root, "Questions.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    for n, start in enumerate(range(0, len(rows) - 1, 2)):
        (qid1, qtype1, s1), (qid2, _, s2) = rows[start][:3], rows[start + 1][:3]
        qid1, qid2 = int(qid1), int(qid2)
        images = [ImageRef(os.path.join("MLLM_VLM Images", qtype1, f"{q}.jpg")) for q in (qid1, qid2)]
        gt = [0 if qid1 % 2 == 1 else 1, 0 if qid2 % 2 == 1 else 1]
        category = MMVP_CATEGORIES[n // 15] if n // 15 < len(MMVP_CATEGORIES) else "extra"
        items.append(GroupItem(f"{qid1}/{qid2}", images, ["a photo of " + s1, "a photo of " + s2], category,
                               {"gt": gt}))  # fmt: skip
    return BenchmarkData(root, items, Counter())


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval and classification
# ---------------------------------------------------------------------------------------------------------------------


def read_retrieval(root: str, annotation: str, image_folder: str = "") -> BenchmarkData:
    """[(image, captions)] from CLIP_benchmark's webdataset (`test/nshards.txt` present) or a Karpathy annotation:
    BLIP/ARO JSON `[{image, caption: [..]}]`, COCO-format JSON `{images, annotations}` or Flickr's CSV txt."""
    from ..formats import ImageCaptions

    if os.path.isfile(os.path.join(root, "test", "nshards.txt")):
        samples, broken = wds.retrieval_samples(root)
        return BenchmarkData(root, [ImageCaptions(r, c) for r, c in samples], Counter(broken_sample=broken))
    path = os.path.join(root, annotation)
    if annotation.endswith(".txt"):  # CLIP_benchmark's `Flickr`: header line, then `<image>.jpg,<caption>`
        by_image: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as f:
            f.readline()
            for line in f:
                if line.strip():
                    image, caption = line.strip().split(".jpg,", 1)
                    by_image.setdefault(image + ".jpg", []).append(caption)
        items = [ImageCaptions(ImageRef(os.path.join(image_folder, k)), v) for k, v in by_image.items()]
        return BenchmarkData(root, items, Counter())
    data = _json(path)
    if isinstance(data, dict) and "annotations" in data:  # COCO format, as torchvision's `CocoCaptions` reads it
        files = {img["id"]: img["file_name"] for img in data["images"]}
        caps: dict = {}
        for ann in data["annotations"]:
            caps.setdefault(ann["image_id"], []).append(ann["caption"])
        items = [ImageCaptions(ImageRef(os.path.join(image_folder, files[i])), caps.get(i, [])) for i in sorted(files)]
        return BenchmarkData(root, [it for it in items if it.captions], Counter())
    items = [ImageCaptions(ImageRef(rec["image"]), list(rec["caption"])) for rec in data]
    return BenchmarkData(root, items, Counter())


def read_classification(root: str) -> BenchmarkData:
    """CLIP_benchmark's webdataset classification layout; `meta` carries its class names and templates files."""
    refs, labels, broken = wds.classification_samples(root)
    meta = {"labels": labels}
    for key, name in (("classnames", "classnames.txt"), ("templates", "zeroshot_classification_templates.txt")):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            meta[key] = wds.read_lines(path)
    return BenchmarkData(root, refs, Counter(broken_sample=broken) if broken else Counter(), meta)
