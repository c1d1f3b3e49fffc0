"""A run's training data as a stream: sources mixed with weights, split by process, loaded with a resumable state.

    TrainingStream   the sources (`hnc_clip.data.sources`) → one `datasets.IterableDataset` per pass over the data
    StreamLoader     per process: `split_dataset_by_node`, then torchdata's `StatefulDataLoader` over it; endless
                     (pass after pass), with a `state_dict` saved in each checkpoint, so a resumed run continues
                     mid-pass with exactly the samples it had not seen (per DataLoader worker)
    StreamedTraining the trainer's dataloader hooks (a mixin of `HncTrainer`): a stream's loader, its saved position
    StreamCollator   in the DataLoader workers: decodes each image once (bounded, `load_rgb`), makes negatives for
                     plain captions (`hnc_clip.negatives`), counts every skip, source and rule, then `HncCollator`

A stream has no length: a run gives `--max_steps`, and each process counts its own passes (a process whose shards
run out first starts its next pass; steps stay in lockstep because no process ever meets the end of its data).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from ..errors import RunAbortedError
from ..output_dir import write_atomic
from .collator import HncCollator, NegativesFromCaptions, WrapsHncCollator
from .images import IMAGE_ERRORS, NAMED_SKIPS, ImageLoadError, load_rgb, process_images
from .sources import MAP_KINDS, SKIP_REASONS, STREAM_READERS, SourceSpec, map_source, stable_seed

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class StreamStateError(RunAbortedError):
    """A saved stream state that does not fit this run (other processes, sources or format), or a stream that
    gave a process no data."""


def labelled(specs: list[SourceSpec]) -> list[SourceSpec]:
    """The specs with short labels for the logs and the card: the kind, numbered when it repeats (`webdataset`,
    `webdataset_2`)."""
    seen: Counter = Counter()
    out = []
    for spec in specs:
        seen[spec.kind] += 1
        label = spec.kind if seen[spec.kind] == 1 else f"{spec.kind}_{seen[spec.kind]}"
        out.append(SourceSpec(spec.kind, spec.location, spec.weight, label))
    return out


class TrainingStream(torch.utils.data.IterableDataset):
    """The sources of a run, laid out again for each pass (`build`). Map-style sources (HNC, tables) arrive built
    (`map_pairs`: their Arrow pairs, filtered and image-checked); the others are read as they stream."""

    def __init__(
        self,
        specs: list[SourceSpec],
        data_args,
        seed: int,
        map_pairs: dict | None = None,
        shuffle_buffer_size: int = 0,
        stopping_strategy: str = "all_exhausted",
    ):
        self.specs, self.data_args, self.seed = labelled(specs), data_args, seed
        self.names = [s.label for s in self.specs]
        self.map_pairs = map_pairs or {}
        self.shuffle_buffer_size, self.stopping_strategy = shuffle_buffer_size, stopping_strategy
        total = sum(s.weight for s in self.specs)
        self.probabilities = [s.weight / total for s in self.specs]

    def describe(self) -> str:
        parts = [f"{name} = {spec.name} (weight {p:.3g})" for name, spec, p in
                 zip(self.names, self.specs, self.probabilities)]  # fmt: skip
        return "training sources: " + "; ".join(parts)

    def card_rows(self) -> list[dict]:
        return [{"name": s.label, "source": s.name, "probability": p} for s, p in zip(self.specs, self.probabilities)]

    def build(self, pass_index: int) -> datasets.IterableDataset:
        streams = []
        for spec in self.specs:
            if spec.kind in MAP_KINDS:
                stream = map_source(spec, self.map_pairs[spec.name], self.data_args.image_dir, self.seed, pass_index)
            else:
                stream = STREAM_READERS[spec.kind](spec, self.data_args, self.seed, pass_index)
            streams.append(stream)
        ds = streams[0]
        if len(streams) > 1:
            ds = datasets.interleave_datasets(
                streams, probabilities=self.probabilities, seed=stable_seed(self.seed, pass_index, "mix") % 2**32,
                stopping_strategy=self.stopping_strategy,
            )  # fmt: skip
        if self.shuffle_buffer_size:
            ds = ds.shuffle(seed=stable_seed(self.seed, pass_index, "buffer") % 2**32,
                            buffer_size=self.shuffle_buffer_size)  # fmt: skip
        return ds

    def __iter__(self):
        yield from self.build(0)


class StreamLoader:
    """One process's endless loader over its part of a `TrainingStream` (see the module docstring)."""

    def __init__(
        self, stream: TrainingStream, *, batch_size: int, collate_fn, num_workers: int = 0, pin_memory: bool = False,
        prefetch_factor: int | None = None, rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        self.stream, self.batch_size, self.collate_fn = stream, batch_size, collate_fn
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.rank, self.world_size = rank, world_size
        self.pass_index = 0
        self._loader = None
        self._resume: dict | None = None
        self._logged_split = False

    def _make_loader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        ds = self.stream.build(self.pass_index)
        if self.world_size > 1:
            by_shards = ds.num_shards % self.world_size == 0
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            if not self._logged_split and self.rank == 0:
                how = (f"each process reads {ds.num_shards} of the shards" if by_shards else
                       f"the {ds.num_shards} shards do not divide over {self.world_size} processes: each process "
                       f"reads every shard and keeps 1 sample in {self.world_size}")  # fmt: skip
                logger.warning(f"streamed training data over {self.world_size} processes: {how}")
                self._logged_split = True
        kwargs = {"prefetch_factor": self.prefetch_factor} if self.num_workers and self.prefetch_factor else {}
        return StatefulDataLoader(ds, batch_size=self.batch_size, collate_fn=self.collate_fn,
                                  num_workers=self.num_workers, pin_memory=self.pin_memory, **kwargs)  # fmt: skip

    def __iter__(self):
        while True:
            self._loader = self._make_loader()
            resumed = self._resume is not None
            if resumed:
                self._loader.load_state_dict(self._resume)
                self._resume = None
            batches = 0
            for batch in self._loader:
                batches += 1
                yield batch
            if batches == 0 and not resumed:
                raise StreamStateError(
                    f"process {self.rank}: pass {self.pass_index} over the training data gave no batch: this "
                    "process's part of the sources is empty (check the shard patterns and --train_split)"
                )
            self.pass_index += 1
            logger.info(f"process {self.rank}: pass {self.pass_index} over its training data begins")

    def set_epoch(self, epoch: int) -> None:
        """The Trainer's epochs are not passes over a stream: the loader counts its own (`pass_index`)."""

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
            "sources": [s.name for s in self.stream.specs], "pass": self.pass_index,
            "loader": self._loader.state_dict() if self._loader is not None else None,
        }  # fmt: skip

    def load_state_dict(self, state: dict, where: str = "the saved state") -> None:
        expected = {"version": STATE_VERSION, "world_size": self.world_size, "rank": self.rank,
                    "sources": [s.name for s in self.stream.specs]}  # fmt: skip
        for key, value in expected.items():
            if state.get(key) != value:
                raise StreamStateError(
                    f"{where}: saved with {key} = {state.get(key)!r}, this run has {value!r}: a stream resumes only "
                    "with the same processes and sources (or pass --ignore_data_skip to start the data over)"
                )
        self.pass_index = int(state["pass"])
        self._resume = state["loader"]


