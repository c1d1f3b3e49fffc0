"""The offline demo: hard-negative fine-tuning teaches relations that standard CLIP fine-tuning does not.

    python -m hnc_clip.demo --output_dir demo_output          # what `make demo` runs (2 fine-tune seeds)
    python -m hnc_clip.demo --output_dir demo_seeds --seeds 0 1 2   # every stage per seed: world and base too
    python -m hnc_clip.demo --output_dir /tmp/d --quick       # a smoke version (seconds; numbers meaningless)

Every stage runs the project's real code: the world is written in the HNC schemas (`hnc_clip.demo.world`), models
are trained by the training application's `main` (`hnc_clip.scripts.train`: the same `HncTrainer`, `datasets`
pipeline and collator as on HNC + GQA), and evaluated by the evaluation application's `run`. Stages:

1. a synthetic world of two coloured shapes in a spatial relation, with relation/swap/attribute/object negatives;
2. "pre-train" a small CLIP from scratch with the standard CLIP loss: the stand-in for OpenAI CLIP;
3. from that checkpoint, fine-tune with each loss of `--losses` (the standard `clip` loss and the hard-negative
   ones) once per `--finetune_seeds` seed (its batch order), every loss on the same batches for a seed, two runs at
   a time in one-thread processes; and the plain-caption variant: the main loss on the same batches of positives
   with their negatives made by `--plain_rules` instead of HNC's;
4. evaluate all of them (pairwise accuracy by negative type on held-out scenes, zero-shot object classification)
   and the WiSE-FT interpolations of the first seed's main hard-negative model with the base (the trade-off curve);
5. write `report.md` (mean ± sd over the fine-tune seeds per model), `results.json` and plots (accuracy by type;
   relational vs recognition accuracy).

Each stage is cached in its folder (with the configuration that made it), so a rerun only redoes what changed.
Exits with status 1 if, on any fine-tune seed, the hard-negative model is not better than the standard one on
relation negatives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace

from transformers import HfArgumentParser

from hnc_clip.demo import report

# Not a child of "hnc_clip": the training app sets that logger's level to the Trainer's log level (warning).
logger = logging.getLogger("hnc_clip_demo")

RELATIONAL_TYPES = ("relation", "swap")
BASE, STANDARD, HNC = "pre-trained base", "standard fine-tune (`clip`)", "HNC fine-tune"
PLAIN = "plain captions + rule negatives"


@dataclass
class DemoArguments:
    output_dir: str = field(default="demo_output", metadata={"help": "Where the world, models and report go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, of its initial model and of the base."})
    finetune_seeds: list[int] = field(
        default_factory=lambda: [0, 1],
        metadata={"help": "Each loss's fine-tune runs once per seed (its batch order; every loss sees the same "
                          "batches for a seed), from the one base: the report's mean ± sd (min–max) over them. Two "
                          "fit the 5-minute budget on 2 CPU cores; docs/demo.md has three."},
    )
    seeds: list[int] = field(
        default_factory=list,
        metadata={"help": "Run the whole demo once per seed (in <output_dir>/seed-<s>: world, base and one "
                          "fine-tune seed, the same) and report mean ± spread over them."},
    )
    num_train_images: int = field(default=4000, metadata={"help": "Training scenes (8 pairs each)."})
    num_test_images: int = field(default=500, metadata={"help": "Held-out test scenes (8 pairs each)."})
    num_recognition_per_class: int = field(default=20, metadata={"help": "Zero-shot images per colour×shape."})
    text_hidden_size: int = field(
        default=64, metadata={"help": "Width of the text tower (the vision tower is 128 wide): most of a step's time."}
    )
    pretrain_steps: int = field(default=600, metadata={"help": "Steps of standard CLIP pre-training from scratch."})
    pretrain_learning_rate: float = field(default=5e-4, metadata={"help": "Pre-training learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Pairs per pre-training batch."})
    losses: list[str] = field(
        default_factory=lambda: ["clip", "pairwise"],
        metadata={"help": "Fine-tunes from the base, one per loss and fine-tune seed (`clip`: the baseline): loss "
                          "types, or `fsc_clip_local` (`fsc_clip --fsc_local_weight 0.2`). `negclip`, `hnc`, "
                          "`fsc_clip`, `ce_clip` stay at chance like `clip` here (docs/demo.md)."},
    )
    plain_rules: str = field(
        default="swap-rel,replace-rel",
        metadata={"help": "The plain-caption variant: --main_loss on the same batches' positives with negatives made "
                          "by these rules (--negatives_from_captions) instead of HNC's; empty: no such run. The "
                          "default makes what HNC's relation/swap types are (`swap,replace` stays at chance: "
                          "docs/demo.md)."},
    )
    plain_seeds: int = field(
        default=1, metadata={"help": "How many of --finetune_seeds (the first) also train the plain-caption variant."}
    )
    main_loss: str = field(default="pairwise", metadata={"help": "The hard-negative loss the targets are about."})
    finetune_steps: int = field(default=500, metadata={"help": "Steps of each fine-tuning run."})
    finetune_learning_rate: float = field(default=1e-3, metadata={"help": "Fine-tuning learning rate."})
    finetune_batch_size: int = field(default=256, metadata={"help": "Pairs per fine-tuning batch."})
    group_by_image: int = field(
        default=4, metadata={"help": "Fine-tuning batches hold groups of this many pairs of one image."}
    )
    caption_types: list[str] = field(
        default_factory=lambda: ["relation", "swap"],
        metadata={"help": "Negative types the fine-tunes train on (evaluation scores all four)."},
    )
    hard_negative_weight_start: float = field(
        default=8.0, metadata={"help": "λ of the hard-negative fine-tunes at step 0: a strong relational push."}
    )
    hard_negative_weight: float = field(
        default=2.0, metadata={"help": "λ after --hard_negative_decay_steps (linear in between): recognition back."}
    )
    hard_negative_decay_steps: int = field(default=400, metadata={"help": "Steps over which λ falls to its end."})
    wise_alphas: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        metadata={"help": "WiSE-FT α of the trade-off curve: (1-α)·base + α·(main hard-negative model)."},
    )
    image_cache: bool = field(
        default=True,
        metadata={"help": "Decode the world's images once into a uint8 cache (`hnc-clip-image-cache`) for training."},
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch threads of in-process stages."})
    parallel_runs: int = field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        metadata={"help": "Fine-tunes trained at once, one process and one thread each (1: in turn, in-process)."},
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke version for tests: a few steps, few scenes."})
    enforce_targets: bool = field(
        default=True, metadata={"help": "Exit 1 if on any fine-tune seed the hard-negative model is not better on "
                                        "relation negatives."},
    )

    def __post_init__(self):
        if "clip" not in self.losses or self.main_loss not in self.losses:
            raise ValueError(f"--losses must hold `clip` and --main_loss {self.main_loss!r}, got {self.losses}")
        from hnc_clip.losses import LOSSES

        unknown = [loss for loss in self.losses if loss not in LOSSES and loss not in LOSS_SETTINGS]
        if unknown:
            raise ValueError(f"--losses {' '.join(unknown)}: not a loss type ({', '.join(sorted(LOSSES))}) nor one "
                             f"of {', '.join(LOSS_SETTINGS)}")  # fmt: skip
        if not self.finetune_seeds or len(set(self.finetune_seeds)) < len(self.finetune_seeds) or self.plain_seeds < 1:
            raise ValueError(f"--finetune_seeds needs distinct seeds (one folder per seed) and --plain_seeds ≥ 1, got "
                             f"{self.finetune_seeds} and {self.plain_seeds}")  # fmt: skip
        if self.quick:
            self.num_train_images, self.num_test_images, self.num_recognition_per_class = 64, 16, 2
            self.pretrain_steps, self.finetune_steps, self.batch_size, self.finetune_batch_size = 3, 3, 16, 32
            self.hard_negative_decay_steps = 2
            self.wise_alphas = self.wise_alphas[:1]
            self.finetune_seeds = self.finetune_seeds[:2]
            self.parallel_runs = 1  # in-process: seconds, not process start-ups


def _config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _is_done(path: str, key: str) -> bool:
    done = _read_json(os.path.join(path, "demo_stage.json"))
    return done is not None and done.get("key") == key and os.path.exists(os.path.join(path, "model.safetensors"))


def train(
    args: DemoArguments, name: str, init: str, flags: list[str], data: list[str] | None = None, seed: int | None = None
) -> str:
    """One training run (`hnc_clip.scripts.train.main`) from `init` with the stage's own `flags` on the world's HNC
    train split (or `data`'s flags), seeded with `seed` (default: the world's); skipped when its folder holds the
    same run."""
    from hnc_clip.scripts import train as train_app

    world = os.path.join(args.output_dir, "world")
    out = os.path.join(args.output_dir, "models", name)
    cache = ["--image_cache_dir", os.path.join(world, "image_cache")] if args.image_cache else []
    flags = [
        "--model_name_or_path", init, *(data or ["--train_file", f"{world}/train.json"]),
        "--image_dir", f"{world}/images",
        *cache, "--output_dir", out, "--overwrite_output_dir", "--do_train", "--weight_decay", "0.1",
        "--seed", str(args.seed if seed is None else seed), "--save_strategy", "no", "--use_cpu",
        "--dataloader_num_workers", "0", "--report_to", "none",
        "--cache_dir", os.path.join(args.output_dir, "cache"), *flags,
    ]  # fmt: skip
    key = _config_hash([flags, _stage_key(init)])
    if _is_done(out, key):
        logger.info(f"[demo] {name}: cached in {out}")
        return out
    logger.info(f"[demo] {name}: training from {os.path.basename(init)}")
    t0 = time.time()
    train_app.main(*train_app.parse_args(flags))
    with open(os.path.join(out, "demo_stage.json"), "w") as f:
        json.dump({"key": key, "seconds": round(time.time() - t0, 1), "flags": flags}, f, indent=1)
    return out


def pretrain_flags(args: DemoArguments) -> list[str]:
    steps = args.pretrain_steps
    return [
        "--loss_type", "clip", "--max_steps", str(steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.pretrain_learning_rate), "--warmup_steps", str(max(1, steps // 10)),
        "--logging_steps", str(max(1, steps // 8)),
    ]  # fmt: skip


# `--losses` names that are a loss type with settings of its own: name → (loss type, its flags).
LOSS_SETTINGS = {
    "fsc_clip_local": ("fsc_clip", ["--fsc_local_weight", "0.2"]),  # FSC-CLIP with its local term, as published
}


def finetune_flags(args: DemoArguments, loss: str, plain: bool = False) -> list[str]:
    """Every fine-tune sees the same batches (same sampler, seed, size, steps and caption types); only the loss
    differs. `plain`: the plain caption table holds only those types' pairs, in the same order (no --caption_types)."""
    from hnc_clip.losses import LOSSES

    loss, own = LOSS_SETTINGS.get(loss, (loss, []))
    steps = args.finetune_steps
    weight = [] if not LOSSES[loss].uses_weight else [
        "--hard_negative_schedule", "linear", "--hard_negative_weight_min", str(args.hard_negative_weight_start),
        "--hard_negative_weight", str(args.hard_negative_weight),
        "--hard_negative_warmup_steps", str(args.hard_negative_decay_steps),
    ]  # fmt: skip
    return [
        "--loss_type", loss, *own, *weight, "--max_steps", str(steps),
        "--per_device_train_batch_size", str(args.finetune_batch_size), "--group_by_image", str(args.group_by_image),
        *([] if plain else ["--caption_types", *args.caption_types]),
        "--learning_rate", str(args.finetune_learning_rate),
        "--warmup_steps", str(max(1, steps // 10)), "--logging_steps", str(max(1, steps // 8)),
    ]  # fmt: skip


def plain_data_flags(args: DemoArguments, world: str) -> list[str]:
    """The plain-caption variant's data: the world's positives as a table, negatives made by `--plain_rules` with a
    lexicon parser and class vocabulary of the world's words (`hnc_clip.demo.world.write_plain_captions`)."""
    from hnc_clip.demo.world import write_plain_captions

    paths = write_plain_captions(world, args.caption_types)
    return [
        "--train_file", paths["train.jsonl"], "--image_column", "image", "--caption_column", "caption",
        "--negatives_from_captions", args.plain_rules, "--caption_parser", f"lexicon:{paths['lexicon.json']}",
        "--negative_vocabulary", paths["vocabulary.json"],
    ]  # fmt: skip


def recovery(summary: dict, roles: dict) -> float | None:
    """Share of the HNC fine-tune's relational gain over the standard one that the rule negatives recover."""
    plain = next((r for r in roles if r.startswith(PLAIN)), None)
    hnc = next(r for r in roles if r.startswith(HNC))
    if plain is None:
        return None
    std_rel, hnc_rel = summary[roles[STANDARD]]["relational"], summary[roles[hnc]]["relational"]
    gain = hnc_rel - std_rel
    return (summary[roles[plain]]["relational"] - std_rel) / gain if gain > 0 else None


def _train_job(job: tuple) -> str:
    """`train` in a worker process with one torch thread (see `run_jobs`)."""
    import torch

    torch.set_num_threads(1)
    return train(*job)


def run_jobs(jobs: list[tuple], parallel: int, on_done=None) -> list[str]:
    """The fine-tunes are independent: on a small CPU, k processes with one thread each finish sooner than one
    process after another with k threads (small matrices parallelise poorly across threads), and one thread makes
    each run's numbers the same from run to run. `on_done(path, idle)` runs here as each one finishes, `idle` the
    number of cores no fine-tune will use again (all remaining runs have started)."""
    on_done = on_done or (lambda path, idle: None)
    if parallel <= 1 or len(jobs) <= 1:
        import torch

        paths = []
        for job in jobs:
            paths.append(train(*job))
            on_done(paths[-1], torch.get_num_threads() if len(paths) == len(jobs) else 0)
        return paths
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    paths = [""] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train_job, job): k for k, job in enumerate(jobs)}  # started in this order
        for done, future in enumerate(as_completed(futures), 1):
            paths[futures[future]] = future.result()
            on_done(paths[futures[future]], max(0, min(parallel, len(jobs)) - (len(jobs) - done)))
    return paths


