"""A split ready for training: HNC pairs (or a table's, `hnc_clip.data.table`) from the Arrow cache, filtered
(`--caption_types`, `--max_*_samples`), with the pairs whose image file is missing dropped (counted) before the
first step."""

from __future__ import annotations

import logging
import os

import datasets

from ..errors import TooManySkippedError
from ..families import family_of
from .arrow_cache import load_hnc_pairs
from .collator import HncCollator, NegativesFromCaptions
from .image_cache import pixel_affine, with_cached_images
from .images import ImageLoadError, resolve_in_root, with_images
from .sources import MAP_KINDS, SourceError, SourceSpec, check_shards, datasets_source
from .stream import StreamCollator, TrainingStream
from .table import is_table, load_table_pairs, with_hard_image_pairs

logger = logging.getLogger(__name__)


class EmptySplitError(ValueError):
    """A split has no pairs left (after parsing, filtering and dropping pairs with missing images)."""


def select_pairs(
    ds: datasets.Dataset,
    caption_types: list[str] | None = None,
    max_samples: int | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Apply `--caption_types` then `--max_*_samples`."""
    if caption_types:
        wanted = set(caption_types)
        available = set(ds.unique("type"))
        if unknown := wanted - available:
            logger.warning(
                f"--caption_types {sorted(unknown)} occur nowhere in this split; available: {sorted(available)}"
            )
        ds = ds.filter(
            lambda types: [t in wanted for t in types],
            input_columns="type",
            batched=True,
            num_proc=num_proc,
            desc="Filtering caption types",
        )
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def drop_missing_images(
    ds: datasets.Dataset,
    image_dir: str,
    on_missing: str = "skip",
    num_proc: int | None = None,
    max_skipped_fraction: float | None = None,
) -> datasets.Dataset:
    """Check once per unique image that its file exists inside `image_dir`; drop (and count) or raise for the
    missing ones and for names that leave `image_dir` (`resolve_in_root`: `../x`, `/abs/path`).

    ~121 pairs share each GQA image, so this is one `stat` per image, not per pair. More than `max_skipped_fraction`
    of the pairs dropped raises `TooManySkippedError` now, before any training time is spent.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"--image_dir {image_dir!r} does not exist or is not a directory")
    files = ds.unique("image_file")
    outside, missing = set(), set()
    for name in files:
        path = resolve_in_root(image_dir, name)
        if path is None:
            outside.add(name)
        elif not os.path.isfile(path):
            missing.add(name)
    if not missing and not outside:
        return ds
    problems = []
    for what, names in (("missing under", missing), ("named outside", outside)):
        if names:
            example = ", ".join(sorted(names)[:5])
            problems.append(f"{len(names)} of {len(files)} images {what} {image_dir} (e.g. {example})")
    problem = "; ".join(problems)
    if on_missing == "error":
        raise ImageLoadError(problem)
    dropped = missing | outside
    before = len(ds)
    ds = ds.filter(
        lambda names: [n not in dropped for n in names],
        input_columns="image_file",
        batched=True,
        num_proc=num_proc,
        desc="Dropping pairs with missing images",
    )
    skipped = before - len(ds)
    logger.warning(f"{problem}: skipped {skipped:,} of {before:,} pairs")
    if max_skipped_fraction is not None and skipped > max_skipped_fraction * before:
        raise TooManySkippedError(
            f"{skipped:,} of {before:,} pairs ({skipped / before:.1%}) have no usable image ({problem}), more than "
            f"--max_skipped_fraction {max_skipped_fraction}: check --image_dir, or raise the bound"
        )
    return ds


def build_split(
    path: str,
    data_args,
    max_samples: int | None,
    cache_dir: str | None = None,
    split: str = "train",
    max_skipped_fraction: float | None = None,
) -> datasets.Dataset:
    """Everything a split needs before training: parse (HNC JSON, or a hard-negative table: `hnc_clip.data.table`;
    `split` names a dataset folder's or Hub dataset's split), filter, check images, join images lazily."""
    if is_table(path):
        ds = load_table_pairs(path, data_args, split, cache_dir=cache_dir)
    else:
        ds = load_hnc_pairs(
            path, cache_dir=cache_dir, overwrite_cache=data_args.overwrite_cache,
            num_proc=data_args.preprocessing_num_workers,
        )
    ds = select_pairs(ds, data_args.caption_types, max_samples, data_args.preprocessing_num_workers)
    if data_args.image_dir is None:
        raise ValueError("--image_dir is required: images are joined from it by file name")
    ds = drop_missing_images(
        ds, data_args.image_dir, data_args.on_missing_image, data_args.preprocessing_num_workers, max_skipped_fraction
    )
    if len(ds) == 0:
        raise EmptySplitError(f"{path}: no pairs left after filtering (caption_types={data_args.caption_types})")
    return ds


