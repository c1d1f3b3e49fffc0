"""Tests of the synthetic relational world (`hnc_clip.demo.world`): formats, determinism, and caption truth."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/datasets are imported: nothing may download

import json
import re
from collections import Counter

import pytest
from PIL import Image

from hnc_clip.data.hnc import TEST_SCHEMA, TRAIN_SCHEMA, detect_schema, iter_hnc_pairs
from hnc_clip.demo import world as synthetic
from hnc_clip.demo.world import (
    COLOR_RGB,
    INVERSE_RELATION,
    NEGATIVE_TYPES,
    SceneObject,
    WorldConfig,
    make_world,
    relation_holds,
    save_world_model,
    world_texts,
)

SMALL = dict(
    num_train_images=30, num_val_images=6, num_test_images=12, num_recognition_per_class=2, image_size=32, seed=7
)
PAIRS_PER_IMAGE = 2 * len(NEGATIVE_TYPES)  # two positive statements x one negative per type
CAPTION = re.compile(r"^A (\w+) (\w+) is (left of|right of|above|below) a (\w+) (\w+)\.$")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("world"))
    make_world(out, show_progress=False, **SMALL)
    return out


@pytest.fixture(scope="module")
def scenes(world) -> dict:
    with open(os.path.join(world, "scenes.json")) as f:
        return json.load(f)


def _parse(caption: str) -> tuple[tuple[str, str], str, tuple[str, str]]:
    m = CAPTION.match(caption)
    assert m, f"caption not in the world's grammar: {caption!r}"
    return (m[1], m[2]), m[3], (m[4], m[5])


def _objects(scene: dict) -> dict[tuple[str, str], SceneObject]:
    """The scene's objects keyed by (colour, shape), rebuilt from the stored bboxes."""
    out = {}
    for o in scene["objects"]:
        b = o["bbox"]
        assert b["w"] == b["h"]
        out[(o["color"], o["shape"])] = SceneObject(o["color"], o["shape"], b["x"], b["y"], b["w"], tuple(o["rgb"]))
    return out


def _true_relation(a: SceneObject, b: SceneObject) -> str:
    """The relation from centres alone (independent of `relation_holds`): the axis of the larger offset."""
    (ax, ay), (bx, by) = a.center, b.center
    if abs(ax - bx) > abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def _pairs(world: str, split: str) -> list[dict]:
    return list(iter_hnc_pairs(os.path.join(world, f"{split}.json")))


def _all_files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


# ------------------------------------------------------------------------------------ determinism / formats


def test_same_seed_is_byte_identical_and_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    make_world(str(again), show_progress=False, **SMALL)
    first, second = _all_files(world), _all_files(str(again))
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other = tmp_path / "other"
    make_world(str(other), show_progress=False, **{**SMALL, "seed": 8})
    third = _all_files(str(other))
    assert third["train.json"] != first["train.json"]
    assert third["images/train_000000.jpg"] != first["images/train_000000.jpg"]


def test_split_scenes_do_not_depend_on_other_split_sizes(world, tmp_path):
    # Per-image seeding: the test scenes are the same whatever the train size, so test sets stay comparable.
    out = tmp_path / "bigger"
    make_world(str(out), show_progress=False, **{**SMALL, "num_train_images": 35})
    with open(os.path.join(world, "test.json"), "rb") as a, open(out / "test.json", "rb") as b:
        assert a.read() == b.read()


def test_test_scenes_are_held_out_and_relations_are_all_used(scenes):
    def layout(scene: dict) -> str:
        return json.dumps(scene["objects"], sort_keys=True)

    train = {layout(s) for s in scenes["train"].values()}
    assert not train & {layout(s) for s in scenes["test"].values()}
    assert not train & {layout(s) for s in scenes["val"].values()}
    assert {s["relation"] for s in scenes["train"].values()} == set(INVERSE_RELATION)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_files_parse_with_expected_pair_counts_and_types(world, split):
    schema = TEST_SCHEMA if split == "test" else TRAIN_SCHEMA
    path = os.path.join(world, f"{split}.json")
    assert detect_schema(path) == schema
    skips: Counter = Counter()
    pairs = list(iter_hnc_pairs(path, skips=skips))
    n_images = SMALL[f"num_{split}_images"]
    assert not skips
    assert len(pairs) == n_images * PAIRS_PER_IMAGE
    assert len({p["image_id"] for p in pairs}) == n_images
    assert Counter(p["type"] for p in pairs) == {t: 2 * n_images for t in NEGATIVE_TYPES}
    assert all(p["positive"] != p["negative"] for p in pairs)


