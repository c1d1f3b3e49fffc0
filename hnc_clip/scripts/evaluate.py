"""Evaluate one or more CLIP checkpoints on hard-negative pairs, retrieval and zero-shot classification.

    hnc-clip-eval --task pairwise retrieval zeroshot \
        --model_name_or_path openai/clip-vit-base-patch32 outputs/hnc-clip \
        --data_file hnc_test.json --image_dir gqa/images --zeroshot_dir imagenette/val \
        --wise_alpha 0.25,0.5,0.75 --output_dir outputs/eval

Writes `results.json` (layout in `hnc_clip/evaluation/report.py`), `results.md`, `eval_config.json` and PNG plots to
`--output_dir`. The same run from Python: `main(EvalArguments(...))` (also named `run`), which returns the results
dict. The steps are calls into `hnc_clip.evaluation.pipeline`; this module parses, checks and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field

from hnc_clip.evaluation.pipeline import (
    FORMAT_SHAPES,
    check_models,
    evaluate_model,
    load_data,
    load_model,
    model_names,
    wise_curves,
)
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


def main(args: EvalArguments | dict) -> dict:
    """Evaluate every model (and WiSE-FT interpolation) on every task; write the outputs; return `results`.

    `args` may be a dict of `EvalArguments` fields, e.g. `main({"model_name_or_path": [...], "data_file": [...]})`.
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
            curves = wise_curves(results, names, args.alphas)
            plot_wise_tradeoff(curves, os.path.join(args.output_dir, "wise_tradeoff.png"))

    # 4. Model cards: the tuned models' (every model after the first; the only one when a single model is given).
    if args.push_results:
        from hnc_clip.card import publish_results

        tuned = list(zip(args.model_name_or_path, names))
        for path, name in tuned[1:] or tuned:
            publish_results(path, name, results[name], data.card_datasets, args.output_dir, args.push_to_hub)
    return results


run = main  # the name the demo, bench/eval_benchmarks.py and the tests call


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-eval`: exit status 0 once the outputs are written; 1 when another run holds --output_dir (other
    errors raise)."""
    from hnc_clip.errors import RunAbortedError
    from hnc_clip.evaluation.report import results_markdown

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = make_parser().parse_args_into_dataclasses(args=argv)
    try:
        results = main(args)
    except RunAbortedError as err:
        print(f"hnc-clip-eval: error: {err}", file=sys.stderr)
        return 1
    print(results_markdown({m: {t: v for t, v in r.items() if t != "benchmarks"} for m, r in results.items()}))
    if args.benchmarks:
        with open(os.path.join(args.output_dir, "benchmarks.md"), encoding="utf-8") as f:
            print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(cli())