# Where a checkpoint keeps each process's position in a streamed training set (`StreamLoader.state_dict`).
STREAM_STATE_DIR = "stream_state"


def stream_state_path(folder: str, process_index: int) -> str:
    return os.path.join(folder, STREAM_STATE_DIR, f"process_{process_index}.json")


def save_stream_state(loader: StreamLoader, folder: str, process_index: int) -> None:
    """Write this process's position in the stream into checkpoint `folder`."""
    os.makedirs(os.path.join(folder, STREAM_STATE_DIR), exist_ok=True)
    write_atomic(stream_state_path(folder, process_index), json.dumps(loader.state_dict()))


def load_stream_state(loader: StreamLoader, checkpoint: str | None, process_index: int) -> None:
    """Put `loader` at the position this process saved in `checkpoint` (`StreamStateError` where there is none)."""
    path = stream_state_path(checkpoint or "", process_index)
    if not os.path.isfile(path):
        raise StreamStateError(
            f"{checkpoint} holds no stream position for process {process_index} ({path}): it was "
            "not saved by a streamed run with these processes. Pass --ignore_data_skip to start the data over"
        )
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise StreamStateError(f"{path}: unreadable stream position ({type(err).__name__}: {err})") from err
    loader.load_state_dict(state, where=path)
    logger.info(f"streamed data resumes at pass {loader.pass_index} from {path}")


