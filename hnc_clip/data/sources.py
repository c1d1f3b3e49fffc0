"""Training sources of any kind, as one stream of pair records (`RECORD_FEATURES`), mixed with weights.

    hnc:FILE.json            HNC JSON (the Arrow pairs of `hnc_clip.data.pairs.build_split`), images from --image_dir
    table:FILE               a hard-negative table (JSONL/CSV/TSV/Parquet/folder/Hub name), as --train_file reads it
    hub:NAME                 a Hub dataset (or a local folder of Parquet/Arrow files) with an `Image` column and a
                             caption column (--image_column, --caption_column, --dataset_config_name), streamed
    imagefolder:DIR          datasets' imagefolder: images + metadata.jsonl/csv with the caption column, streamed
    webdataset:PATTERN       open_clip's shards: .tar of <key>.jpg/png/webp + <key>.txt (or <key>.json with the caption
                             column, and optionally negatives), brace patterns (`shards/{00000..00999}.tar`), several
                             joined by `::` as open_clip's --train-data

Every source becomes a `datasets.IterableDataset` of the same records — image bytes or a file path (decoded later,
in the DataLoader workers, by the one bounded decoder `load_rgb`), the positive caption, the negatives the source
brings (none for plain captions: `hnc_clip.negatives` makes them), the source's name and, for a sample that cannot
make a pair, the reason (`SKIP_REASONS`): such a record is counted and dropped in the collator like an unreadable
image, so a skip never goes unseen and every record is one slot of a batch (what makes a resumed stream exact).

`stream.TrainingStream.build` lays the sources out for one pass over the data (`pass_index`): shard order permuted
per pass with a fixed seed (the same on every process, so `split_dataset_by_node` hands each process its own shards),
the sources interleaved with `interleave_datasets(probabilities=...)`. Hub and imagefolder sources keep their stored
order within a pass unless `--shuffle_buffer_size` asks for datasets' buffer shuffle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import datasets

from .images import resolve_in_root

logger = logging.getLogger(__name__)

RECORD_FEATURES = datasets.Features(
    {
        "pair_id": datasets.Value("string"),  # stable per sample: seeds its generated negatives
        "image_id": datasets.Value("string"),  # equal for captions of one image (same-image masking)
        "image": datasets.Image(decode=False),  # {"bytes", "path"}
        "positive": datasets.Value("string"),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "type": datasets.Value("string"),
        "source": datasets.Value("string"),
        "skip": datasets.Value("string"),  # "" or one of SKIP_REASONS
    }
)

# Why a record makes no pair; each is counted (`skipped/<reason>`) and the record dropped in the collator.
SKIP_REASONS = (
    "no_image",  # the sample has no image (or an empty one)
    "no_caption",  # no caption, an empty one, or one that is not text
    "unreadable_shard",  # a shard that is not a tar, or is truncated: the rest of it is lost (logged with its name)
    "member_too_large",  # a tar member, or the fields a sample uses together, beyond MAX_MEMBER_BYTES: not read
    "bad_json",  # a sample's .json that is not a JSON object
    "unreadable_image",  # decoding failed or the image passes the size bounds (counted in the collator)
)
# A tar member is read whole into memory: bound it before reading (a hostile shard may declare terabytes).
MAX_MEMBER_BYTES = 64 * 2**20
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
# Shards of a map-style source (HNC, a table) when streamed in a mix: enough for every process and worker.
MAP_SOURCE_SHARDS = 64


class SourceError(ValueError):
    """A training source that cannot be read as given (kind, location, columns): named with the flag."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # one of SOURCE_KINDS
    location: str
    weight: float = 1.0
    label: str = ""  # the short name of the logs and the card (`hnc_clip.data.stream.labelled`)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.location}"


def parse_source(spec: str, weight: float = 1.0) -> SourceSpec:
    """`KIND:LOCATION` → `SourceSpec`, naming --train_sources and the kinds when it is not one."""
    kind, sep, location = spec.partition(":")
    if not sep or kind not in SOURCE_KINDS or not location:
        raise SourceError(f"--train_sources {spec!r}: expected KIND:LOCATION with KIND one of {sorted(SOURCE_KINDS)}")
    return SourceSpec(kind, location, weight)


def is_streamed(spec: SourceSpec) -> bool:
    """Whether a source alone already streams (an image–caption source); HNC and tables are map-style."""
    return spec.kind in STREAM_READERS


