"""Write hard-negative captions with a causal language model, once, into a table that training reads as it is.

    hnc-clip-negatives --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --input_file captions.jsonl \
        --output_file negatives.jsonl
    accelerate launch --num_processes 8 -m hnc_clip.scripts.negatives ...    (the rows shared over the processes)
    hnc-clip-train --train_file negatives.jsonl --image_dir images --negative_caption_column negative_captions \
        --negatives_per_row 1 ...

The input is a caption table (`.jsonl`, `.csv`, `.tsv`, `.parquet`, a dataset folder or a Hub dataset, read as
training reads tables: `hnc_clip.data.table.read_table`). The output is JSONL: every input row, in input order, with
its columns and two more, `negative_captions` (the kept negatives) and `negative_types` (each one's SugarCrepe
type). Prompts, generation and filters: `hnc_clip.negatives.lm`. Processes: the rows are cut into batches of
`--batch_size` consecutive rows, and batch j goes to process j mod N, so a batch (and what it generates, sampling
included) is the same with any number of processes. A killed run resumes where it stopped when run again with the
same flags, each row made once (`hnc_clip.negatives.parts`). `<output>.summary.json`: rows, negatives kept per type,
candidates dropped per reason, rows that got none.

Exit status 1, with a message, when more than `--max_rows_without_negative` of the rows got no negative (an LM that
echoes its caption or writes nothing): the summary is written, the table is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from hnc_clip.data.table import TableFormatError, is_table, read_table
from hnc_clip.errors import RunAbortedError
from hnc_clip.negatives.lm import (
    DROP_REASONS,
    FILTERS,
    TYPES,
    FilterOptions,
    GenerationSettings,
    LMGenerator,
    LogLikelihoodScorer,
    blind_accuracy,
    build_filters,
    load_prompts,
    write_negatives,
)
from hnc_clip.negatives.parts import (
    PartWriter,
    check_settings,
    done_rows,
    merged_entries,
    write_jsonl_atomic,
    write_settings,
)
from hnc_clip.output_dir import OutputDirLock, write_atomic
from hnc_clip.peers import shutdown_distributed

logger = logging.getLogger("hnc_clip.negatives")

DTYPES = ("auto", "float32", "bfloat16", "float16")
ROW_SKIPS = ("empty_caption", "empty_image")


class TooFewNegativesError(RunAbortedError):
    """More than --max_rows_without_negative of the rows got no negative."""


class OutputExistsError(RunAbortedError):
    """--output_file exists already."""


@dataclass
class NegativesArguments:
    model_name_or_path: str = field(metadata={"help": "Causal LM: a Hub name or a folder (`AutoModelForCausalLM`)."})
    input_file: str = field(
        metadata={"help": "Caption table: .jsonl, .csv, .tsv, .parquet, a dataset folder or a Hub dataset name."}
    )
    output_file: str = field(metadata={"help": "JSONL table to write: the input's rows and columns plus negatives."})
    image_column: str = field(default="image_path", metadata={"help": "The input's image column (kept as it is)."})
    caption_column: str = field(default="caption", metadata={"help": "The input's caption column."})
    negative_caption_column: str = field(
        default="negative_captions", metadata={"help": "Output column of the negatives (a list per row)."}
    )
    negative_type_column: str = field(
        default="negative_types", metadata={"help": "Output column of each negative's type (a list per row)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset input: its configuration."})
    split: str = field(default="train", metadata={"help": "Hub dataset / dataset folder input: the split."})
    negative_types: list[str] = field(
        default_factory=lambda: list(TYPES),
        metadata={"help": f"SugarCrepe types to prompt for, among {list(TYPES)} (and --prompts_file's)."},
    )
    prompts_file: str | None = field(
        default=None,
        metadata={"help": 'JSON {type: {"instruction": ..., "examples": [[caption, negative], ...]}}: prompts added '
                  "to (or replacing) the built-in ones."},
    )  # fmt: skip
    negatives_per_type: int = field(
        default=1, metadata={"help": "Continuations per caption and type (more than 1 needs --do_sample)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Captions per `generate` call."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per negative at most."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (seeded per batch and type); else greedy."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Sampling nucleus."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    chat_template: bool = field(
        default=False, metadata={"help": "Send each prompt as a user turn through the tokenizer's chat template."}
    )
    dtype: str = field(
        default="auto", metadata={"help": f"{list(DTYPES)}; auto: bfloat16 on a GPU that has it, else float32."}
    )
    filters: list[str] = field(
        default_factory=lambda: ["differs", "length", "dedupe"],
        metadata={"help": f"Filters, in order, among {sorted(FILTERS)}."},
    )
    max_words: int = field(default=40, metadata={"help": "`length`: a negative's words at most."})
    max_length_ratio: float = field(
        default=2.0, metadata={"help": "`length`: a negative's words at most this times its caption's (0: off)."}
    )
    plausibility_model: str | None = field(
        default=None, metadata={"help": "`plausibility`: the text-only LM that scores (unset: the generating one)."}
    )
    plausibility_margin: float = field(
        default=1.0,
        metadata={"help": "`plausibility`: keep a negative whose mean per-token log-likelihood is at least the "
                  "caption's minus this (nats)."},
    )  # fmt: skip
    allow_truncated: bool = field(
        default=False, metadata={"help": "Keep a line that ran into --max_new_tokens (else dropped, `truncated`)."}
    )
    max_rows_without_negative: float = field(
        default=0.5, metadata={"help": "Fail (exit 1, no table) when more than this share of the rows got none."}
    )
    parts_dir: str | None = field(
        default=None, metadata={"help": "Folder of the per-process part files (unset: <output_file>.parts)."}
    )
    keep_parts: bool = field(default=False, metadata={"help": "Keep the parts folder after the merge."})
    overwrite_output: bool = field(
        default=False, metadata={"help": "Replace an existing --output_file and start its parts over."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even where a GPU is."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hub cache for the models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a model's own code (only if trusted)."})

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens", "negatives_per_type", "max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.negatives_per_type > 1 and not self.do_sample:
            raise ValueError("--negatives_per_type > 1 needs --do_sample (greedy decoding writes one text)")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype: one of {list(DTYPES)}, got {self.dtype!r}")
        if unknown := [f for f in self.filters if f not in FILTERS]:
            raise ValueError(f"--filters: unknown {unknown}; available: {sorted(FILTERS)}")
        if not 0.0 <= self.max_rows_without_negative <= 1.0:
            raise ValueError("--max_rows_without_negative is a share of the rows, in [0, 1]")
        if not self.negative_types:
            raise ValueError(f"--negative_types: name at least one, among {list(TYPES)}")
        if self.plausibility_model is not None and "plausibility" not in self.filters:
            raise ValueError("--plausibility_model scores for the `plausibility` filter: add it to --filters")

    @property
    def summary_file(self) -> str:
        return f"{os.path.splitext(self.output_file)[0]}.summary.json"


def make_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(NegativesArguments, prog="hnc-clip-negatives")


# -- steps --------------------------------------------------------------------------------------------------------


def has_accelerator() -> bool:
    """A GPU (or another torch accelerator) to run on; without one, processes launched as `--multi_gpu` must be
    told to be CPU processes, or each would run alone as process 0 of 1."""
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def load_lm(name: str, args: NegativesArguments, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype)
    if dtype is None:  # auto
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kw = dict(cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kw).to(device).eval()
    return model, tokenizer


def run_settings(args: NegativesArguments, prompts: dict, input_key: str) -> dict:
    """What the part files' lines depend on: a resume with anything else would mix two runs."""
    made_by = {k: v for k, v in asdict(args).items() if k not in (
        "output_file", "parts_dir", "keep_parts", "overwrite_output", "max_rows_without_negative", "cache_dir",
        "use_cpu")}
    used = {t: asdict(prompts[t]) for t in args.negative_types}
    return {**made_by, "input": input_key, "prompts": json.loads(json.dumps(used))}  # fmt: skip


