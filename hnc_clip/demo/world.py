"""A synthetic relational world in HNC's file formats: two coloured shapes in a spatial relation, with hard negatives.

No machine here can download GQA images or a pre-trained CLIP, so the demo needs data on which (a) a tiny CLIP
can be trained from scratch in minutes on a CPU and (b) plain CLIP training is known to fail where hard-negative
training succeeds. Contrastive image-text training famously learns "bags of words": a caption's colours and shapes
already pick out the right image in a batch, so nothing pushes the model to read *where* things are. Hard negatives
that keep every word and change only the relation ("relation") or the order ("swap") are exactly what HNC adds.

Each scene holds two objects (shape x colour) placed with a clear gap along one axis and a smaller offset along the
other, so exactly one of left of / right of / above / below describes it. Each image gets two positive statements
("A is left of B", "B is right of A") and, for each statement, one hard negative per type:

- ``relation``: the relation flipped (left of <-> right of, above <-> below),
- ``swap``: subject and object swapped,
- ``attribute``: one object's colour replaced by a colour that is in no object of the scene,
- ``object``: one object's shape replaced by a shape that is in no object of the scene.

As in HNC, every positive entry has exactly one negative (a statement appears once per negative type, with the
negative's type), and a negative's ``cpt_p_id`` is the *integer* id of its positive, whose key is a *string*.

Output layout of ``make_world(output_dir, ...)``::

    train.json, val.json        train/val schema  {image_id: {"captions": {caption_id: {...}}}}
    test.json                   test schema       {"<image_id>.jpg": {"0": positive, "1": negative, ...}}
    images/<image_id>.jpg       every scene of the three splits (JPEG 4:4:4, so colours survive)
    scenes.json                 {split: {image_id: {image_file, relation, objects: [{color, shape, bbox, rgb}]}}}
    recognition/<color>_<shape>/<n>.png   single-object images, `datasets` "imagefolder" layout
    recognition/classnames.json {folder: "red circle"},  recognition/templates.json ["a {}.", ...]
    world.json                  config + counts; written last and atomically, so its presence means "complete"

``write_plain_captions(output_dir, types)`` adds the plain-caption variant: the train split's positives without
their negatives, as a caption table (``plain/train.jsonl``) in the order the HNC reader yields the pairs of
``types``, so the same sampler seed gives the same batches; plus a lexicon and class vocabulary of the world's words
for the negative rules (``plain/lexicon.json``, ``plain/vocabulary.json``).

Generation is seeded per image (``random.Random("<seed>/<split>/<index>")``): the same seed gives byte-identical
files, and a split's scenes do not change when another split's size does.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..data.hnc import HncPair, HncWriter, hnc_test_entry, hnc_train_entry, iter_hnc_pairs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GENERATOR = "hnc_clip.demo.world"

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (155, 65, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NEGATIVE_TYPES = ("relation", "swap", "attribute", "object")
SPLITS = ("train", "val", "test")
RECOGNITION_TEMPLATES = ("a {}.", "a photo of a {}.", "a picture of a {}.")

WORLD_FILE = "world.json"
SCENES_FILE = "scenes.json"
IMAGES_DIR = "images"
RECOGNITION_DIR = "recognition"
PLAIN_DIR = "plain"
PARTIAL_MARKER = ".synthetic_world_partial"
MODEL_MARKER = "synthetic_world_model.json"

# The smallest model that learned relations from hard negatives within the demo's CPU budget (2 layers x 64 wide
# stayed at chance); its measured run is in docs/demo.md.
# Exact GELU, not CLIP's QuickGELU: one fused kernel instead of three element-wise ops, a quarter less time per
# training step at these sizes on a CPU.
DEFAULT_MODEL_KWARGS: dict = dict(
    patch_size=8, hidden_size=128, num_layers=4, num_heads=4, projection_dim=64, text_num_layers=2, hidden_act="gelu"
)


@dataclass
class WorldConfig:
    """Everything that determines a world's files; `world.json` stores it so reruns can skip generation."""

    num_train_images: int = field(default=4000, metadata={"help": "Scenes in train.json."})
    num_val_images: int = field(default=200, metadata={"help": "Scenes in val.json."})
    num_test_images: int = field(default=500, metadata={"help": "Held-out scenes in test.json (test schema)."})
    num_recognition_per_class: int = field(default=20, metadata={"help": "Single-object images per class."})
    image_size: int = field(default=32, metadata={"help": "Side of the square RGB images, in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed gives byte-identical files."})
    colors: list[str] = field(default_factory=lambda: list(COLOR_RGB), metadata={"help": "Colour names used."})
    shapes: list[str] = field(default_factory=lambda: list(SHAPES), metadata={"help": "Shape names used."})
    negative_types: list[str] = field(default_factory=lambda: list(NEGATIVE_TYPES), metadata={"help": "Types."})
    min_object_frac: float = field(default=0.25, metadata={"help": "Smallest object side / image side."})
    max_object_frac: float = field(default=0.375, metadata={"help": "Largest object side / image side."})
    min_gap_frac: float = field(default=0.08, metadata={"help": "Smallest gap along the relation axis / side."})
    color_jitter: int = field(default=20, metadata={"help": "Max per-channel RGB jitter of objects."})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of scene images."})

    def __post_init__(self) -> None:
        unknown = [c for c in self.colors if c not in COLOR_RGB] + [s for s in self.shapes if s not in SHAPES]
        unknown += [t for t in self.negative_types if t not in NEGATIVE_TYPES]
        if unknown:
            raise ValueError(f"unknown colours/shapes/negative types {unknown}")
        # "attribute"/"object" negatives need a colour/shape that is in neither object of the scene.
        if len(set(self.colors)) < 3 or len(set(self.shapes)) < 3:
            raise ValueError("need at least 3 colours and 3 shapes")
        if min(self.num_train_images, self.num_val_images, self.num_test_images, self.num_recognition_per_class) < 0:
            raise ValueError("counts must be >= 0")
        if not 0 < self.min_object_frac <= self.max_object_frac or 2 * self.max_object_frac + self.min_gap_frac > 1:
            raise ValueError("object sizes and gap do not fit two objects side by side")
        if self.image_size < 8:
            raise ValueError("image_size must be >= 8")

    @property
    def min_gap(self) -> int:
        return max(1, round(self.min_gap_frac * self.image_size))

    def num_images(self, split: str) -> int:
        return {"train": self.num_train_images, "val": self.num_val_images, "test": self.num_test_images}[split]


