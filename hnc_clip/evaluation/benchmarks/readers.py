"""One reader per official on-disk layout: benchmark root -> `BenchmarkData` (items + parse skips).

Each reader reads the files exactly as the benchmark's own code does (named in each docstring); image paths stay
relative to the root and are resolved inside it by `encode_items`. Every field is read by type (`..records.Record`):
a record that lacks a field is counted (`record_missing_keys`), one whose field has the wrong type (a number for a
caption, a string for a list of captions) raises `DataFileError` naming the file, the record and the field.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import os
from collections import Counter

from ...data.hnc import TEST_SCHEMA, iter_hnc_pairs
from ..images import ImageRef
from ..records import DataFileError, Record, read_json, records
from . import wds
from .aro_order import OrderPerturber, order_test_cases, spacy_nltk_perturber
from .items import BenchmarkData, ChoiceItem, GroupItem, ImageCaptions


def _json(path: str, expected: type | tuple[type, ...] = (list, dict)):
    return read_json(path, expected)


def _records(path: str, expected: type | tuple[type, ...] = (list, dict)) -> list[Record]:
    """The records of a JSON list or a JSON object of records."""
    return list(records(path, read_json(path, expected)))


# ---------------------------------------------------------------------------------------------------------------------
# 2-way / n-way caption selection
# ---------------------------------------------------------------------------------------------------------------------


def read_hnc_file(
    path: str, schema: str | None = None, image_folder: str = "", max_items: int | None = None
) -> BenchmarkData:
    """An HNC file of either schema (`hnc_clip.data.hnc`, streamed; the first `max_items` pairs when given): one item
    per pair, captions [negative, positive]."""
    skips: Counter = Counter()
    pairs = iter_hnc_pairs(path, schema=schema, skips=skips)
    items = [
        ChoiceItem(p["pair_id"], ImageRef(os.path.join(image_folder, p["image_file"])), [p["negative"], p["positive"]],
                   1, p["type"], {"image_id": p["image_id"]})
        for p in itertools.islice(pairs, max_items)
    ]  # fmt: skip
    return BenchmarkData(path, items, skips)


def read_hnc_test(root: str) -> BenchmarkData:
    """HNC test (`hnc_clean_strict_test.json`, test schema; positive 2k paired with negative 2k+1); GQA `images/`."""
    path = os.path.join(root, "hnc_clean_strict_test.json")
    data = read_hnc_file(path, TEST_SCHEMA, "images")
    if not data.items:
        raise ValueError(f"no positive/negative pairs in {[path]} (skipped: {dict(data.parse_skips) or 'none'})")
    return BenchmarkData(root, data.items, data.parse_skips)


def read_structure_clip_file(path: str, image_folder: str = "") -> BenchmarkData:
    """Structure-CLIP's COCO files (`[{image, text, neg_text}]`): one item per negative, `neg_text` a string or a
    list of strings; captions [negative, positive]."""
    items, skips = [], Counter()
    for rec in _records(path, list):
        if not rec.has("image", "text", "neg_text"):
            skips["record_missing_keys"] += 1
            continue
        image = ImageRef(os.path.join(image_folder, rec.text("image")))
        positive, type_ = rec.text("text"), str(rec.value.get("type") or "structure_clip")
        for j, negative in enumerate(rec.text_or_texts("neg_text")):
            items.append(ChoiceItem(f"{rec.key}/{j}", image, [negative, positive], 1, type_))
    return BenchmarkData(path, items, skips)


SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_PP_SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def read_sugarcrepe_file(path: str, image_folder: str = "") -> BenchmarkData:
    """One SugarCrepe subset file (`{id: {filename, caption, negative_caption}}`): the file name is the subset."""
    subset = os.path.splitext(os.path.basename(path))[0]
    items, skips = [], Counter()
    for rec in _records(path):
        if not rec.has("filename", "caption", "negative_caption"):
            skips["record_missing_keys"] += 1
            continue
        image = ImageRef(os.path.join(image_folder, rec.text("filename")))
        captions = [rec.text("caption"), rec.text("negative_caption")]
        items.append(ChoiceItem(f"{subset}/{rec.key}", image, captions, 0, subset))
    return BenchmarkData(path, items, skips)


def read_sugarcrepe(root: str) -> BenchmarkData:
    """SugarCrepe's `data/<subset>.json` for the 7 subsets, COCO `val2017/` images."""
    items, skips = [], Counter()
    for subset in SUGARCREPE_SUBSETS:
        data = read_sugarcrepe_file(os.path.join(root, "data", f"{subset}.json"), "val2017")
        items += data.items
        skips += data.parse_skips
    return BenchmarkData(root, items, skips)