class Evaluator:
    """Each checkpoint evaluated (`hnc_clip.scripts.evaluate.run`, into `eval/<model>/`), and the WiSE-FT path
    (`eval/wise/`), as soon as a core is idle for good: while the last fine-tune trains, the others' evaluations
    take the core it leaves (evaluating while every core trains would only slow the training)."""

    def __init__(self, args: DemoArguments, world: str, base: str, main_model: str):
        self.args, self.base, self.main_model = args, base, main_model
        self.config = {
            "task": ["pairwise", "zeroshot"],
            "data_file": [os.path.join(world, "test.json")],
            "image_dir": os.path.join(world, "images"),
            "zeroshot_dir": os.path.join(world, "recognition"),
            "classnames": os.path.join(world, "recognition", "classnames.json"),
            "templates": os.path.join(world, "recognition", "templates.json"),
            "device": "cpu",
            "batch_size": 256,
        }
        self.results: dict = {}
        self.wise: dict | None = None
        self.pending = [base]

    def __call__(self, path: str, idle: int) -> None:
        import torch

        from hnc_clip.scripts.evaluate import run as run_eval

        self.pending.append(path)
        if not idle:
            return
        torch.set_num_threads(idle)
        while self.pending:
            model = self.pending.pop(0)
            out = os.path.join(self.args.output_dir, "eval", os.path.basename(model))
            self.results |= run_eval({**self.config, "model_name_or_path": [model], "output_dir": out})
        if self.wise is None and os.path.basename(self.main_model) in self.results:
            self.wise = run_eval({
                **self.config, "model_name_or_path": [self.base, self.main_model], "plots": False,
                "output_dir": os.path.join(self.args.output_dir, "eval", "wise"),
                "wise_alpha": ",".join(f"{a:g}" for a in self.args.wise_alphas),
            })  # fmt: skip


