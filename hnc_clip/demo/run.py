"""The offline demo: hard-negative fine-tuning teaches relations that standard CLIP fine-tuning does not.

    python -m hnc_clip.demo --output_dir demo_output          # what `make demo` runs (one seed)
    python -m hnc_clip.demo --output_dir demo_seeds --seeds 0 1 2   # every stage per seed; mean ± spread
    python -m hnc_clip.demo --output_dir /tmp/d --quick       # a smoke version (seconds; numbers meaningless)

Every stage runs the project's real code: the world is written in the HNC schemas (`hnc_clip.demo.world`), models
are trained by the training application's `main` (`hnc_clip.scripts.train`: the same `HncTrainer`, `datasets`
pipeline and collator as on HNC + GQA), and evaluated by the evaluation application's `run`. Stages:

1. a synthetic world of two coloured shapes in a spatial relation, with relation/swap/attribute/object negatives;
2. "pre-train" a small CLIP from scratch with the standard CLIP loss: the stand-in for OpenAI CLIP;
3. from that checkpoint, fine-tune with each loss of `--losses` (the standard `clip` loss and the hard-negative
   ones) on the same batches, two runs at a time in one-thread processes; and the plain-caption variant: the main
   loss on the same batches of positives with their negatives made by `--plain_rules` instead of HNC's;
4. evaluate all of them (pairwise accuracy by negative type on held-out scenes, zero-shot object classification)
   and the WiSE-FT interpolations of the main hard-negative model with the base (the trade-off curve);
5. write `report.md`, `results.json` and plots (accuracy by type; relational vs recognition accuracy).

Each stage is cached in its folder (with the configuration that made it), so a rerun only redoes what changed.
Exits with status 1 if the hard-negative model is not better than the standard one on relation negatives.
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

# Not a child of "hnc_clip": the training app sets that logger's level to the Trainer's log level (warning).
logger = logging.getLogger("hnc_clip_demo")

RELATIONAL_TYPES = ("relation", "swap")
BASE, STANDARD, HNC = "pre-trained base", "standard fine-tune (`clip`)", "HNC fine-tune"
PLAIN = "plain captions + rule negatives"


@dataclass
class DemoArguments:
    output_dir: str = field(default="demo_output", metadata={"help": "Where the world, models and report go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world and of every training run."})
    seeds: list[int] = field(
        default_factory=list,
        metadata={"help": "Run the whole demo once per seed (in <output_dir>/seed-<s>) and report mean ± spread."},
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
        default_factory=lambda: ["clip", "negclip", "pairwise"],
        metadata={"help": "Fine-tunes from the base, one per loss, on the same batches (`clip`: the baseline): "
                          "loss types, or `fsc_clip_local` (`fsc_clip --fsc_local_weight 0.2`)."},
    )
    plain_rules: str = field(
        default="swap-rel,replace-rel",
        metadata={"help": "The plain-caption variant: --main_loss on the same batches' positives with negatives made "
                          "by these rules (--negatives_from_captions) instead of HNC's; empty: no such run. The "
                          "default makes what HNC's relation/swap types are (`swap,replace` stays at chance: "
                          "docs/demo.md)."},
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
        default=True, metadata={"help": "Exit 1 if the hard-negative model is not better on relation negatives."}
    )

    def __post_init__(self):
        if "clip" not in self.losses or self.main_loss not in self.losses:
            raise ValueError(f"--losses must hold `clip` and --main_loss {self.main_loss!r}, got {self.losses}")
        from hnc_clip.losses import LOSSES

        unknown = [loss for loss in self.losses if loss not in LOSSES and loss not in LOSS_SETTINGS]
        if unknown:
            raise ValueError(f"--losses {' '.join(unknown)}: not a loss type ({', '.join(sorted(LOSSES))}) nor one "
                             f"of {', '.join(LOSS_SETTINGS)}")  # fmt: skip
        if self.quick:
            self.num_train_images, self.num_test_images, self.num_recognition_per_class = 64, 16, 2
            self.pretrain_steps, self.finetune_steps, self.batch_size, self.finetune_batch_size = 3, 3, 16, 32
            self.hard_negative_decay_steps = 2
            self.wise_alphas = self.wise_alphas[:1]
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


def train(args: DemoArguments, name: str, init: str, flags: list[str], data: list[str] | None = None) -> str:
    """One training run (`hnc_clip.scripts.train.main`) from `init` with the stage's own `flags` on the world's HNC
    train split (or `data`'s flags); skipped when its folder holds the same run."""
    from hnc_clip.scripts import train as train_app

    world = os.path.join(args.output_dir, "world")
    out = os.path.join(args.output_dir, "models", name)
    cache = ["--image_cache_dir", os.path.join(world, "image_cache")] if args.image_cache else []
    flags = [
        "--model_name_or_path", init, *(data or ["--train_file", f"{world}/train.json"]),
        "--image_dir", f"{world}/images",
        *cache, "--output_dir", out, "--overwrite_output_dir", "--do_train", "--weight_decay", "0.1", "--seed",
        str(args.seed), "--save_strategy", "no", "--use_cpu", "--dataloader_num_workers", "0", "--report_to", "none",
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


def run_jobs(jobs: list[tuple], parallel: int) -> list[str]:
    """The fine-tunes are independent: on a small CPU, k processes with one thread each finish sooner than one
    process after another with k threads (small matrices parallelise poorly across threads), and one thread makes
    each run's numbers the same from run to run."""
    if parallel <= 1 or len(jobs) <= 1:
        return [train(*job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_train_job, jobs))


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


def plot_tradeoff(points: list[dict], path: str, base: dict | None = None) -> str:
    """Relational accuracy vs object recognition along the WiSE-FT path from the base (α = 0) to the tuned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["alpha"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs, ys = [p["zeroshot_top1"] for p in points], [p["relational"] for p in points]
    ax.plot(xs, ys, marker="o", label="(1-α)·base + α·tuned")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"α={p['alpha']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    if base is not None:
        ax.scatter([base["zeroshot_top1"]], [base["relational"]], marker="s", color="grey", label="pre-trained base")
    ax.set_xlabel("object recognition: zero-shot top-1")
    ax.set_ylabel("relational: pairwise accuracy (relation + swap)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_title("WiSE-FT: relations vs recognition")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def _table(types: list[str], rows: list[tuple[str, dict]], cell) -> list[str]:
    cols = ["model", *[t[4:] for t in types], "relational", "zero-shot top-1"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for role, s in rows:
        lines.append("| " + " | ".join([role, *[cell(s, k) for k in [*types, "relational", "zeroshot_top1"]]]) + " |")
    return lines


def write_report(args: DemoArguments, summary: dict, roles: dict, tradeoff: list[dict], seconds: float) -> str:
    types = sorted({k for s in summary.values() for k in s if k.startswith("acc_")})
    lines = [
        "# hnc-clip synthetic demo",
        "",
        f"Command: `python -m hnc_clip.demo --output_dir {args.output_dir}{_non_default_flags(args)}` "
        f"({seconds:.0f} s on {os.cpu_count()} CPU cores, cached stages included; seed {args.seed}).",
        "",
        "Pairwise accuracy = share of held-out (image, positive, hard negative) triples with sim(image, positive) > "
        "sim(image, negative); 0.5 is chance. Zero-shot = top-1 over the colour×shape classes of the recognition set. "
        f"Fine-tunes: {args.finetune_steps} steps on the same batches ({args.finetune_batch_size} pairs, groups of "
        f"{args.group_by_image} per image, types {' '.join(args.caption_types)}, λ from "
        f"{args.hard_negative_weight_start:g} to {args.hard_negative_weight:g} over {args.hard_negative_decay_steps} "
        "steps; `negclip` has no λ).",
        "",
        *_table(types, [(role, summary[name]) for role, name in roles.items()], lambda s, k: f"{s[k]:.3f}"),
        "",
        f"Trade-off of the HNC fine-tune along WiSE-FT (1-α)·base + α·tuned (α = 0: the base, 1: `{args.main_loss}`):",
        "",
        "| α | relational | object | zero-shot top-1 |",
        "|---|---|---|---|",
        *[f"| {p['alpha']:g} | {p['relational']:.3f} | {p['acc_object']:.3f} | {p['zeroshot_top1']:.3f} |"
          for p in tradeoff],
        "",
        *_plain_lines(args, summary, roles),
        "Targets:",
        "",
        *[f"- [{'x' if ok else ' '}] {what}" for what, ok in targets(summary, roles)],
        "",
        "Plots: `accuracy_by_type.png`, `tradeoff.png`, `eval/similarity_hist.png`.",
        "",
    ]  # fmt: skip
    path = os.path.join(args.output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _plain_lines(args: DemoArguments, summary: dict, roles: dict) -> list[str]:
    share = recovery(summary, roles)
    if not args.plain_rules:
        return []
    found = "no relational gain of the HNC fine-tune to compare with" if share is None else (
        f"the rule negatives recover {share:.0%} of the HNC fine-tune's relational gain over the standard one")
    return [
        f"Plain-caption variant: the same batches' positives, no HNC negatives; `{args.main_loss}` with negatives "
        f"made by the rules `{args.plain_rules}` (`--negatives_from_captions`, a lexicon of the world's words): "
        f"{found}.",
        "",
    ]


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
    from hnc_clip.scripts.evaluate import run as run_eval

    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    torch.set_num_threads(args.num_threads or os.cpu_count() or 1)
    t0 = time.time()
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

    # 2–3. Pre-train with the CLIP loss, then fine-tune with each loss from that checkpoint, on the same batches
    base = train(args, "base", init, pretrain_flags(args))
    jobs = [(args, f"ft_{loss}", base, finetune_flags(args, loss)) for loss in args.losses]
    if args.plain_rules:
        plain_flags = finetune_flags(args, args.main_loss, plain=True)
        jobs.append((args, f"ft_{args.main_loss}_plain", base, plain_flags, plain_data_flags(args, world)))
    paths = run_jobs(jobs, args.parallel_runs)
    tuned = dict(zip(args.losses, paths))
    plain_model = paths[len(args.losses)] if args.plain_rules else None

    # 4. Evaluate every checkpoint, then the WiSE-FT path between the base and the main hard-negative model
    evaluation = {
        "task": ["pairwise", "zeroshot"],
        "data_file": [os.path.join(world, "test.json")],
        "image_dir": os.path.join(world, "images"),
        "zeroshot_dir": os.path.join(world, "recognition"),
        "classnames": os.path.join(world, "recognition", "classnames.json"),
        "templates": os.path.join(world, "recognition", "templates.json"),
        "device": "cpu",
        "batch_size": 256,
    }
    evaluated = [base, *tuned.values(), *([plain_model] if plain_model else [])]
    results = run_eval({**evaluation, "model_name_or_path": evaluated, "output_dir": f"{out}/eval"})
    main_model = tuned[args.main_loss]
    wise = run_eval({
        **evaluation, "model_name_or_path": [base, main_model], "output_dir": f"{out}/eval/wise",
        "wise_alpha": ",".join(f"{a:g}" for a in args.wise_alphas), "plots": False,
    })  # fmt: skip
    summary = summarise(results)
    name = os.path.basename
    labels = role_names(args.losses, args.main_loss)
    roles = {BASE: name(base), **{labels[loss]: name(path) for loss, path in tuned.items()}}
    if plain_model:
        roles[f"{PLAIN} (`{args.main_loss}`; {args.plain_rules})"] = name(plain_model)
    wise_summary = summarise(wise)
    tradeoff = [{"alpha": 0.0, **summary[name(base)]}]
    tradeoff += [{"alpha": a, **wise_summary[f"{name(main_model)}@wise{a:g}"]} for a in args.wise_alphas]
    tradeoff += [{"alpha": 1.0, **summary[name(main_model)]}]

    # 5. Report, results, plots
    from hnc_clip.evaluation.plots import plot_accuracy_by_type

    plot_accuracy_by_type({role: results[n] for role, n in roles.items()}, os.path.join(out, "accuracy_by_type.png"))
    plot_tradeoff(tradeoff, os.path.join(out, "tradeoff.png"), base=summary[name(base)])
    seconds = time.time() - t0
    stages = {n: (_read_json(os.path.join(out, "models", n, "demo_stage.json")) or {}).get("seconds")
              for n in map(name, evaluated)}  # fmt: skip
    record = {"config": asdict(args), "roles": roles, "models": summary, "tradeoff": tradeoff,
              "targets": dict(targets(summary, roles)), "plain_recovery": recovery(summary, roles),
              "stage_seconds": stages, "seconds": round(seconds, 1)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    report = write_report(args, summary, roles, tradeoff, seconds)
    print(open(report).read())
    better = summary[name(main_model)]["acc_relation"] > summary[name(tuned["clip"])]["acc_relation"]
    if not better:
        logger.error("[demo] the hard-negative model is NOT better than the standard one on relation negatives")
    return 0 if better or not args.enforce_targets or args.quick else 1


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
    """The demo once per seed (each in its own folder, cached as usual), then mean ± spread per model and metric in
    `report_seeds.md` and `results_seeds.json`. Exit 1 if any seed's hard-negative model failed the relation check."""
    runs, status = {}, 0
    for seed in args.seeds:
        one = replace(args, seed=seed, seeds=[], output_dir=os.path.join(args.output_dir, f"seed-{seed}"))
        status |= main(one)
        runs[seed] = _read_json(os.path.join(one.output_dir, "results.json"))
    first = next(iter(runs.values()))
    types = [k for k in first["models"][first["roles"][BASE]] if k.startswith("acc_")]
    metrics = [*types, "relational", "zeroshot_top1"]
    table: dict = {}
    for role in first["roles"]:
        values = {m: [r["models"][r["roles"][role]][m] for r in runs.values()] for m in metrics}
        table[role] = {m: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                           "min": min(v), "max": max(v), "values": v} for m, v in values.items()}  # fmt: skip
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
        *_table(types, list(table.items()),
                lambda s, k: f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f} ({s[k]['min']:.3f}–{s[k]['max']:.3f})"),
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
