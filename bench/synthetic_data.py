"""Synthetic GQA-like data for the benchmarks: photo-like JPEGs of GQA's size and HNC-like captions, written in the
HNC train schema by the library's writer (`hnc_clip.data.hnc`). Nothing is downloaded."""

from __future__ import annotations

import os
import random

import numpy as np
from PIL import Image

from hnc_clip.data.hnc import HncPair, HncWriter, hnc_train_entry

GQA_SIZE = (500, 375)  # (width, height) of a typical GQA image

OBJECTS = "banana straw plate cup table chair man woman dog cat horse car tree building window door shirt hat".split()
ATTRIBUTES = "yellow red blue green white black brown small large wooden metal tall short open closed".split()
RELATIONS = ("to the left of", "to the right of", "on top of", "under", "behind", "in front of", "next to")


def caption(rng: random.Random) -> str:
    """An HNC-like caption of 7–22 words (HNC's are ~10–20 tokens): a relation, optionally a second clause."""
    text = f"the {rng.choice(ATTRIBUTES)} {rng.choice(OBJECTS)} is {rng.choice(RELATIONS)} the {rng.choice(OBJECTS)}"
    if rng.random() < 0.4:
        text += f" and the {rng.choice(OBJECTS)} is {rng.choice(RELATIONS)} the {rng.choice(OBJECTS)}"
    return text + "."


def photo_like(rng: np.random.Generator, size: tuple[int, int] = GQA_SIZE) -> Image.Image:
    """Smooth colour fields + mild noise: decodes like a photo (a pure-noise JPEG is ~4× larger and slower)."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_jpeg_range(image_dir: str, start: int, stop: int, size: tuple[int, int], seed: int) -> None:
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        photo_like(rng, size).save(os.path.join(image_dir, f"{2_300_000 + i}.jpg"), quality=90)


def write_jpegs(
    image_dir: str, n: int, size: tuple[int, int] = GQA_SIZE, seed: int = 0, workers: int = 1
) -> list[str]:
    """`n` JPEGs (quality 90, as GQA's) named like GQA (`<image_id>.jpg`), in `workers` processes; returns names."""
    os.makedirs(image_dir, exist_ok=True)
    bounds = [n * k // workers for k in range(workers + 1)]
    jobs = [(image_dir, a, b, size, seed) for a, b in zip(bounds, bounds[1:]) if b > a]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            pool.starmap(_write_jpeg_range, jobs)
    else:
        for job in jobs:
            _write_jpeg_range(*job)
    return [f"{2_300_000 + i}.jpg" for i in range(n)]


def write_hnc_json(path: str, image_files: list[str], pairs_per_image: int, seed: int = 0) -> list[str]:
    """A train-schema HNC file of these images (the library's streaming writer); returns all caption texts."""
    rng = random.Random(seed)
    texts = []
    with HncWriter(path) as writer:
        for i, name in enumerate(image_files):
            pairs = [HncPair(caption(rng), caption(rng), "relation_subj") for _ in range(pairs_per_image)]
            texts += [t for p in pairs for t in (p.positive, p.negative)]
            writer.add(os.path.splitext(name)[0], hnc_train_entry(pairs, 2 * pairs_per_image * i))
    return texts