def sample_seed(seed: int, batch: int, kind: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{batch}|{kind}".encode()).digest()[:4], "little")


def batches(rows: Iterator[tuple[str, dict]], size: int) -> Iterator[list[tuple[int, str, dict]]]:
    """Consecutive rows, `size` at a time, numbered from 0 in input order."""
    batch = []
    for n, (where, row) in enumerate(rows):
        batch.append((n, where, row))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class RowChecker:
    """Input rows → (caption, None) to prompt for, or (None, reason) for a row that cannot get negatives."""

    def __init__(self, source: str, args: NegativesArguments):
        self.source, self.args, self.checked = source, args, False

    def __call__(self, where: str, row: dict) -> tuple[str | None, str | None]:
        a = self.args
        if not self.checked:
            missing = [f"--{flag} {getattr(a, flag)!r}" for flag in ("image_column", "caption_column")
                       if getattr(a, flag) not in row]  # fmt: skip
            if missing:
                raise TableFormatError(f"{self.source}: {where}: {', '.join(missing)} not found; available columns: "
                                       f"{sorted(row)}")  # fmt: skip
            taken = [c for c in (a.negative_caption_column, a.negative_type_column) if c in row]
            if taken:
                raise TableFormatError(f"{self.source}: {where}: the input has a column {taken[0]!r} already: name "
                                       "the output's with --negative_caption_column / --negative_type_column")
            self.checked = True
        try:
            json.dumps(row, ensure_ascii=False)
        except (TypeError, ValueError) as err:
            bad = [k for k, v in row.items() if not _json_ok(v)]
            raise TableFormatError(f"{self.source}: {where}: column {bad[:1] or '?'} cannot be written as JSON "
                                   f"({err})") from err  # fmt: skip
        caption = row[a.caption_column]
        if caption is not None and not isinstance(caption, str):
            raise TableFormatError(f"{self.source}: {where}: column {a.caption_column!r} holds "
                                   f"{type(caption).__name__}, not text")  # fmt: skip
        if not (caption or "").strip():
            return None, "empty_caption"
        image = row[a.image_column]
        if image is None or (isinstance(image, str) and not image.strip()):
            return None, "empty_image"
        return caption.strip(), None


def _json_ok(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def make_part(
    args: NegativesArguments, rows: Iterator[tuple[str, dict]], source: str, done: set[int], writer: PartWriter,
    generate, filters, prompts: dict, rank: int, world: int,
) -> int:  # fmt: skip
    """This process's batches (j mod world == rank) with a row not yet done: made whole (the same batch, the same
    text), the rows not done appended. Returns the number of input rows (every process reads them all)."""
    check = RowChecker(source, args)
    n_rows = 0
    for j, batch in enumerate(batches(rows, args.batch_size)):
        n_rows += len(batch)
        if j % world != rank:
            continue
        checked = [(n, row, *check(where, row)) for n, where, row in batch]
        if all(n in done for n, *_ in checked):
            continue
        prompted = [(n, caption) for n, _, caption, skip in checked if skip is None]
        made = write_negatives([c for _, c in prompted], args.negative_types, prompts, generate, filters,
                               seed_of=lambda kind, j=j: sample_seed(args.seed, j, kind),
                               allow_truncated=args.allow_truncated)  # fmt: skip
        by_row = dict(zip((n for n, _ in prompted), made, strict=True))
        entries = []
        for n, row, _, skip in checked:
            if n in done:
                continue
            got = by_row.get(n)
            record = {**row, args.negative_caption_column: got.negatives if got else [],
                      args.negative_type_column: got.types if got else []}  # fmt: skip
            scores = {"positive": got.positive_score, "negatives": got.scores} if got and got.scores else None
            entries.append({"row": n, "record": record, "skipped": skip, "dropped": got.dropped if got else {},
                            "scores": scores})  # fmt: skip
        writer.append(entries)
    if n_rows == 0:
        raise TableFormatError(f"{source}: no rows")
    return n_rows


def summarize(entries: Iterator[dict], args: NegativesArguments) -> dict:
    """Counts over the merged entries."""
    skipped, kept, dropped = Counter(), Counter(), Counter()
    dropped_per_type: dict[str, Counter] = {t: Counter() for t in args.negative_types}
    rows = without = 0
    scored = []  # (positive, negative) log-likelihoods, with `plausibility`
    for e in entries:
        rows += 1
        if e.get("scores"):
            scored += [(e["scores"]["positive"], n) for n in e["scores"]["negatives"]]
        if e["skipped"]:
            skipped[e["skipped"]] += 1
        else:
            types = e["record"][args.negative_type_column]
            kept.update(types)
            without += not types
        for kind, by_reason in e["dropped"].items():
            dropped.update(by_reason)
            dropped_per_type.setdefault(kind, Counter()).update(by_reason)
    prompted = rows - sum(skipped.values())
    return {
        "input_file": args.input_file, "output_file": args.output_file, "model": args.model_name_or_path,
        "rows": rows, "rows_skipped": {r: skipped[r] for r in ROW_SKIPS if skipped[r]},
        "rows_prompted": prompted, "rows_with_negative": prompted - without, "rows_without_negative": without,
        "negatives": sum(kept.values()), "negatives_per_type": {t: kept[t] for t in args.negative_types},
        "candidates": sum(kept.values()) + sum(dropped.values()),
        "dropped": {r: dropped[r] for r in DROP_REASONS if dropped[r]} | {r: n for r, n in dropped.items()
                                                                          if r not in DROP_REASONS},
        "dropped_per_type": {t: dict(c) for t, c in dropped_per_type.items() if c},
        # kept negatives a blind text model (the scoring LM) finds less likely than their caption: 0.5 is chance
        "blind_text_accuracy": blind_accuracy(scored), "negatives_scored": len(scored),
    }  # fmt: skip


# -- the application ----------------------------------------------------------------------------------------------


def main(args: NegativesArguments) -> dict | None:
    """Make this process's part, then (main process) merge the parts into --output_file. Returns the summary on the
    main process, None on the others."""
    with contextlib.ExitStack() as run:  # holds the parts folder's lock until the end, however it ends
        return make_table(args, run)


def make_table(args: NegativesArguments, run: contextlib.ExitStack) -> dict | None:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # 1. Processes, logging, prompts, the input
    state = PartialState(cpu=args.use_cpu or not has_accelerator())
    rank, world = state.process_index, state.num_processes
    logger.setLevel(logging.INFO if state.is_main_process else logging.WARNING)
    prompts = load_prompts(args.prompts_file)
    if unknown := [t for t in args.negative_types if t not in prompts]:
        raise ValueError(f"--negative_types: no prompt for {unknown}; available: {sorted(prompts)}")
    if not is_table(args.input_file):
        raise TableFormatError(f"{args.input_file}: an HNC .json brings its own negatives; the input is a caption "
                               "table (.jsonl, .csv, .tsv, .parquet, a dataset folder or a Hub name)")  # fmt: skip
    with state.main_process_first():  # a Hub dataset is downloaded and cached once
        rows, input_key = read_table(args.input_file, args.dataset_config_name, args.split)
    settings = run_settings(args, prompts, input_key)
    parts_dir = args.parts_dir or f"{args.output_file}.parts"

    # 2. The output: refused if there, else claimed; parts of an earlier run with the same settings resumed
    if os.path.exists(args.output_file) and not args.overwrite_output:
        raise OutputExistsError(f"--output_file {args.output_file} exists: pass --overwrite_output to replace it")
    if args.overwrite_output and state.is_main_process:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if os.path.exists(args.output_file):
            os.remove(args.output_file)
    state.wait_for_everyone()
    resuming = check_settings(parts_dir, settings)
    state.wait_for_everyone()
    if state.is_main_process:
        # a second run into it stops here
        lock = OutputDirLock(parts_dir, "hnc-clip-negatives", flag="--parts_dir").acquire()
        run.callback(lock.release)
        if not resuming:
            write_settings(parts_dir, settings)
    state.wait_for_everyone()
    done = done_rows(parts_dir)
    if resuming:
        logger.info(f"resuming from {parts_dir}: {len(done)} rows made already")
    state.wait_for_everyone()

    # 3. The LM(s) and the filters (a Hub model downloaded once, by the main process, before the others load it)
    with state.main_process_first():
        model, tokenizer = load_lm(args.model_name_or_path, args, state.device)
    generate = LMGenerator(model, tokenizer, GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
        num_return_sequences=args.negatives_per_type, chat_template=args.chat_template))  # fmt: skip
    scorer = None
    if "plausibility" in args.filters:
        own = (model, tokenizer)
        with state.main_process_first():
            scoring = load_lm(args.plausibility_model, args, state.device) if args.plausibility_model else own
        scorer = LogLikelihoodScorer(*scoring, batch_size=args.batch_size)
    filters = build_filters(args.filters, FilterOptions(args.max_words, args.max_length_ratio, scorer,
                                                        args.plausibility_margin))  # fmt: skip

    # 4. This process's part
    start = time.perf_counter()
    writer = PartWriter(parts_dir, rank)
    try:
        n_rows = make_part(args, rows, args.input_file, done, writer, generate, filters, prompts, rank, world)
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    times = gather_object([seconds])  # also the barrier: every part is written after it
    if not state.is_main_process:
        return None

    # 5. Merge (main process), summary, the table
    summary = summarize(merged_entries(parts_dir, n_rows), args)
    summary["this_run"] = {"processes": world, "rows_made": n_rows - len(done), "seconds": max(times),
                           "resumed": resuming}  # fmt: skip
    write_atomic(args.summary_file, json.dumps(summary, indent=1) + "\n")
    log_summary(summary, args.summary_file)
    share = summary["rows_without_negative"] / max(1, summary["rows_prompted"])
    if share > args.max_rows_without_negative or summary["negatives"] == 0:
        raise TooFewNegativesError(
            f"{summary['rows_without_negative']} of {summary['rows_prompted']} captions got no negative "
            f"(> --max_rows_without_negative {args.max_rows_without_negative}); dropped: {summary['dropped']}. "
            f"An LM that echoes its caption or writes nothing does this: check --model_name_or_path, "
            f"--chat_template, --max_new_tokens and the prompts. No table written; {args.summary_file} has the "
            f"counts, {parts_dir} the lines (rerun with a higher --max_rows_without_negative to write them)"
        )
    # a second pass over the parts: the table is never held in memory
    write_jsonl_atomic(args.output_file, (e["record"] for e in merged_entries(parts_dir, n_rows)))
    if not args.keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return summary


def log_summary(summary: dict, path: str) -> None:
    per_type = ", ".join(f"{t} {n}" for t, n in summary["negatives_per_type"].items())
    logger.info(
        f"{summary['rows']} rows: {summary['negatives']} negatives ({per_type}); {summary['rows_without_negative']} "
        f"of {summary['rows_prompted']} captions got none; dropped {summary['dropped'] or 'nothing'}; rows skipped "
        f"{summary['rows_skipped'] or 'none'} (summary: {path})"
    )


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-negatives`: 0 once the table is written; 1 with a message when the run stopped for a reason it
    names (too few negatives, the output exists, a bad input table, parts of another run)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    (args,) = make_parser().parse_args_into_dataclasses(args=argv)
    try:
        main(args)
    except (RunAbortedError, TableFormatError) as err:
        print(f"hnc-clip-negatives: error: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
