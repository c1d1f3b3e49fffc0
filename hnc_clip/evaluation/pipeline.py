"""The evaluation pipeline behind `hnc-clip-eval`: read every input once, check and load the models, score one model
on every task and benchmark.

Every input goes through one reader per layout: a `--data_file` is a benchmark file of a known layout
(`formats.load_pairs` -> `benchmarks.registry.FILE_LAYOUTS`), a Karpathy retrieval file is read by the reader
`coco_5k` uses (`benchmarks.readers.read_karpathy`), a `--benchmark` is a registry entry in its official layout
(`benchmarks.locate`, `benchmarks.runner.run_benchmark`). The pairwise task and every benchmark score with one
similarity routine (`encode.pair_cosines`, float64). `args` is the application's `EvalArguments`
(`hnc_clip.scripts.evaluate`); nothing here parses flags.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from .formats import FORMAT_SHAPES, detect_format, load_image_captions, load_pairs

logger = logging.getLogger("hnc_clip.evaluate")

__all__ = ["FORMAT_SHAPES", "EvalData", "check_models", "evaluate_model", "load_data", "load_model", "model_names",
           "wise_curves"]  # fmt: skip


def model_names(paths: list[str]) -> list[str]:
    """Display names: folder basenames, checkpoint file names without extension (Hub ids as given); full paths when
    two names would collide."""

    def name(p: str) -> str:
        if os.path.isdir(p):
            return os.path.basename(os.path.normpath(p))
        if os.path.isfile(p):
            return os.path.splitext(os.path.basename(p))[0]
        return p

    names = [name(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


@dataclass
class EvalData:
    """Everything loaded once and shared by all models."""

    pairs: list | None = None
    retrieval_items: list | None = None
    zeroshot: dict | None = None
    benchmark_roots: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    card_datasets: dict = field(default_factory=dict)


def dataset_label(paths: list[str], forced: str | None) -> tuple[str, str]:
    formats = sorted({forced or detect_format(p) for p in paths})
    return ",".join(formats), ",".join(os.path.splitext(os.path.basename(p))[0] for p in paths)


def load_data(args) -> EvalData:
    """Read every task's inputs once (pairs, retrieval gallery, image folder) and describe them for the card/config."""
    data = EvalData()
    if "pairwise" in args.task:
        skips: Counter = Counter()
        data.pairs = load_pairs(args.data_file, args.data_format, skips=skips, max_pairs=args.max_pairs)
        data.summary["pairwise"] = {"files": args.data_file, "pairs": len(data.pairs), "parse_skips": dict(skips)}
        data.card_datasets["pairwise"] = dataset_label(args.data_file, args.data_format)
    if "retrieval" in args.task:
        files = args.retrieval_file or args.data_file
        fmt = args.retrieval_format or (None if args.retrieval_file else args.data_format)
        data.retrieval_items = load_image_captions(files, fmt, max_images=args.max_images)
        data.summary["retrieval"] = {"files": files, "images": len(data.retrieval_items)}
        data.card_datasets["retrieval"] = dataset_label(files, fmt)
    if args.benchmarks:
        from .benchmarks import locate

        # Every benchmark is located (or fetched) before any model loads: a missing one fails in seconds.
        for bench in args.benchmarks:
            data.benchmark_roots[bench.name] = locate(bench, args.benchmark_dir, args.cache_dir, args.download)
            data.card_datasets[f"benchmark:{bench.name}"] = (bench.name, bench.title)
        data.summary["benchmarks"] = dict(data.benchmark_roots)
    if "zeroshot" in args.task:
        from .zeroshot_data import load_imagefolder, read_classnames, read_templates

        dataset = load_imagefolder(args.zeroshot_dir, args.zeroshot_split, args.cache_dir)
        folders = dataset.features["label"].names
        data.zeroshot = {
            "dataset": dataset,
            "classnames": read_classnames(args.classnames, folders),
            "templates": read_templates(args.templates),
        }
        data.summary["zeroshot"] = {"dir": args.zeroshot_dir, "images": len(dataset), "classes": len(folders)}
        data.card_datasets["zeroshot"] = ("imagefolder", os.path.basename(os.path.normpath(args.zeroshot_dir)))
    return data


