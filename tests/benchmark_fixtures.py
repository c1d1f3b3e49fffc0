"""Small benchmark folders in each benchmark's official on-disk layout, and a fake encoder with known similarities.

`FakeEncoder` embeds an image from its decoded pixels (mean colour and size, after the crop) and a caption as a
bag of words (word vectors summed in sorted order, so a caption and any reordering of its words get the *same*
vector: exact ties, as ARO's bag-of-words argument predicts). The reference computations in the tests embed with
the same two functions but open the images themselves, as each benchmark's own code does.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

D = 16
_PROJ = np.random.default_rng(0).standard_normal((D, 6))


def word_vec(word: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(D)


def text_vec(text: str) -> np.ndarray:
    words = sorted(re.findall(r"[a-z0-9]+", text.lower())) or ["<empty>"]
    v = np.sum([word_vec(w) for w in words], axis=0)
    return v / np.linalg.norm(v)


def image_vec(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    feats = np.array(
        [arr[..., 0].mean(), arr[..., 1].mean(), arr[..., 2].mean(), image.width / 50, image.height / 50, 1]
    )
    v = _PROJ @ feats
    return v / np.linalg.norm(v)


class FakeEncoder:
    """An `Encoder`: decodes through the library's `load_image` (crop, tar members), NaN rows for undecodable files."""

    def __init__(self):
        self.unreadable: dict[str, str] = {}
        self.image_calls = 0
        self.text_calls = 0

    def encode_images(self, images):
        from hnc_clip.data.images import IMAGE_ERRORS
        from hnc_clip.evaluation.images import load_image

        self.image_calls += 1
        rows = []
        for ref in images:
            try:
                rows.append(image_vec(load_image(ref)))
            except IMAGE_ERRORS as err:
                self.unreadable[getattr(ref, "file", repr(ref))] = str(err)
                rows.append(np.full(D, np.nan))
        return torch.tensor(np.array(rows).reshape(len(rows), D), dtype=torch.float32)

    def encode_texts(self, texts):
        self.text_calls += 1
        return torch.tensor(np.array([text_vec(t) for t in texts]).reshape(len(texts), D), dtype=torch.float32)


def sim(image: Image.Image, text: str) -> float:
    """The reference similarity, in float32 as the encoder's tables."""
    a = torch.tensor(image_vec(image), dtype=torch.float32)
    b = torch.tensor(text_vec(text), dtype=torch.float32)
    return float(a @ b)


def colour(i: int) -> tuple[int, int, int]:
    return ((53 * i) % 256, (97 * i + 40) % 256, (151 * i + 80) % 256)


