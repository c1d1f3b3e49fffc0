"""Image references, path resolution inside a root and loading (with ARO-style bounding-box crops).

Every file a data file names is resolved by `hnc_clip.data.images.resolve_in_root` (it may not leave its root;
absolute names only with `allow_absolute`) and decoded by `hnc_clip.data.images.load_rgb` (EXIF orientation,
high-bit-depth and palette images handled there, for training and evaluation alike). Decode errors are
`hnc_clip.data.images.IMAGE_ERRORS`; callers count them instead of dying.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
from dataclasses import dataclass

from PIL import Image

from ..data.images import MAX_IMAGE_PIXELS, ImageTooLargeError, load_rgb, resolve_in_root, upright_rgb


@dataclass(frozen=True)
class ImageRef:
    """One image to encode: a file, optionally cropped to a box.

    Frozen (hashable) so it can key the unique-image index: ARO has many crops of one file, and each distinct crop is
    a distinct image to encode. `bbox` is (x, y, w, h) in pixels, as in ARO's `bbox_x/bbox_y/bbox_w/bbox_h`.
    `member` names a file inside the tar archive `file` (CLIP_benchmark's webdataset shards).
    """

    file: str
    bbox: tuple[float, float, float, float] | None = None
    member: str | None = None


def resolve_image(image_dir: str | None, ref: ImageRef, allow_absolute: bool = False) -> ImageRef | None:
    """The same reference with an existing path inside `image_dir`, or None (missing, or naming a path outside it).

    Tried in order: `image_dir/file`, then `image_dir/basename(file)` — benchmark JSONs often carry a sub-folder
    (`val2014/COCO_val2014_...jpg`, `images/2390584.jpg`) that a flat download lacks. Without `image_dir` the
    current directory is the root. An absolute `file` is used only with `allow_absolute`.
    """
    root = image_dir or os.curdir
    candidates = [resolve_in_root(root, ref.file, allow_absolute=allow_absolute)]
    if not os.path.isabs(ref.file) and os.path.basename(ref.file) != ref.file:
        candidates.append(resolve_in_root(root, os.path.basename(ref.file)))
    for path in candidates:
        if path is not None and os.path.isfile(path):
            return ImageRef(os.path.abspath(path), ref.bbox, ref.member)
    return None


def crop_box(image: Image.Image, bbox: tuple[float, float, float, float] | None,
             max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Exactly ARO's crop `(x, y, x + w, y + h)` (PIL rounds float boxes, pads past the border); >= 1 px each way.

    The box comes from the data file and PIL allocates all of it, padding included: a box that spans more than
    `max_pixels` (a 10×10 image with a 30,000² box took 2.7 GB) raises `ImageTooLargeError`, one that is not finite
    or misses the image `ValueError`, before anything is allocated (both are `IMAGE_ERRORS`: counted as an
    unreadable image)."""
    if bbox is None:
        return image
    x, y, w, h = bbox
    w, h = max(w, 1), max(h, 1)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"crop box {bbox} is not finite")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"crop box {bbox} spans {w * h:,.0f} pixels, more than the {max_pixels:,} allowed")
    if x >= image.width or y >= image.height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"crop box {bbox} lies outside the {image.width}x{image.height} image")
    return image.crop((x, y, x + w, y + h))


_OPEN_TARS: dict[str, tarfile.TarFile] = {}  # per process (each DataLoader worker opens its own)


def _tar_member(path: str, member: str) -> io.BytesIO:
    tar = _OPEN_TARS.get(path)
    if tar is None:
        tar = _OPEN_TARS[path] = tarfile.open(path)
    handle = tar.extractfile(member)
    if handle is None:
        raise OSError(f"{path}: {member} is not a regular file")
    return io.BytesIO(handle.read())


def load_image(source: ImageRef | Image.Image) -> Image.Image:
    """An RGB PIL image from a resolved `ImageRef` (decoded by `load_rgb`, then cropped) or an already-open image
    (made upright as `load_rgb` does)."""
    if isinstance(source, Image.Image):
        return upright_rgb(source)
    if source.member is not None:
        try:
            return crop_box(load_rgb(_tar_member(source.file, source.member)), source.bbox)
        except (KeyError, tarfile.TarError) as err:
            raise OSError(f"{source.file}::{source.member}: {err}") from err
    return crop_box(load_rgb(source.file), source.bbox)