def _stage_key(path: str) -> str | None:
    """The cache key of the stage that produced `path` (so a changed base invalidates its fine-tunes)."""
    if (stage := _read_json(os.path.join(path, "demo_stage.json"))) is not None:
        return stage.get("key")
    world_model = _read_json(os.path.join(path, "synthetic_world_model.json"))  # the random init
    return _config_hash(world_model) if world_model is not None else None


def summarise(results: dict) -> dict:
    """Per model: accuracy per negative type, mean relational (relation+swap) accuracy, zero-shot top-1."""
    out = {}
    for name, r in results.items():
        by_type = r["pairwise"]["accuracy_by_type"]
        out[name] = {
            **{f"acc_{t}": v for t, v in sorted(by_type.items())},
            "relational": sum(by_type[t] for t in RELATIONAL_TYPES) / len(RELATIONAL_TYPES),
            "pairwise_accuracy": r["pairwise"]["accuracy"],
            "zeroshot_top1": r["zeroshot"]["top1"],
        }
    return out


def role_names(losses: list[str], main_loss: str) -> dict[str, str]:
    """Row label of each fine-tune's loss: the baseline, the main hard-negative model, the other losses."""
    return {loss: STANDARD if loss == "clip" else f"{HNC} (`{loss}`)" if loss == main_loss else f"`{loss}` fine-tune"
            for loss in losses}  # fmt: skip