def save_image(path: Path, i: int, size=(40, 30), fmt: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour(i))
    image.paste(colour(i + 7), (0, 0, size[0] // 2, size[1] // 2))  # crops of one file differ
    image.save(path, format=fmt)
    return path.name


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


WORDS = ["dog", "cat", "red", "blue", "table", "cup", "on", "under", "left", "right", "man", "horse", "big", "small"]


def caption(rng: np.random.Generator, n: int = 5) -> str:
    return "a " + " ".join(rng.choice(WORDS, size=n))


# ---------------------------------------------------------------------------------------------------------------------
# One builder per benchmark: write the official layout under root, return root
# ---------------------------------------------------------------------------------------------------------------------


def build_hnc_test(root: Path) -> Path:
    rng = np.random.default_rng(1)
    data = {}
    for i in range(6):
        name = save_image(root / "images" / f"n{i}.jpg", i)
        entry = {}
        for k in range(3):
            pos = caption(rng)
            neg = pos if (i, k) == (2, 1) else caption(rng)  # one positive identical to its negative, as the sample
            entry[str(2 * k)] = {"caption": pos, "label": 1, "type": ["relation", "attribute"][k % 2]}
            entry[str(2 * k + 1)] = {"caption": neg, "label": 0, "type": ["relation", "attribute"][k % 2]}
        data[name] = entry
    write_json(root / "hnc_clean_strict_test.json", data)
    return root


def build_sugarcrepe(root: Path, subsets=None, swap_ties: bool = True) -> Path:
    from hnc_clip.evaluation.benchmarks.readers import SUGARCREPE_SUBSETS

    rng = np.random.default_rng(2)
    for s, subset in enumerate(subsets or SUGARCREPE_SUBSETS):
        data = {}
        for i in range(5):
            fname = f"{s * 10 + i:012d}.jpg"
            save_image(root / "val2017" / fname, s * 10 + i)
            pos = caption(rng)
            neg = " ".join(reversed(pos.split())) if swap_ties and subset.startswith("swap") else caption(rng)
            data[str(i * 3 + 1)] = {"filename": fname, "caption": pos, "negative_caption": neg}  # ids not contiguous
        write_json(root / "data" / f"{subset}.json", data)
    return root


def build_sugarcrepe_pp(root: Path) -> Path:
    from hnc_clip.evaluation.benchmarks.readers import SUGARCREPE_PP_SUBSETS

    rng = np.random.default_rng(3)
    for s, subset in enumerate(SUGARCREPE_PP_SUBSETS):
        rows = []
        for i in range(5):
            fname = f"{s * 10 + i:012d}.jpg"
            save_image(root / "val2017" / fname, s * 10 + i)
            p1 = caption(rng)
            rows.append(
                {
                    "id": i,
                    "filename": fname,
                    "caption": p1,
                    "caption2": p1 + " " + str(rng.choice(WORDS)),
                    "negative_caption": caption(rng),
                }
            )
        write_json(root / "data" / f"{subset}.json", rows)
    return root


# the last two are in ARO's exclusion list; "reaching for" sat at the start of a wrapped line of the old parsed string
ARO_RELATIONS = ["on", "behind", "next to", "reaching for"]


def build_aro_vg(root: Path, kind: str) -> Path:
    rng = np.random.default_rng(4 if kind == "relation" else 5)
    records = []
    for i in range(4):
        save_image(root / "images" / f"{i}.jpg", i, size=(60, 50))
    for j in range(48):
        rec = {
            "image_id": str(j % 4),
            "image_path": f"{j % 4}.jpg",
            "bbox_x": int(rng.integers(0, 20)),
            "bbox_y": int(rng.integers(0, 20)),
            "bbox_w": int(rng.integers(5, 40)),
            "bbox_h": int(rng.integers(5, 30)),
        }
        if kind == "relation":
            a, b, rel = str(rng.choice(WORDS)), str(rng.choice(WORDS)), ARO_RELATIONS[j % 4]
            rec.update(
                true_caption=f"the {a} is {rel} the {b}", false_caption=f"the {b} is {rel} the {a}", relation_name=rel
            )
        else:
            attrs = [["red", "blue"], ["big", "small"]][0 if j < 30 else 1]  # 30 and 18 cases: one pair below 25
            rec.update(
                true_caption=f"the {attrs[0]} cup and the {attrs[1]} dog",
                false_caption=f"the {attrs[1]} cup and the {attrs[0]} dog",
                attributes=attrs,
            )
        records.append(rec)
    write_json(root / f"visual_genome_{'relation' if kind == 'relation' else 'attribution'}.json", records)
    return root


# Hand-tagged captions (Penn tags as spaCy's en_core_web_sm gives them) for the Order perturbations.
ORDER_CAPTIONS = {
    "A man riding a brown horse.": [
        ("A", "DT"),
        ("man", "NN"),
        ("riding", "VBG"),
        ("a", "DT"),
        ("brown", "JJ"),
        ("horse", "NN"),
        (".", "."),
    ],
    "Two small dogs on a red table": [
        ("Two", "CD"),
        ("small", "JJ"),
        ("dogs", "NNS"),
        ("on", "IN"),
        ("a", "DT"),
        ("red", "JJ"),
        ("table", "NN"),
    ],
    "A cat.": [("A", "DT"), ("cat", "NN"), (".", ".")],
    "The blue cup is left of the big plate": [
        ("The", "DT"),
        ("blue", "JJ"),
        ("cup", "NN"),
        ("is", "VBZ"),
        ("left", "JJ"),
        ("of", "IN"),
        ("the", "DT"),
        ("big", "JJ"),
        ("plate", "NN"),
    ],
}


def hand_tagger(text: str):
    return ORDER_CAPTIONS[text]


def hand_tokenizer(text: str):
    return [tok for tok, _ in ORDER_CAPTIONS[text]]  # NLTK's word_tokenize splits these as the tagger does


def build_order(root: Path, annotation: str = "coco_karpathy_test.json", write_cases: bool = True) -> Path:
    from hnc_clip.evaluation.benchmarks.aro_order import OrderPerturber, order_test_cases

    caps = list(ORDER_CAPTIONS)
    ann = []
    for i in range(2):
        name = f"val2014/COCO_val2014_{i:012d}.jpg"
        save_image(root / name, i)
        ann.append({"image": name, "caption": caps[2 * i : 2 * i + 2], "image_id": str(i)})
    write_json(root / annotation, ann)
    if write_cases:  # what a run with spaCy/NLTK writes next to the annotation
        cases = order_test_cases(ann, OrderPerturber(hand_tagger, hand_tokenizer, seed=1))
        write_json(root / annotation.replace(".json", "_test_cases.json"), cases)
    return root


def build_winoground(root: Path) -> Path:
    rng = np.random.default_rng(6)
    lines = []
    for i in range(8):
        for k in (0, 1):
            save_image(root / "data" / "images" / f"ex_{i}_{k}.png", 2 * i + k, fmt="PNG")
        c0 = caption(rng, 4)
        c1 = " ".join(reversed(c0.split())) if i % 3 == 0 else caption(rng, 4)  # some groups tie text-wise
        lines.append(
            json.dumps(
                {
                    "id": i,
                    "image": f"ex_{i}",
                    "caption_0": c0,
                    "caption_1": c1,
                    "image_0": f"ex_{i}_0",
                    "image_1": f"ex_{i}_1",
                    "tag": "t",
                    "secondary_tag": "",
                    "num_main_preds": 1,
                    "collapsed_tag": ["Object", "Relation", "Both"][i % 3],
                }
            )
        )
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "examples.jsonl").write_text("\n".join(lines) + "\n")
    return root


def build_valse(root: Path) -> Path:
    from hnc_clip.evaluation.benchmarks.readers import VALSE_PIECES

    rng = np.random.default_rng(7)
    for p, piece in enumerate(("existence", "counting_hard", "actant_swap", "foil_it")):
        annotation, image_dir = VALSE_PIECES[piece]
        data = {}
        for i in range(6):
            name = f"{piece}_{i}.jpg"
            save_image(root / image_dir / name, p * 10 + i)
            data[f"{piece}_{i}"] = {
                "dataset": "x",
                "image_file": name,
                "caption": caption(rng),
                "foil": caption(rng),
                "mturk": {"foil": 0, "caption": [3, 2, 1, 0, 3, 2][i], "other": 0},
            }
        write_json(root / annotation, data)
    return root


def build_whatsup(root: Path) -> Path:
    objs = [("mug", "table"), ("book", "chair")]
    controlled = []
    for o, (a, b) in enumerate(objs):
        for k, prep in enumerate(("left_of", "right_of", "on", "under")):
            path = f"data/controlled_images/{a}_{prep}_{b}.jpeg"
            save_image(root / path, 4 * o + k, fmt="JPEG")
            words = {"left_of": "to the left of", "right_of": "to the right of", "on": "on", "under": "under"}
            options = [f"A {a} {words[q]} a {b}" for q in (prep, *[q for q in words if q != prep])]
            controlled.append({"image_path": path, "caption_options": options})
    write_json(root / "data" / "controlled_images_dataset.json", controlled)
    qa = []
    for i in range(5):
        save_image(root / "data" / "val2017" / f"{i + 1:012d}.jpg", 20 + i)
        qa.append(
            [
                i + 1,
                f"A photo of a dog to the left of a cat {WORDS[i]}",
                f"A photo of a dog to the right of a cat {WORDS[i]}",
            ]
        )
    write_json(root / "data" / "coco_qa_two_obj.json", qa)
    return root


def build_vl_checklist(root: Path) -> Path:
    rng = np.random.default_rng(8)
    for f, (rel, src) in enumerate(
        (
            ("Attribute/vg/color.json", "vg"),
            ("Object/Location/hake_location/hake_obj_center.json", "hake"),
            ("Relation/swig_action.json", "swig"),
        )
    ):
        rows = []
        for i in range(6):
            name = f"img_{f}_{i}.jpg"
            save_image(root / src / "VG_100K" / name, f * 10 + i)
            rows.append([f"VG_100K/{name}", {"POS": [caption(rng), caption(rng)], "NEG": [caption(rng)]}])
        write_json(root / "data" / rel, rows)
    return root


def build_eqben(root: Path) -> Path:
    rng = np.random.default_rng(9)
    rows = []
    for i in range(6):
        sub = ["eqbenkubric_loc", "eqbensd"][i % 2]
        for k in (0, 1):
            save_image(root / "images" / sub / f"{i}_{k}.png", 3 * i + k, fmt="PNG")
        rows.append(
            {
                "image0": f"{sub}/{i}_0.png",
                "caption0": caption(rng),
                "image1": f"{sub}/{i}_1.png",
                "caption1": caption(rng),
            }
        )
    write_json(root / "ann.json", rows)
    return root


def build_mmvp(root: Path, pairs_per_category: int = 2) -> Path:
    from hnc_clip.evaluation.benchmarks.readers import MMVP_CATEGORIES

    rng = np.random.default_rng(10)
    rows, qid = [], 1
    for category in MMVP_CATEGORIES[:3]:
        for _ in range(15):
            for q in (qid, qid + 1):
                save_image(root / "MLLM_VLM Images" / category / f"{q}.jpg", q)
                rows.append([q, category, caption(rng, 4)])
            qid += 2
    (root / "Questions.csv").parent.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Question ID", "Type", "Statement"])
        writer.writerows(rows)
    return root


def build_wds(root: Path, samples: list[tuple[int, object]], classnames=None, templates=None, shards: int = 2) -> Path:
    """CLIP_benchmark webdataset shards: samples (colour id, label int or list of captions)."""
    import io
    import tarfile

    (root / "test").mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // shards)
    for s in range(shards):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tar:
            for k, (cid, target) in enumerate(samples[s * per : (s + 1) * per]):
                key = f"s{s:02d}{k:05d}"
                buf = io.BytesIO()
                Image.new("RGB", (24, 24), colour(cid)).save(buf, format="WEBP" if k % 2 else "PNG")
                payload = {("webp" if k % 2 else "png"): buf.getvalue()}
                payload["txt" if isinstance(target, list) else "cls"] = (
                    "\n".join(target) if isinstance(target, list) else str(target)
                ).encode()
                for ext, data in payload.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text(str(shards))
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    if samples and isinstance(samples[0][1], list):
        (root / "dataset_type.txt").write_text("retrieval\n")
    return root


BUILDERS = {
    "hnc_test": build_hnc_test,
    "sugarcrepe": build_sugarcrepe,
    "sugarcrepe_pp": build_sugarcrepe_pp,
    "aro_vg_relation": lambda r: build_aro_vg(r, "relation"),
    "aro_vg_attribution": lambda r: build_aro_vg(r, "attribution"),
    "aro_coco_order": build_order,
    "aro_flickr30k_order": lambda r: build_order(r, "flickr30k_test.json"),
    "winoground": build_winoground,
    "valse": build_valse,
    "whatsup": build_whatsup,
    "vl_checklist": build_vl_checklist,
    "eqben": build_eqben,
    "mmvp_vlm": build_mmvp,
}


def build_benchmark_dir(root: Path, names=tuple(BUILDERS)) -> Path:
    for name in names:
        BUILDERS[name](root / name)
    return root
