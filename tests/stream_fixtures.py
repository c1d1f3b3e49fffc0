"""Image–caption data written by the tests in the layouts users bring: WebDataset shards (open_clip's), an image folder
with metadata (datasets' imagefolder), and a folder of Parquet files with an `Image` column standing for a Hub
dataset (what `load_dataset(name)` streams)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image


def jpeg(i: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, captions: list[str], shards: int, per_shard: int, json_captions: bool = False) -> str:
    """`shards` tar files of `per_shard` samples (<key>.jpg + <key>.txt, or <key>.json {"caption": ...}); captions
    are used in turn. Returns the brace pattern naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                caption = captions[n % len(captions)]
                add_member(tar, f"{key}.jpg", jpeg(n))
                if json_captions:
                    add_member(tar, f"{key}.json", json.dumps({"caption": caption}).encode())
                else:
                    add_member(tar, f"{key}.txt", caption.encode())
                n += 1
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_imagefolder(folder: Path, captions: list[str], n: int) -> Path:
    """datasets' imagefolder: images + metadata.jsonl with `file_name` and `caption`."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(n):
            (folder / f"img{i:03d}.jpg").write_bytes(jpeg(i))
            f.write(json.dumps({"file_name": f"img{i:03d}.jpg", "caption": captions[i % len(captions)]}) + "\n")
    return folder


def write_hub_like(folder: Path, captions: list[str], n: int, per_image: int = 1, files: int = 2) -> Path:
    """Parquet files of a dataset with an `Image` column and a `captions` column holding `per_image` captions per
    image (COCO's five), as the Hub stores them."""
    import datasets

    rows = {"image": [{"bytes": jpeg(i), "path": None} for i in range(n)],
            "captions": [[captions[(i * per_image + j) % len(captions)] for j in range(per_image)] for i in range(n)]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}))  # fmt: skip
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        ds.shard(files, i, contiguous=True).to_parquet(str(data / f"train-{i:05d}-of-{files:05d}.parquet"))
    return folder
