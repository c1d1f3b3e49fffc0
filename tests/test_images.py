"""Images joined on the fly (`hnc_clip.data.images`): colour modes, corrupt and empty files."""

from __future__ import annotations

import numpy as np
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


def test_a_png_that_pil_calls_broken_is_skipped_not_raised(tmp_path):
    """PIL raises SyntaxError ("broken PNG file") for a bad chunk: one of `IMAGE_ERRORS`, so a skip, not a dead
    DataLoader worker."""
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[36] = 0  # inside the first chunk after IHDR
    (tmp_path / "broken.png").write_bytes(bytes(data))
    out = ImageJoin(str(tmp_path), build_image_processor(32))({"image_file": ["broken.png", "ok.png"]})
    assert [p is None for p in out["pixel_values"]] == [True, False]


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG at half range is mid-grey, not white (PIL's RGB conversion clips at 255); 32-bit float images in
    [0, 1] likewise; 8-bit images are untouched."""
    from hnc_clip.data.images import load_rgb

    Image.fromarray(np.full((4, 6), 32896, dtype=np.uint16)).save(tmp_path / "g16.png")  # 32896 = 128·257
    Image.fromarray(np.full((4, 6), 0.25, dtype=np.float32)).save(tmp_path / "f.tiff")
    Image.fromarray(np.full((4, 6, 3), 77, dtype=np.uint8)).save(tmp_path / "rgb8.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16" and Image.open(tmp_path / "f.tiff").mode == "F"
    assert np.asarray(Image.open(tmp_path / "g16.png").convert("RGB")).max() == 255  # what PIL alone gives
    for name, want in (("g16.png", 128), ("f.tiff", 64), ("rgb8.png", 77)):
        got = np.asarray(load_rgb(str(tmp_path / name)))
        assert got.shape == (4, 6, 3) and (got == want).all(), (name, got[0, 0])


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored sideways with orientation tag 6 (rotate 90° clockwise to view) is decoded upright: its left
    (white) half ends up on top."""
    from hnc_clip.data.images import load_rgb

    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10] = 255  # left half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.png", exif=exif)
    upright = np.asarray(load_rgb(str(tmp_path / "rot.png")))
    assert upright.shape == (20, 10, 3)
    assert (upright[:10] == 255).all() and (upright[10:] == 0).all()


