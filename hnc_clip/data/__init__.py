"""Data: HNC JSON (streamed) → Arrow pairs (cached) → a `datasets.Dataset` with images joined on the fly → batches.

    json_stream   one top-level JSON member at a time, with byte positions (the 8 GB train file)
    hnc           the two HNC schemas: the reader (pair records) and the writer
    arrow_cache   JSON → Arrow files under a fingerprinted cache directory (several processes on a large file)
    table         a hard-negative table (JSONL/CSV/TSV/Parquet/Hub) → the same pairs; hard-image negatives
    pairs         a split ready to train: filtered, images checked (`build_split`)
    images        decoding in the DataLoader workers (`ImageJoin`)
    image_cache   pre-resized uint8 pixels (`prepare`, `CachedImageJoin`)
    collator      pairs → `HncBatch` (each distinct image and caption once, dynamic padding)
    batches       what the trainer reads of a dataset and its batches (columns, counts, repeated rows)
    sampler       batches of groups of one image's pairs (`--group_by_image`)
    sources       any training source (HNC, tables, Hub, image folders, WebDataset shards) → one stream of records
    stream        sources mixed with weights, split by process, resumable (`TrainingStream`, `StreamLoader`)
"""

from .arrow_cache import FEATURES, load_hnc_pairs
from .collator import HncBatch, HncCollator, image_group_id
from .hnc import (
    PAIR_COLUMNS,
    TEST_SCHEMA,
    TRAIN_SCHEMA,
    HncPair,
    HncWriter,
    detect_schema,
    hnc_test_entry,
    hnc_train_entry,
    iter_hnc_pairs,
    write_hnc,
)
from .image_cache import CachedImageJoin, pixel_affine, with_cached_images
from .images import IMAGE_ERRORS, ImageJoin, ImageLoadError, ImageTooLargeError, load_rgb, resolve_in_root, with_images
from .json_stream import HncFormatError
from .pairs import (
    EmptySplitError,
    build_split,
    drop_missing_images,
    make_collator,
    prepare_split,
    prepare_stream,
    select_pairs,
    text_length,
    with_pixels,
)
from .sampler import ImageGroupedSampler
from .sources import RECORD_FEATURES, SourceError, SourceSpec, needs_stream, parse_source, training_sources
from .stream import StreamCollator, StreamLoader, StreamStateError, TrainingStream
from .table import TableFormatError, load_table_pairs, with_hard_image_pairs

__all__ = [
    "FEATURES", "IMAGE_ERRORS", "PAIR_COLUMNS", "TEST_SCHEMA", "TRAIN_SCHEMA", "CachedImageJoin", "EmptySplitError",
    "HncBatch", "HncCollator", "HncFormatError", "HncPair", "HncWriter", "ImageGroupedSampler", "ImageJoin",
    "ImageLoadError", "ImageTooLargeError", "resolve_in_root",
    "build_split", "detect_schema", "drop_missing_images", "image_group_id", "iter_hnc_pairs", "load_hnc_pairs",
    "load_rgb", "pixel_affine", "select_pairs", "hnc_test_entry", "hnc_train_entry", "with_cached_images",
    "with_images", "write_hnc", "TableFormatError", "load_table_pairs", "with_hard_image_pairs", "with_pixels",
    "make_collator", "prepare_split", "prepare_stream", "RECORD_FEATURES", "SourceError", "SourceSpec",
    "needs_stream", "parse_source", "training_sources", "StreamCollator", "StreamLoader", "StreamStateError",
    "TrainingStream", "text_length",
]  # fmt: skip
