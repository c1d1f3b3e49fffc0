"""Image references, path resolution and loading (with ARO-style bounding-box crops)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class ImageRef:
    """One image to encode: a file, optionally cropped to a box.

    Frozen (hashable) so it can key the unique-image index: ARO has many crops of one file, and each distinct crop is
    a distinct image to encode. `bbox` is (x, y, w, h) in pixels, as in ARO's `bbox_x/bbox_y/bbox_w/bbox_h`.
    """

    file: str
    bbox: tuple[float, float, float, float] | None = None


def resolve_image(image_dir: str | None, ref: ImageRef) -> ImageRef | None:
    """The same reference with an existing absolute path, or None when the file is missing.

    Tried in order: `file` itself when absolute, `image_dir/file`, and `image_dir/basename(file)` — benchmark JSONs
    often carry a sub-folder (`val2014/COCO_val2014_...jpg`, `images/2390584.jpg`) that a flat download lacks.
    """
    candidates = []
    if os.path.isabs(ref.file):
        candidates.append(ref.file)
    if image_dir:
        candidates.append(os.path.join(image_dir, ref.file))
        candidates.append(os.path.join(image_dir, os.path.basename(ref.file)))
    elif not os.path.isabs(ref.file):
        candidates.append(ref.file)
    for path in candidates:
        if os.path.isfile(path):
            return ImageRef(os.path.abspath(path), ref.bbox)
    return None


def load_image(source: ImageRef | Image.Image) -> Image.Image:
    """An RGB PIL image from a resolved `ImageRef` (cropped to its bbox, as ARO does) or an already-open image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with Image.open(source.file) as img:
        image = img.convert("RGB")
    if source.bbox is not None:
        x, y, w, h = source.bbox
        # Exactly ARO's crop (PIL rounds float boxes and pads past the border); at least 1 px so the processor works.
        image = image.crop((x, y, x + max(w, 1), y + max(h, 1)))
    return image