def stable_seed(*parts) -> int:
    """A 63-bit seed from parts, the same in every process and run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


def record(pair_id, image_id, image, positive, negatives, source, skip="", type_="caption") -> dict:
    return {"pair_id": pair_id, "image_id": image_id, "image": image, "positive": positive,
            "negatives": list(negatives), "type": type_, "source": source, "skip": skip}  # fmt: skip


def skip_record(source: str, key: str, reason: str) -> dict:
    return record(key, key, None, "", [], source, skip=reason)


def _caption(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _caption_list(value) -> list | None:
    """A caption cell as a list of captions: a string, or a list of strings (COCO's five); None if neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


# ---------------------------------------------------------------------------------------------------------------
# WebDataset shards


def expand_shards(pattern: str) -> list[str]:
    """open_clip's shard list: `::`-separated brace patterns, expanded in order (braceexpand, as webdataset)."""
    import braceexpand

    shards = [s for part in pattern.split("::") for s in braceexpand.braceexpand(part.strip()) if s]
    if not shards:
        raise SourceError(f"shard pattern {pattern!r} names no shard")
    return shards


def _split_key(name: str) -> tuple[str, str] | None:
    """`dir/abc.seg.jpg` → ("dir/abc", "seg.jpg"): webdataset's rule, the key ends at the file name's first dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _is_image(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


def _wanted(ext: str, fields: dict) -> bool:
    """Whether a sample's field is read: its first image, `json`, `txt`/`text`, each once (a repeated field keeps
    the first), and none once the sample is skipped. What a sample holds in memory is so bounded by
    MAX_MEMBER_BYTES, whatever the shard (a gzipped shard of many large zero-filled fields decompresses to GBs)."""
    if "__skip__" in fields or ext in fields:
        return False
    if _is_image(ext):
        return not any(_is_image(k) for k in fields)
    return ext in ("json", "txt", "text")


def _shard_sample(source: tuple, shard: str, key: str, fields: dict, caption_key: str, negatives_key: str | None):
    """The fields of one tar sample → a record (or a skip record). `source`: (name, label)."""
    pair_id = f"{source[0]}|{os.path.basename(shard)}|{key}"
    source = source[1]
    if "__skip__" in fields:
        return skip_record(source, pair_id, fields["__skip__"])
    image_ext = next((e for e in fields if _is_image(e)), None)
    meta = {}
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (ValueError, UnicodeDecodeError):
            return skip_record(source, pair_id, "bad_json")
        if not isinstance(meta, dict):
            return skip_record(source, pair_id, "bad_json")
    text = fields.get("txt", fields.get("text"))
    caption = _caption(text.decode("utf-8", errors="replace")) if text is not None else _caption(meta.get(caption_key))
    if image_ext is None or not fields[image_ext]:
        return skip_record(source, pair_id, "no_image")
    if caption is None:
        return skip_record(source, pair_id, "no_caption")
    negatives = []
    if negatives_key is not None and negatives_key in meta:
        negatives = [n for n in (_caption_list(meta[negatives_key]) or []) if _caption(n)]
    image = {"bytes": fields[image_ext], "path": f"{key}.{image_ext}"}
    return record(pair_id, pair_id, image, caption, negatives, source)


class _CountingReader:
    """A byte stream that counts what it gave and keeps its tail: a tar cut at a member boundary reads as complete
    to `tarfile` (a short or missing header ends it quietly), so the end-of-archive block is checked here."""

    TAIL = 64 * 1024  # more than tarfile's read-ahead (one 10,240-byte record)

    def __init__(self, f):
        self.f, self.n, self.tail = f, 0, b""

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        self.tail = (self.tail + data)[-self.TAIL :]
        return data

    def ends_at(self, offset: int) -> bool:
        """Whether the stream holds a zero block (tar's end-of-archive marker) at `offset`, reading to its end."""
        while self.read(2**20):
            pass
        start = offset - (self.n - len(self.tail))
        return 0 <= start and start + 512 <= len(self.tail) and not any(self.tail[start : start + 512])


def read_shards(shards: list[str], source: tuple, caption_key: str, negatives_key: str | None) -> Iterator[dict]:
    """The records of `shards`, in order (a `datasets.IterableDataset.from_generator` generator: `shards` is the list
    datasets splits over processes and DataLoader workers). A shard that cannot be opened or breaks off yields one
    `unreadable_shard` record, named in the log with how far it was read, and the next shard is read."""
    import fsspec

    for shard in shards:
        n, key, fields = 0, None, {}
        try:
            # decompressed by its extension (.tar.gz, .tar.xz, ...) so that the end marker is checked on the tar
            with fsspec.open(shard, "rb", compression="infer") as raw:
                counted = _CountingReader(raw)
                tar = tarfile.open(fileobj=counted, mode="r|")
                for member in tar:
                    if not member.isfile():
                        continue
                    parts = _split_key(member.name)
                    if parts is None:
                        continue
                    if parts[0] != key and key is not None:
                        yield _shard_sample(source, shard, key, fields, caption_key, negatives_key)
                        n, fields = n + 1, {}
                    key = parts[0]
                    if not _wanted(parts[1], fields):  # never read: a shard may hold any number of other fields
                        continue
                    held = sum(len(v) for k, v in fields.items() if k != "__skip__")
                    if member.size > MAX_MEMBER_BYTES or held + member.size > MAX_MEMBER_BYTES:
                        fields["__skip__"] = "member_too_large"
                    else:
                        fields[parts[1]] = tar.extractfile(member).read()
                if not counted.ends_at(tar.offset):
                    raise tarfile.ReadError("the archive ends without its end-of-archive block (truncated)")
                if key is not None:
                    yield _shard_sample(source, shard, key, fields, caption_key, negatives_key)
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            logger.warning(f"{source[0]}: shard {shard} is unreadable after {n} samples ({type(err).__name__}: "
                           f"{err}); the rest of it is skipped (counted in skipped/unreadable_shard)")  # fmt: skip
            yield skip_record(source[1], f"{source[0]}|{os.path.basename(shard)}|#unreadable", "unreadable_shard")


def webdataset_source(spec: SourceSpec, data_args, seed: int, pass_index: int) -> datasets.IterableDataset:
    shards = expand_shards(spec.location)
    random.Random(stable_seed(seed, pass_index, spec.name)).shuffle(shards)  # the same order on every process
    return datasets.IterableDataset.from_generator(
        read_shards, features=RECORD_FEATURES,
        gen_kwargs={"shards": shards, "source": (spec.name, spec.label), "caption_key": data_args.caption_column,
                    "negatives_key": data_args.negative_caption_column},
    )  # fmt: skip


def check_shards(spec: SourceSpec) -> None:
    """Before any model is loaded: every local shard exists (a typo in a pattern would otherwise train on less)."""
    shards = expand_shards(spec.location)
    missing = [s for s in shards if "://" not in s and not os.path.isfile(s)]
    if missing:
        raise SourceError(f"{spec.name}: {len(missing)} of {len(shards)} shards not found (e.g. {missing[:3]})")


# ---------------------------------------------------------------------------------------------------------------
# Hub datasets and image folders (datasets' own streaming)


def _image_column(features: datasets.Features, wanted: str | None, where: str) -> str:
    images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
    if wanted is None:
        if len(images) != 1:
            raise SourceError(f"{where}: name the image column with --image_column (Image columns: {images}; "
                              f"columns: {sorted(features)})")  # fmt: skip
        logger.info(f"{where}: images from column {images[0]!r}")
        return images[0]
    if wanted not in features:
        raise SourceError(f"{where}: --image_column {wanted!r} not found; columns: {sorted(features)}")
    if not isinstance(features[wanted], datasets.Image):
        raise SourceError(f"{where}: --image_column {wanted!r} is {features[wanted]}, not an Image column")
    return wanted


def _caption_column(features: datasets.Features, wanted: str, where: str) -> None:
    if wanted not in features:
        raise SourceError(f"{where}: --caption_column {wanted!r} not found; columns: {sorted(features)}")
    f = features[wanted]
    inner = getattr(f, "feature", None) if isinstance(f, (datasets.Sequence, datasets.List)) else None
    if not (getattr(f, "dtype", None) in ("string", "large_string")
            or getattr(inner, "dtype", None) in ("string", "large_string")):  # fmt: skip
        raise SourceError(f"{where}: --caption_column {wanted!r} is {f}, not text or a list of texts")


def _image_key(image: dict) -> str:
    if image.get("path"):
        return image["path"]
    data = image.get("bytes") or b""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _captioned_records(batch: dict, source: tuple, image_column: str, caption_column: str, negatives_column) -> dict:
    """Batched map: one record per caption (a list cell, COCO's five, gives five pairs of one image)."""
    out = {name: [] for name in RECORD_FEATURES}
    name, source = source
    for i, image in enumerate(batch[image_column]):
        image = image or {}
        key = f"{name}|{_image_key(image)}"
        captions = _caption_list(batch[caption_column][i])
        rows = []
        if not (image.get("bytes") or image.get("path")):
            rows.append(skip_record(source, key, "no_image"))
        elif not captions or not any(_caption(c) for c in captions):
            rows.append(skip_record(source, key, "no_caption"))
        else:
            negatives = []
            if negatives_column is not None:
                negatives = [n for n in (_caption_list(batch[negatives_column][i]) or []) if _caption(n)]
            for j, caption in enumerate(captions):
                if _caption(caption):
                    rows.append(record(f"{key}|{j}", key, image, caption.strip(), negatives, source))
        for row in rows:
            for name in RECORD_FEATURES:
                out[name].append(row[name])
    return out


def datasets_source(spec: SourceSpec, data_args, seed: int, pass_index: int) -> datasets.IterableDataset:
    """A Hub dataset or a local dataset folder (`hub:`), or an image folder (`imagefolder:`), streamed."""
    split = data_args.train_split
    try:
        if spec.kind == "imagefolder":
            ds = datasets.load_dataset("imagefolder", data_dir=spec.location, split=split, streaming=True)
        else:
            ds = datasets.load_dataset(spec.location, data_args.dataset_config_name, split=split, streaming=True)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        raise SourceError(f"{spec.name}: cannot be loaded ({type(err).__name__}: {err})") from err
    if ds.features is None:
        raise SourceError(f"{spec.name}: its features are unknown when streamed; store it as Parquet with features")
    image_column = _image_column(ds.features, data_args.image_column, spec.name)
    _caption_column(ds.features, data_args.caption_column, spec.name)
    negatives = data_args.negative_caption_column if data_args.negative_caption_column in ds.features else None
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds.map(
        _captioned_records, batched=True, batch_size=64, remove_columns=list(ds.features), features=RECORD_FEATURES,
        fn_kwargs={"source": (spec.name, spec.label), "image_column": image_column,
                   "caption_column": data_args.caption_column, "negatives_column": negatives},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# HNC and tables, streamed in a mix


def _pair_records(batch: dict, source: tuple, image_dir: str) -> dict:
    n = len(batch["pair_id"])
    name, source = source
    negatives = batch["negatives"] if "negatives" in batch else [[x] for x in batch["negative"]]
    return {
        "pair_id": [f"{name}|{p}" for p in batch["pair_id"]],
        "image_id": [f"{name}|{i}" for i in batch["image_id"]],
        "image": [{"bytes": None, "path": resolve_in_root(image_dir, f)} for f in batch["image_file"]],
        "positive": batch["positive"],
        "negatives": negatives,
        "type": batch["type"],
        "source": [source] * n,
        "skip": [""] * n,
    }


def map_source(spec: SourceSpec, pairs: datasets.Dataset, image_dir: str, seed: int, pass_index: int):
    """HNC or table pairs (Arrow, images already checked under `image_dir`), shuffled per pass and streamed."""
    shuffled = pairs.shuffle(seed=stable_seed(seed, pass_index, spec.name) % 2**32)
    stream = shuffled.to_iterable_dataset(num_shards=min(MAP_SOURCE_SHARDS, len(pairs)))
    return stream.map(_pair_records, batched=True, remove_columns=list(pairs.features), features=RECORD_FEATURES,
                      fn_kwargs={"source": (spec.name, spec.label), "image_dir": image_dir})  # fmt: skip


# Kinds read as streams by these functions; the map-style kinds (HNC, tables) are built once by
# `hnc_clip.data.pairs.build_split` and streamed per pass by `map_source`.
STREAM_READERS = {"hub": datasets_source, "imagefolder": datasets_source, "webdataset": webdataset_source}
MAP_KINDS = ("hnc", "table")
SOURCE_KINDS = (*MAP_KINDS, *STREAM_READERS)


def training_sources(data_args) -> list[SourceSpec]:
    """The run's training sources from its flags, in weight order: --train_file (HNC JSON or a table),
    --dataset_name (a Hub dataset; `imagefolder` with --data_dir), --train_shards, then each --train_sources entry.
    Raises `SourceError` naming the flag for a malformed source or weight list."""
    from .table import is_table

    specs = []
    if data_args.train_file:
        specs.append(SourceSpec("table" if is_table(data_args.train_file) else "hnc", data_args.train_file))
    if data_args.dataset_name == "imagefolder":
        if not data_args.data_dir:
            raise SourceError("--dataset_name imagefolder needs --data_dir (the folder of images and metadata)")
        specs.append(SourceSpec("imagefolder", data_args.data_dir))
    elif data_args.dataset_name:
        specs.append(SourceSpec("hub", data_args.dataset_name))
    elif data_args.data_dir:
        raise SourceError("--data_dir is read with --dataset_name imagefolder only")
    if data_args.train_shards:
        specs.append(SourceSpec("webdataset", data_args.train_shards))
    specs += [parse_source(s) for s in data_args.train_sources or []]
    weights = data_args.source_weights
    if weights is not None:
        if len(weights) != len(specs):
            raise SourceError(f"--source_weights gives {len(weights)} weights for {len(specs)} training sources "
                              f"({', '.join(s.name for s in specs)})")  # fmt: skip
        if any(not (w > 0 and w < float("inf")) for w in weights):
            raise SourceError(f"--source_weights must be positive finite numbers, got {weights}")
        specs = [SourceSpec(s.kind, s.location, float(w)) for s, w in zip(specs, weights)]
    return specs


def needs_stream(specs: list[SourceSpec]) -> bool:
    """Whether training reads a stream (`hnc_clip.data.stream`): any image–caption source, or a mix."""
    return len(specs) > 1 or any(is_streamed(s) for s in specs)