# ----------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneObject:
    """One shape: its words, its square bounding box (top-left x, y and side, in image pixels) and its fill."""

    color: str
    shape: str
    x: int
    y: int
    size: int
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2

    def bbox(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.size, "h": self.size}


@dataclass(frozen=True)
class Scene:
    """A rendered image's content: `objects[0]` is `relation` `objects[1]` (relation None for one object)."""

    image_id: str
    objects: tuple[SceneObject, ...]
    relation: str | None
    background: tuple[int, int, int]

    def to_json(self, image_file: str) -> dict:
        return {
            "image_file": image_file,
            "relation": self.relation,
            "objects": [
                {"color": o.color, "shape": o.shape, "bbox": o.bbox(), "rgb": list(o.rgb)} for o in self.objects
            ],
            "background": list(self.background),
        }


def relation_holds(a: SceneObject, b: SceneObject, relation: str, min_gap: int) -> bool:
    """True if `a` is clearly `relation` `b`: a gap of at least `min_gap` pixels along the relation's axis, and a
    centre offset along the other axis at most half the offset along it (so no other relation also fits)."""
    (ax, ay), (bx, by) = a.center, b.center
    if relation == "left of":
        return a.x + a.size + min_gap <= b.x and abs(ay - by) <= (bx - ax) / 2
    if relation == "right of":
        return relation_holds(b, a, "left of", min_gap)
    if relation == "above":
        return a.y + a.size + min_gap <= b.y and abs(ax - bx) <= (by - ay) / 2
    if relation == "below":
        return relation_holds(b, a, "above", min_gap)
    raise ValueError(f"unknown relation {relation!r}")


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _background(rng: random.Random) -> tuple[int, int, int]:
    # Dark and near-grey, so that no object colour (white included) is close to it.
    level = rng.randint(15, 45)
    return tuple(level + rng.randint(-6, 6) for _ in range(3))  # type: ignore[return-value]


