"""`hnc_clip.data.image_cache`: the cache gives the on-the-fly pixels, commits atomically, and skips missing images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hnc_clip.data import ImageJoin, ImageLoadError, image_cache
from hnc_clip.data.image_cache import INDEX_FILE, CachedImageJoin, prepare
from hnc_clip.scripts import build_image_cache
from hnc_clip.tiny import build_image_processor

# 1/255 in [0, 1] pixel space; compared after undoing the std, so the tolerance is the same in every channel.
TOLERANCE = 1 / 255 + 1e-6


def _photo(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour fields plus noise: JPEG artefacts and bicubic over/undershoot both occur, as in photos."""
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(small, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """GQA-like sizes and the odd ones: portrait, smaller than the crop, grayscale, PNG with alpha."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("cache_images")
    specs = {"a.jpg": (375, 500, "RGB"), "b.jpg": (500, 333, "RGB"), "c.jpg": (20, 28, "RGB"), "d.jpg": (90, 120, "L")}
    for name, (h, w, mode) in specs.items():
        _photo(rng, h, w, mode).save(out / name, quality=90)
    _photo(rng, 64, 48, "RGBA").save(out / "e.png")
    (out / "broken.jpg").write_bytes(b"not a jpeg")
    return out


@pytest.fixture(scope="module")
def processor():
    return build_image_processor(32)


def _batch(names):
    return {"image_file": list(names), "positive": ["p"] * len(names)}


def test_cache_equals_on_the_fly(image_dir, processor, tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.png"]
    index = prepare(str(image_dir), str(tmp_path), processor, names, num_workers=2, progress=False)
    assert index["shape"] == [5, 32, 32, 3] and set(index["files"]) == set(names) and not index["failed"]

    order = ["d.jpg", "a.jpg", "e.png", "a.jpg", "c.jpg", "b.jpg"]  # any order, repeats: rows are looked up
    cached = CachedImageJoin(str(tmp_path), processor)(_batch(order))["pixel_values"]
    fresh = ImageJoin(str(image_dir), processor)(_batch(order))["pixel_values"]
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    for name, c, f in zip(order, cached, fresh):
        assert c.dtype == torch.float32 and c.shape == f.shape == (3, 32, 32), name
        assert ((c - f).abs() * std).max().item() <= TOLERANCE, name


def test_missing_and_unreadable_images_become_none(image_dir, processor, tmp_path):
    index = prepare(str(image_dir), str(tmp_path), processor, ["a.jpg", "broken.jpg", "gone.jpg"], progress=False)
    assert set(index["failed"]) == {"broken.jpg", "gone.jpg"} and list(index["files"]) == ["a.jpg"]
    out = CachedImageJoin(str(tmp_path), processor)(_batch(["gone.jpg", "a.jpg", "broken.jpg", "never_listed.jpg"]))
    assert [p is None for p in out["pixel_values"]] == [True, False, True, True]
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        CachedImageJoin(str(tmp_path), processor, on_missing="error")(_batch(["broken.jpg"]))


def test_whole_dir_and_pickle_without_pixels(image_dir, processor, tmp_path):
    import pickle

    index = prepare(str(image_dir), str(tmp_path), processor, progress=False)  # no list: every image in the dir
    assert set(index["files"]) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.png"} and "broken.jpg" in index["failed"]
    join = CachedImageJoin(str(tmp_path), processor)
    join(_batch(["a.jpg"]))  # maps the pixels
    clone = pickle.loads(pickle.dumps(join))  # what a spawned DataLoader worker receives
    assert clone._pixels is None and len(pickle.dumps(join)) < 10_000
    assert torch.equal(clone(_batch(["a.jpg"]))["pixel_values"][0], join(_batch(["a.jpg"]))["pixel_values"][0])


def test_interrupted_build_leaves_old_cache_intact(image_dir, processor, tmp_path, monkeypatch):
    prepare(str(image_dir), str(tmp_path), processor, ["a.jpg", "b.jpg"], progress=False)
    before = {n: os.path.getmtime(tmp_path / n) for n in os.listdir(tmp_path)}
    old = CachedImageJoin(str(tmp_path), processor)(_batch(["a.jpg", "b.jpg"]))["pixel_values"]

    calls = {"n": 0}
    real = image_cache.resize_and_crop

    def dies_midway(proc, path, *bounds):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C half-way through the images
        return real(proc, path, *bounds)

    monkeypatch.setattr(image_cache, "resize_and_crop", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(image_dir), str(tmp_path), processor, ["c.jpg", "d.jpg", "e.png"], progress=False)
    # Nothing new is visible: same files, untouched, no temp file left; readers still get the old rows.
    assert {n: os.path.getmtime(tmp_path / n) for n in os.listdir(tmp_path)} == before
    again = CachedImageJoin(str(tmp_path), processor)(_batch(["a.jpg", "b.jpg"]))["pixel_values"]
    assert all(torch.equal(x, y) for x, y in zip(old, again))


def test_index_is_the_last_write(image_dir, processor, tmp_path, monkeypatch):
    """Only the final rename creates index.json, after the pixels are in place under their final name."""
    events = []
    real_replace = os.replace

    def spy(src, dst):
        events.append((os.path.basename(str(src)), os.path.basename(str(dst)), os.path.exists(tmp_path / INDEX_FILE)))
        return real_replace(src, dst)

    monkeypatch.setattr(image_cache.os, "replace", spy)
    index = prepare(str(image_dir), str(tmp_path), processor, ["a.jpg"], progress=False)
    assert [e[1] for e in events] == [index["pixels"], INDEX_FILE]
    assert events[0][0] == index["pixels"] + ".tmp" and not events[0][2] and not events[1][2]
    assert sorted(os.listdir(tmp_path)) == sorted([INDEX_FILE, index["pixels"]])
    assert json.loads((tmp_path / INDEX_FILE).read_text())["pixels"] == index["pixels"]


def test_rebuild_replaces_and_cleans(image_dir, processor, tmp_path):
    first = prepare(str(image_dir), str(tmp_path), processor, ["a.jpg"], progress=False)
    second = prepare(str(image_dir), str(tmp_path), processor, ["a.jpg", "b.jpg"], progress=False)
    assert first["pixels"] != second["pixels"]
    assert sorted(os.listdir(tmp_path)) == sorted([INDEX_FILE, second["pixels"]])


def test_other_geometry_is_refused(image_dir, processor, tmp_path):
    prepare(str(image_dir), str(tmp_path), processor, ["a.jpg"], progress=False)
    with pytest.raises(ValueError, match="rebuild it for this model"):
        CachedImageJoin(str(tmp_path), build_image_processor(48))
    with pytest.raises(FileNotFoundError, match="index.json"):
        CachedImageJoin(str(tmp_path / "nowhere"), processor)
    with pytest.raises(ValueError, match="no images to cache"):
        prepare(str(image_dir), str(tmp_path / "empty"), processor, [], progress=False)


def test_cli(image_dir, processor, tmp_path, capsys):
    processor.save_pretrained(tmp_path / "model")  # what a model directory holds for its image processor
    index = build_image_cache.main(build_image_cache.make_parser().parse_args(
        [
            "--image_dir",
            str(image_dir),
            "--output_dir",
            str(tmp_path / "c"),
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--num_workers",
            "1",
        ]
    ))  # fmt: skip
    assert index["shape"][1:] == [32, 32, 3]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cached"] == 5


def test_uint8_rows_normalised_on_the_device_equal_the_float_rows(image_dir, processor, tmp_path):
    from hnc_clip.data import HncCollator
    from hnc_clip.data.batches import pixel_affine_of
    from hnc_clip.data.image_cache import pixel_affine
    from hnc_clip.forward import normalize_pixels
    from hnc_clip.tiny import build_word_tokenizer

    names = ["a.jpg", "b.jpg", "a.jpg", "e.png"]
    prepare(str(image_dir), str(tmp_path), processor, names, progress=False)
    floats = CachedImageJoin(str(tmp_path), processor)(_batch(names))["pixel_values"]
    raw = CachedImageJoin(str(tmp_path), processor, as_uint8=True)(_batch(names))["pixel_values"]
    assert all(r.dtype == torch.uint8 and r.shape == (32, 32, 3) for r in raw)  # channels last, as stored
    assert raw[0] is raw[2]  # a.jpg read once

    tok = build_word_tokenizer(["p", "n"])
    feats = [{"pixel_values": r, "positive": "p", "negative": "n", "image_id": n} for r, n in zip(raw, names)]
    with pytest.raises(ValueError, match="pixel_affine"):
        HncCollator(tok)(feats)
    collator = HncCollator(tok, pixel_affine=pixel_affine(processor))
    batch = collator(feats)
    assert "pixel_affine" not in batch  # constants of the run: the trainer sends them to the device once
    affine = pixel_affine_of(collator)
    assert affine.dtype == torch.float32 and affine.shape == (2, 3)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape[0] == 3  # a.jpg once
    on_device = normalize_pixels(batch["pixel_values"], affine, torch.float32)[batch["image_index"]]
    torch.testing.assert_close(on_device, torch.stack(floats), rtol=0, atol=1e-6)
    assert normalize_pixels(on_device, None, torch.float32) is on_device  # float pixels pass through


def test_the_cache_builder_keeps_to_the_image_folder_and_the_size_bounds(image_dir, processor, tmp_path):
    """The same rules as training: a data file's `../` or absolute name is recorded as failed, not read, and an image
    whose resize would be huge (1×2000) is refused; a lookup of such a name in an index that lists it (an older
    build) finds nothing."""
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (40, 30)).save(outside)
    strip = image_dir / "strip.png"
    Image.new("RGB", (1, 2000)).save(strip)
    try:
        cache = tmp_path / "cache"
        names = ["a.jpg", "../outside.jpg", str(outside), "strip.png"]
        index = prepare(str(image_dir), str(cache), processor, names, num_workers=2, progress=False)
    finally:
        strip.unlink()
    assert list(index["files"]) == ["a.jpg"]
    assert index["failed"]["../outside.jpg"] == index["failed"][str(outside)] == "the name leaves the image folder"
    assert "ImageTooLargeError" in index["failed"]["strip.png"]
    with open(cache / INDEX_FILE) as f:
        crafted = json.load(f)
    crafted["files"]["../outside.jpg"] = crafted["files"]["a.jpg"]
    with open(cache / INDEX_FILE, "w") as f:
        json.dump(crafted, f)
    out = CachedImageJoin(str(cache), processor)(_batch(["../outside.jpg", "a.jpg"]))
    assert [p is None for p in out["pixel_values"]] == [True, False]


def test_the_pixels_file_is_allocated_before_any_image_is_written(image_dir, processor, tmp_path, monkeypatch):
    """The pixels file used to be sparse: a worker writing a page the full disk could not back got SIGBUS. Every
    block is reserved now before the first image is written through the map."""
    seen = []
    real = image_cache.resize_and_crop

    def check(proc, path, *bounds):
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".npy.tmp")]
        seen.append(tmp.stat().st_blocks * 512 >= tmp.stat().st_size)
        return real(proc, path, *bounds)

    monkeypatch.setattr(image_cache, "resize_and_crop", check)
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.png", "broken.jpg"]  # 18 KiB of rows: blocks a sparse file lacks
    prepare(str(image_dir), str(tmp_path), processor, names, progress=False)
    assert seen == [True] * 6


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_full_disk_says_so_and_leaves_the_old_cache(image_dir, processor, tmp_path, monkeypatch, num_workers):
    """ENOSPC when the pixels are reserved: `DiskFullError` naming the space needed, no .tmp left, and the previous
    cache still reads (one worker used to die of SIGBUS, two to hang)."""
    import errno

    from hnc_clip.errors import DiskFullError

    prepare(str(image_dir), str(tmp_path), processor, ["a.jpg"], progress=False)
    before = sorted(os.listdir(tmp_path))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(image_cache.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"No space left on device\): the pixels need 0 MiB \(3 images at 32x32"):
        prepare(str(image_dir), str(tmp_path), processor, ["b.jpg", "c.jpg", "d.jpg"], num_workers=num_workers,
                progress=False)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == before
    assert CachedImageJoin(str(tmp_path), processor)(_batch(["a.jpg"]))["pixel_values"][0] is not None


def test_a_worker_that_dies_fails_the_build_instead_of_hanging(image_dir, processor, tmp_path, monkeypatch):
    """A worker killed mid-build (SIGBUS, the OOM killer) left `multiprocessing.Pool` waiting forever for its tasks;
    the build now fails at once, naming what happened, and leaves no .tmp."""
    import signal

    def killed(proc, path, *bounds):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does (a SIGBUS ends it alike, with a core dump)

    def too_long(signum, frame):
        raise TimeoutError("the build hung")

    monkeypatch.setattr(image_cache, "resize_and_crop", killed)  # forked workers inherit it
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        with pytest.raises(RuntimeError, match="an image-cache worker died"):
            prepare(str(image_dir), str(tmp_path), processor, ["a.jpg", "b.jpg", "c.jpg"], num_workers=2,
                    progress=False)  # fmt: skip
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert os.listdir(tmp_path) == []
