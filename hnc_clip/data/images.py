"""Images joined to pairs on the fly: decoded in the DataLoader workers (`ImageJoin`), never stored in Arrow."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import datasets


class ImageLoadError(RuntimeError):
    """An image is missing or unreadable and `--on_missing_image error` was given."""


# What decoding an untrusted image file may raise; every reader (training, the image cache, evaluation) catches these
# and counts a skip instead of dying in a worker.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def resolve_in_root(root: str, name: str, allow_absolute: bool = False) -> str | None:
    """`root/name`, or None when a data file's `name` would leave `root`: an absolute path (unless
    `allow_absolute`) or `..` components climbing out. Lexical, so a symlink farm the user built under `root` keeps
    working; what a data file *names* cannot reach outside it (an untrusted annotation file could otherwise make a
    model absorb any readable image)."""
    if os.path.isabs(name) or (os.path.splitdrive(name)[0]):
        return os.path.normpath(name) if allow_absolute else None
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, name))
    return path if path.startswith(base + os.sep) else None


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB: grayscale, palette, RGBA and CMYK files all become 3-channel."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


@dataclass
class ImageJoin:
    """`Dataset.with_transform` callable: adds `pixel_values` (a [3, H, W] tensor, or None if unreadable).

    Runs inside DataLoader workers. A file that fails to decode is not an exception there (it would kill the
    run at step 10,000): it becomes `None`, and the collator skips and counts that pair. With
    `on_missing="error"` it raises `ImageLoadError` naming the file instead.
    """

    image_dir: str
    image_processor: object
    on_missing: str = "skip"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        # Each distinct file is decoded and processed once per call: a batch fetched by the DataLoader often holds
        # several pairs of one image (~121 per GQA image; all of them under `--group_by_image`).
        names = list(dict.fromkeys(batch["image_file"]))
        images, readable = [], []
        for name in names:
            path = os.path.join(self.image_dir, name)
            try:
                images.append(load_rgb(path))
                readable.append(name)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if self.on_missing == "error":
                    raise ImageLoadError(f"cannot read image {path}: {err}") from err
        out = self.image_processor(images=images, return_tensors="pt") if images else {"pixel_values": []}
        for key, values in out.items():  # pixel_values; SigLIP 2 NaFlex adds pixel_attention_mask, spatial_shapes
            by_name = dict(zip(readable, values))
            batch[key] = [by_name.get(name) for name in batch["image_file"]]
        return batch


def with_images(ds: datasets.Dataset, image_dir: str, image_processor, on_missing: str = "skip") -> datasets.Dataset:
    return ds.with_transform(ImageJoin(image_dir, image_processor, on_missing))