def targets(summary: dict, roles: dict) -> list[tuple[str, bool]]:
    """The demo's claims, checked: `roles` maps row label -> model name (the main row's label starts with HNC)."""
    hnc_role = next(r for r in roles if r.startswith(HNC))
    base, std, hnc = (summary[roles[r]] for r in (BASE, STANDARD, hnc_role))
    return [
        ("base relation/swap near chance (≤ 0.65)", max(base["acc_relation"], base["acc_swap"]) <= 0.65),
        ("HNC relation and swap ≥ 0.95", min(hnc["acc_relation"], hnc["acc_swap"]) >= 0.95),
        ("HNC object accuracy not below the base", hnc["acc_object"] >= base["acc_object"]),
        ("HNC zero-shot top-1 not below the base", hnc["zeroshot_top1"] >= base["zeroshot_top1"]),
        ("standard fine-tune at chance on relation/swap (≤ 0.65)", max(std["acc_relation"], std["acc_swap"]) <= 0.65),
    ]


def seed_roles(roles: dict[str, list[str]], k: int) -> dict[str, str]:
    """The models of the k-th fine-tune seed, one per role that trained on it (the base is every seed's)."""
    return {role: names[0] if role == BASE else names[k] for role, names in roles.items() if role == BASE or
            k < len(names)}  # fmt: skip