def read_sugarcrepe_pp(root: str) -> BenchmarkData:
    """SugarCrepe++'s `data/<subset>.json` (`[{filename, caption, caption2, negative_caption}]`), COCO `val2017/`.

    Captions are [caption (P1), caption2 (P2), negative_caption (N)], as `ImageTextClassificationDataset_sc_mod2`.
    """
    items, skips = [], Counter()
    for subset in SUGARCREPE_PP_SUBSETS:
        for rec in _records(os.path.join(root, "data", f"{subset}.json")):
            if not rec.has("filename", "caption", "caption2", "negative_caption"):
                skips["record_missing_keys"] += 1
                continue
            captions = [rec.text("caption"), rec.text("caption2"), rec.text("negative_caption")]
            items.append(ChoiceItem(f"{subset}/{rec.key}", ImageRef(os.path.join("val2017", rec.text("filename"))),
                                    captions, 0, subset))  # fmt: skip
    return BenchmarkData(root, items, skips)


def read_aro_file(path: str, kind: str, image_folder: str = "") -> BenchmarkData:
    """An ARO VG-Relation / VG-Attribution file: the image cropped to the bbox, as ARO does; captions [false, true].

    The type is the relation, or the attribute pair `<a1>_<a2>` (ARO's `all_attributes`).
    """
    items, skips = [], Counter()
    keys = ("image_path", "true_caption", "false_caption", "bbox_x", "bbox_y", "bbox_w", "bbox_h")
    type_key = "relation_name" if kind == "relation" else "attributes"
    for rec in _records(path, list):
        if not rec.has(*keys, type_key):
            skips["record_missing_keys"] += 1
            continue
        if kind == "relation":
            type_ = rec.text("relation_name")
        else:
            attributes = rec.texts("attributes")
            if len(attributes) < 2:
                raise rec.error("attributes", f"holds {len(attributes)} attributes, expected two")
            type_ = f"{attributes[0]}_{attributes[1]}"
        bbox = tuple(rec.number(k) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        image = ImageRef(os.path.join(image_folder, rec.text("image_path")), bbox)
        pair_id = f"{rec.value.get('image_id', rec.key)}/{rec.key}"  # a record key alone repeats across files
        items.append(ChoiceItem(rec.key, image, [rec.text("false_caption"), rec.text("true_caption")], 1, type_,
                                {"pair_id": pair_id}))  # fmt: skip
    return BenchmarkData(path, items, skips)


def read_aro_relation(root: str) -> BenchmarkData:
    data = read_aro_file(os.path.join(root, "visual_genome_relation.json"), "relation", "images")
    return BenchmarkData(root, data.items, data.parse_skips)


def read_aro_attribution(root: str) -> BenchmarkData:
    data = read_aro_file(os.path.join(root, "visual_genome_attribution.json"), "attribution", "images")
    return BenchmarkData(root, data.items, data.parse_skips)


def _read_order(root: str, annotation: str, perturber: OrderPerturber | None = None) -> BenchmarkData:
    """ARO Order: test cases from the BLIP-format Karpathy file, written once to `<stem>_test_cases.json`."""
    cases_path = os.path.join(root, annotation.replace(".json", "_test_cases.json"))
    if os.path.isfile(cases_path) and perturber is None:
        cases = [{"image": c.text("image"), "caption_options": c.texts("caption_options")}
                 for c in _records(cases_path, list) if _needs(c, "image", "caption_options")]  # fmt: skip
    else:
        path = os.path.join(root, annotation)
        annotation_records = [{"image": it.image.file, "caption": it.captions}
                              for it in read_karpathy(path, _json(path, list)).items]  # fmt: skip
        cases = order_test_cases(annotation_records, perturber or spacy_nltk_perturber())
        with open(cases_path, "w", encoding="utf-8") as f:
            json.dump(cases, f)
    items = [ChoiceItem(str(i), ImageRef(c["image"]), list(c["caption_options"]), 0) for i, c in enumerate(cases)]
    return BenchmarkData(root, items, Counter(), {"test_cases": cases_path})


def _needs(rec: Record, *names: str) -> bool:
    """`rec.has(*names)`, or `DataFileError`: a file this reader generates or reads whole has no optional records."""
    if not rec.has(*names):
        raise DataFileError(f"{rec.path}: {rec.where}: expected an object with {', '.join(names)}")
    return True


def read_karpathy(path: str, data: list, image_folder: str = "", strict: bool = True) -> BenchmarkData:
    """BLIP/ARO's Karpathy annotation (`data`, the parsed JSON list of `path`): one `ImageCaptions` per record,
    `{image, caption: [..]}`, the image under `image_folder`, the captions as written.

    `strict` (a benchmark's test file, read whole): every record has both fields and `caption` is a list, else
    `DataFileError`. Otherwise (`--task retrieval`, which also reads the train files' one caption string per
    record): a string is one caption, and a record lacking a field is counted (`record_missing_keys`).
    """
    items, skips = [], Counter()
    for rec in records(path, data):
        if strict:
            _needs(rec, "image", "caption")
        elif not rec.has("image", "caption"):
            skips["record_missing_keys"] += 1
            continue
        image = ImageRef(os.path.join(image_folder, rec.text("image")))
        items.append(ImageCaptions(image, rec.texts("caption") if strict else rec.text_or_texts("caption")))
    return BenchmarkData(path, items, skips)


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
        for foil in _records(path):
            if not foil.has("image_file", "caption", "foil"):
                skips["record_missing_keys"] += 1
                continue
            mturk = Record(foil.path, foil.where, foil.value.get("mturk") or {})
            if not isinstance(mturk.value, dict):
                raise foil.error("mturk", f"holds {mturk.value!r:.60}, expected an object of annotator counts")
            if (mturk.number("caption") if "caption" in mturk.value else 0) < 2:  # validated by >= 2 annotators
                skips["not_validated"] += 1
                continue
            captions = foil.text_or_texts("caption")
            if not captions:
                raise foil.error("caption", "is an empty list")
            image = ImageRef(os.path.join(image_dir, foil.text("image_file")))
            items.append(ChoiceItem(f"{piece}/{foil.key}", image, [captions[0], foil.text("foil")], 0, piece))
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
        for rec in _records(path, list):
            if subset.startswith("controlled"):
                if not rec.has("image_path", "caption_options"):
                    skips["record_missing_keys"] += 1
                    continue
                image, captions = ImageRef(rec.text("image_path")), rec.texts("caption_options")
            else:
                if not isinstance(rec.value, list) or len(rec.value) < 3:
                    skips["record_missing_keys"] += 1
                    continue
                # [image_id, true caption, false caption]: as an object of fields "0", "1", "2"
                row = Record(rec.path, rec.where, {str(k): v for k, v in enumerate(rec.value)})
                image_id = row.integer("0") if not isinstance(rec.value[0], str) else row.text("0")
                name = f"data/val2017/{str(image_id).zfill(12)}.jpg" if subset.startswith("coco") else (
                    f"data/vg_images/{image_id}.jpg")  # fmt: skip
                image, captions = ImageRef(name), [row.text("1"), row.text("2")]
            items.append(ChoiceItem(f"{subset}/{rec.key}", image, captions, 0, subset))
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
        for rec in _records(path, list):
            if not isinstance(rec.value, list) or len(rec.value) != 2 or not isinstance(rec.value[1], dict):
                raise DataFileError(f"{path}: {rec.where}: expected [image_path, {{\"POS\": [..], \"NEG\": [..]}}], "
                                    f"got {json.dumps(rec.value, default=str)[:80]}")  # fmt: skip
            image_path = Record(path, rec.where, {"image_path": rec.value[0]}).text("image_path")
            texts = Record(path, rec.where, rec.value[1])
            if not texts.has("POS", "NEG") or not texts.value["POS"] or not texts.value["NEG"]:
                skips["record_missing_keys"] += 1
                continue
            pos, neg = texts.texts("POS")[0], texts.texts("NEG")[0]
            items.append(ChoiceItem(f"{type_}/{rec.key}", ImageRef(os.path.join(image_root, image_path)), [pos, neg],
                                    0, type_))  # fmt: skip
    return BenchmarkData(root, items, skips)


# ---------------------------------------------------------------------------------------------------------------------
# 2x2 groups
# ---------------------------------------------------------------------------------------------------------------------


def read_winoground(root: str) -> BenchmarkData:
    """Winoground's `data/examples.jsonl` (`id, caption_0, caption_1, image_0, image_1, collapsed_tag, ..`) and
    `data/images/<image_k>.png`, the layout of the `facebook/winoground` repository."""
    items, skips = [], Counter()
    path = os.path.join(root, "data", "examples.jsonl")
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{path}: line {n}: not valid JSON: {err.msg} at column {err.colno}") from err
            rec = Record(path, f"line {n}", value)
            if not rec.has("id", "caption_0", "caption_1", "image_0", "image_1"):
                skips["record_missing_keys"] += 1
                continue
            images = [ImageRef(os.path.join("data", "images", f"{rec.text(k)}.png")) for k in ("image_0", "image_1")]
            captions = [rec.text("caption_0"), rec.text("caption_1")]
            items.append(GroupItem(str(rec.value["id"]), images, captions, str(rec.value.get("collapsed_tag", "all"))))
    if not items and not skips:
        raise DataFileError(f"{path}: no records")
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
    for rec in _records(os.path.join(root, "ann.json"), list):
        if not rec.has("image0", "caption0", "image1", "caption1"):
            skips["record_missing_keys"] += 1
            continue
        images = [ImageRef(os.path.join("images", rec.text(k))) for k in ("image0", "image1")]
        captions = [rec.text("caption0"), rec.text("caption1")]
        items.append(GroupItem(rec.key, images, captions, rec.text("image0").split("/")[0]))
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
    path = os.path.join(root, "Questions.csv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))[1:]
    for line, row in enumerate(rows, 2):
        if len(row) < 3 or not row[0].strip().isdigit():
            raise DataFileError(f"{path}: line {line}: expected Index, Type, Statement (an integer Index), got {row}")
    if len(rows) % 2:
        raise DataFileError(f"{path}: {len(rows)} questions, expected pairs (an even number)")
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
    if os.path.isfile(os.path.join(root, "test", "nshards.txt")):
        samples, broken = wds.retrieval_samples(root)
        return BenchmarkData(root, [ImageCaptions(r, c) for r, c in samples], Counter(broken_sample=broken))
    path = os.path.join(root, annotation)
    if annotation.endswith(".txt"):  # CLIP_benchmark's `Flickr`: header line, then `<image>.jpg,<caption>`
        by_image: dict[str, list[str]] = {}
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
    if isinstance(data, dict):  # COCO format, as torchvision's `CocoCaptions` reads it
        coco = Record(path, "the top level", data)
        if not coco.has("images", "annotations"):
            raise DataFileError(f"{path}: a JSON object without 'images' and 'annotations' (COCO format), nor a "
                                "list of {image, caption: [..]} records")  # fmt: skip
        files = {}
        for img in records(path, {f"images[{i}]": v for i, v in enumerate(data["images"])}):
            _needs(img, "id", "file_name")
            files[img.value["id"]] = img.text("file_name")
        caps: dict = {}
        for ann in records(path, {f"annotations[{i}]": v for i, v in enumerate(data["annotations"])}):
            _needs(ann, "image_id", "caption")
            caps.setdefault(ann.value["image_id"], []).append(ann.text("caption"))
        items = [ImageCaptions(ImageRef(os.path.join(image_folder, files[i])), caps.get(i, [])) for i in sorted(files)]
        return BenchmarkData(root, [it for it in items if it.captions], Counter())
    # BLIP/ARO's test files: a list of captions per image
    return BenchmarkData(root, read_karpathy(path, data, image_folder).items, Counter())


def read_classification(root: str) -> BenchmarkData:
    """CLIP_benchmark's webdataset classification layout; `meta` carries its class names and templates files."""
    refs, labels, broken = wds.classification_samples(root)
    meta = {"labels": labels}
    for key, name in (("classnames", "classnames.txt"), ("templates", "zeroshot_classification_templates.txt")):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            meta[key] = wds.read_lines(path)
    return BenchmarkData(root, refs, Counter(broken_sample=broken) if broken else Counter(), meta)