HNC_TRAIN_FIELDS = {
    "caption",
    "label",
    "type",
    "textual_label",
    "bboxes",
    "ambiguity",
    "noisy",
    "replaced",
    "cpt_p_id",
}


def test_train_schema_fields_mirror_hnc(world):
    with open(os.path.join(world, "train.json")) as f:
        data = json.load(f)
    ids: list[int] = []
    for entry in data.values():
        caps = entry["captions"]
        for cid, cap in caps.items():
            ids.append(int(cid))
            assert set(cap) == HNC_TRAIN_FIELDS
            if cap["label"] == 1:
                assert cap["cpt_p_id"] is None and cap["replaced"] is None
            else:
                assert cap["label"] == 0 and type(cap["cpt_p_id"]) is int  # int id, while keys are str
                pos = caps[str(cap["cpt_p_id"])]
                assert pos["label"] == 1 and pos["type"] == cap["type"]
                assert len(cap["replaced"]) == 2 and cap["textual_label"] == cap["replaced"][0]
    assert ids == list(range(len(ids)))  # caption ids are global and unique across the file, as in HNC


def test_test_schema_positive_at_2k_negative_at_2k_plus_1(world):
    with open(os.path.join(world, "test.json")) as f:
        data = json.load(f)
    for key, entry in data.items():
        assert key.endswith(".jpg")
        assert [int(k) for k in entry] == list(range(PAIRS_PER_IMAGE * 2))
        for k, cap in entry.items():
            assert set(cap) == {"caption", "label", "type", "replaced"}
            assert cap["label"] == (1 if int(k) % 2 == 0 else 0)
            if int(k) % 2:
                assert cap["type"] == entry[str(int(k) - 1)]["type"]


