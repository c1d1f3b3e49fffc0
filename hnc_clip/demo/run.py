"""The offline demo: hard-negative fine-tuning teaches relations that standard CLIP fine-tuning does not.

    python -m hnc_clip.demo --output_dir demo_output          # what `make demo` runs
    python -m hnc_clip.demo --output_dir /tmp/d --quick       # a smoke version (seconds; numbers meaningless)

Every stage runs the project's real code: the world is written in the HNC schemas (`hnc_clip.demo.world`), models
are trained by the training application's `main` (`hnc_clip.scripts.train`: the same `HncTrainer`, `datasets`
pipeline and collator as on HNC + GQA), and evaluated by the evaluation application's `run`. Stages:

1. a synthetic world of two coloured shapes in a spatial relation, with relation/swap/attribute/object negatives;
2. "pre-train" a small CLIP from scratch with the standard CLIP loss: the stand-in for OpenAI CLIP;
3. from that checkpoint, fine-tune with `--loss_type clip` (the baseline) and with the hard-negative loss, same data
   and steps, plus a sweep of the hard-negative weight λ;
4. evaluate all of them: pairwise accuracy by negative type on held-out scenes, zero-shot object classification;
5. write `report.md`, `results.json` and plots (accuracy by type; relational vs recognition accuracy over λ).

Each stage is cached in its folder (with the configuration that made it), so a rerun only redoes what changed.
Exits with status 1 if the hard-negative model is not better than the standard one on relation negatives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from transformers import HfArgumentParser

# Not a child of "hnc_clip": the training app sets that logger's level to the Trainer's log level (warning).
logger = logging.getLogger("hnc_clip_demo")

RELATIONAL_TYPES = ("relation", "swap")


@dataclass
class DemoArguments:
    output_dir: str = field(default="demo_output", metadata={"help": "Where the world, models and report go."})
    seed: int = field(default=0, metadata={"help": "Seed of the world and of every training run."})
    num_train_images: int = field(default=4000, metadata={"help": "Training scenes (8 pairs each)."})
    num_test_images: int = field(default=500, metadata={"help": "Held-out test scenes (8 pairs each)."})
    num_recognition_per_class: int = field(default=20, metadata={"help": "Zero-shot images per colour×shape."})
    pretrain_steps: int = field(default=800, metadata={"help": "Steps of standard CLIP pre-training from scratch."})
    pretrain_learning_rate: float = field(default=5e-4, metadata={"help": "Pre-training learning rate."})
    finetune_steps: int = field(default=1300, metadata={"help": "Steps of each fine-tuning run (both losses)."})
    finetune_learning_rate: float = field(default=1e-3, metadata={"help": "Fine-tuning learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Pairs per pre-training batch."})
    finetune_batch_size: int = field(default=512, metadata={"help": "Pairs per fine-tuning batch (both losses)."})
    group_by_image: int = field(
        default=8, metadata={"help": "Fine-tuning batches hold groups of this many pairs of one image (all 8)."}
    )
    loss_type: str = field(default="pairwise", metadata={"help": "The hard-negative loss to compare with `clip`."})
    hard_negative_weight: float = field(default=4.0, metadata={"help": "λ of the main hard-negative run."})
    sweep_weights: list[float] = field(
        default_factory=lambda: [2.0], metadata={"help": "Further λ values for the trade-off curve (same steps)."}
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch threads; default: all cores."})
    parallel_runs: int = field(
        default_factory=lambda: min(2, os.cpu_count() or 1),
        metadata={"help": "Hard-negative runs trained at once, one process and one thread each (1: in turn)."},
    )
    quick: bool = field(default=False, metadata={"help": "Tiny smoke version for tests: a few steps, few scenes."})
    enforce_targets: bool = field(
        default=True, metadata={"help": "Exit 1 if the hard-negative model is not better on relation negatives."}
    )

    def __post_init__(self):
        if self.quick:
            self.num_train_images, self.num_test_images, self.num_recognition_per_class = 64, 16, 2
            self.pretrain_steps, self.finetune_steps, self.batch_size, self.finetune_batch_size = 3, 3, 16, 32
            self.sweep_weights = self.sweep_weights[:1]
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
    args: DemoArguments,
    name: str,
    init: str,
    steps: int,
    lr: float,
    loss: str,
    weight: float = 1.0,
    batch_size: int | None = None,
    group_by_image: int = 0,
) -> str:
    """One training run (`hnc_clip.scripts.train.main`) from `init`; skipped when its folder holds the same run."""
    from hnc_clip.scripts import train as train_app

    world = os.path.join(args.output_dir, "world")
    out = os.path.join(args.output_dir, "models", name)
    flags = [
        "--model_name_or_path", init, "--train_file", f"{world}/train.json", "--image_dir", f"{world}/images",
        "--output_dir", out, "--do_train", "--max_steps", str(steps), "--per_device_train_batch_size",
        str(batch_size or args.batch_size), "--group_by_image", str(group_by_image), "--learning_rate", str(lr),
        "--warmup_steps", str(max(1, steps // 10)),
        "--weight_decay", "0.1", "--loss_type", loss, "--hard_negative_weight", str(weight), "--seed", str(args.seed),
        "--logging_steps", str(max(1, steps // 8)), "--save_strategy", "no", "--use_cpu",
        "--dataloader_num_workers", "0", "--report_to", "none", "--cache_dir", os.path.join(args.output_dir, "cache"),
    ]  # fmt: skip
    key = _config_hash([flags, _stage_key(init)])
    if _is_done(out, key):
        logger.info(f"[demo] {name}: cached in {out}")
        return out
    logger.info(f"[demo] {name}: {loss} loss, λ={weight}, {steps} steps from {os.path.basename(init)}")
    t0 = time.time()
    train_app.main(*train_app.parse_args(flags))
    with open(os.path.join(out, "demo_stage.json"), "w") as f:
        json.dump({"key": key, "seconds": round(time.time() - t0, 1), "flags": flags}, f, indent=1)
    return out


def _train_job(job: tuple) -> str:
    """`train` in a worker process with one torch thread (see `run_jobs`)."""
    import torch

    torch.set_num_threads(1)
    return train(*job)


def run_jobs(jobs: list[tuple], parallel: int) -> list[str]:
    """The λ runs are independent: on a small CPU, k processes with one thread each finish sooner than one
    process after another with k threads (small matrices parallelise poorly across threads)."""
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
    """Relational accuracy vs object recognition over λ (λ = 0 is the standard CLIP fine-tune)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["weight"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs, ys = [p["zeroshot_top1"] for p in points], [p["relational"] for p in points]
    ax.plot(xs, ys, marker="o", label="fine-tuned, by λ")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"λ={p['weight']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    if base is not None:
        ax.scatter([base["zeroshot_top1"]], [base["relational"]], marker="s", color="grey", label="pre-trained base")
    ax.set_xlabel("object recognition: zero-shot top-1")
    ax.set_ylabel("relational: pairwise accuracy (relation + swap)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_title("Hard-negative weight λ: relations vs recognition")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(args: DemoArguments, summary: dict, roles: dict, tradeoff: list[dict], seconds: float) -> str:
    types = sorted({k for s in summary.values() for k in s if k.startswith("acc_")})
    cols = ["model", *[t[4:] for t in types], "relational", "zero-shot top-1"]
    lines = [
        "# hnc-clip synthetic demo",
        "",
        f"Command: `python -m hnc_clip.demo --output_dir {args.output_dir}` ({seconds / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores, cached stages included).",
        "",
        "Pairwise accuracy = share of held-out (image, positive, hard negative) triples with sim(image, positive) > "
        "sim(image, negative); 0.5 is chance. Zero-shot = top-1 over the colour×shape classes of the recognition set.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for role, name in roles.items():
        s = summary[name]
        cells = [role, *[f"{s[t]:.3f}" for t in types], f"{s['relational']:.3f}", f"{s['zeroshot_top1']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Trade-off over the hard-negative weight λ (λ = 0: standard CLIP fine-tune):", ""]
    lines += ["| λ | relational | zero-shot top-1 |", "|---|---|---|"]
    lines += [f"| {p['weight']:g} | {p['relational']:.3f} | {p['zeroshot_top1']:.3f} |" for p in tradeoff]
    base, std, hnc = (summary[roles[r]] for r in ("pre-trained base", "standard fine-tune", "HNC fine-tune"))
    checks = [
        ("base relation/swap near chance (≤ 0.65)", max(base["acc_relation"], base["acc_swap"]) <= 0.65),
        ("HNC relation and swap ≥ 0.95", min(hnc["acc_relation"], hnc["acc_swap"]) >= 0.95),
        ("HNC zero-shot within 1 point of base (or better)", hnc["zeroshot_top1"] >= base["zeroshot_top1"] - 0.01),
        ("standard fine-tune clearly below HNC on relation/swap", std["relational"] + 0.1 <= hnc["relational"]),
    ]
    lines += ["", "Targets:", ""] + [f"- [{'x' if ok else ' '}] {what}" for what, ok in checks]
    lines += ["", "Plots: `accuracy_by_type.png`, `tradeoff.png`, `eval/similarity_hist.png`.", ""]
    path = os.path.join(args.output_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(args: DemoArguments) -> int:
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
    init = save_world_model(world, os.path.join(out, "models", "init"))

    # 2–3. Pre-train with the CLIP loss, then fine-tune with each loss from that checkpoint
    base = train(args, "base", init, args.pretrain_steps, args.pretrain_learning_rate, "clip")
    # Both fine-tunes see the same batches (same sampler, seed, size and steps); only the loss differs.
    finetune = dict(batch_size=args.finetune_batch_size, group_by_image=args.group_by_image)
    std = train(args, "ft_clip", base, args.finetune_steps, args.finetune_learning_rate, "clip", **finetune)
    weights = [args.hard_negative_weight, *[w for w in args.sweep_weights if w != args.hard_negative_weight]]
    steps, lr, loss = args.finetune_steps, args.finetune_learning_rate, args.loss_type
    jobs = [
        (args, f"ft_{loss}_w{w:g}", base, steps, lr, loss, w, finetune["batch_size"], finetune["group_by_image"])
        for w in weights
    ]
    hnc_runs = dict(zip(weights, run_jobs(jobs, args.parallel_runs)))

    # 4. Evaluate every checkpoint with the project's evaluation code
    models = [base, std, *hnc_runs.values()]
    results = run_eval(
        {
            "model_name_or_path": models,
            "task": ["pairwise", "zeroshot"],
            "data_file": [os.path.join(world, "test.json")],
            "image_dir": os.path.join(world, "images"),
            "zeroshot_dir": os.path.join(world, "recognition"),
            "classnames": os.path.join(world, "recognition", "classnames.json"),
            "templates": os.path.join(world, "recognition", "templates.json"),
            "output_dir": os.path.join(out, "eval"),
            "device": "cpu",
            "batch_size": 256,
        }
    )
    summary = summarise(results)
    name = os.path.basename
    roles = {
        "pre-trained base": name(base),
        "standard fine-tune": name(std),
        "HNC fine-tune": name(hnc_runs[args.hard_negative_weight]),
    }
    tradeoff = [{"weight": 0.0, **summary[name(std)]}] + [
        {"weight": w, **summary[name(p)]} for w, p in sorted(hnc_runs.items())
    ]

    # 5. Report, results, plots
    from hnc_clip.evaluation.plots import plot_accuracy_by_type

    plot_accuracy_by_type({role: results[n] for role, n in roles.items()}, os.path.join(out, "accuracy_by_type.png"))
    plot_tradeoff(tradeoff, os.path.join(out, "tradeoff.png"), base=summary[name(base)])
    seconds = time.time() - t0
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": asdict(args), "roles": roles, "models": summary, "tradeoff": tradeoff,
                   "seconds": round(seconds, 1)}, f, indent=2)  # fmt: skip
    report = write_report(args, summary, roles, tradeoff, seconds)
    print(open(report).read())
    better = summary[roles["HNC fine-tune"]]["acc_relation"] > summary[roles["standard fine-tune"]]["acc_relation"]
    if not better:
        logger.error("[demo] the hard-negative model is NOT better than the standard one on relation negatives")
    return 0 if better or not args.enforce_targets or args.quick else 1


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-demo` and `python -m hnc_clip.demo`."""
    (demo_args,) = HfArgumentParser(DemoArguments, prog="hnc-clip-demo").parse_args_into_dataclasses(args=argv)
    return main(demo_args)


if __name__ == "__main__":
    sys.exit(cli())