def with_pixels(ds: datasets.Dataset, data_args, image_processor) -> datasets.Dataset:
    """Join each pair's image on the fly: rows of the pre-resized cache (`--image_cache_dir`, `hnc-clip-image-cache`:
    no JPEG decoding; uint8 to the device, a quarter of the bytes, normalised there) or files decoded from
    `--image_dir`."""
    if data_args.image_cache_dir:
        return with_cached_images(
            ds, data_args.image_cache_dir, image_processor, data_args.on_missing_image, as_uint8=True
        )
    max_pixels = data_args.max_image_pixels
    return with_images(ds, data_args.image_dir, image_processor, data_args.on_missing_image, max_pixels)


def prepare_split(
    path: str,
    data_args,
    max_samples: int | None,
    image_processor,
    split: str = "train",
    cache_dir: str | None = None,
    max_skipped_fraction: float | None = None,
):
    """A split as the trainer takes it: `build_split`, images joined (`with_pixels`), and a table's hard-image
    negatives as further pairs (`with_hard_image_pairs`; HNC unchanged). Training and the search both use it."""
    ds = build_split(
        path, data_args, max_samples, cache_dir=cache_dir, split=split, max_skipped_fraction=max_skipped_fraction
    )
    return with_hard_image_pairs(with_pixels(ds, data_args, image_processor))


def prepare_stream(
    specs: list[SourceSpec],
    data_args,
    seed: int,
    cache_dir: str | None = None,
    max_skipped_fraction: float | None = None,
) -> TrainingStream:
    """The training data of a run with image–caption sources or a mix (`hnc_clip.data.stream`), every source
    checked before training: HNC and tables built, filtered and image-checked as `build_split` does, shard files
    present, Hub and image-folder columns found."""
    unsupported = {"--image_cache_dir": data_args.image_cache_dir, "--max_train_samples": data_args.max_train_samples}
    for flag, value in unsupported.items():
        if value is not None:
            raise SourceError(f"{flag} does not apply to streamed or mixed training sources (give --max_steps; images "
                              "are decoded from the sources)")  # fmt: skip
    pairs = {}
    for spec in specs:
        if spec.kind in MAP_KINDS:
            if spec.kind == "table" and data_args.negative_image_column is not None:
                raise SourceError(f"{spec.name}: --negative_image_column (hard-image pairs) is not read in a mix; "
                                  "train on the table alone")  # fmt: skip
            pairs[spec.name] = build_split(
                spec.location, data_args, None, cache_dir=cache_dir, split=data_args.train_split,
                max_skipped_fraction=max_skipped_fraction,
            )  # fmt: skip
        elif spec.kind == "webdataset":
            check_shards(spec)
        else:
            datasets_source(spec, data_args, seed, 0)  # opens it: a missing column is named now
    return TrainingStream(
        specs, data_args, seed, pairs, data_args.shuffle_buffer_size, data_args.mix_stopping_strategy
    )


def text_length(data_args, config) -> int:
    """The token length captions are cut to: `--max_text_length`, default the text tower's positions. More than the
    positions is a `ValueError` (the position table has no row for them: the first long caption would fail)."""
    positions = config.text_config.max_position_embeddings
    if data_args.max_text_length is not None and data_args.max_text_length > positions:
        raise ValueError(
            f"--max_text_length {data_args.max_text_length} is more than the text model's {positions} positions "
            f"(text_config.max_position_embeddings): pass at most {positions}, or leave it unset"
        )
    return data_args.max_text_length or positions


def make_collator(data_args, processor, config, stream: TrainingStream | None = None, seed: int = 0):
    """The collator for `with_pixels` rows of a model with this `config`: captions cut at `--max_text_length`
    (default: the text tower's positions) and padded as its family's text was trained (`hnc_clip.families`), K
    negatives per pair (`--negatives_per_row`), and with the image cache the affine that normalises its uint8 rows
    on the device. `--negatives_from_captions`: negatives made for the pairs that bring none, seeded by `seed` and
    each pair's id (`NegativesFromCaptions`); `stream`: streamed records decoded first (`StreamCollator`)."""
    affine = pixel_affine(processor.image_processor) if data_args.image_cache_dir else None
    collator = HncCollator(
        processor.tokenizer, max_length=text_length(data_args, config),
        pixel_affine=affine, negatives_per_row=data_args.negatives_per_row, **family_of(config).collator_kwargs(),
    )  # fmt: skip
    if data_args.negatives_from_captions:
        from ..negatives.rules import CaptionNegatives

        # built here, in the main process: a missing spaCy pipeline or a bad vocabulary is named before any worker
        generator = CaptionNegatives(data_args.negatives_from_captions, data_args.caption_parser, seed=seed,
                                     vocabulary=data_args.negative_vocabulary)  # fmt: skip
        collator = NegativesFromCaptions(collator, generator)
    if stream is None:
        return collator
    return StreamCollator(collator, processor.image_processor, tuple(stream.names),
                          max_pixels=data_args.max_image_pixels, on_missing=data_args.on_missing_image)  # fmt: skip
