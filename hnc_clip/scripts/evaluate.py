"""Evaluate one or more CLIP checkpoints on hard-negative pairs, retrieval and zero-shot classification.

    hnc-clip-eval --task pairwise retrieval zeroshot \
        --model_name_or_path openai/clip-vit-base-patch32 outputs/hnc-clip \
        --data_file hnc_test.json --image_dir gqa/images --zeroshot_dir imagenette/val \
        --wise_alpha 0.25,0.5,0.75 --output_dir outputs/eval

Writes `results.json` (layout in `hnc_clip/evaluation/report.py`), `results.md`, `eval_config.json` and PNG plots to
`--output_dir`. The same run from Python: `run(EvalArguments(...))`, which returns the results dict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

from hnc_clip.evaluation.formats import FORMAT_SHAPES, detect_format, load_image_captions, load_pairs
from hnc_clip.evaluation.wise import parse_alphas
from hnc_clip.scripts.convert import ALLOW_PICKLE_HELP

logger = logging.getLogger("hnc_clip.evaluate")

TASKS = ("pairwise", "retrieval", "zeroshot")


@dataclass
class EvalArguments:
    """What to evaluate, on which data, and where the results go."""

    model_name_or_path: list[str] = field(
        default_factory=list,
        metadata={
            "help": "One or more models: HF CLIP folders or Hub ids, or OpenAI/open_clip checkpoint files (.pt needs "
            "--allow_pickle; converted in memory). With --wise_alpha the first is the base.",
            "aliases": ["--model"],
        },
    )
    task: list[str] | None = field(
        default=None,
        metadata={"help": f"One or more of {', '.join(TASKS)}; default pairwise when --data_file is given."},
    )
    benchmark: list[str] = field(
        default_factory=list,
        metadata={"help": "Registry benchmarks and suites (compositionality, zeroshot, retrieval, all): eval/README."},
    )
    benchmark_dir: str = field(
        default=os.environ.get("HNC_CLIP_BENCHMARK_DIR", "~/.cache/hnc_clip/benchmarks"),
        metadata={"help": "Folder holding <name>/ per benchmark in its official layout (Hub ones are fetched here)."},
    )
    download: bool = field(
        default=True, metadata={"help": "Fetch Hub-hosted benchmarks that are missing (--no_download: never)."}
    )
    precision: str = field(
        default="fp32", metadata={"help": "fp32 (default, as the published numbers), bf16 or fp16 (autocast)."}
    )
    num_workers: int | None = field(
        default=None, metadata={"help": "DataLoader workers decoding images; default min(4, CPUs // 2)."}
    )
    allow_pickle: bool = field(
        default=False,
        metadata={"help": ALLOW_PICKLE_HELP},
    )
    activation: str = field(
        default="quick_gelu", metadata={"help": "Activation of converted .pt baselines: quick_gelu (OpenAI) or gelu."}
    )
    allow_absolute_paths: bool = field(
        default=False,
        metadata={"help": "Let data files name absolute image paths (by default every path stays inside its root)."},
    )
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json, results.md and plots go."})
    data_file: list[str] = field(
        default_factory=list,
        metadata={"help": "Pairwise data file(s): HNC test/train, Structure-CLIP, SugarCrepe subsets, ARO VG-R/VG-A."},
    )
    image_dir: str | None = field(default=None, metadata={"help": "Folder with the images of --data_file."})
    data_format: str | None = field(
        default=None, metadata={"help": f"Force the format of --data_file: {', '.join(FORMAT_SHAPES)}."}
    )
    retrieval_file: list[str] = field(
        default_factory=list,
        metadata={"help": "Retrieval file(s), COCO Karpathy style or any pair format; default: --data_file."},
    )
    retrieval_image_dir: str | None = field(default=None, metadata={"help": "Images of --retrieval_file."})
    retrieval_format: str | None = field(default=None, metadata={"help": "Force the format of --retrieval_file."})
    zeroshot_dir: str | None = field(
        default=None, metadata={"help": "Image folder (one sub-folder per class) for --task zeroshot."}
    )
    zeroshot_split: str | None = field(
        default=None, metadata={"help": "Split of --zeroshot_dir to use; default test, else validation, else train."}
    )
    classnames: str | None = field(
        default=None,
        metadata={"help": "Class names: JSON list, JSON dict folder->name, or .txt one per line. Default: folders."},
    )
    templates: str | None = field(default=None, metadata={"help": "JSON list of prompt templates with a '{}' slot."})
    linear_probe: bool = field(default=False, metadata={"help": "Also fit a logistic-regression probe (zeroshot)."})
    batch_size: int = field(default=64, metadata={"help": "Images or captions per encoder forward pass."})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ...; default cuda when available."})
    thresholds: str = field(default="1.0,1.05,1.1", metadata={"help": "Ratio thresholds tau of Acc@tau (pairwise)."})
    max_pairs: int | None = field(default=None, metadata={"help": "Evaluate only the first N pairs (quick runs)."})
    max_images: int | None = field(default=None, metadata={"help": "Use only the first N retrieval images."})
    wise_alpha: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated alphas: also evaluate (1-a)*base + a*tuned for each model after the first."
        },
    )
    push_results: bool = field(
        default=False, metadata={"help": "Write results into the tuned model's card (README.md, model-index)."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "With --push_results, allow pushing the card of a Hub-hosted model."}
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots (--no_plots to skip)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random-negative draw and the linear-probe split."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache for the image folder."})

    def __post_init__(self):
        if isinstance(self.task, str):
            self.task = [self.task]
        if isinstance(self.benchmark, str):
            self.benchmark = [self.benchmark]
        if self.task is None:
            self.task = ["pairwise"] if self.data_file or not self.benchmark else []
        if isinstance(self.model_name_or_path, str):
            self.model_name_or_path = [self.model_name_or_path]
        if isinstance(self.data_file, str):
            self.data_file = [self.data_file]
        if isinstance(self.retrieval_file, str):
            self.retrieval_file = [self.retrieval_file]
        if unknown := [t for t in self.task if t not in TASKS]:
            raise ValueError(f"--task: unknown {unknown}; choose from {list(TASKS)}")
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path (--model): give at least one checkpoint")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--precision: fp32, bf16 or fp16, got {self.precision!r}")
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"--activation: quick_gelu or gelu, got {self.activation!r}")
        if self.num_workers is None:
            self.num_workers = min(4, (os.cpu_count() or 1) // 2)
        if self.num_workers < 0:
            raise ValueError("--num_workers must be >= 0")
        if self.benchmark:
            from hnc_clip.evaluation.benchmarks import expand

            self.benchmarks = expand(self.benchmark)  # BenchmarkError lists the registry
        else:
            self.benchmarks = []
        if "pairwise" in self.task and not self.data_file:
            raise ValueError("--task pairwise needs --data_file")
        if "retrieval" in self.task and not (self.retrieval_file or self.data_file):
            raise ValueError("--task retrieval needs --retrieval_file (or --data_file)")
        if "zeroshot" in self.task and not self.zeroshot_dir:
            raise ValueError("--task zeroshot needs --zeroshot_dir")
        for flag in ("data_format", "retrieval_format"):
            if getattr(self, flag) is not None and getattr(self, flag) not in FORMAT_SHAPES:
                raise ValueError(
                    f"--{flag}: unknown format {getattr(self, flag)!r}; choose from {list(FORMAT_SHAPES)}"
                )
        self.alphas = parse_alphas(self.wise_alpha)
        if self.alphas and len(self.model_name_or_path) < 2:
            raise ValueError("--wise_alpha needs a base and at least one tuned model in --model_name_or_path")
        try:
            self.tau = [float(t) for t in self.thresholds.split(",") if t.strip()]
        except ValueError as err:
            raise ValueError(f"--thresholds: expected comma-separated numbers, got {self.thresholds!r}") from err
        # NaN makes every Acc@tau 0 (each comparison with it is false); a ratio threshold is positive.
        if not self.tau or not all(math.isfinite(t) and t > 0 for t in self.tau):
            raise ValueError(f"--thresholds: expected positive finite ratios, got {self.thresholds!r}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"--max_pairs must be at least 1 (leave it out for every pair), got {self.max_pairs}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"--max_images must be at least 1 (leave it out for every image), got {self.max_images}")
        if self.batch_size < 1:
            raise ValueError("--batch_size must be at least 1")


def make_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(EvalArguments, description=__doc__.split("\n\n")[0])


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
class _Data:
    """Everything loaded once and shared by all models."""

    pairs: list | None = None
    retrieval_items: list | None = None
    zeroshot: dict | None = None
    benchmark_roots: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    card_datasets: dict = field(default_factory=dict)


def _dataset_label(paths: list[str], forced: str | None) -> tuple[str, str]:
    formats = sorted({forced or detect_format(p) for p in paths})
    return ",".join(formats), ",".join(os.path.splitext(os.path.basename(p))[0] for p in paths)


def load_data(args: EvalArguments) -> _Data:
    """Read every task's inputs once (pairs, retrieval gallery, image folder) and describe them for the card/config."""
    data = _Data()
    if "pairwise" in args.task:
        skips: Counter = Counter()
        data.pairs = load_pairs(args.data_file, args.data_format, skips=skips, max_pairs=args.max_pairs)
        data.summary["pairwise"] = {"files": args.data_file, "pairs": len(data.pairs), "parse_skips": dict(skips)}
        data.card_datasets["pairwise"] = _dataset_label(args.data_file, args.data_format)
    if "retrieval" in args.task:
        files = args.retrieval_file or args.data_file
        fmt = args.retrieval_format or (None if args.retrieval_file else args.data_format)
        data.retrieval_items = load_image_captions(files, fmt, max_images=args.max_images)
        data.summary["retrieval"] = {"files": files, "images": len(data.retrieval_items)}
        data.card_datasets["retrieval"] = _dataset_label(files, fmt)
    if args.benchmarks:
        from hnc_clip.evaluation.benchmarks import locate

        # Every benchmark is located (or fetched) before any model loads: a missing one fails in seconds.
        for bench in args.benchmarks:
            data.benchmark_roots[bench.name] = locate(bench, args.benchmark_dir, args.cache_dir, args.download)
            data.card_datasets[f"benchmark:{bench.name}"] = (bench.name, bench.title)
        data.summary["benchmarks"] = dict(data.benchmark_roots)
    if "zeroshot" in args.task:
        from hnc_clip.evaluation.zeroshot_data import load_imagefolder, read_classnames, read_templates

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


