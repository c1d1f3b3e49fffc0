"""A pre-resized image cache: decode and resize every image once, not once per caption pair.

About 121 HNC pairs share each GQA image, so the on-the-fly path (`hnc_clip.data.images.ImageJoin`) decodes a
JPEG and runs a bicubic resize 121 times per image per epoch. `prepare` does that work once per image and stores
the result, resized and centre-cropped to the model's input size, as one uint8 array; `CachedImageJoin` then only
copies a row and normalises it (no PIL, no resize).

Layout of a cache directory (`prepare` writes it, `CachedImageJoin` reads it):

    index.json               {"version", "pixels": "pixels-<token>.npy", "shape": [N, H, W, 3],
                              "geometry": {...}, "backend", "files": {image_file: row}, "failed": {image_file: why}}
    pixels-<token>.npy       uint8 [N, H, W, 3], read with np.load(mmap_mode="r")

`index.json` is the commit point. The pixels are written to `*.tmp`, fsynced and renamed, then the index is
written to its own `*.tmp` and renamed over the old one (`os.replace` is atomic on POSIX). Each build writes
pixels under a fresh token, so an interrupted rebuild never changes the rows an existing index points at, and a
reader sees either the old cache or the new one, never half of one.

A full disk: the pixels file is allocated whole (`posix_fallocate`) before any worker maps it, so running out of
space is an `OSError` at the start, reported as `DiskFullError` with the bytes needed, not a SIGBUS in a worker that
writes to a sparse page the file system cannot back. A worker that dies all the same (a signal, the OOM killer)
fails the build with a message instead of leaving the pool waiting for its lost tasks; the `.tmp` is removed and the
previous cache stays valid either way.

Semantics equal the on-the-fly path: the resize and crop are done by the model's own image processor (with
`do_rescale=False, do_normalize=False`), so whatever backend and interpolation it uses, the cache holds its
output rounded to uint8 (≤ 0.5/255 per pixel; the PIL backend already returns uint8, so there it is exact).
Rescale and normalise are applied at load time with the processor's `rescale_factor`, `image_mean`, `image_std`.

    hnc-clip-image-cache --image_dir gqa/images --output_dir gqa/cache-224 \\
        --model_name_or_path openai/clip-vit-base-patch32 --hnc_file hnc_clean_strict_train.json --num_workers 16

Size: 224×224×3 bytes = 147 KiB per image, so the 67,807 images of the HNC train split take 10.2 GB.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from ..errors import DiskFullError
from ..output_dir import is_disk_full
from .images import IMAGE_ERRORS, MAX_IMAGE_PIXELS, ImageLoadError, load_rgb, resolve_in_root
from .workers import die_with_parent

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Processor settings that decide which pixels land in the cache; a reader whose processor differs in any of
# them would silently train on differently sized/cropped images, so `CachedImageJoin` refuses it.
GEOMETRY_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_convert_rgb")


def crop_hw(image_processor) -> tuple[int, int]:
    """The model's input (height, width): the processor's `crop_size` (a dict in v4, a `SizeDict` in v5), or its
    resize target when it does not crop (SigLIP resizes to a fixed size). SigLIP 2 NaFlex keeps each image's aspect
    ratio, so it has no one size to cache: ValueError."""
    if getattr(image_processor, "max_num_patches", None) is not None:
        raise ValueError(
            f"{type(image_processor).__name__} sizes each image by its aspect ratio (NaFlex): the image cache holds "
            "one fixed size; decode from --image_dir instead"
        )
    crop = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    if isinstance(crop, dict):
        return int(crop["height"]), int(crop["width"])
    return int(crop.height), int(crop.width)


def geometry(image_processor) -> dict:
    """The processor's resize/crop settings as plain JSON values (enums → their value, `SizeDict` → dict)."""
    config = image_processor.to_dict()
    # PIL's Resampling is an IntEnum (JSON-native); torchvision's InterpolationMode is a str Enum: take .value.
    return json.loads(
        json.dumps({k: config.get(k) for k in GEOMETRY_KEYS}, default=lambda o: getattr(o, "value", str(o)))
    )


def backend_name(image_processor) -> str:
    return str(getattr(image_processor, "backend", type(image_processor).__name__))