def evaluate_model(model, processor, args, data: EvalData) -> tuple[dict, object | None]:
    """All requested tasks for one model: ({task: metrics}, pairwise scores for the histograms or None)."""
    from .encode import CachedEncoder, ClipEncoder
    from .tasks import (
        DatasetColumn,
        pairwise_metrics,
        pairwise_scores,
        score_retrieval,
        score_zeroshot,
    )

    encoder = ClipEncoder(
        model,
        processor,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        num_workers=args.num_workers,
    )
    out, scores = {}, None
    if data.pairs is not None:
        scores = pairwise_scores(
            encoder, data.pairs, args.image_dir, seed=args.seed, allow_absolute=args.allow_absolute_paths
        )
        out["pairwise"] = pairwise_metrics(scores, args.tau)
    if data.retrieval_items is not None:
        image_dir = args.retrieval_image_dir or args.image_dir
        out["retrieval"] = score_retrieval(
            encoder, data.retrieval_items, image_dir, allow_absolute=args.allow_absolute_paths
        )
    if data.benchmark_roots:
        from .benchmarks.runner import run_benchmark

        cached = CachedEncoder(encoder)  # benchmarks sharing images (COCO val2017) encode each once per model
        out["benchmarks"] = {}
        for bench in args.benchmarks:
            logger.info("benchmark %s", bench.name)
            out["benchmarks"][bench.name] = run_benchmark(
                cached, bench, data.benchmark_roots[bench.name], allow_absolute=args.allow_absolute_paths
            )
    if data.zeroshot is not None:
        dataset = data.zeroshot["dataset"]
        out["zeroshot"] = score_zeroshot(
            encoder,
            DatasetColumn(dataset, "image"),
            [int(label) for label in dataset["label"]],
            data.zeroshot["classnames"],
            data.zeroshot["templates"],
            linear_probe=args.linear_probe,
            seed=args.seed,
        )
    return out, scores


def check_models(args) -> None:
    """Every `--model_name_or_path` checked before anything is evaluated (a bad second model used to stop the run
    after the first was evaluated, with no results.json): a checkpoint file's kind (a pickle needs --allow_pickle),
    a folder's or Hub id's config and family, and a local folder's safetensors weights. All problems are named at
    once."""
    from transformers import AutoConfig

    from ..families import family_of
    from .convert import PICKLE_SUFFIXES, PickleRefused, is_checkpoint_file

    problems, pickles = [], []
    for path in args.model_name_or_path:
        if is_checkpoint_file(path):
            if path.endswith(PICKLE_SUFFIXES) and not args.allow_pickle:
                pickles.append(path)
            continue
        if os.path.isfile(path):
            kinds = ", ".join((".safetensors", *PICKLE_SUFFIXES))
            problems.append(f"{path}: not a model folder, nor a checkpoint file ({kinds})")
            continue
        if os.path.isdir(path) and not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json")
                                           for n in os.listdir(path)):  # fmt: skip
            problems.append(f"{path}: no .safetensors weights (models load with use_safetensors=True only)")
            continue
        try:
            family_of(AutoConfig.from_pretrained(path))
        except (OSError, ValueError, KeyError) as err:  # no config.json / not JSON / unknown model_type / no such id
            problems.append(f"{path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else err}")
    if pickles:
        problems.append(f"{', '.join(pickles)}: a pickle (.pt/.pth/.bin): loading it can run arbitrary code; pass "
                        "--allow_pickle if you trust its source")  # fmt: skip
    if problems:
        error = PickleRefused if pickles and len(problems) == 1 else ValueError
        raise error(f"--model_name_or_path: {len(problems)} of {len(args.model_name_or_path)} models cannot be "
                    "loaded, nothing evaluated: " + "; ".join(problems))  # fmt: skip


def load_model(path: str, device, args):
    """(model, processor): an HF CLIP folder / Hub id, or an OpenAI/open_clip checkpoint file converted in memory."""
    from .convert import convert_checkpoint, is_checkpoint_file
    from .encode import load_clip

    if is_checkpoint_file(path):
        model, processor = convert_checkpoint(path, allow_pickle=args.allow_pickle, activation=args.activation)
        return model.to(device).eval(), processor
    return load_clip(path, device)


def wise_curves(results: dict, names: list[str], alphas: list[float]) -> dict:
    """Per tuned model, the (alpha, relational, recognition) points from base (alpha 0) to tuned (alpha 1)."""
    from .wise import wise_name

    def point(alpha: float, name: str) -> dict:
        r = results[name]
        return {
            "alpha": alpha,
            "relational": r.get("pairwise", {}).get("accuracy"),
            "recognition": r.get("zeroshot", {}).get("top1"),
        }

    curves = {}
    for tuned in names[1:]:
        by_alpha = {0.0: point(0.0, names[0]), 1.0: point(1.0, tuned)}
        by_alpha.update({a: point(a, wise_name(tuned, a)) for a in alphas})
        curves[tuned] = [by_alpha[a] for a in sorted(by_alpha)]
    return curves