def _object_size(rng: random.Random, config: WorldConfig) -> int:
    lo = max(3, round(config.min_object_frac * config.image_size))
    hi = max(lo, round(config.max_object_frac * config.image_size))
    return rng.randint(lo, hi)


def sample_pair_scene(rng: random.Random, config: WorldConfig, image_id: str, max_tries: int = 10_000) -> Scene:
    """Two objects with distinct (colour, shape) in a random relation, placed by rejection sampling."""
    relation = rng.choice(RELATIONS)
    while True:
        first = (rng.choice(config.colors), rng.choice(config.shapes))
        second = (rng.choice(config.colors), rng.choice(config.shapes))
        if first != second:  # identical descriptions would make "swap" a paraphrase, not a negative
            break
    side = config.image_size
    for _ in range(max_tries):
        objs = []
        for color, shape in (first, second):
            size = _object_size(rng, config)
            rgb = _jitter(COLOR_RGB[color], rng, config.color_jitter)
            objs.append(SceneObject(color, shape, rng.randint(0, side - size), rng.randint(0, side - size), size, rgb))
        if relation_holds(objs[0], objs[1], relation, config.min_gap):
            return Scene(image_id, tuple(objs), relation, _background(rng))
    raise RuntimeError(f"could not place two objects {relation!r} each other in {max_tries} tries; check sizes")