def resize_and_crop(image_processor, path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """`path` → uint8 [H, W, 3], resized and cropped exactly as `image_processor` does before rescaling (within
    `load_rgb`'s size bounds, which raise `ImageTooLargeError`)."""
    image = load_rgb(path, max_pixels, image_processor)
    # return_tensors=None: a list of numpy arrays (PIL backend) or torch tensors (torchvision); asarray takes both.
    out = image_processor(images=[image], do_rescale=False, do_normalize=False, return_tensors=None)
    chw = np.asarray(out["pixel_values"][0])  # [3, H, W]; uint8 from both backends, float if a subclass rescales
    if chw.dtype != np.uint8:
        chw = np.clip(np.rint(chw), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------------------------
# Building the cache


def list_image_dir(image_dir: str) -> list[str]:
    """Image file names directly under `image_dir` (GQA is flat), sorted so rows are reproducible."""
    with os.scandir(image_dir) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def list_hnc_images(hnc_file: str, cache_dir: str | None = None) -> list[str]:
    """The image files an HNC file references, via the same Arrow conversion (and cache) training uses."""
    from .arrow_cache import load_hnc_pairs

    return sorted(load_hnc_pairs(hnc_file, cache_dir=cache_dir).unique("image_file"))


# Worker state, set once per process by `_init_worker` (a Pool task then carries only (row, path)).
_worker: dict = {}


def _init_worker(image_processor, pixels_path: str, max_pixels: int = MAX_IMAGE_PIXELS,
                 parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    _worker["processor"] = image_processor
    _worker["max_pixels"] = max_pixels
    # Each worker maps the same file (MAP_SHARED) and writes its rows in place: no 147 KiB per image through a pipe.
    _worker["pixels"] = np.load(pixels_path, mmap_mode="r+")


def _process_one(task: tuple[int, str | None]) -> tuple[int, str | None]:
    row, path = task
    if path is None:
        return row, "the name leaves the image folder"
    try:
        _worker["pixels"][row] = resize_and_crop(_worker["processor"], path, _worker["max_pixels"])
    except IMAGE_ERRORS as err:  # missing / truncated / not an image / too large: recorded, not fatal
        return row, f"{type(err).__name__}: {err}"
    return row, None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def allocate(path: str) -> None:
    """Reserve every block of `path` (created sparse by `open_memmap`): a page a worker writes through its map later
    can then not meet a full disk, which the kernel reports as SIGBUS. Where the file system cannot reserve
    (EOPNOTSUPP: some network and FUSE mounts), its free space is checked instead."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        if shutil.disk_usage(os.path.dirname(path) or ".").free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from err
        logger.warning(f"{path}: the file system cannot reserve space ({err}); a disk that fills during the build "
                       "would stop a worker")  # fmt: skip
    finally:
        os.close(fd)


def _run_pool(tasks: list, num_workers: int, init: tuple, on_result) -> None:
    """`_process_one` over `tasks` in `num_workers` processes. A worker that dies (a signal, the OOM killer) fails
    the build at once (`multiprocessing.Pool` would wait forever for its lost tasks); on any exit but the normal one
    the workers are terminated."""
    pool = ProcessPoolExecutor(num_workers, initializer=_init_worker, initargs=init)
    done = False
    try:
        for result in pool.map(_process_one, tasks, chunksize=16):
            on_result(*result)
        done = True
    except BrokenProcessPool as err:
        raise RuntimeError(
            "an image-cache worker died (killed by a signal: out of memory, or SIGBUS from a disk that filled "
            "while it wrote); nothing of this build was kept"
        ) from err
    finally:
        if not done:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the commit: readers see the old index or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def prepare(
    image_dir: str,
    output_dir: str,
    image_processor,
    image_files: Iterable[str] | None = None,
    num_workers: int = 1,
    progress: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> dict:
    """Write the cache of `image_files` (default: every image in `image_dir`) to `output_dir`; return its index.

    Unreadable, missing or oversized images, and names that leave `image_dir` (`resolve_in_root`), are listed under
    `"failed"` and get no row in `"files"`, so `CachedImageJoin` returns None for them, as `ImageJoin` does.
    """
    from tqdm.auto import tqdm

    names = sorted(set(image_files)) if image_files is not None else list_image_dir(image_dir)
    if not names:
        raise ValueError(f"no images to cache (image_dir={image_dir!r}, {len(names)} files listed)")
    os.makedirs(output_dir, exist_ok=True)
    height, width = crop_hw(image_processor)
    token = secrets.token_hex(8)
    pixels_name = f"pixels-{token}.npy"
    pixels_tmp = os.path.join(output_dir, pixels_name + ".tmp")
    failed: dict[str, str] = {}

    def record(row: int, err: str | None) -> None:
        if err is not None:
            failed[names[row]] = err
        bar.update()

    try:
        # .npy header + raw rows; np.load(mmap_mode=...) maps it without reading it.
        np.lib.format.open_memmap(pixels_tmp, mode="w+", dtype=np.uint8, shape=(len(names), height, width, 3)).flush()
        allocate(pixels_tmp)
        tasks = [(row, resolve_in_root(image_dir, name)) for row, name in enumerate(names)]
        bar = tqdm(total=len(tasks), desc="caching images", unit="img", disable=not progress)
        if num_workers > 1 and len(tasks) > 1:
            _run_pool(tasks, num_workers, (image_processor, pixels_tmp, max_pixels, os.getpid()), record)
        else:
            _init_worker(image_processor, pixels_tmp, max_pixels)
            try:
                for task in tasks:
                    row, err = _process_one(task)
                    if err is not None:
                        failed[names[row]] = err
                    bar.update()
                _worker["pixels"].flush()
            finally:
                _worker.clear()  # drop the map (and the processor) this process held as its own "worker"
        bar.close()
        _fsync(pixels_tmp)
        os.replace(pixels_tmp, os.path.join(output_dir, pixels_name))
    except OSError as err:
        if not is_disk_full(err):
            raise
        need = len(names) * height * width * 3
        raise DiskFullError(
            f"disk full while building the image cache in {output_dir} ({err.strerror or err}): the pixels need "
            f"{need / 2**20:,.0f} MiB ({len(names):,} images at {height}x{width}); nothing of this build was kept, "
            "the previous cache (if any) stays valid. Free space or choose another --output_dir"
        ) from err
    finally:
        if os.path.exists(pixels_tmp):  # interrupted or failed: leave nothing half-written behind
            os.remove(pixels_tmp)

    index = {
        "version": CACHE_VERSION,
        "pixels": pixels_name,
        "shape": [len(names), height, width, 3],
        "geometry": geometry(image_processor),
        "backend": backend_name(image_processor),
        "image_dir": os.path.abspath(image_dir),
        "files": {name: row for row, name in enumerate(names) if name not in failed},
        "failed": failed,
    }
    _write_json_atomic(os.path.join(output_dir, INDEX_FILE), index)
    _fsync(output_dir)
    # Pixel files of earlier builds are unreferenced now; an in-progress build's files end in .tmp and are kept.
    for entry in os.listdir(output_dir):
        if entry.startswith("pixels-") and entry.endswith(".npy") and entry != pixels_name:
            os.remove(os.path.join(output_dir, entry))
    if failed:
        example = ", ".join(sorted(failed)[:5])
        logger.warning(f"{len(failed)} of {len(names)} images could not be read and are not cached (e.g. {example})")
    logger.info(f"cached {len(index['files']):,} images at {height}x{width} in {output_dir}")
    return index


def read_index(cache_dir: str) -> dict:
    path = os.path.join(cache_dir, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no image cache at {cache_dir} ({INDEX_FILE} missing; build it with `hnc-clip-image-cache`)"
        )
    with open(path) as f:
        index = json.load(f)
    if index.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: cache version {index.get('version')}, expected {CACHE_VERSION}; rebuild it")
    return index


# ---------------------------------------------------------------------------------------------------------------
# Reading the cache


@dataclass
class CachedImageJoin:
    """Drop-in for `hnc_clip.data.images.ImageJoin` that reads pre-resized pixels from a cache built by `prepare`.

    `__call__(batch)` adds `batch["pixel_values"]` per row, or None for an image that is not in the cache
    (missing or unreadable when the cache was built; with `on_missing="error"` that raises `ImageLoadError`):
    - `as_uint8=False`: a float32 [3, H, W] tensor, normalised with the processor's `rescale_factor`,
      `image_mean`, `image_std` (what `ImageJoin` gives);
    - `as_uint8=True`: the cached uint8 [H, W, 3] pixels as they are stored (channels last, no copy but the row
      read). A quarter of the bytes through worker queues, pinned memory and the host-to-device copy (5,000
      images/s are 3 GB/s as float32), and no transpose on the CPU: the collator adds `pixel_affine` and the
      forward permutes and normalises on the device (`hnc_clip.forward.normalize_pixels`), with the same float32
      arithmetic. DataLoader workers do almost nothing then, so a few suffice and the training process keeps its
      CPU cores for launching kernels.
    Each distinct image of a call is read once; its rows share the tensor.
    """

    cache_dir: str
    image_processor: object
    on_missing: str = "skip"
    as_uint8: bool = False
    _pixels: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        index = read_index(self.cache_dir)
        want, have = geometry(self.image_processor), index["geometry"]
        if want != have:
            raise ValueError(
                f"image cache {self.cache_dir} was built for {have}, but the model's processor wants {want}; "
                "rebuild it for this model"
            )
        if backend_name(self.image_processor) != index.get("backend"):
            # Same geometry, other resize implementation (PIL vs torchvision bicubic): ~1/255 apart, not wrong.
            logger.warning(
                f"image cache built with the {index.get('backend')} backend, processor is "
                f"{backend_name(self.image_processor)}: pixels may differ by ~1/255"
            )
        self.rows: dict[str, int] = index["files"]
        self.failed: dict[str, str] = index.get("failed", {})
        self.pixels_path = os.path.join(self.cache_dir, index["pixels"])
        self.shape = tuple(index["shape"])
        a, b = pixel_affine(self.image_processor)
        self._a, self._b = a.reshape(3, 1, 1), b.reshape(3, 1, 1)

    def __getstate__(self):
        # DataLoader workers may be spawned: pickling a memmap would copy the whole cache. Each process maps it anew.
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
            if self._pixels.shape != self.shape:
                raise ValueError(f"{self.pixels_path}: shape {self._pixels.shape}, index says {self.shape}")
        return self._pixels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        import torch

        rows = []
        for name in batch["image_file"]:
            # A name that leaves the image folder is not looked up: an index from an older build may list one.
            row = self.rows.get(name) if resolve_in_root(self.cache_dir, name) is not None else None
            if row is None and self.on_missing == "error":
                why = self.failed.get(name, "not in the cache")
                raise ImageLoadError(f"image {name} not available from cache {self.cache_dir}: {why}")
            rows.append(row)
        found = list(dict.fromkeys(r for r in rows if r is not None))  # each distinct image once
        out: list = [None] * len(rows)
        if found:
            hwc = self.pixels[np.asarray(found)]  # [n, H, W, 3] uint8: fancy indexing copies just these rows
            if self.as_uint8:
                pixels = hwc
            else:
                # One pass uint8 HWC → float32 CHW (·a) into a contiguous buffer, one in place (−b): 5× faster than
                # astype + arithmetic + ascontiguousarray, which make three 600 KB temporaries per image.
                pixels = np.empty((len(found), 3, *hwc.shape[1:3]), dtype=np.float32)
                np.multiply(hwc.transpose(0, 3, 1, 2), self._a, out=pixels)
                pixels -= self._b
            by_row = dict(zip(found, torch.from_numpy(pixels).unbind(0)))
            out = [by_row[r] if r is not None else None for r in rows]
        batch["pixel_values"] = out
        return batch


def pixel_affine(image_processor) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), float32 [3] each: the processor's rescale + normalise of uint8 pixels x is x·a − b.

    (x·scale − mean)/std as one multiply-add per pixel, with a = scale/std and b = mean/std.
    """
    p = image_processor
    scale = float(p.rescale_factor) if p.do_rescale else 1.0
    mean = np.asarray(p.image_mean if p.do_normalize else (0.0, 0.0, 0.0), dtype=np.float32)
    std = np.asarray(p.image_std if p.do_normalize else (1.0, 1.0, 1.0), dtype=np.float32)
    return (scale / std).astype(np.float32), (mean / std).astype(np.float32)


def with_cached_images(ds, cache_dir: str, image_processor, on_missing: str = "skip", as_uint8: bool = False):
    """`hnc_clip.data.images.with_images`, reading from an image cache instead of decoding JPEGs."""
    return ds.with_transform(CachedImageJoin(cache_dir, image_processor, on_missing, as_uint8))