def evaluate_model(model, processor, args: EvalArguments, data: _Data) -> tuple[dict, object | None]:
    """All requested tasks for one model: ({task: metrics}, pairwise scores for the histograms or None)."""
    from hnc_clip.evaluation.encode import CachedEncoder, ClipEncoder
    from hnc_clip.evaluation.tasks import (
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
        from hnc_clip.evaluation.benchmarks.runner import run_benchmark

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


def check_models(args: EvalArguments) -> None:
    """Every `--model_name_or_path` checked before anything is evaluated (a bad second model used to stop the run
    after the first was evaluated, with no results.json): a checkpoint file's kind (a pickle needs --allow_pickle),
    a folder's or Hub id's config and family, and a local folder's safetensors weights. All problems are named at
    once."""
    from transformers import AutoConfig

    from hnc_clip.evaluation.convert import PICKLE_SUFFIXES, PickleRefused, is_checkpoint_file
    from hnc_clip.families import family_of

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


def load_model(path: str, device, args: EvalArguments):
    """(model, processor): an HF CLIP folder / Hub id, or an OpenAI/open_clip checkpoint file converted in memory."""
    from hnc_clip.evaluation.convert import convert_checkpoint, is_checkpoint_file
    from hnc_clip.evaluation.encode import load_clip

    if is_checkpoint_file(path):
        model, processor = convert_checkpoint(path, allow_pickle=args.allow_pickle, activation=args.activation)
        return model.to(device).eval(), processor
    return load_clip(path, device)


def _wise_curves(results: dict, names: list[str], alphas: list[float]) -> dict:
    """Per tuned model, the (alpha, relational, recognition) points from base (alpha 0) to tuned (alpha 1)."""
    from hnc_clip.evaluation.wise import wise_name

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


def run(args: EvalArguments | dict) -> dict:
    """Evaluate every model (and WiSE-FT interpolation) on every task; write the outputs; return `results`.

    `args` may be a dict of `EvalArguments` fields, e.g. `run({"model_name_or_path": [...], "data_file": [...]})`.
    """
    if isinstance(args, dict):
        args = EvalArguments(**args)
    from hnc_clip.output_dir import claim_folder

    # Held for the whole run: two evaluations into one folder would each overwrite the other's results.json.
    with claim_folder(args.output_dir, "hnc-clip-eval"):
        return _run(args)


def _run(args: EvalArguments) -> dict:
    import torch

    from hnc_clip.evaluation.encode import default_device
    from hnc_clip.evaluation.report import write_results_json, write_results_markdown
    from hnc_clip.evaluation.wise import check_wise_configs, wise_interpolate, wise_name

    # 1. Inputs, read once for all models. Fail before loading any model on bad data or incompatible checkpoints.
    device = torch.device(args.device) if args.device else default_device()
    args.device = str(device)
    check_models(args)
    if args.alphas:
        from hnc_clip.evaluation.convert import is_checkpoint_file

        if any(is_checkpoint_file(p) for p in args.model_name_or_path):
            raise ValueError("--wise_alpha needs HF CLIP folders: convert .pt baselines first (hnc-clip-convert)")
        check_wise_configs(args.model_name_or_path)
    data = load_data(args)
    names = model_names(args.model_name_or_path)
    os.makedirs(args.output_dir, exist_ok=True)

    # 2. Models one at a time (memory); the base stays on the CPU while tuned models are interpolated with it.
    results: dict[str, dict] = {}
    scores: dict[str, object] = {}
    base = None
    for i, (path, name) in enumerate(zip(args.model_name_or_path, names)):
        logger.info("evaluating %s", name)
        model, processor = load_model(path, device, args)
        results[name], scores[name] = evaluate_model(model, processor, args, data)
        if args.alphas and i == 0:
            base = model.to("cpu")
            continue
        for alpha in args.alphas:
            mixed = wise_interpolate(base, model, alpha)
            results[wise_name(name, alpha)], scores[wise_name(name, alpha)] = evaluate_model(
                mixed, processor, args, data
            )
            del mixed
        del model

    # 3. Outputs: results.json, results.md, the run's configuration, plots.
    write_results_json(results, args.output_dir)
    write_results_markdown({m: {t: v for t, v in r.items() if t != "benchmarks"} for m, r in results.items()},
                           args.output_dir)  # fmt: skip
    if args.benchmarks:
        from hnc_clip.evaluation.table import write_benchmark_table

        suites = {b.name: b.suite for b in args.benchmarks}
        headlines = {b.name: b.headline for b in args.benchmarks}
        write_benchmark_table(results, suites, headlines, args.output_dir)
    with open(os.path.join(args.output_dir, "eval_config.json"), "w", encoding="utf-8") as f:
        json.dump({"args": asdict(args), "data": data.summary}, f, indent=2, default=str)
    if args.plots:
        from hnc_clip.evaluation.plots import plot_accuracy_by_type, plot_similarity_histograms, plot_wise_tradeoff

        plot_accuracy_by_type(results, os.path.join(args.output_dir, "accuracy_by_type.png"))
        plot_similarity_histograms(
            {m: s for m, s in scores.items() if s is not None}, os.path.join(args.output_dir, "similarity_hist.png")
        )
        if args.alphas and {"pairwise", "zeroshot"} & set(args.task):  # the trade-off needs one of the two axes
            curves = _wise_curves(results, names, args.alphas)
            plot_wise_tradeoff(curves, os.path.join(args.output_dir, "wise_tradeoff.png"))

    # 4. Model cards: the tuned models' (every model after the first; the only one when a single model is given).
    if args.push_results:
        from hnc_clip.card import publish_results

        tuned = list(zip(args.model_name_or_path, names))
        for path, name in tuned[1:] or tuned:
            publish_results(path, name, results[name], data.card_datasets, args.output_dir, args.push_to_hub)
    return results


def main(argv: list[str] | None = None) -> dict:
    """Parse `argv` (default `sys.argv[1:]`), run, and print the markdown table (`hnc-clip-eval`)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = make_parser().parse_args_into_dataclasses(args=argv)
    results = run(args)
    from hnc_clip.evaluation.report import results_markdown

    print(results_markdown({m: {t: v for t, v in r.items() if t != "benchmarks"} for m, r in results.items()}))
    if args.benchmarks:
        with open(os.path.join(args.output_dir, "benchmarks.md"), encoding="utf-8") as f:
            print(f.read())
    return results


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-eval`: exit status 0 once the outputs are written; 1 when another run holds --output_dir (other
    errors raise)."""
    from hnc_clip.errors import RunAbortedError

    try:
        main(argv)
    except RunAbortedError as err:
        print(f"hnc-clip-eval: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
