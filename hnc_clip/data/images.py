"""Images joined to pairs on the fly: decoded in the DataLoader workers (`ImageJoin`), never stored in Arrow.

`load_rgb` is the one decoder of untrusted image files (training, the image cache and evaluation use it):

- **bounded**: the size is read from the header before anything is decoded; an image of more than
  `max_pixels` (`--max_image_pixels`), or whose resize by the model's processor would pass `MAX_RESIZE_FACTOR`
  times the model's input (an 87-byte 1×2000 PNG becomes 224×448,000 pixels under a shortest-edge resize), raises
  `ImageTooLargeError`; PIL's `DecompressionBombError` is one of `IMAGE_ERRORS` too;
- **EXIF orientation applied** (`ImageOps.exif_transpose`): a phone photo stored sideways with an orientation
  tag is seen upright, as every viewer shows it;
- **high bit depth scaled, not clipped**: 16-bit (`I;16*`), 32-bit integer (`I`) and float (`F`) images are mapped
  to 0..255 (a 16-bit PNG used to turn white: PIL's RGB conversion clips values above 255);
- grayscale, palette, RGBA and CMYK become 3-channel RGB.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


class ImageLoadError(RuntimeError):
    """An image is missing or unreadable and `--on_missing_image error` was given."""


class ImageTooLargeError(ValueError):
    """An image whose decoded or resized size passes the bound (`load_rgb`)."""


# What decoding an untrusted image file may raise; every reader (training, the image cache, evaluation) catches these
# and counts a skip instead of dying in a worker. PIL's plugins raise SyntaxError (broken PNG chunks), EOFError
# (truncated frames) and struct.error (malformed TIFF/EXIF tables) besides OSError and ValueError.
IMAGE_ERRORS = (
    OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
)  # fmt: skip

# Decoded size bound (pixels) unless the caller gives its own (`--max_image_pixels`): 64 Mi, 192 MiB as RGB.
MAX_IMAGE_PIXELS = 64 * 2**20
# A resize may make an image at most this many times the model's input area (224×224 for ViT-B/32): panoramas up
# to ~16:1 pass, degenerate strips (1×2000) that a shortest-edge resize blows up are skipped.
MAX_RESIZE_FACTOR = 16
# Unreadable images each process names in the log before it only counts them (in `skipped_images`).
NAMED_SKIPS = 10


def resolve_in_root(root: str, name: str, allow_absolute: bool = False) -> str | None:
    """`root/name`, or None when a data file's `name` would leave `root`: an absolute path (unless
    `allow_absolute`) or `..` components climbing out. Lexical, so a symlink farm the user built under `root` keeps
    working; what a data file *names* cannot reach outside it (an untrusted annotation file could otherwise make a
    model absorb any readable image)."""
    if os.path.isabs(name) or (os.path.splitdrive(name)[0]):
        return os.path.normpath(name) if allow_absolute else None
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, name))
    # By components, not by prefix: `base + os.sep` is "//" for the root folder, which no path starts with.
    return path if path != base and os.path.commonpath([base, path]) == base else None


def _size_field(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resized_pixels(image_processor, width: int, height: int) -> int | None:
    """Pixels of a `width`×`height` image after `image_processor`'s resize (before any crop); None when the
    processor's size rule is not one of CLIP's (`shortest_edge`, `longest_edge`, `height`/`width`)."""
    if not getattr(image_processor, "do_resize", True):
        return width * height
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    if (h := _size_field(size, "height")) and (w := _size_field(size, "width")):
        return int(h) * int(w)
    for key, edge in (("shortest_edge", min), ("longest_edge", max)):
        if target := _size_field(size, key):
            scale = int(target) / max(1, edge(width, height))
            return round(width * scale) * round(height * scale)
    return None


def max_resized_pixels(image_processor) -> int | None:
    """`MAX_RESIZE_FACTOR` × the processor's output area (its crop, else its fixed size); None if unknown."""
    for attr in ("crop_size", "size"):
        value = getattr(image_processor, attr, None)
        if value is not None and (h := _size_field(value, "height")) and (w := _size_field(value, "width")):
            return MAX_RESIZE_FACTOR * int(h) * int(w)
    return None


