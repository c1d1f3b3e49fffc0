"""CLIP_benchmark's webdataset layout (`clip-benchmark/wds_*` on the Hub), read with `tarfile` alone.

    <root>/test/nshards.txt, <root>/test/0.tar ... (samples `<key>.<webp|png|jpg|jpeg>` + `<key>.cls` or `<key>.txt`)
    <root>/classnames.txt, <root>/zeroshot_classification_templates.txt, <root>/dataset_type.txt (retrieval)

as `clip_benchmark.datasets.builder.build_wds_dataset` reads it: shards 0..nshards-1 in order, a sample's label is
the integer in `.cls`, a retrieval sample's captions are the lines of `.txt`. Images stay inside the tars
(`ImageRef(member=...)`); each DataLoader worker opens a shard once.
"""

from __future__ import annotations

import os
import tarfile

from ..images import ImageRef
from ..records import DataFileError

# A label or a few captions: a text member past this is no CLIP_benchmark sample (not read: counted as broken).
MAX_TEXT_MEMBER = 1 << 20
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's `.to_tuple(["webp", "png", "jpg", "jpeg"], ...)`


def read_txt(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def shard_paths(root: str, split: str = "test") -> list[str]:
    path = os.path.join(root, split, "nshards.txt")
    text = read_txt(path).strip()
    if not text.isdigit():
        raise DataFileError(f"{path}: holds {text[:40]!r}, expected the number of shards")
    nshards = int(text)
    return [os.path.join(split, f"{i}.tar") for i in range(nshards)]


def iter_samples(root: str, split: str = "test"):
    """(shard path relative to root, key, {extension: member name}, {extension: bytes of the small text members})."""
    for shard in shard_paths(root, split):
        samples: dict[str, dict[str, str]] = {}
        texts: dict[str, dict[str, bytes]] = {}
        with tarfile.open(os.path.join(root, shard)) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext.lower()] = member.name
                if ext.lower() in ("cls", "txt") and member.size <= MAX_TEXT_MEMBER:
                    texts.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
        for key, members in samples.items():
            yield shard, key, members, texts.get(key, {})


def image_member(shard: str, members: dict[str, str]) -> ImageRef | None:
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    return None if ext is None else ImageRef(shard, None, members[ext])


def classification_samples(root: str, split: str = "test") -> tuple[list[ImageRef], list[int], int]:
    """(image references, labels, samples without an image or a label)."""
    refs, labels, broken = [], [], 0
    for shard, key, members, texts in iter_samples(root, split):
        ref = image_member(shard, members)
        if ref is None or "cls" not in texts:
            broken += 1
            continue
        label = texts["cls"].decode("utf-8", errors="replace").strip()
        if not label.lstrip("-").isdigit():
            raise DataFileError(f"{os.path.join(root, shard)}: sample {key}: .cls holds {label[:40]!r}, expected an "
                                "integer class")  # fmt: skip
        refs.append(ref)
        labels.append(int(label))
    return refs, labels, broken


def retrieval_samples(root: str, split: str = "test") -> tuple[list[tuple[ImageRef, list[str]]], int]:
    """([(image, captions)], samples without an image or captions); captions are `str.splitlines` of `.txt`."""
    out, broken = [], 0
    for shard, key, members, texts in iter_samples(root, split):
        ref = image_member(shard, members)
        try:
            captions = texts.get("txt", b"").decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataFileError(f"{os.path.join(root, shard)}: sample {key}: .txt is not UTF-8 ({err})") from err
        if ref is None or not captions:
            broken += 1
            continue
        out.append((ref, captions))
    return out, broken


def read_lines(path: str) -> list[str]:
    return [line.strip() for line in read_txt(path).splitlines()]