def sample_single_scene(rng: random.Random, config: WorldConfig, color: str, shape: str, image_id: str) -> Scene:
    """One object of the given class at a random size and position (for zero-shot recognition)."""
    size = _object_size(rng, config)
    x, y = rng.randint(0, config.image_size - size), rng.randint(0, config.image_size - size)
    obj = SceneObject(color, shape, x, y, size, _jitter(COLOR_RGB[color], rng, config.color_jitter))
    return Scene(image_id, (obj,), None, _background(rng))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    x0, y0, s = obj.x * scale, obj.y * scale, obj.size * scale
    x1, y1 = x0 + s - 1, y0 + s - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=obj.rgb)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1, y1), (x0, y1)], fill=obj.rgb)
    elif obj.shape == "cross":
        t = s // 3
        draw.rectangle((x0 + t, y0, x1 - t, y1), fill=obj.rgb)
        draw.rectangle((x0, y0 + t, x1, y1 - t), fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene, image_size: int, supersample: int = 4) -> Image.Image:
    """Draw at `supersample`x and box-downsample: anti-aliased edges keep shapes recognisable at 32 px."""
    big = Image.new("RGB", (image_size * supersample,) * 2, scene.background)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw_object(draw, obj, supersample)
    return big.resize((image_size, image_size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class Statement:
    """`subject` `relation` `object`, each side a (colour, shape) description."""

    subject: tuple[str, str]
    relation: str
    object: tuple[str, str]

    @property
    def text(self) -> str:
        return caption_text(self.subject, self.relation, self.object)


def caption_text(subject: tuple[str, str], relation: str, obj: tuple[str, str]) -> str:
    return f"A {subject[0]} {subject[1]} is {relation} a {obj[0]} {obj[1]}."


@dataclass(frozen=True)
class CaptionPair:
    """A positive statement, its hard negative, and what was changed (`replaced` = [old, new], as HNC)."""

    positive: Statement
    negative: Statement
    type: str
    replaced: tuple[str, str]


def positive_statements(scene: Scene) -> list[Statement]:
    """The scene's relation stated both ways: "A is left of B" and "B is right of A"."""
    a, b = ((o.color, o.shape) for o in scene.objects)
    return [Statement(a, scene.relation, b), Statement(b, INVERSE_RELATION[scene.relation], a)]


def make_negative(
    statement: Statement, neg_type: str, scene: Scene, config: WorldConfig, rng: random.Random
) -> CaptionPair:
    """The hard negative of `statement` of type `neg_type`; false for the scene by construction."""
    subj, rel, obj = statement.subject, statement.relation, statement.object
    if neg_type == "relation":
        neg, replaced = Statement(subj, INVERSE_RELATION[rel], obj), (rel, INVERSE_RELATION[rel])
    elif neg_type == "swap":
        neg, replaced = Statement(obj, rel, subj), (" ".join(subj), " ".join(obj))
    elif neg_type in ("attribute", "object"):
        slot = 0 if neg_type == "attribute" else 1
        in_scene = {(o.color, o.shape)[slot] for o in scene.objects}
        options = [v for v in (config.colors if slot == 0 else config.shapes) if v not in in_scene]
        new = rng.choice(options)
        change_subject = rng.random() < 0.5
        target = subj if change_subject else obj
        changed = (new, target[1]) if slot == 0 else (target[0], new)
        neg = Statement(changed, rel, obj) if change_subject else Statement(subj, rel, changed)
        replaced = (target[slot], new)
    else:
        raise ValueError(f"unknown negative type {neg_type!r}")
    return CaptionPair(statement, neg, neg_type, replaced)


def scene_caption_pairs(scene: Scene, config: WorldConfig, rng: random.Random) -> list[CaptionPair]:
    """One pair per (positive statement, negative type), statements first, in a fixed order."""
    return [
        make_negative(st, t, scene, config, rng) for st in positive_statements(scene) for t in config.negative_types
    ]


# ------------------------------------------------------------------------------------------ JSON records


def _mentioned_bboxes(statement: Statement, scene: Scene) -> dict:
    """HNC-style `bboxes` of the scene objects a caption mentions, in mention order; absent objects are omitted."""
    by_desc = {(o.color, o.shape): (k, o) for k, o in enumerate(scene.objects)}
    out = {}
    for desc in (statement.subject, statement.object):
        if desc in by_desc:
            k, o = by_desc[desc]
            out[f"{scene.image_id}_{k}"] = {"bbox": o.bbox(), "name": o.shape}
    return out


def _ambiguity(statement: Statement) -> dict:
    return {
        "subgraph": [statement.subject[1], statement.relation, statement.object[1]],
        "ambiguous": False,
        "count": 0,
    }


def hnc_pair(pair: CaptionPair, scene: Scene) -> HncPair:
    """A caption pair as the HNC writer takes it, with HNC's extra caption fields (bboxes, ambiguity, ...)."""
    return HncPair(
        positive=pair.positive.text,
        negative=pair.negative.text,
        type=pair.type,
        replaced=list(pair.replaced),
        positive_fields={
            "textual_label": None,
            "bboxes": _mentioned_bboxes(pair.positive, scene),
            "ambiguity": _ambiguity(pair.positive),
            "noisy": False,
        },
        negative_fields={
            "textual_label": pair.replaced[0],
            "bboxes": _mentioned_bboxes(pair.negative, scene),
            "ambiguity": _ambiguity(pair.negative),
            "noisy": None,
        },
    )


# ---------------------------------------------------------------------------------------------- writing


def image_id_for(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _image_rng(seed: int, *parts: object) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so it does not depend on PYTHONHASHSEED.
    return random.Random("/".join(map(str, ("hnc-synthetic", seed, *parts))))


def _save_jpeg(image: Image.Image, path: str, quality: int) -> None:
    # subsampling=0 (4:4:4): default 4:2:0 chroma subsampling would smear 10-pixel coloured shapes.
    image.save(path, format="JPEG", quality=quality, subsampling=0)


def _write_json(path: str, obj, indent: int | None = None) -> None:
    """Write via a temporary file and `os.replace`, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def generate_split(
    output_dir: str, split: str, config: WorldConfig, show_progress: bool = True
) -> tuple[dict, Counter]:
    """Render `split`'s scenes into `images/`, write `<split>.json` in its HNC schema (the library's writer) and
    return (scenes dict, pair counts by type)."""
    scenes: dict = {}
    types: Counter = Counter()
    next_caption_id = 0
    writer = HncWriter(os.path.join(output_dir, f"{split}.json"))
    for i in tqdm(range(config.num_images(split)), desc=f"render {split}", disable=not show_progress):
        image_id = image_id_for(split, i)
        rng = _image_rng(config.seed, split, i)
        scene = sample_pair_scene(rng, config, image_id)
        pairs = scene_caption_pairs(scene, config, rng)
        image_file = f"{image_id}.jpg"
        _save_jpeg(
            render_scene(scene, config.image_size),
            os.path.join(output_dir, IMAGES_DIR, image_file),
            config.jpeg_quality,
        )
        written = [hnc_pair(p, scene) for p in pairs]
        if split == "test":
            writer.add(image_file, hnc_test_entry(written))  # test-schema keys are file names, like "n100552.jpg"
        else:
            writer.add(image_id, hnc_train_entry(written, next_caption_id))
            next_caption_id += 2 * len(pairs)
        scenes[image_id] = scene.to_json(image_file)
        types.update(p.type for p in pairs)
    writer.close()
    return scenes, types


def recognition_classes(config: WorldConfig) -> dict[str, str]:
    """Folder name -> class text, e.g. `red_circle` -> "red circle"."""
    return {f"{c}_{s}": f"{c} {s}" for c in config.colors for s in config.shapes}


def generate_recognition(output_dir: str, config: WorldConfig, show_progress: bool = True) -> int:
    """Single-object PNGs in `recognition/<class>/<n>.png` plus classnames.json and templates.json."""
    root = os.path.join(output_dir, RECOGNITION_DIR)
    classes = recognition_classes(config)
    count = 0
    for folder, text in tqdm(classes.items(), desc="render recognition", disable=not show_progress):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        color, shape = text.split(" ")
        for n in range(config.num_recognition_per_class):
            rng = _image_rng(config.seed, "recognition", folder, n)
            scene = sample_single_scene(rng, config, color, shape, f"{folder}_{n}")
            render_scene(scene, config.image_size).save(os.path.join(root, folder, f"{n:04d}.png"), format="PNG")
            count += 1
    _write_json(os.path.join(root, "classnames.json"), classes, indent=1)
    _write_json(os.path.join(root, "templates.json"), list(RECOGNITION_TEMPLATES), indent=1)
    return count


def load_world_info(output_dir: str) -> dict | None:
    """The parsed `world.json` of a complete world in `output_dir`, or None."""
    path = os.path.join(output_dir, WORLD_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR else None


def _prepare_output_dir(output_dir: str) -> None:
    """Clear what an older world left, but refuse to delete `images/` etc. of a directory we did not make."""
    os.makedirs(output_dir, exist_ok=True)
    marker = os.path.join(output_dir, PARTIAL_MARKER)
    ours = load_world_info(output_dir) is not None or os.path.exists(marker)
    owned = [os.path.join(output_dir, d) for d in (IMAGES_DIR, RECOGNITION_DIR)]
    if not ours and any(os.path.exists(p) for p in owned):
        raise FileExistsError(f"{output_dir} holds images/ or recognition/ but no synthetic world; use another dir")
    open(marker, "w").close()  # a crash from here on leaves the marker, so the next run may clean up
    for name in (WORLD_FILE, *(f"{s}.json" for s in SPLITS), SCENES_FILE):
        if os.path.exists(p := os.path.join(output_dir, name)):
            os.remove(p)
    for p in owned:
        shutil.rmtree(p, ignore_errors=True)  # stale files would otherwise leak into imagefolder classes
    os.makedirs(owned[0])


def generate_world(output_dir: str, config: WorldConfig, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Write a whole world (see module docstring) and return its `world.json` content.

    If `output_dir` already holds a complete world with the same config, nothing is written (reruns are fast).
    """
    existing = load_world_info(output_dir)
    if not overwrite and existing and existing.get("format_version") == FORMAT_VERSION:
        if existing.get("config") == asdict(config):
            logger.info("synthetic world in %s is up to date; not regenerating", output_dir)
            return existing
    _prepare_output_dir(output_dir)
    counts: dict = {}
    all_scenes: dict = {}
    for split in SPLITS:
        scenes, types = generate_split(output_dir, split, config, show_progress)
        all_scenes[split] = scenes
        counts[split] = {
            "images": len(scenes),
            "pairs": sum(types.values()),
            "pairs_by_type": dict(sorted(types.items())),
        }
    _write_json(os.path.join(output_dir, SCENES_FILE), all_scenes)
    n_rec = generate_recognition(output_dir, config, show_progress)
    counts["recognition"] = {"classes": len(recognition_classes(config)), "images": n_rec}
    info = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "counts": counts,
        "files": {s: f"{s}.json" for s in SPLITS}
        | {"images": IMAGES_DIR, "scenes": SCENES_FILE, "recognition": RECOGNITION_DIR},
        "relations": list(RELATIONS),
        "recognition_templates": list(RECOGNITION_TEMPLATES),
    }
    _write_json(os.path.join(output_dir, WORLD_FILE), info, indent=1)  # last: its presence means "complete"
    os.remove(os.path.join(output_dir, PARTIAL_MARKER))
    return info


def make_world(
    output_dir: str,
    num_train_images: int = 4000,
    num_val_images: int = 200,
    num_test_images: int = 500,
    num_recognition_per_class: int = 20,
    image_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    show_progress: bool = True,
    **config_kwargs,
) -> dict:
    """Generate a world into `output_dir` (skipped if one with the same config is there); returns world.json."""
    config = WorldConfig(
        num_train_images=num_train_images,
        num_val_images=num_val_images,
        num_test_images=num_test_images,
        num_recognition_per_class=num_recognition_per_class,
        image_size=image_size,
        seed=seed,
        **config_kwargs,
    )
    return generate_world(output_dir, config, overwrite=overwrite, show_progress=show_progress)


# ------------------------------------------------------------------------------------------ plain captions


def world_lexicon(config: WorldConfig) -> dict[str, str]:
    """Word -> Universal POS of every word a caption of the world holds (the rules' `lexicon:` parser)."""
    relation_words = {w for rel in RELATIONS for w in rel.split()}
    return {
        "a": "DET", "is": "AUX", "of": "ADP",
        **{w: "ADP" if w in ("above", "below", "of") else "ADV" for w in relation_words},
        **dict.fromkeys(config.colors, "ADJ"), **dict.fromkeys(config.shapes, "NOUN"),
    }  # fmt: skip


def world_vocabulary(config: WorldConfig) -> dict:
    """The world's classes in `hnc_clip.negatives.vocabulary`'s format: colours, shapes, relations and antonyms."""
    return {
        "about": "The synthetic world's words (hnc_clip.demo.world), for --negative_vocabulary.",
        "attributes": {"color": [[c] for c in config.colors]},
        "objects": {"shape": [[s] for s in config.shapes]},
        "relations": {"spatial": [[r] for r in RELATIONS]},
        "antonyms": [[a, b] for a, b in INVERSE_RELATION.items() if a < b],
    }


def write_plain_captions(output_dir: str, types: Iterable[str]) -> dict[str, str]:
    """The plain-caption variant of a complete world (see the module docstring); returns the paths written."""
    info = load_world_info(output_dir)
    if info is None:
        raise FileNotFoundError(f"{output_dir}: no complete synthetic world (world.json)")
    config = WorldConfig(**info["config"])
    wanted = set(types)
    plain = os.path.join(output_dir, PLAIN_DIR)
    os.makedirs(plain, exist_ok=True)
    paths = {name: os.path.join(plain, name) for name in ("train.jsonl", "lexicon.json", "vocabulary.json")}
    tmp = f"{paths['train.jsonl']}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for pair in iter_hnc_pairs(os.path.join(output_dir, "train.json")):
            if pair["type"] in wanted:
                f.write(json.dumps({"image": pair["image_file"], "caption": pair["positive"]}) + "\n")
    os.replace(tmp, paths["train.jsonl"])
    _write_json(paths["lexicon.json"], world_lexicon(config), indent=1)
    _write_json(paths["vocabulary.json"], world_vocabulary(config), indent=1)
    return paths


# ------------------------------------------------------------------------------------------------ model


def all_statements(config: WorldConfig) -> Iterator[Statement]:
    """Every statement the world can write, positive or negative (any two distinct descriptions, any relation)."""
    descs = [(c, s) for c in config.colors for s in config.shapes]
    for a in descs:
        for b in descs:
            if a != b:
                for rel in RELATIONS:
                    yield Statement(a, rel, b)


def world_texts(config: WorldConfig) -> list[str]:
    """All caption texts plus the recognition prompts: one tokenizer built from them has no unknown words."""
    prompts = [t.format(name) for name in recognition_classes(config).values() for t in RECOGNITION_TEMPLATES]
    return [s.text for s in all_statements(config)] + prompts


def save_world_model(output_dir: str, model_dir: str, overwrite: bool = False, **model_kwargs) -> str:
    """Save a randomly initialised tiny `CLIPModel` + `CLIPProcessor` for the world in `output_dir` to `model_dir`.

    The tokenizer covers the world's whole vocabulary; the image processor works at the world's image size (so
    it resizes nothing). `model_kwargs` override `DEFAULT_MODEL_KWARGS` (see `hnc_clip.tiny.build_tiny_clip`).
    Skipped if `model_dir` already holds a model saved for the same world config and kwargs.
    """
    from hnc_clip.tiny import save_tiny_clip

    info = load_world_info(output_dir)
    if info is None:
        raise FileNotFoundError(f"no synthetic world in {output_dir}; run make_world first")
    config = WorldConfig(**info["config"])
    kwargs = {**DEFAULT_MODEL_KWARGS, **model_kwargs}
    image_size = kwargs.pop("image_size", config.image_size)
    stamp = {"world_config": info["config"], "image_size": image_size, "model_kwargs": kwargs}
    marker = os.path.join(model_dir, MODEL_MARKER)
    if not overwrite and os.path.isfile(marker) and os.path.isfile(os.path.join(model_dir, "config.json")):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == stamp:
                logger.info("model in %s is up to date; not rebuilding", model_dir)
                return model_dir
    save_tiny_clip(model_dir, world_texts(config), image_size=image_size, **kwargs)
    _write_json(marker, stamp, indent=1)
    return model_dir


# -------------------------------------------------------------------------------------------------- CLI


@dataclass
class SyntheticArguments:
    """Where to write; the world's content is `WorldConfig`, the model's size `WorldModelArguments`."""

    output_dir: str = field(metadata={"help": "Directory for the world (train/val/test JSON, images, ...)."})
    model_dir: str | None = field(default=None, metadata={"help": "Also save an untrained tiny CLIP here."})
    overwrite: bool = field(default=False, metadata={"help": "Regenerate even if an identical world exists."})
    no_progress: bool = field(default=False, metadata={"help": "Hide tqdm progress bars."})


@dataclass
class WorldModelArguments:
    """Size of the tiny CLIP saved with `--model_dir` (defaults: `DEFAULT_MODEL_KWARGS`)."""

    patch_size: int = field(default=DEFAULT_MODEL_KWARGS["patch_size"])
    hidden_size: int = field(default=DEFAULT_MODEL_KWARGS["hidden_size"])
    num_layers: int = field(default=DEFAULT_MODEL_KWARGS["num_layers"])
    num_heads: int = field(default=DEFAULT_MODEL_KWARGS["num_heads"])
    projection_dim: int = field(default=DEFAULT_MODEL_KWARGS["projection_dim"])
    text_hidden_size: int | None = field(default=None, metadata={"help": "Defaults to hidden_size."})
    text_num_layers: int | None = field(default=DEFAULT_MODEL_KWARGS["text_num_layers"])
    model_seed: int = field(default=0, metadata={"help": "Seed of the random initialisation."})


def make_parser():
    from transformers import HfArgumentParser

    parts = (SyntheticArguments, WorldConfig, WorldModelArguments)
    return HfArgumentParser(parts, prog="python -m hnc_clip.demo.world")


def main(args: SyntheticArguments, config: WorldConfig, model_args: WorldModelArguments) -> dict:
    """Write the world (and, with `--model_dir`, an untrained tiny CLIP for it); return the world's info."""
    info = generate_world(args.output_dir, config, overwrite=args.overwrite, show_progress=not args.no_progress)
    logger.info("world in %s: %s", args.output_dir, json.dumps(info["counts"]))
    if args.model_dir:
        kwargs = asdict(model_args)
        kwargs["seed"] = kwargs.pop("model_seed")
        save_world_model(args.output_dir, args.model_dir, overwrite=args.overwrite, **kwargs)
        logger.info("untrained tiny CLIP for the world saved to %s", args.model_dir)
    return info


def cli(argv: list[str] | None = None) -> int:
    """`python -m hnc_clip.demo.world`: exit status 0 once the world is written (errors raise)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(*make_parser().parse_args_into_dataclasses(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