def _to_8bit(img: Image.Image) -> Image.Image:
    """A high-bit-depth single-channel image scaled to mode L: 16-bit by 1/257 (65,535 → 255), 32-bit integer as
    16-bit when it fits (PNG and TIFF store 16-bit gray so) else by its maximum, float as 0..1 when it fits else by
    its maximum."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float64) / 257.0
    else:
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        top = float(finite.max()) if finite.size else 0.0
        if img.mode == "F":
            full = 1.0 if top <= 1.0 else top
        else:
            full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        scaled = np.nan_to_num(arr.astype(np.float64), nan=0.0) * (255.0 / full if full > 0 else 0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def load_rgb(path: str, max_pixels: int = MAX_IMAGE_PIXELS, image_processor=None) -> Image.Image:
    """Open an image as upright 8-bit RGB, within the size bounds (see the module docstring). `image_processor`:
    the model's, whose resize is checked against `MAX_RESIZE_FACTOR` before decoding. Raises one of
    `IMAGE_ERRORS` for a file that cannot be used."""
    with Image.open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"{width}x{height} pixels, more than the {max_pixels:,} allowed")
        if image_processor is not None:
            resized, bound = resized_pixels(image_processor, width, height), max_resized_pixels(image_processor)
            if resized is not None and bound is not None and resized > bound:
                raise ImageTooLargeError(
                    f"{width}x{height} pixels would be resized to {resized:,} pixels, more than {MAX_RESIZE_FACTOR}x "
                    "the model's input"
                )
        img.load()
        return upright_rgb(img)


def upright_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as a viewer shows it: EXIF orientation applied, high bit depths scaled, 8-bit RGB. The one
    step every path (training, the image cache, evaluation, an image a caller opened) goes through."""
    out = img
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        out = ImageOps.exif_transpose(img)
    if out.mode in ("I", "F") or out.mode.startswith("I;16"):
        out = _to_8bit(out)
    return out.convert("RGB")


def process_images(image_processor, images: dict, on_error) -> dict[str, dict]:
    """name → the processor's outputs for that image ({"pixel_values": [3, H, W], NaFlex: its patch mask, grid}),
    in one processor call; an image the processor cannot take is retried alone, so only it is lost
    (`on_error(name, why, err)`)."""
    if not images:
        return {}
    names = list(images)
    try:
        out = image_processor(images=list(images.values()), return_tensors="pt")
        return {name: {k: v[i] for k, v in out.items()} for i, name in enumerate(names)}
    except IMAGE_ERRORS:
        by_name = {}
        for name, image in images.items():
            try:
                out = image_processor(images=[image], return_tensors="pt")
                by_name[name] = {k: v[0] for k, v in out.items()}
            except IMAGE_ERRORS as err:
                on_error(name, f"{type(err).__name__}: {err}", err)
        return by_name


@dataclass
class ImageJoin:
    """`Dataset.with_transform` callable: adds `pixel_values` (a [3, H, W] tensor, or None if unreadable).

    Runs inside DataLoader workers. A file that fails to decode, is too large (`load_rgb`) or whose name leaves
    `image_dir` is not an exception there (it would kill the run at step 10,000): it becomes `None`, and the
    collator skips and counts that pair; the first `NAMED_SKIPS` per process are named in the log. With
    `on_missing="error"` it raises `ImageLoadError` naming the file instead.
    """

    image_dir: str
    image_processor: object
    on_missing: str = "skip"
    max_pixels: int = MAX_IMAGE_PIXELS
    _named: int = field(default=0, init=False, repr=False)

    def _skip(self, name: str, why: str, err: Exception | None = None) -> None:
        if self.on_missing == "error":
            raise ImageLoadError(f"cannot read image {name} under {self.image_dir}: {why}") from err
        if self._named < NAMED_SKIPS:
            self._named += 1
            more = "" if self._named < NAMED_SKIPS else " (further ones are only counted, in skipped_images)"
            logger.warning(f"skipping image {name} under {self.image_dir}: {why}{more}")

    def _read(self, name: str) -> Image.Image | None:
        path = resolve_in_root(self.image_dir, name)
        if path is None:
            self._skip(name, "the name leaves --image_dir")
            return None
        try:
            return load_rgb(path, self.max_pixels, self.image_processor)
        except IMAGE_ERRORS as err:
            self._skip(name, f"{type(err).__name__}: {err}", err)
            return None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        # Each distinct file is decoded and processed once per call: a batch fetched by the DataLoader often holds
        # several pairs of one image (~121 per GQA image; all of them under `--group_by_image`).
        names = list(dict.fromkeys(batch["image_file"]))
        images, readable = [], []
        for name in names:
            if (image := self._read(name)) is not None:
                images.append(image)
                readable.append(name)
        by_name = process_images(self.image_processor, dict(zip(readable, images)), self._skip)
        keys = next(iter(by_name.values())).keys() if by_name else ("pixel_values",)
        for key in keys:
            batch[key] = [by_name[name][key] if name in by_name else None for name in batch["image_file"]]
        return batch


def with_images(
    ds: datasets.Dataset, image_dir: str, image_processor, on_missing: str = "skip", max_pixels: int = MAX_IMAGE_PIXELS
) -> datasets.Dataset:
    return ds.with_transform(ImageJoin(image_dir, image_processor, on_missing, max_pixels))
