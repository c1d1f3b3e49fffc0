"""The hyper-parameter search application, on `Trainer.hyperparameter_search` with optuna (`pip install
"hnc-clip[search]"`).

    hnc-clip-search --model_name_or_path openai/clip-vit-base-patch32 --train_file hnc_train.json \
        --validation_file hnc_val.json --image_dir gqa/images --output_dir search --max_steps 2000 \
        --n_trials 16 [any hnc-clip-train flag]

Every trial fine-tunes the same starting model on the same data with one draw from the search space (loss type, λ,
learning rate, λ schedule) and is scored on the validation split: the objective is the **relational accuracy** (the
share of validation pairs of `--objective_types` whose positive scores above its hard negative) subject to a
**recognition floor**: the accuracy on `--floor_types` pairs (object negatives) may not fall below the starting
model's by more than `--floor_margin`; a trial under the floor scores its relational accuracy minus 1 (infeasible).
The defaults fit a pre-trained CLIP on real HNC: HNC val's relation types (`relation_subj`, `relation_obj`,
`relation_pred`) against its `object` negatives, and learning rates of 1e-7 to 1e-5 around the 5e-6 at which CE-CLIP
and FSC-CLIP fine-tune ViT-B/32 (their training scripts). A toy world needs its own
(`--objective_types relation swap --learning_rate_range 1e-4 3e-3`).

With `--objective_metric` (hnc-clip-train's in-training objective, `hnc_clip.evaluation.watch`) the trials are scored
by it instead: `eval_objective` of each trial's final evaluation, e.g. relational accuracy on `--eval_benchmarks`
pairs subject to zero-shot recognition on an image folder (`--objective_floor_metric`, with `--eval_on_start`), the
floor measured once on the starting model.
Each trial goes to `trials.jsonl` with its configuration and numbers (and `trials.png`); the best trial's
configuration is written as `best.yaml`, which `hnc-clip-train best.yaml` takes as it is.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import yaml
from transformers import AutoConfig, HfArgumentParser

from hnc_clip.arguments import DataArguments, HncTrainingArguments, ModelArguments, check_finite
from hnc_clip.callbacks import Preempted, SaveOnSigterm
from hnc_clip.data import make_collator, needs_stream, prepare_split, training_sources
from hnc_clip.errors import RunAbortedError
from hnc_clip.evaluation.watch import Objective
from hnc_clip.losses import LOSSES
from hnc_clip.machine import TRI_STATE_FLAGS
from hnc_clip.modeling import apply_finetune_mode, load_model, load_processor
from hnc_clip.output_dir import claim_folder
from hnc_clip.schedules import SCHEDULES
from hnc_clip.scripts.train import setup_logging
from hnc_clip.trainer import HncTrainer

logger = logging.getLogger("hnc_clip.search")

# What a search leaves in --output_dir: found there before it starts, another search's (its trials would interleave).
SEARCH_FILES = ("trials.jsonl", "search.json", "best.yaml")
SEARCHABLE_LOSSES = sorted(name for name, spec in LOSSES.items() if not spec.needs_reference)


@dataclass
class SearchArguments:
    n_trials: int = field(default=8, metadata={"help": "Trials (each one fine-tuning run of --max_steps)."})
    loss_types: list[str] = field(
        default_factory=lambda: ["hnc", "pairwise"],
        metadata={"help": f"Loss types to search over, among {SEARCHABLE_LOSSES} (no frozen-reference losses)."},
    )
    weight_range: list[float] = field(
        default_factory=lambda: [0.5, 8.0], metadata={"help": "λ range (log-uniform), `--hard_negative_weight`."}
    )
    learning_rate_range: list[float] = field(
        default_factory=lambda: [1e-7, 1e-5],
        metadata={"help": "Learning-rate range (log-uniform); the default fits a pre-trained CLIP (the demo's toy "
                          "model, trained from scratch, used 3e-4 to 3e-3)."},
    )
    schedules: list[str] = field(
        default_factory=lambda: ["constant", "linear"],
        metadata={"help": f"λ schedules to search over, among {sorted(SCHEDULES)} (`linear` ramps from a searched "
                  "start λ to λ over a searched share of --max_steps: a warm-up or a decay)."},
    )  # fmt: skip
    objective_types: list[str] = field(
        default_factory=lambda: ["relation_subj", "relation_obj", "relation_pred"],
        metadata={"help": "Caption types of the validation pairs the objective scores (relational; HNC val's names, "
                          "the synthetic world's are `relation swap`). Unused with --objective_metric."},
    )
    floor_types: list[str] = field(
        default_factory=lambda: ["object"],
        metadata={"help": "Caption types of the validation pairs the recognition floor scores (HNC's and the world's "
                          "`object`). Unused with --objective_metric."},
    )
    floor_margin: float = field(
        default=0.01, metadata={"help": "How far below the starting model's floor accuracy a trial may fall."}
    )
    sampler_seed: int = field(default=0, metadata={"help": "Seed of optuna's TPE sampler."})

    def __post_init__(self):
        check_finite(self)
        if self.n_trials < 1:
            raise ValueError("--n_trials must be >= 1")
        if unknown := sorted(set(self.loss_types) - set(SEARCHABLE_LOSSES)):
            raise ValueError(f"--loss_types: {unknown} cannot be searched; choose from {SEARCHABLE_LOSSES}")
        if unknown := sorted(set(self.schedules) - set(SCHEDULES)):
            raise ValueError(f"--schedules: unknown {unknown}; choose from {sorted(SCHEDULES)}")
        for flag in ("weight_range", "learning_rate_range"):
            lo, hi = getattr(self, flag)
            if not 0 < lo <= hi:
                raise ValueError(f"--{flag} must be two numbers 0 < low <= high, got {getattr(self, flag)}")
        if not self.loss_types or not self.schedules or not self.objective_types or not self.floor_types:
            raise ValueError("--loss_types, --schedules, --objective_types and --floor_types may not be empty")
        if self.floor_margin < 0:
            raise ValueError("--floor_margin must be >= 0")


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, HncTrainingArguments, SearchArguments), prog="hnc-clip-search"
    )
    for action in parser._actions:  # as hnc-clip-train: `--bf16` alone means true
        if action.dest in TRI_STATE_FLAGS:
            action.nargs, action.const = "?", True
    return parser


# The λ-schedule knobs a trial may set. Every trial sets all of them (the given flags' values where its schedule
# needs none): the Trainer sets a trial's parameters on its arguments and never resets them for the next trial.
SCHEDULE_KNOBS = (
    "hard_negative_weight_min", "hard_negative_warmup_steps", "hard_negative_step_every", "hard_negative_step_size",
)  # fmt: skip


def hp_space(search: SearchArguments, max_steps: int, given: dict | None = None):
    """The optuna search space over the recipe's own knobs; `given` holds the run's own values of `SCHEDULE_KNOBS`."""
    given = dict(given or {})

    def space(trial) -> dict:
        params = {
            **given,
            "loss_type": trial.suggest_categorical("loss_type", search.loss_types),
            "learning_rate": trial.suggest_float("learning_rate", *search.learning_rate_range, log=True),
        }
        if not LOSSES[params["loss_type"]].uses_weight:  # e.g. NegCLIP: its negatives sit in the softmax unweighted
            return {**params, "hard_negative_weight": 1.0, "hard_negative_schedule": "constant"}
        params["hard_negative_weight"] = trial.suggest_float("hard_negative_weight", *search.weight_range, log=True)
        params["hard_negative_schedule"] = trial.suggest_categorical("hard_negative_schedule", search.schedules)
        if params["hard_negative_schedule"] == "linear":  # from a start λ: a warm-up below λ, a decay above it
            start = trial.suggest_float("hard_negative_weight_start", *search.weight_range, log=True)
            params["hard_negative_weight_min"] = start
        if params["hard_negative_schedule"] != "constant":
            share = trial.suggest_float("hard_negative_warmup_share", 0.1, 0.9)
            params["hard_negative_warmup_steps"] = max(1, round(share * max_steps))
        if params["hard_negative_schedule"] == "step":  # 10 stairs up to λ over the searched share
            params["hard_negative_step_every"] = max(1, round(share * max_steps / 10))
            params["hard_negative_step_size"] = params["hard_negative_weight"] / 10
        return params

    return space


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def given_fields(instance, skip: set[str] = frozenset()) -> dict:
    """The fields of an arguments dataclass whose values differ from their declared defaults (what a YAML config for
    `hnc-clip-train` needs), as plain YAML values; `skip` names fields left out."""
    out = {}
    for f in dataclasses.fields(instance):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
        )
        value = _plain(getattr(instance, f.name))
        if isinstance(value, (list, tuple)):
            value = [_plain(v) for v in value]
        if value != _plain(default) and isinstance(value, (str, int, float, bool, list, type(None))):
            out[f.name] = value
    return out


def best_config(model_args, data_args, training_args, params: dict, output_dir: str) -> dict:
    """A `hnc-clip-train` YAML: the search's own flags, the best trial's hyper-parameters, and a training run."""
    # Derived by TrainingArguments from other fields or by this machine (`machine_defaults`), not given.
    machine = getattr(training_args, "machine_defaults", {})
    derived = {"logging_dir", "output_dir", "do_eval", "eval_strategy", *machine}
    config = {**given_fields(model_args), **given_fields(data_args), **given_fields(training_args, derived)}
    config.update({k: v for k, v in params.items() if k != "hard_negative_warmup_share"})
    config.update(output_dir=output_dir, do_train=True)
    return config


def plot_trials(trials: list[dict], path: str) -> str:
    import matplotlib.pyplot as plt

    from hnc_clip.evaluation.plots import save_figure  # chooses the Agg backend before pyplot draws

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss in sorted({t["params"]["loss_type"] for t in trials}):
        mine = [t for t in trials if t["params"]["loss_type"] == loss]
        xs = [t["floor_accuracy"] if t["floor_accuracy"] is not None else t["number"] for t in mine]  # no floor: #
        ax.scatter(xs, [t["relational_accuracy"] for t in mine], label=loss)
        for t, x in zip(mine, xs):
            ax.annotate(str(t["number"]), (x, t["relational_accuracy"]), fontsize=8,
                        textcoords="offset points", xytext=(3, 3))  # fmt: skip
    floor = trials[0]["floor_minimum"]
    if floor is not None:
        ax.axvline(floor, color="grey", linestyle=":", label="recognition floor")
    ax.set_xlabel("recognition: accuracy on floor-type pairs")
    ax.set_ylabel("relational accuracy (objective)")
    ax.set_title("Hyper-parameter search trials")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def main(model_args, data_args, training_args, search_args: SearchArguments) -> dict:
    """Run the search; returns {"best": ..., "trials": [...], "base": ...} and writes trials.jsonl, trials.png,
    best.yaml and search.json under --output_dir. SIGTERM stops it at once (`Preempted`), the trial under way
    unrecorded: a trial cut short would score as if it had trained, and the search cannot resume a trial."""
    sigterm = SaveOnSigterm(save=False).install()
    try:
        # Held for the whole search: a second search into the folder would interleave its trials with these.
        with claim_folder(training_args.output_dir, "hnc-clip-search", owned=SEARCH_FILES,
                          overwrite=training_args.overwrite_output_dir, lock=training_args.should_save):  # fmt: skip
            return _search(model_args, data_args, training_args, search_args, sigterm)
    finally:
        sigterm.uninstall()


def _search(model_args, data_args, training_args, search_args: SearchArguments, sigterm: SaveOnSigterm) -> dict:
    # 1. Logging; every trial trains, then evaluates at the end (the objective)
    setup_logging(training_args)
    if data_args.train_file is None or data_args.validation_file is None:
        raise ValueError("hnc-clip-search needs --train_file and --validation_file (the objective's split)")
    if needs_stream(training_sources(data_args)):
        raise ValueError("hnc-clip-search trains on --train_file alone: streamed or mixed sources (--dataset_name, "
                         "--train_shards, --train_sources) are not searched")  # fmt: skip
    try:
        import optuna  # noqa: F401
    except ImportError as err:
        raise ImportError('hnc-clip-search needs optuna: pip install "hnc-clip[search]"') from err
    training_args.do_train = True
    os.makedirs(training_args.output_dir, exist_ok=True)
    trials_file = os.path.join(training_args.output_dir, "trials.jsonl")
    if os.path.exists(trials_file) and training_args.should_save:  # claimed with --overwrite_output_dir
        os.remove(trials_file)  # appending would mix two searches' trials

    # 2. A fresh starting model per trial (the Trainer calls model_init)
    processor = load_processor(model_args)

    def model_init(trial=None):
        return apply_finetune_mode(load_model(model_args), training_args)

    # 3. Data: the training split; the validation split's objective and floor pairs, as two evaluation sets
    def split(path, caption_types, max_samples, name):
        return prepare_split(
            path, dataclasses.replace(data_args, caption_types=caption_types), max_samples, processor.image_processor,
            split=name, cache_dir=model_args.cache_dir, max_skipped_fraction=training_args.max_skipped_fraction,
        )  # fmt: skip

    train_dataset = split(data_args.train_file, data_args.caption_types, data_args.max_train_samples,
                          data_args.train_split)  # fmt: skip
    goal = training_args.objective_metric is not None  # the in-training objective scores the trials
    roles = (("objective", search_args.objective_types), ("floor", search_args.floor_types))
    eval_sets = {
        role: split(data_args.validation_file, types, data_args.max_eval_samples, data_args.validation_split)
        for role, types in roles
    } if not goal else split(data_args.validation_file, data_args.caption_types, data_args.max_eval_samples,
                             data_args.validation_split)  # fmt: skip
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    trainer = HncTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_sets,
        data_collator=make_collator(data_args, processor, config, seed=training_args.seed),
        processing_class=processor,
        sigterm=sigterm,
    )
    sigterm.save = False  # the trainer copies --save_on_sigterm onto it; a search trial cannot be resumed

    # 4. The starting model's numbers set the floor
    base = trainer.evaluate()
    if goal:  # the trainer measured its floor on this evaluation of the start (step 0)
        floor_minimum = trainer.eval_extras.floor_minimum
        logger.warning(f"starting model: {base['eval_objective_score']:.4f} ({training_args.objective_metric}); "
                       f"floor {floor_minimum}")  # fmt: skip
    else:
        floor_minimum = base["eval_floor_hard_negative_accuracy"] - search_args.floor_margin
        logger.warning(
            f"starting model: relational {base['eval_objective_hard_negative_accuracy']:.4f}, floor-type accuracy "
            f"{base['eval_floor_hard_negative_accuracy']:.4f}; trials must stay at or above {floor_minimum:.4f}"
        )

    # 5. The search; each trial recorded as it ends
    trials: list[dict] = []
    current: dict = {}
    space = hp_space(search_args, training_args.max_steps, {k: getattr(training_args, k) for k in SCHEDULE_KNOBS})

    def trial_space(trial):
        current.update(number=trial.number, params=space(trial), start=time.time())
        return current["params"]

    def objective(metrics: dict) -> float:
        if goal:
            relational, feasible = metrics["eval_objective_score"], bool(metrics["eval_objective_feasible"])
            floor_metric = training_args.objective_floor_metric
            floor = metrics[Objective.key(floor_metric)] if floor_metric else None
        else:
            relational = metrics["eval_objective_hard_negative_accuracy"]
            floor = metrics["eval_floor_hard_negative_accuracy"]
            feasible = floor >= floor_minimum
        record = {
            "number": current["number"],
            "params": current["params"],
            "relational_accuracy": relational,
            "floor_accuracy": floor,
            "floor_minimum": floor_minimum,
            "feasible": feasible,
            "objective": relational if feasible else relational - 1.0,
            "seconds": round(time.time() - current["start"], 1),
        }
        trials.append(record)
        with open(trials_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        logger.warning(f"trial {record['number']}: {json.dumps(record)}")
        return record["objective"]

    best = trainer.hyperparameter_search(
        hp_space=trial_space,
        compute_objective=objective,
        n_trials=search_args.n_trials,
        direction="maximize",
        backend="optuna",
        sampler=__import__("optuna").samplers.TPESampler(seed=search_args.sampler_seed),
    )

    # 6. The best configuration as a training config, the trials as a plot
    best_trial = next(t for t in trials if str(t["number"]) == str(best.run_id))
    if not best_trial["feasible"]:
        logger.warning("no trial stayed above the recognition floor: best.yaml holds the least bad one")
    config = best_config(
        model_args, data_args, training_args, best_trial["params"], os.path.join(training_args.output_dir, "best")
    )
    with open(os.path.join(training_args.output_dir, "best.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=True)
    plot_trials(trials, os.path.join(training_args.output_dir, "trials.png"))
    summary = {
        "base": {k: v for k, v in base.items() if isinstance(v, (int, float))},
        "floor_minimum": floor_minimum,
        "best": best_trial,
        "trials": trials,
        "search": dataclasses.asdict(search_args),
    }
    with open(os.path.join(training_args.output_dir, "search.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-search`: exit status 0 once best.yaml is written."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        args = parser.parse_yaml_file(os.path.abspath(argv[0]))
    else:
        args = parser.parse_args_into_dataclasses(args=argv)
    try:
        main(*args)
    except RunAbortedError as err:  # a trial's run aborted (too many skipped pairs, ...) or the folder is taken
        print(f"hnc-clip-search: error: {err}", file=sys.stderr)
        return 1
    except Preempted:
        logger.warning(f"search stopped by SIGTERM; the complete trials are in {args[2].output_dir}/trials.jsonl")
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(cli())
