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


@pytest.mark.parametrize(
    "name, inside",
    [("a.jpg", True), ("sub/a.jpg", True), ("./a.jpg", True), ("sub/../a.jpg", True), ("../a.jpg", False),
     ("sub/../../a.jpg", False), ("/etc/passwd", False), ("", False), (".", False), ("..", False)],
)  # fmt: skip
def test_data_file_paths_stay_inside_their_root(tmp_path, name, inside):
    from hnc_clip.data.images import resolve_in_root

    root = tmp_path / "images"
    got = resolve_in_root(str(root), name)
    assert (got is not None) == inside
    if inside:
        assert got.startswith(str(root) + "/")


def test_absolute_paths_only_when_allowed(tmp_path):
    from hnc_clip.data.images import resolve_in_root

    assert resolve_in_root(str(tmp_path), "/data/x.jpg") is None
    assert resolve_in_root(str(tmp_path), "/data/x.jpg", allow_absolute=True) == "/data/x.jpg"
    # a root given with a trailing slash or relative still compares by its normalised absolute form
    assert resolve_in_root(str(tmp_path) + "/", "a.jpg") == str(tmp_path / "a.jpg")