def write_report(args: DemoArguments, table: dict, metrics: list[str], tradeoff: list[dict], met: dict,
                 recovered: list[float | None], seconds: float) -> str:  # fmt: skip
    seeds = " ".join(map(str, args.finetune_seeds))
    lines = [
        "# hnc-clip synthetic demo",
        "",
        f"Command: `python -m hnc_clip.demo --output_dir {args.output_dir}{_non_default_flags(args)}` "
        f"({seconds:.0f} s on {os.cpu_count()} CPU cores, cached stages included; world and base seed {args.seed}, "
        f"fine-tune seeds {seeds}).",
        "",
        "Pairwise accuracy = share of held-out (image, positive, hard negative) triples with sim(image, positive) > "
        "sim(image, negative); 0.5 is chance. Zero-shot = top-1 over the colour×shape classes of the recognition set. "
        f"Fine-tunes: {args.finetune_steps} steps on the same batches ({args.finetune_batch_size} pairs, groups of "
        f"{args.group_by_image} per image, types {' '.join(args.caption_types)}, λ from "
        f"{args.hard_negative_weight_start:g} to {args.hard_negative_weight:g} over {args.hard_negative_decay_steps} "
        "steps for the losses with one), once per fine-tune seed (its batch order) from the one base. Cells: mean ± "
        f"standard deviation (min–max) over the {len(args.finetune_seeds)} fine-tune seeds; the base is one model"
        + (f", the plain-caption variant trained on the first {args.plain_seeds}." if args.plain_rules and
           args.plain_seeds < len(args.finetune_seeds) else "."),
        "",
        *report.markdown_table(table, metrics),
        "",
        f"Trade-off of the HNC fine-tune along WiSE-FT (1-α)·base + α·tuned (α = 0: the base, 1: `{args.main_loss}`, "
        f"fine-tune seed {args.finetune_seeds[0]}):",
        "",
        "| α | relational | object | zero-shot top-1 |",
        "|---|---|---|---|",
        *[f"| {p['alpha']:g} | {p['relational']:.3f} | {p['acc_object']:.3f} | {p['zeroshot_top1']:.3f} |"
          for p in tradeoff],
        "",
        *_plain_lines(args, recovered),
        "Targets, met by every fine-tune seed:",
        "",
        *[f"- [{'x' if ok else ' '}] {what}" for what, ok in met.items()],
        "",
        "Plots: `accuracy_by_type.png`, `tradeoff.png`; each model's scores and similarity histograms in "
        "`eval/<model>/`.",
        "",
    ]  # fmt: skip
    path = os.path.join(args.output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _plain_lines(args: DemoArguments, recovered: list[float | None]) -> list[str]:
    if not args.plain_rules:
        return []
    shares = [s for s in recovered if s is not None]
    if not shares:
        found = "no relational gain of the HNC fine-tune to compare with"
    else:
        each = ", ".join("no gain to compare with" if s is None else f"{s:.0%}" for s in recovered)
        found = (f"the rule negatives recover {statistics.fmean(shares):.0%} of the HNC fine-tune's relational gain "
                 f"over the standard one (fine-tune seed{'s' if len(recovered) > 1 else ''} "
                 f"{' '.join(map(str, args.finetune_seeds[: len(recovered)]))}: {each})")  # fmt: skip
    return [
        f"Plain-caption variant: the same batches' positives, no HNC negatives; `{args.main_loss}` with negatives "
        f"made by the rules `{args.plain_rules}` (`--negatives_from_captions`, a lexicon of the world's words): "
        f"{found}.",
        "",
    ]


def finetune_jobs(args: DemoArguments, base: str, world: str) -> list[tuple[str, int, tuple]]:
    """(loss or "plain", fine-tune seed, `train` arguments) of every fine-tune in the order they start: the
    rule-negative runs first (the slowest: negatives made in the collator), then seed by seed the losses with hard
    negatives before `clip` (the fastest), so that two workers end close together."""
    plain = plain_data_flags(args, world) if args.plain_rules else None
    jobs = []
    for fs in args.finetune_seeds[: args.plain_seeds] if plain else []:
        flags = finetune_flags(args, args.main_loss, plain=True)
        jobs.append(("plain", fs, (args, f"ft_{args.main_loss}_plain-s{fs}", base, flags, plain, fs)))
    for fs in args.finetune_seeds:
        for loss in sorted(args.losses, key=lambda loss: loss == "clip"):
            jobs.append((loss, fs, (args, f"ft_{loss}-s{fs}", base, finetune_flags(args, loss), None, fs)))
    return jobs


def build_image_cache(world: str, init: str) -> str:
    """Every world image decoded and resized once (`hnc_clip.data.image_cache`), as `hnc-clip-image-cache` does; kept
    while the world and the model's image geometry stay the same (`demo_stage.json` beside the cache)."""
    from transformers import AutoImageProcessor

    from hnc_clip.data.image_cache import geometry, prepare

    out = os.path.join(world, "image_cache")
    processor = AutoImageProcessor.from_pretrained(init)
    key = _config_hash([(_read_json(os.path.join(world, "world.json")) or {}).get("config"), geometry(processor)])
    if (_read_json(os.path.join(out, "demo_stage.json")) or {}).get("key") != key:
        prepare(os.path.join(world, "images"), out, processor, num_workers=os.cpu_count() or 1, progress=False)
        with open(os.path.join(out, "demo_stage.json"), "w") as f:
            json.dump({"key": key}, f)
    return out


def main(args: DemoArguments) -> int:
    if args.seeds:
        return main_seeds(args)
    import torch

    from hnc_clip.demo.world import make_world, save_world_model

    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    torch.set_num_threads(args.num_threads or os.cpu_count() or 1)
    t0 = time.time()
    timings: dict[str, float] = {}  # wall seconds per stage, cached ones included
    out = args.output_dir
    world = os.path.join(out, "world")

    # 1. The world and an initial (random) model whose tokenizer knows every word of it
    make_world(
        world,
        num_train_images=args.num_train_images,
        num_val_images=max(8, args.num_test_images // 4),
        num_test_images=args.num_test_images,
        num_recognition_per_class=args.num_recognition_per_class,
        seed=args.seed,
    )
    init = save_world_model(world, os.path.join(out, "models", "init"), text_hidden_size=args.text_hidden_size)
    if args.image_cache:
        build_image_cache(world, init)
    timings["world"] = round(time.time() - t0, 1)

    # 2–3. Pre-train with the CLIP loss, then fine-tune with each loss and seed from that checkpoint
    base = train(args, "base", init, pretrain_flags(args))
    timings["base"] = round(time.time() - t0 - timings["world"], 1)

    # 4. Evaluate each checkpoint as it is done, and the WiSE-FT path between the base and seed 0's main model
    jobs = finetune_jobs(args, base, world)
    first = (args.main_loss, args.finetune_seeds[0])
    main_model = os.path.join(out, "models", next(job[1] for loss, fs, job in jobs if (loss, fs) == first))
    evaluate = Evaluator(args, world, base, main_model)
    t_tune = time.time()
    paths = run_jobs([job for _, _, job in jobs], args.parallel_runs, on_done=evaluate)
    torch.set_num_threads(args.num_threads or os.cpu_count() or 1)
    timings["fine-tunes and evaluation"] = round(time.time() - t_tune, 1)
    tuned = {(loss, fs): path for (loss, fs, _), path in zip(jobs, paths)}
    record = tabulate(args, summarise(evaluate.results), summarise(evaluate.wise), base, main_model, tuned)

    # 5. Report, results, plots
    table, summary, roles = record["table"], record["models"], record["roles"]
    types = [m for m in record["metrics"] if m.startswith("acc_")]
    report.plot_by_type(table, types, os.path.join(out, "accuracy_by_type.png"))
    report.plot_tradeoff(record["tradeoff"], os.path.join(out, "tradeoff.png"), base=summary[os.path.basename(base)])
    seconds = time.time() - t0
    stages = {n: (_read_json(os.path.join(out, "models", n, "demo_stage.json")) or {}).get("seconds")
              for n in map(os.path.basename, [base, *paths])}  # fmt: skip
    record |= {"stage_seconds": stages, "timings": timings, "seconds": round(seconds, 1)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    path = write_report(args, table, record["metrics"], record["tradeoff"], record["targets"],
                        record["plain_recovery"], seconds)  # fmt: skip
    print(open(path).read())
    std = role_names(args.losses, args.main_loss)["clip"]
    worse = [fs for k, fs in enumerate(args.finetune_seeds) if not _better(summary, seed_roles(roles, k), std)]
    if worse:
        logger.error(f"[demo] the hard-negative model is NOT better than the standard one on relation negatives "
                     f"(fine-tune seeds {' '.join(map(str, worse))})")  # fmt: skip
    return 0 if not worse or not args.enforce_targets or args.quick else 1


def tabulate(args: DemoArguments, summary: dict, wise_summary: dict, base: str, main_model: str, tuned: dict) -> dict:
    """What `results.json` holds of the evaluations: role -> its models (one per seed), per-role statistics,
    targets per seed and over all, the rule negatives' recovery per seed, the WiSE-FT path."""
    name = os.path.basename
    labels = role_names(args.losses, args.main_loss)
    if args.plain_rules:
        labels["plain"] = f"{PLAIN} (`{args.main_loss}`; {args.plain_rules})"
    roles = {BASE: [name(base)]}
    roles |= {labels[loss]: [name(tuned[key]) for key in tuned if key[0] == loss] for loss in labels}
    metrics = [*sorted(k for k in summary[name(base)] if k.startswith("acc_")), "relational", "zeroshot_top1"]
    by_seed = {fs: dict(targets(summary, seed_roles(roles, k))) for k, fs in enumerate(args.finetune_seeds)}
    plain_runs = min(args.plain_seeds, len(args.finetune_seeds)) if args.plain_rules else 0
    tradeoff = [{"alpha": 0.0, **summary[name(base)]}]
    tradeoff += [{"alpha": a, **wise_summary[f"{name(main_model)}@wise{a:g}"]} for a in args.wise_alphas]
    tradeoff += [{"alpha": 1.0, **summary[name(main_model)]}]
    return {
        "config": asdict(args), "roles": roles, "metrics": metrics, "models": summary,
        "table": report.role_table(summary, roles, metrics), "tradeoff": tradeoff,
        "targets": {what: all(t[what] for t in by_seed.values()) for what in by_seed[args.finetune_seeds[0]]},
        "targets_by_seed": by_seed,
        "plain_recovery": [recovery(summary, seed_roles(roles, k)) for k in range(plain_runs)],
    }  # fmt: skip


def _better(summary: dict, roles: dict[str, str], standard: str) -> bool:
    hnc = next(r for r in roles if r.startswith(HNC))
    return summary[roles[hnc]]["acc_relation"] > summary[roles[standard]]["acc_relation"]



def _non_default_flags(args: DemoArguments) -> str:
    """The loss and rule flags that differ from the defaults, as typed (so the report's command reruns the report)."""
    default = DemoArguments(output_dir=args.output_dir, quick=args.quick)
    out = ""
    for name in ("losses", "main_loss", "plain_rules"):
        value = getattr(args, name)
        if value != getattr(default, name):
            out += f" --{name} {' '.join(value) if isinstance(value, list) else shlex.quote(value)}"
    return out


def main_seeds(args: DemoArguments) -> int:
    """The demo once per seed (each in its own folder with its own world, base and fine-tune seed, cached as usual),
    then mean ± spread per model and metric in `report_seeds.md` and `results_seeds.json`. Exit 1 if any seed's
    hard-negative model failed the relation check."""
    runs, status = {}, 0
    for seed in args.seeds:
        one = replace(args, seed=seed, seeds=[], finetune_seeds=[seed],
                      output_dir=os.path.join(args.output_dir, f"seed-{seed}"))  # fmt: skip
        status |= main(one)
        runs[seed] = _read_json(os.path.join(one.output_dir, "results.json"))
    first = next(iter(runs.values()))
    metrics = list(first["table"][BASE])
    table = {role: {m: report.spread([r["table"][role][m]["mean"] for r in runs.values()]) for m in metrics}
             for role in first["roles"]}  # fmt: skip
    met = {what: all(r["targets"][what] for r in runs.values()) for what in first["targets"]}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results_seeds.json"), "w") as f:
        json.dump({"seeds": args.seeds, "models": table, "targets_met_by_every_seed": met}, f, indent=2)
    lines = [
        "# hnc-clip synthetic demo over seeds",
        "",
        f"Command: `python -m hnc_clip.demo --output_dir {args.output_dir} --seeds {' '.join(map(str, args.seeds))}"
        f"{_non_default_flags(args)}`; "
        "each seed draws its own world, initial model and batch order. Cells: mean ± standard deviation "
        f"(min–max) over {len(args.seeds)} seeds.",
        "",
        *report.markdown_table(table, metrics),
        "",
        "Targets met by every seed:",
        "",
        *[f"- [{'x' if ok else ' '}] {what}" for what, ok in met.items()],
        "",
    ]  # fmt: skip
    with open(os.path.join(args.output_dir, "report_seeds.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return status



def make_parser() -> HfArgumentParser:
    return HfArgumentParser(DemoArguments, prog="hnc-clip-demo")


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-demo` and `python -m hnc_clip.demo`."""
    (demo_args,) = make_parser().parse_args_into_dataclasses(args=argv)
    return main(demo_args)


if __name__ == "__main__":
    sys.exit(cli())
