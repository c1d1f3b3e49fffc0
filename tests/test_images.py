"""Images joined on the fly (`hnc_clip.data.images`): colour modes, corrupt and empty files."""

from __future__ import annotations

import pytest
from PIL import Image

from hnc_clip.data import (
    ImageJoin,
    ImageLoadError,
)
from hnc_clip.tiny import build_image_processor


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    Image.new(mode, (20, 10)).save(tmp_path / "x.jpg" if mode in ("L", "CMYK") else tmp_path / "x.png")
    name = "x.jpg" if mode in ("L", "CMYK") else "x.png"
    out = ImageJoin(str(tmp_path), build_image_processor(32))({"image_file": [name]})
    assert tuple(out["pixel_values"][0].shape) == (3, 32, 32)

def test_corrupt_and_empty_images_become_none_or_error(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.jpg")
    join = ImageJoin(str(tmp_path), build_image_processor(32))
    out = join({"image_file": ["zero.jpg", "ok.jpg", "bad.jpg", "gone.jpg"]})
    assert [p is None for p in out["pixel_values"]] == [True, False, True, True]
    with pytest.raises(ImageLoadError, match="cannot read image .*zero.jpg"):
        ImageJoin(str(tmp_path), build_image_processor(32), on_missing="error")({"image_file": ["zero.jpg"]})