def test_images_too_large_to_decode_or_resize_are_skipped(tmp_path, monkeypatch, caplog):
    """Bounded memory per sample: an 85-byte 1×2000 PNG would become 32×64,000 under the shortest-edge resize (224×
    448,000 for ViT-B/32: +700 MB); an image over --max_image_pixels is refused from its header; PIL's decompression
    bomb error is a skip too. Each is named in the log; with `error`, `ImageLoadError`."""
    Image.new("RGB", (1, 2000)).save(tmp_path / "strip.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    processor = build_image_processor(32)
    with caplog.at_level("WARNING", logger="hnc_clip.data.images"):
        join = ImageJoin(str(tmp_path), processor, max_pixels=50_000)
        out = join({"image_file": ["strip.png", "big.png", "ok.png"]})
    assert [p is None for p in out["pixel_values"]] == [True, True, False]
    assert "strip.png" in caplog.text and "would be resized to 2,048,000 pixels" in caplog.text
    assert "big.png" in caplog.text and "300x200 pixels, more than the 50,000 allowed" in caplog.text
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises DecompressionBombError above twice this
    out = ImageJoin(str(tmp_path), processor)({"image_file": ["ok.png"]})
    assert out["pixel_values"] == [None]
    with pytest.raises(ImageLoadError, match="ok.png.*DecompressionBombError"):
        ImageJoin(str(tmp_path), processor, on_missing="error")({"image_file": ["ok.png"]})


def test_image_names_that_leave_image_dir_are_never_read(tmp_path, caplog):
    """`../x` and absolute names from a data file are skipped (named in the log) even though the files exist; in the
    up-front check they are dropped and counted, or refused with `error`."""
    from hnc_clip.data import drop_missing_images
    from hnc_clip.data.arrow_cache import FEATURES

    root = tmp_path / "images"
    root.mkdir()
    for path in (root / "in.jpg", tmp_path / "outside.jpg"):
        Image.new("RGB", (8, 8)).save(path)
    names = ["in.jpg", "../outside.jpg", str(tmp_path / "outside.jpg")]
    with caplog.at_level("WARNING", logger="hnc_clip.data.images"):
        out = ImageJoin(str(root), build_image_processor(32))({"image_file": names})
    assert [p is None for p in out["pixel_values"]] == [False, True, True]
    assert caplog.text.count("the name leaves --image_dir") == 2

    import datasets

    ds = datasets.Dataset.from_dict({c: [f"{i}" for i in range(3)] for c in FEATURES} | {"image_file": names},
                                    features=FEATURES)  # fmt: skip
    kept = drop_missing_images(ds, str(root))
    assert kept["image_file"] == ["in.jpg"]
    with pytest.raises(ImageLoadError, match="2 of 3 images named outside"):
        drop_missing_images(ds, str(root), on_missing="error")


def _sideways_jpeg(path) -> None:
    """A 40x20 JPEG stored sideways (left half white) with EXIF Orientation 6: upright it is 20x40, white on top."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, "JPEG", exif=exif, quality=95)


def _upright(hwc: np.ndarray) -> bool:
    """White top half and black bottom half (as a viewer shows the photo), not white left and black right."""
    h, w = hwc.shape[:2]
    top, bottom = hwc[: h // 2 - 2].mean(), hwc[h // 2 + 2 :].mean()
    left, right = hwc[:, : w // 2 - 2].mean(), hwc[:, w // 2 + 2 :].mean()
    return top > bottom + 100 and abs(left - right) < 30


def test_exif_orientation_is_applied_in_training_the_image_cache_and_evaluation_alike(tmp_path):
    """Left/right captions flip if one path decodes the stored pixels: the on-the-fly join, the image cache and the
    evaluation loader (a file, a crop of it and an image a caller already opened) all see the photo upright."""
    from hnc_clip.data.image_cache import resize_and_crop
    from hnc_clip.evaluation.images import ImageRef, load_image

    _sideways_jpeg(tmp_path / "rot.jpg")
    processor = build_image_processor(32)
    pixels = ImageJoin(str(tmp_path), processor)({"image_file": ["rot.jpg"]})["pixel_values"][0]  # [3, 32, 32]
    assert _upright(pixels.numpy().transpose(1, 2, 0) * 100)
    assert _upright(resize_and_crop(processor, str(tmp_path / "rot.jpg")).astype(float))
    assert np.asarray(load_image(ImageRef(str(tmp_path / "rot.jpg")))).shape == (40, 20, 3)
    assert _upright(np.asarray(load_image(ImageRef(str(tmp_path / "rot.jpg")))).astype(float))
    assert np.asarray(load_image(ImageRef(str(tmp_path / "rot.jpg"), bbox=(0, 0, 20, 20)))).mean() > 200  # top
    with Image.open(tmp_path / "rot.jpg") as opened:
        assert _upright(np.asarray(load_image(opened)).astype(float))


def test_the_file_system_root_as_image_dir_contains_its_files(tmp_path):
    """`--image_dir /` reported every image as outside the root: the prefix check compared with "//". Containment is
    by path components now; a sibling folder sharing the root's prefix stays outside."""
    from hnc_clip.data.images import resolve_in_root
    from hnc_clip.evaluation.images import ImageRef, resolve_image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.jpg")
    name = str(tmp_path / "ok.jpg").lstrip("/")
    assert resolve_in_root("/", name) == str(tmp_path / "ok.jpg")
    assert resolve_in_root("/", "../" + name) == str(tmp_path / "ok.jpg")  # nothing lies above the root
    assert resolve_image("/", ImageRef(name)) == ImageRef(str(tmp_path / "ok.jpg"))
    out = ImageJoin("/", build_image_processor(32))({"image_file": [name]})
    assert out["pixel_values"][0] is not None
    (tmp_path / "images").mkdir()
    assert resolve_in_root(str(tmp_path / "images"), "../images2/a.jpg") is None
    assert resolve_in_root("/", "") is None