class StreamedTraining:
    """`HncTrainer`'s dataloader hooks for a `TrainingStream` (a mixin before `transformers.Trainer`): the stream
    gets a `StreamLoader`, resumes from the position each process saved, and each checkpoint saves it (called by
    the trainer's `_save_checkpoint`). Any other training set goes to the Trainer's own."""

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, TrainingStream):
            return super().get_train_dataloader()
        a = self.args
        self._stream_loader = StreamLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            num_workers=a.dataloader_num_workers, pin_memory=a.dataloader_pin_memory,
            prefetch_factor=a.dataloader_prefetch_factor, rank=a.process_index, world_size=a.world_size,
        )  # fmt: skip
        return self._stream_loader

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A stream resumes from the position each process saved in the checkpoint, not by reading and dropping
        the batches it had trained on (which would also decode all their images again)."""
        if not isinstance(dataloader, StreamLoader):
            return super().get_resumed_dataloader(dataloader, num_batches)
        load_stream_state(dataloader, self._resume_from, self.args.process_index)
        return dataloader

    def _save_stream_state(self, folder: str) -> None:
        loader = getattr(self, "_stream_loader", None)
        if loader is not None:
            save_stream_state(loader, folder, self.args.process_index)


@dataclass
class StreamCollator(WrapsHncCollator):
    """Records (`hnc_clip.data.sources.RECORD_FEATURES`) → one `HncBatch`, in the DataLoader workers.

    A record that makes no pair (its `skip` reason), an image that cannot be decoded or passes the size bounds, is
    passed on without pixels: `HncCollator` drops and counts it (`skipped_images`), and its reason is counted here
    (`skipped/<reason>`). Plain captions get up to K negatives from `negatives` (`hnc_clip.negatives.rules`, seeded
    per pair id, so another process or a resumed run makes the same ones); a caption that gets none trains the
    contrastive term only (`HncCollator.allow_missing_negatives`). Counts per batch: `source/<name>` (records read
    from each source: its share), and those of `NegativesFromCaptions`. `collator`: an `HncCollator`, or a
    `NegativesFromCaptions` around one."""

    collator: HncCollator | NegativesFromCaptions
    image_processor: object
    sources: tuple = ()
    max_pixels: int = 64 * 2**20
    on_missing: str = "skip"
    _named: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        inner = self.collator.collator if isinstance(self.collator, NegativesFromCaptions) else self.collator
        inner.allow_missing_negatives = True  # plain captions: a record may bring no negative
        inner.declare_counts("pairs_without_negative", *(f"skipped/{r}" for r in SKIP_REASONS),
                                     *(f"source/{s}" for s in self.sources))  # fmt: skip

    def _skip(self, name: str, why: str, err: Exception | None = None) -> None:
        if self.on_missing == "error":
            raise ImageLoadError(f"cannot read the image of {name}: {why}") from err
        if self._named < NAMED_SKIPS:
            self._named += 1
            more = "" if self._named < NAMED_SKIPS else " (further ones are only counted)"
            logger.warning(f"skipping the image of {name}: {why}{more}")

    def _decode(self, rec: dict):
        image = rec["image"] or {}
        try:
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path")
            return load_rgb(source, self.max_pixels, self.image_processor)
        except IMAGE_ERRORS as err:
            self._skip(rec["pair_id"], f"{type(err).__name__}: {err}", err)
            return None

    def __call__(self, records: list[dict]):
        counts: Counter = Counter()
        k = self.collator.negatives_per_row or 1
        images, pairs = {}, []
        for rec in records:
            counts[f"source/{rec['source']}"] += 1
            if rec["skip"]:
                counts[f"skipped/{rec['skip']}"] += 1
                pairs.append((rec, None))
                continue
            if rec["image_id"] not in images:
                images[rec["image_id"]] = self._decode(rec)
            if images[rec["image_id"]] is None:
                counts["skipped/unreadable_image"] += 1
            pairs.append((rec, list(rec["negatives"])[:k]))
        processed = process_images(self.image_processor, {i: im for i, im in images.items() if im is not None},
                                   self._skip)  # fmt: skip
        features = []
        for rec, negatives in pairs:
            out = processed.get(rec["image_id"]) if negatives is not None else None
            feature = {"positive": rec["positive"], "negatives": negatives or [], "image_id": rec["image_id"],
                       "pair_id": rec["pair_id"], **(out or {"pixel_values": None})}  # fmt: skip
            features.append(feature)
        return self.collate(features, counts)