def test_every_referenced_image_exists_with_the_right_size(world):
    files = set()
    for split in ("train", "val", "test"):
        files |= {p["image_file"] for p in _pairs(world, split)}
    assert len(files) == SMALL["num_train_images"] + SMALL["num_val_images"] + SMALL["num_test_images"]
    assert files == set(os.listdir(os.path.join(world, "images")))
    for name in files:
        with Image.open(os.path.join(world, "images", name)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (32, 32)


def test_world_json_records_config_and_counts(world):
    with open(os.path.join(world, "world.json")) as f:
        info = json.load(f)
    assert info["config"]["seed"] == SMALL["seed"] and info["config"]["image_size"] == 32
    assert info["counts"]["train"]["pairs"] == SMALL["num_train_images"] * PAIRS_PER_IMAGE
    assert info["counts"]["recognition"]["images"] == 24 * SMALL["num_recognition_per_class"]
    assert not os.path.exists(os.path.join(world, synthetic.PARTIAL_MARKER))


# ------------------------------------------------------------------------------------- captions vs scenes


def test_relation_holds_needs_a_gap_and_a_dominant_axis():
    a = SceneObject("red", "circle", 0, 10, 8, (0, 0, 0))
    assert relation_holds(a, SceneObject("blue", "square", 12, 10, 8, (0, 0, 0)), "left of", 2)
    assert relation_holds(SceneObject("blue", "square", 12, 10, 8, (0, 0, 0)), a, "right of", 2)
    assert not relation_holds(a, SceneObject("blue", "square", 9, 10, 8, (0, 0, 0)), "left of", 2)  # gap 1 < 2
    assert not relation_holds(a, SceneObject("blue", "square", 12, 20, 8, (0, 0, 0)), "left of", 2)  # too diagonal
    assert relation_holds(a, SceneObject("blue", "square", 0, 20, 8, (0, 0, 0)), "above", 2)
    assert not relation_holds(a, SceneObject("blue", "square", 0, 20, 8, (0, 0, 0)), "below", 2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_positive_captions_are_true_of_the_scene(world, scenes, split):
    min_gap = WorldConfig(**{k: v for k, v in SMALL.items()}).min_gap
    for p in _pairs(world, split):
        objs = _objects(scenes[split][p["image_id"]])
        subj, rel, obj = _parse(p["positive"])
        assert subj in objs and obj in objs and subj != obj
        assert _true_relation(objs[subj], objs[obj]) == rel
        assert relation_holds(objs[subj], objs[obj], rel, min_gap)
        a, b = objs[subj], objs[obj]
        assert not (a.x < b.x + b.size and b.x < a.x + a.size and a.y < b.y + b.size and b.y < a.y + a.size)


def test_scene_objects_are_drawn_where_the_metadata_says(world, scenes):
    for image_id, scene in scenes["train"].items():
        with Image.open(os.path.join(world, "images", scene["image_file"])) as im:
            for o in scene["objects"]:
                b = o["bbox"]
                # The centre of a circle, square, cross and (base-heavy) triangle is inside the shape.
                cx, cy = b["x"] + b["w"] // 2, b["y"] + b["h"] * 2 // 3
                pixel = im.getpixel((cx, cy))
                dist = max(abs(p - q) for p, q in zip(pixel, COLOR_RGB[o["color"]], strict=True))
                assert dist <= 60, (image_id, o, pixel)
            corner_free = all(not (o["bbox"]["x"] <= 0 and o["bbox"]["y"] <= 0) for o in scene["objects"])
            if corner_free:
                assert max(im.getpixel((0, 0))) < 80  # dark background


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_negative_differs_from_its_positive_as_its_type_says(world, scenes, split):
    for p in _pairs(world, split):
        objs = _objects(scenes[split][p["image_id"]])
        (ps, prel, po), (ns, nrel, no) = _parse(p["positive"]), _parse(p["negative"])
        if p["type"] == "relation":
            assert (ns, no) == (ps, po) and nrel == INVERSE_RELATION[prel]
            assert _true_relation(objs[ns], objs[no]) != nrel
        elif p["type"] == "swap":
            assert (ns, nrel, no) == (po, prel, ps)
            assert _true_relation(objs[ns], objs[no]) != nrel
        else:
            slot = 0 if p["type"] == "attribute" else 1  # colour or shape
            assert nrel == prel
            changed = [(pos, neg) for pos, neg in ((ps, ns), (po, no)) if pos != neg]
            assert len(changed) == 1
            pos, neg = changed[0]
            assert pos[1 - slot] == neg[1 - slot] and pos[slot] != neg[slot]
            assert neg[slot] not in {d[slot] for d in objs}  # a colour/shape that no object of the scene has
            assert neg not in objs  # so the negative names an object that is not there


# ------------------------------------------------------------------------------------ recognition / model


def test_recognition_set_loads_as_imagefolder_with_the_right_labels(world, tmp_path):
    from datasets import load_dataset

    root = os.path.join(world, "recognition")
    with open(os.path.join(root, "classnames.json")) as f:
        classnames = json.load(f)
    with open(os.path.join(root, "templates.json")) as f:
        templates = json.load(f)
    assert all("{}" in t for t in templates)
    assert len(classnames) == len(COLOR_RGB) * 4 and classnames["red_circle"] == "red circle"
    ds = load_dataset("imagefolder", data_dir=root, split="train", cache_dir=str(tmp_path / "cache"))
    names = ds.features["label"].names
    assert sorted(names) == sorted(classnames)
    assert len(ds) == len(classnames) * SMALL["num_recognition_per_class"]
    assert Counter(ds["label"]) == {i: SMALL["num_recognition_per_class"] for i in range(len(names))}
    # Labels agree with the pixels: the one object's colour is the class colour.
    for ex in ds:
        color = classnames[names[ex["label"]]].split()[0]
        im = ex["image"].convert("RGB")
        assert im.size == (32, 32)
        # PNG is lossless: the most common bright pixel is the object's (jittered) fill.
        pixels = (im.getpixel((x, y)) for x in range(im.width) for y in range(im.height))
        fill = Counter(px for px in pixels if max(px) > 100).most_common(1)[0][0]
        assert max(abs(m - t) for m, t in zip(fill, COLOR_RGB[color], strict=True)) <= 20, (names[ex["label"]], fill)


def test_saved_world_model_loads_and_tokenizes_every_caption_without_unk(world, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model_dir = str(tmp_path / "model")
    save_world_model(world, model_dir, hidden_size=16, num_layers=1, num_heads=2, projection_dim=8, text_num_layers=1)
    model = CLIPModel.from_pretrained(model_dir)
    processor = CLIPProcessor.from_pretrained(model_dir)
    assert model.config.vision_config.image_size == 32 and model.config.vision_config.patch_size == 8
    texts = set(world_texts(WorldConfig(**SMALL)))
    for split in ("train", "val", "test"):
        for p in _pairs(world, split):
            texts.update((p["positive"], p["negative"]))
    ids = processor.tokenizer(sorted(texts), padding=True, return_tensors="pt")["input_ids"]
    assert (ids == processor.tokenizer.unk_token_id).sum().item() == 0
    assert ids.shape[1] <= model.config.text_config.max_position_embeddings
    # An image from the world through the real processor and model.
    image = Image.open(os.path.join(world, "images", "test_000000.jpg"))
    inputs = processor(text=["A red circle is left of a blue square."], images=[image], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_embeds.shape == (1, 8) and out.text_embeds.shape == (1, 8)
    # Same world + kwargs: nothing is rebuilt.
    mtime = os.path.getmtime(os.path.join(model_dir, "model.safetensors"))
    save_world_model(world, model_dir, hidden_size=16, num_layers=1, num_heads=2, projection_dim=8, text_num_layers=1)
    assert os.path.getmtime(os.path.join(model_dir, "model.safetensors")) == mtime


def test_words_outside_the_world_are_unk(world, tmp_path):
    # Guards the test above against a tokenizer that maps everything to known ids.
    from transformers import CLIPProcessor

    model_dir = str(tmp_path / "model")
    save_world_model(world, model_dir, hidden_size=16, num_layers=1, num_heads=2, projection_dim=8)
    tok = CLIPProcessor.from_pretrained(model_dir).tokenizer
    assert tok.unk_token_id in tok("a banana is left of a straw")["input_ids"]


# --------------------------------------------------------------------------------------- reruns / CLI


def test_rerun_with_same_config_is_skipped_and_changed_config_regenerates(tmp_path, monkeypatch):
    out = str(tmp_path / "w")
    small = {**SMALL, "num_recognition_per_class": 3}
    make_world(out, show_progress=False, **small)
    calls = []
    original = synthetic.generate_split
    monkeypatch.setattr(synthetic, "generate_split", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    make_world(out, show_progress=False, **small)
    assert calls == []
    make_world(out, show_progress=False, **{**small, "num_recognition_per_class": 1, "num_train_images": 4})
    assert calls == ["train", "val", "test"]
    # No stale files from the bigger world survive (they would become extra images/classes).
    assert sorted(os.listdir(os.path.join(out, "recognition", "red_circle"))) == ["0000.png"]
    assert len([f for f in os.listdir(os.path.join(out, "images")) if f.startswith("train_")]) == 4


def test_refuses_to_clear_a_directory_it_did_not_make(tmp_path):
    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        make_world(str(tmp_path), show_progress=False, **SMALL)
    assert (tmp_path / "images" / "keep.jpg").exists()


def test_config_rejects_worlds_that_cannot_be_generated():
    with pytest.raises(ValueError):
        WorldConfig(colors=["red", "blue"])  # no third colour for "attribute" negatives
    with pytest.raises(ValueError):
        WorldConfig(shapes=["circle", "hexagon", "square"])
    with pytest.raises(ValueError):
        WorldConfig(min_object_frac=0.45, max_object_frac=0.5)


def test_cli_writes_world_and_model(tmp_path):
    out, model_dir = str(tmp_path / "cli"), str(tmp_path / "cli_model")
    info = synthetic.main(*synthetic.make_parser().parse_args_into_dataclasses(
        [
            "--output_dir", out, "--num_train_images", "3", "--num_val_images", "1", "--num_test_images", "2",
            "--num_recognition_per_class", "1", "--seed", "3", "--no_progress", "--model_dir", model_dir,
            "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2", "--projection_dim", "8",
        ]
    ))  # fmt: skip
    assert info["counts"]["train"]["pairs"] == 3 * PAIRS_PER_IMAGE
    assert len(_pairs(out, "test")) == 2 * PAIRS_PER_IMAGE
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["vision_config"]["hidden_size"] == 16
