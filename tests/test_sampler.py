"""`--group_by_image`: every row once per epoch, in same-image groups, reproducible per (seed, epoch)."""

from __future__ import annotations

import pytest

from hnc_clip.data.sampler import ImageGroupedSampler


def image_ids():
    # 5 images with 8, 8, 3, 8 and 1 pairs, interleaved as they would be after filtering
    ids = [f"img{i}" for i, n in enumerate([8, 8, 3, 8, 1]) for _ in range(n)]
    return ids[::2] + ids[1::2]


def test_every_row_once_in_same_image_groups():
    ids = image_ids()
    order = list(ImageGroupedSampler(ids, group_size=4, seed=0))
    assert sorted(order) == list(range(len(ids)))
    # Walk the order in its groups: full groups of 4 rows of one image, a smaller last group per image
    pos, sizes = 0, []
    while pos < len(order):
        image = ids[order[pos]]
        size = 1
        while pos + size < len(order) and size < 4 and ids[order[pos + size]] == image:
            size += 1
        sizes.append((image, size))
        pos += size
    by_image = {}
    for image, size in sizes:
        by_image.setdefault(image, []).append(size)
    assert sorted(by_image["img0"]) == [4, 4] and by_image["img2"] == [3] and by_image["img4"] == [1]


def test_order_depends_on_seed_and_epoch_only():
    ids = image_ids()
    a, b = ImageGroupedSampler(ids, 4, seed=1), ImageGroupedSampler(ids, 4, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(ImageGroupedSampler(ids, 4, seed=2)) != list(a)


def test_batches_hold_groups_of_one_image(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch):
    """Through the real Trainer: with batch 16 and groups of 8, each batch holds whole groups of one image."""
    from hnc_clip.trainer import HncTrainer

    from .helpers import run

    seen = []
    real = HncTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(inputs["image_ids"].tolist())
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(HncTrainer, "compute_loss", spy)
    run(tmp_path, tiny_clip_dir, sample_image_dir, "--group_by_image", "8", "--per_device_train_batch_size", "16",
        "--max_steps", "4")
    assert len(seen) == 4
    for batch in seen:
        counts = [batch.count(i) for i in dict.fromkeys(batch)]
        assert sum(counts) == 16 and all(c % 8 == 0 for c in counts), counts


def test_rejects_bad_group_size():
    with pytest.raises(ValueError, match="--group_by_image must be >= 1"):
        ImageGroupedSampler(["a"], 0)
