"""The training application: fine-tune CLIP with Hard Negative Captions (HNC).

    hnc-clip-train --train_file hnc_train.json --image_dir gqa/images --output_dir out --do_train [Trainer flags]
    hnc-clip-train config.yaml                  # or config.json: the same fields
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml run_hnc_clip.py ...   (the same `main`)

`main()` is wiring: each numbered step is one call into the `hnc_clip` library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

import datasets
import transformers
from transformers import HfArgumentParser, set_seed

from hnc_clip.arguments import DataArguments, HncTrainingArguments, ModelArguments
from hnc_clip.callbacks import Preempted, SaveOnSigterm
from hnc_clip.data import (
    make_collator,
    needs_stream,
    prepare_split,
    prepare_stream,
    text_length,
    training_sources,
)
from hnc_clip.errors import RunAbortedError
from hnc_clip.losses import LOSSES
from hnc_clip.machine import TRI_STATE_FLAGS, describe_machine_defaults
from hnc_clip.modeling import apply_finetune_mode, load_model, load_processor, load_reference, merged_for_save
from hnc_clip.output_dir import (
    claim_output_dir,
    disk_full_after_the_model,
    is_complete,
    last_complete_checkpoint,
    save_final_model,
)
from hnc_clip.peers import (
    collective_failure,
    exit_with,
    is_peer_lost,
    peer_lost_message,
    shutdown_distributed,
    watch_peers,
)
from hnc_clip.trainer import HncTrainer

logger = logging.getLogger("hnc_clip")


class NothingToDoError(ValueError):
    """Neither --do_train nor --do_eval: a run that would train nothing and exit as if it had."""


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataArguments, HncTrainingArguments), prog="hnc-clip-train")
    # Tri-state flags (unset = decided from the machine, see `hnc_clip.machine.fast_defaults`): HfArgumentParser wants
    # a value for a `bool | None` field whose default is None; `--bf16` alone must still mean true.
    for action in parser._actions:
        if action.dest in TRI_STATE_FLAGS:
            action.nargs, action.const = "?", True
    return parser


def parse_args(argv: list[str] | None = None):
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: HncTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("hnc_clip").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def resolve_checkpoint(training_args: HncTrainingArguments) -> str | None:
    """`--resume_from_checkpoint` as given, or `last` (`True`) → the newest *complete* checkpoint in `--output_dir`
    (one cut short by a kill or a full disk is passed over)."""
    ckpt = training_args.resume_from_checkpoint
    if ckpt in (True, "True", "true", "last"):
        ckpt = last_complete_checkpoint(training_args.output_dir)
        if ckpt is None:
            raise RunAbortedError(f"--resume_from_checkpoint: no complete checkpoint in {training_args.output_dir}")
    elif ckpt and not is_complete(ckpt):
        logger.warning(f"{ckpt} is not marked complete (cut short, or written by an older version): resuming anyway")
    return ckpt


def check_task(data_args: DataArguments, training_args: HncTrainingArguments) -> None:
    """Refuse a run that would do nothing, or evaluate nothing, before any model is loaded. (`--eval_strategy` other
    than `no` turns --do_eval on, as in the Trainer.)"""
    if not (training_args.do_train or training_args.do_eval):
        raise NothingToDoError(
            "There is nothing to do: pass --do_train (with --train_file) and/or --do_eval (with --validation_file)"
        )
    specs = training_sources(data_args)
    if training_args.do_train and not specs:
        raise ValueError("--do_train needs training data: --train_file, --dataset_name, --train_shards or "
                         "--train_sources")
    if training_args.do_eval and data_args.validation_file is None:
        raise ValueError("--do_eval (or --eval_strategy other than `no`) needs --validation_file")
    if training_args.do_train and needs_stream(specs):
        if training_args.max_steps <= 0:
            raise ValueError("streamed or mixed training sources have no length: give --max_steps (each process "
                             "counts its own passes over its part of the data)")  # fmt: skip
        if training_args.group_by_image:
            raise ValueError("--group_by_image lays out an indexed split: it does not apply to streamed or mixed "
                             "sources")
    if data_args.negatives_from_captions and specs and all(s.kind == "hnc" for s in specs):
        raise ValueError("--negatives_from_captions makes negatives for plain captions (tables, --dataset_name, "
                         "--train_shards, ...); HNC brings its own")


def record_settings(output_dir: str, settings: dict) -> None:
    """Add the run's machine-decided settings to `all_results.json` (next to the metrics the Trainer wrote)."""
    path = os.path.join(output_dir, "all_results.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    results["machine_defaults"] = settings
    with open(path, "w") as f:
        json.dump(results, f, indent=4, sort_keys=True)


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: HncTrainingArguments,
    callbacks: list | None = None,
) -> dict:
    with contextlib.ExitStack() as run:
        # 1. SIGTERM handled from the first second; logging, the other machines watched (`hnc_clip.peers`), seed,
        # what this run does; the output folder held
        sigterm = SaveOnSigterm(save=training_args.save_on_sigterm).install()
        run.callback(sigterm.uninstall)
        setup_logging(training_args)
        run.enter_context(watch_peers(training_args))
        check_task(data_args, training_args)
        checkpoint = resolve_checkpoint(training_args) if training_args.do_train else None
        run.enter_context(claim_output_dir(training_args, resuming=checkpoint is not None))
        logger.warning(describe_machine_defaults(training_args))
        set_seed(training_args.seed)

        # 2. Model and processor
        processor = load_processor(model_args)
        model = load_model(model_args)
        text_length(data_args, model.config)  # a --max_text_length past the positions: refused before any data
        reference = load_reference(model_args, model) if LOSSES[training_args.loss_type].needs_reference else None
        model = apply_finetune_mode(model, training_args)

        # 3. Data: HNC JSON or a hard-negative table → Arrow pairs → images joined on the fly (`prepare_split`)
        def split(path: str | None, max_samples: int | None, name: str):
            if path is None:
                return None
            with training_args.main_process_first(desc=f"converting {path}"):
                return prepare_split(
                    path, data_args, max_samples, processor.image_processor, split=name,
                    cache_dir=model_args.cache_dir, max_skipped_fraction=training_args.max_skipped_fraction,
                )  # fmt: skip

        specs = training_sources(data_args) if training_args.do_train else []
        stream = None
        if needs_stream(specs):  # image–caption sources or a mix: streamed (`hnc_clip.data.stream`)
            with training_args.main_process_first(desc="checking the training sources"):
                stream = prepare_stream(specs, data_args, training_args.seed, cache_dir=model_args.cache_dir,
                                        max_skipped_fraction=training_args.max_skipped_fraction)  # fmt: skip
            logger.warning(stream.describe())
        train_dataset = stream or (
            split(data_args.train_file, data_args.max_train_samples, data_args.train_split)
            if training_args.do_train else None
        )  # fmt: skip
        eval_dataset = split(data_args.validation_file, data_args.max_eval_samples, data_args.validation_split)
        collator = make_collator(data_args, processor, model.config, stream=stream, seed=training_args.seed)

        # 4. Trainer
        trainer = HncTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            processing_class=processor,
            reference_model=reference,
            callbacks=callbacks,
            sigterm=sigterm,
            card_info={
                "base_model": model_args.model_name_or_path,
                "train_file": data_args.train_file,
                "train_sources": stream.card_rows() if stream is not None else None,
                "validation_file": data_args.validation_file,
                "machine_defaults": training_args.machine_defaults,
            },
        )

        # 5. Train, save (LoRA merged), evaluate, push
        results: dict = {}
        if training_args.do_train:
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
            if sigterm.received:
                # Preempted: the checkpoint is saved; the final model is not (the run is not finished).
                step = trainer.state.global_step
                logger.warning(
                    f"stopped by SIGTERM at step {step}; resume with "
                    f"--resume_from_checkpoint {training_args.output_dir}/checkpoint-{step}"
                )
                return {"preempted": True, "global_step": trainer.state.global_step}
            trainer.model = merged_for_save(trainer.model)
            # Into a temporary folder, then renamed into place (`hnc_clip.output_dir`). Under --push_to_hub the one
            # push happens at the end, with the eval metrics and the card.
            save_final_model(trainer)
            with disk_full_after_the_model("the trainer state", training_args.output_dir):
                trainer.save_state()
            totals = {f"train_{k}": int(v) for k, v in trainer.run_totals.items()}  # summed over processes
            # a stream has no length: the pairs it trained on
            seen = len(train_dataset) if stream is None else int(trainer.run_totals["pairs"])
            metrics = {**train_result.metrics, "train_samples": seen, **totals}
            trainer.log_metrics("train", metrics)
            with disk_full_after_the_model("the training metrics", training_args.output_dir):
                trainer.save_metrics("train", metrics)
            results.update(metrics)
        if training_args.do_eval:
            metrics = trainer.evaluate()  # eval_samples: the pairs scored
            trainer.log_metrics("eval", metrics)
            with disk_full_after_the_model("the evaluation metrics", training_args.output_dir):
                trainer.save_metrics("eval", metrics)
            results.update(metrics)
        with disk_full_after_the_model("the run's settings and model card", training_args.output_dir):
            if training_args.should_save:
                record_settings(training_args.output_dir, training_args.machine_defaults)
            # A card only for a model this run trained and saved (an evaluation-only run describes no new model).
            if training_args.do_train:
                trainer.card_info["metrics"] = results
                if training_args.push_to_hub:
                    trainer.push_to_hub(commit_message=f"hnc-clip: {training_args.loss_type} fine-tune")
                elif training_args.should_save:
                    trainer.create_model_card()
        return results


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-train` and `python run_hnc_clip.py`: parse, train, exit 143 when preempted (128 + SIGTERM: schedulers
    read it as "requeue"), 2 with a one-line message when there is nothing to do, 1 with one when the run stopped
    for a reason it names (`RunAbortedError`: skipped too much, trained nothing, disk full, folder in use, ...) or
    because a peer process or machine was lost (`hnc_clip.peers`)."""
    args = parse_args(argv)
    try:
        results = main(*args)
    except NothingToDoError as err:
        print(f"hnc-clip-train: error: {err}", file=sys.stderr)
        return 2
    except RunAbortedError as err:
        print(f"hnc-clip-train: error: {err}", file=sys.stderr)
        return 1
    except Preempted:
        return 143
    except Exception as err:
        if not is_peer_lost(err):
            raise
        # Exits at once, without `shutdown_distributed`: tearing down a process group with a lost peer can wait for
        # it (NCCL), and without the teardown, leaving the interpreter can abort in a gloo thread.
        exit_with(peer_lost_message(collective_failure(err), args[2].output_dir))
    finally:
        shutdown_distributed()
    return 143 if results.get("preempted") else 0


if __name__ == "__main__":
    sys.exit(cli())
