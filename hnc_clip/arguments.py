"""Command-line arguments: one dataclass per group, parsed by `HfArgumentParser`.

`HncTrainingArguments` subclasses `TrainingArguments`, so every Trainer flag (`--output_dir`, `--max_steps`,
`--bf16`, `--report_to`, `--push_to_hub`, `--resume_from_checkpoint`, ...) works unchanged; it only adds the
method's own knobs. Choices are checked against the registries in `__post_init__`, naming the flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .loss_config import LossConfig
from .machine import apply_machine_defaults

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def check_finite(args) -> None:
    """Every float a dataclass of flags holds is finite: NaN passes every `<`/`>` range check (all comparisons with
    it are false), so it is refused here, naming the flag, before any range check runs; so is each float of a list
    flag (`--learning_rate_range 1e-4 inf`)."""
    for f in dataclasses.fields(args):
        value = getattr(args, f.name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"--{f.name} must be a finite number, got {value}")


def deepspeed_zero_stage(deepspeed, environ) -> int | None:
    """The DeepSpeed ZeRO stage this run will use (0 for DeepSpeed without ZeRO), None without DeepSpeed or where the
    config cannot be read (left to DeepSpeed to report). From `--deepspeed` (a dict or a JSON file), else from what
    `accelerate launch --config_file zero3.yaml` puts in the environment (its `deepspeed_config_file`, or
    `zero_stage`, default 2 as accelerate's)."""
    config = deepspeed
    if config is None:
        if str(environ.get("ACCELERATE_USE_DEEPSPEED", "false")).lower() != "true":
            return None
        config = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        if config in ("none", ""):
            return int(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))
    if isinstance(config, str):
        try:
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else None
    return stage if isinstance(stage, int) else None


# What ZeRO-3 would get wrong: (flag as named, is it in use, why). Under ZeRO-3 a parameter outside its module's
# forward is an empty shard on most processes (`hnc_clip.modeling.LogitScaleTap`).
ZERO3_UNSUPPORTED = (
    (
        "--l2_reg_weight",
        lambda a: a.l2_reg_weight > 0,
        "‖θ−θ₀‖² reads θ and captures θ₀ outside the forward, where ZeRO-3 holds each parameter as a shard "
        "(an empty tensor on most processes): the term would be 0 or a shape error",
    ),
    (
        "--finetune_mode lora",
        lambda a: a.finetune_mode == "lora",
        "the adapters are merged into the weights before the final save, outside the forward, where ZeRO-3 holds "
        "the weights as shards (peft's LoRA merge does not gather them); LoRA's few trainable parameters gain "
        "little from ZeRO-3",
    ),
)


def check_zero3(args, stage: int | None) -> None:
    """`ValueError` for a setting ZeRO-3 would silently get wrong (`ZERO3_UNSUPPORTED`), naming the flag."""
    if stage != 3:
        return
    for flag, used, why in ZERO3_UNSUPPORTED:
        if used(args):
            raise ValueError(
                f"{flag} is not supported under DeepSpeed ZeRO-3: {why}. Use ZeRO-2 "
                "(accelerate_configs/zero2.yaml) or DDP (accelerate_configs/multi_gpu.yaml)"
            )


def check_range(flag: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    """`low <= value <= high` (`<` where open; None: unbounded), or a `ValueError` naming the flag and the bound."""
    if value is None:
        return
    bounds = []
    if low is not None:
        bounds.append((f"> {low}", value > low) if low_open else (f">= {low}", value >= low))
    if high is not None:
        bounds.append((f"< {high}", value < high) if high_open else (f"<= {high}", value <= high))
    if not all(ok for _, ok in bounds):
        raise ValueError(f"--{flag} must be {' and '.join(text for text, _ in bounds)}, got {value}")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Hub id or local `save_pretrained` directory of the model to fine-tune: CLIP (OpenAI, MetaCLIP), "
            "MetaCLIP 2, SigLIP or SigLIP 2, picked from its config (hnc_clip/families.py)."
        },
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor (tokenizer + image processor) to use; defaults to the model's."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Hub branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models (else `hf auth login`)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modelling code from the Hub. Off by default: it executes code from the repo."},
    )
    attn_implementation: str | None = field(
        default="sdpa", metadata={"help": "Attention kernel: `sdpa` (default), `eager`, `flash_attention_2`."}
    )
    patch_embedding_as_matmul: bool = field(
        default=True,
        metadata={
            "help": "Compute the vision patch embedding (a stride = kernel convolution) as one matrix product: same "
            "weights and result, ~15x less GPU time than cuDNN's 32x32-filter kernels. False: the convolution."
        },
    )


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: HNC JSON (train/val or test schema, detected); or a hard-negative table (.jsonl, "
            ".csv, .tsv, .parquet, a dataset folder, or a Hub dataset name: docs/models_and_data.md)."
        },
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Evaluation data during training, as --train_file (HNC JSON or a table)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a Hub dataset of images and captions (or a local folder of its Parquet/Arrow "
            "files; `imagefolder` with --data_dir), streamed: --image_column, --caption_column, "
            "--dataset_config_name, --train_split; negatives from --negatives_from_captions."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "`--dataset_name imagefolder`: the folder of images and metadata.jsonl/csv."}
    )
    train_shards: str | None = field(
        default=None,
        metadata={
            "help": "Training data: WebDataset shards in open_clip's layout (.tar of <key>.jpg/png + <key>.txt or "
            "<key>.json), a brace pattern such as `shards/{00000..00999}.tar`, several joined by `::`; streamed."
        },
    )
    train_sources: list[str] | None = field(
        default=None,
        metadata={
            "help": "Further training sources, mixed with the above: each KIND:LOCATION, KIND one of hnc, table, hub, "
            "imagefolder, webdataset (e.g. `hnc:hnc_train.json webdataset:coco/{00000..00059}.tar`)."
        },
    )
    source_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Sampling weight of each training source, in the order --train_file, --dataset_name, "
            "--train_shards, then --train_sources (datasets' interleave_datasets probabilities). Unset: equal."
        },
    )
    mix_stopping_strategy: str = field(
        default="all_exhausted",
        metadata={
            "help": "When a pass over mixed sources ends (interleave_datasets): `all_exhausted` (each source seen "
            "at least once, smaller ones again), `first_exhausted`, or `all_exhausted_without_replacement`."
        },
    )
    shuffle_buffer_size: int = field(
        default=0,
        metadata={
            "help": "Streamed data: datasets' shuffle buffer of this many samples on top of the per-pass shard order "
            "(0: none). A resumed run loses what the buffers held (up to this many samples per DataLoader worker)."
        },
    )
    negatives_from_captions: str | None = field(
        default=None,
        metadata={
            "help": "Make hard negatives for captions that bring none (Hub, image folder, shards), in the DataLoader "
            "workers, seeded per sample: rules or groups, comma-separated (`swap,replace,shuffle`; "
            "hnc_clip/negatives/rules.py). A caption no rule applies to trains the contrastive term only."
        },
    )
    caption_parser: str = field(
        default="spacy:en_core_web_sm",
        metadata={
            "help": 'What the rules parse captions with: `spacy:NAME_OR_PATH` (pip install "hnc-clip[negatives]"; '
            "python -m spacy download en_core_web_sm) or `lexicon:words.json` (word → part of speech)."
        },
    )
    negative_vocabulary: str | None = field(
        default=None,
        metadata={
            "help": "JSON of word classes for the `replace` rules (colours, materials, ...), beside the built-in ones."
        },
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Table: the column with each row's image file under --image_dir (unset: `image_path`); Hub or "
            "image-folder data: the Image column (unset: its one Image column)."
        },
    )
    caption_column: str = field(
        default="caption",
        metadata={"help": "The column with the positive caption (table, Hub, image folder; a shard's .json key)."},
    )
    negative_caption_column: str = field(
        default="negative_captions",
        metadata={
            "help": "The column with the hard-negative caption(s): a string or a list of strings (table; Hub, image "
            "folder and a shard's .json key, where present)."
        },
    )
    negative_image_column: str | None = field(
        default=None,
        metadata={
            "help": "Table (optional): the column listing, per row, the rows (0-based, file order) whose images are "
            "hard negatives, as NegCLIP's `neg_image`. Each pair then brings one of them, drawn at random, with its "
            "caption and negatives, as a further pair of the batch."
        },
    )
    negatives_per_row: int | None = field(
        default=None,
        metadata={
            "help": "Table: hard negatives per pair in the loss (K). Rows with more give K drawn at random each time "
            "(NegCLIP: 1), rows with fewer are skipped (counted). Unset: every negative, all rows equally many."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub dataset as --train_file: its configuration name."}
    )
    train_split: str = field(default="train", metadata={"help": "Hub dataset / dataset folder: the training split."})
    validation_split: str = field(
        default="validation", metadata={"help": "Hub dataset / dataset folder: the evaluation split."}
    )
    image_dir: str | None = field(
        default=None, metadata={"help": "Folder of the images (GQA-style `<image_id>.jpg`), joined on the fly."}
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Pre-resized image cache from `hnc-clip-image-cache`, read instead of decoding."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training pairs (after filtering), for quick runs."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation pairs."})
    caption_types: list[str] | None = field(
        default=None, metadata={"help": "Keep only pairs of these caption types (e.g. `relation_subj attribute`)."}
    )
    on_missing_image: str = field(
        default="skip",
        metadata={"help": "Missing/unreadable image: `skip` the pair (counted, logged) or `error` (stop)."},
    )
    max_text_length: int | None = field(
        default=None, metadata={"help": "Truncate captions to this many tokens; default: the model's max positions."}
    )
    max_image_pixels: int = field(
        default=64 * 2**20,
        metadata={
            "help": "Skip (and count) an image whose decoded size passes this many pixels (64 Mi: a 9,000 x 7,000 "
            "photo), checked from its header before decoding; decompression bombs are skipped the same way."
        },
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for dataset filtering."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Rebuild the Arrow cache of the HNC files."})

    def __post_init__(self):
        check_finite(self)
        if self.on_missing_image not in ("skip", "error"):
            raise ValueError(f"--on_missing_image must be `skip` or `error`, got {self.on_missing_image!r}")
        for flag in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers", "max_image_pixels",
                     "negatives_per_row"):  # fmt: skip
            check_range(flag, getattr(self, flag), low=1)
        check_range("max_text_length", self.max_text_length, low=2)  # BOS and EOS
        check_range("shuffle_buffer_size", self.shuffle_buffer_size, low=0)
        stopping = ("all_exhausted", "first_exhausted", "all_exhausted_without_replacement")
        if self.mix_stopping_strategy not in stopping:
            raise ValueError(
                f"--mix_stopping_strategy must be one of {list(stopping)}, got {self.mix_stopping_strategy!r}"
            )
        from .data.sources import MAP_KINDS, training_sources

        specs = training_sources(self)  # each source and its weight are checked now, before any work
        if self.image_dir is None:  # HNC and tables name image files: refused before any conversion starts
            joined = [f"{s.kind}:{s.location}" for s in specs if s.kind in MAP_KINDS]
            joined += [f"--validation_file {self.validation_file}"] if self.validation_file else []
            if joined:
                raise ValueError(f"--image_dir is required: images are joined from it by file name (for "
                                 f"{', '.join(joined)})")  # fmt: skip
        if self.negatives_from_captions:
            from .negatives.rules import parse_rules

            parse_rules(self.negatives_from_captions)


@dataclass
class HncTrainingArguments(TrainingArguments):
    loss_type: str = field(
        default="hnc",
        metadata={
            "help": "Loss: `clip`, `hnc` (default), `pairwise`, `thesis_l2`, `kl_teacher`, `dpo`, `negclip`, "
            "`fsc_clip` (FSC-CLIP's global terms), `ce_clip` (CE-CLIP). A SigLIP model trains `clip`, `hnc`, "
            "`pairwise`, `dpo`, `fsc_clip` in their sigmoid form (hnc_clip/losses.py)."
        },
    )
    hard_negative_weight: float = field(
        default=LossConfig.hard_negative_weight,
        metadata={"help": "λ: weight of the hard-negative term (where a schedule ends)."},
    )
    hard_negative_schedule: str = field(
        default="constant",
        metadata={
            "help": "λ schedule: `constant`, `linear` (λ_min → λ: a warm-up, or a decay when λ_min > λ), "
            "`step` (staircase λ_min → λ)."
        },
    )
    hard_negative_weight_min: float = field(
        default=0.0, metadata={"help": "Starting λ of `linear`/`step` (above λ: `linear` decays)."}
    )
    hard_negative_warmup_steps: int = field(default=0, metadata={"help": "Steps over which `linear` reaches λ."})
    hard_negative_step_size: float = field(default=0.1, metadata={"help": "`step`: λ increase per stair."})
    hard_negative_step_every: int = field(default=100, metadata={"help": "`step`: optimizer steps per stair."})
    l2_reg_weight: float = field(
        default=LossConfig.l2_reg_weight,
        metadata={"help": "λ_reg of λ_reg·‖θ−θ₀‖², a pull of the trainable parameters towards the start (any loss)."},
    )
    kl_weight: float = field(
        default=LossConfig.kl_weight, metadata={"help": "`kl_teacher`: weight of the KL to the frozen model."}
    )
    kl_temperature: float = field(
        default=LossConfig.kl_temperature, metadata={"help": "`kl_teacher`: softmax temperature of the KL."}
    )
    dpo_beta: float = field(
        default=LossConfig.dpo_beta, metadata={"help": "`dpo`: β of −log σ(β[(s⁺−s⁺_ref)−(s⁻−s⁻_ref)])."}
    )
    dpo_contrastive_weight: float = field(
        default=LossConfig.dpo_contrastive_weight,
        metadata={"help": "`dpo`: weight of the CLIP contrastive term added to the DPO term (0: off)."},
    )
    fsc_focal_gamma: float = field(
        default=LossConfig.fsc_focal_gamma,
        metadata={
            "help": "`fsc_clip`: γ of the hard-negative focal term −(1−p)^γ log p (the authors' runs: 2; 0: "
            "plain cross-entropy). Its weight is --hard_negative_weight (theirs: 0.5)."
        },
    )
    fsc_label_smoothing: float = field(
        default=LossConfig.fsc_label_smoothing,
        metadata={
            "help": "`fsc_clip`: ε of the smoothed hard-negative targets: ε/(1+K) on each of a pair's K "
            "negatives and on its positive, 1−ε more on the positive (the authors' runs: 0.02)."
        },
    )
    fsc_local_weight: float = field(
        default=LossConfig.fsc_local_weight,
        metadata={
            "help": "`fsc_clip`: weight μ of FSC-CLIP's local token–patch hard-negative term (LHN): the focal loss "
            "above over each pair's token–patch scores (the authors' runs: 0.2; 0: off, their flag's default). "
            "Encodes per-patch and per-token embeddings (more memory, cached by GradCache too); CLIP-family models."
        },
    )
    fsc_local_normalizer: str = field(
        default=LossConfig.fsc_local_normalizer,
        metadata={
            "help": "`fsc_clip` with --fsc_local_weight: how a caption token weighs the patches it averages, from "
            "its similarity to each: `minmax` (scaled to [0, 1] over the patches, then summing to 1; the authors' "
            "default) or `softmax`."
        },
    )
    fsc_local_sparsify: bool = field(
        default=LossConfig.fsc_local_sparsify,
        metadata={"help": "`fsc_clip` with --fsc_local_weight and `minmax`: drop patches whose weight is below "
                          "1/patches before renormalising (the authors' --sim-sparsify)."},
    )
    ce_clip_imc_weight: float = field(
        default=LossConfig.ce_clip_imc_weight,
        metadata={
            "help": "`ce_clip`: weight of the intra-modal contrast (positive caption against "
            "the hard negatives in text space; the authors' default 0.2)."
        },
    )
    ce_clip_cmr_weight: float = field(
        default=LossConfig.ce_clip_cmr_weight,
        metadata={
            "help": "`ce_clip`: weight of the cross-modal rank loss relu(τ_k + s⁻ − s⁺) (the authors' default 0.2)."
        },
    )
    ce_clip_threshold_max: float = field(
        default=LossConfig.ce_clip_threshold_max,
        metadata={
            "help": "`ce_clip`: the adaptive thresholds τ_k are clamped to [0, this] (the "
            "authors' --upper-bound, default 10)."
        },
    )
    eval_benchmarks: list[str] | None = field(
        default=None,
        metadata={
            "help": "What every evaluation (--eval_strategy, --eval_steps; --eval_on_start for the start) also "
            "scores, logged to the reporters and trainer_state.json: NAME=zeroshot:IMAGE_FOLDER"
            "[,classnames=F,templates=F,split=S,max=N] (eval_NAME_top1), NAME=hub:DATASET[,split=S,"
            "image=COL,label=COL,max=N] (a datasets/Hub set, the same) or NAME=pairs:PAIR_FILE,"
            "images=DIR[,types=a+b,max=N] (eval_NAME_accuracy); max=N: a fixed random subset "
            "(hnc_clip/evaluation/watch.py)."
        },
    )
    objective_metric: str | None = field(
        default=None,
        metadata={
            "help": "The relational score checkpoints are chosen for (an evaluation metric, e.g. "
            "relational_accuracy from --eval_benchmarks or the Trainer's hard_negative_accuracy): "
            "logged as eval_objective; --metric_for_best_model objective picks by it."
        },
    )
    objective_floor_metric: str | None = field(
        default=None,
        metadata={
            "help": "The recognition floor of --objective_metric (e.g. recognition_top1): a checkpoint whose "
            "value falls more than --objective_floor_margin below the starting model's (measured by "
            "--eval_on_start, which this needs) scores its objective − 1."
        },
    )
    objective_floor_margin: float = field(
        default=0.01,
        metadata={"help": "How far below its starting value --objective_floor_metric may fall."},
    )
    max_logit_scale: float | None = field(
        default=None,
        metadata={
            "help": "Clamp exp(logit_scale) to this. Unset: the model family's (100 for CLIP, as open_clip and "
            "NegCLIP; none for SigLIP, as big_vision)."
        },
    )
    gather_negatives: bool = field(
        default=True,
        metadata={"help": "Under DDP/DeepSpeed gather embeddings from all processes (global negatives)."},
    )
    mask_same_image: bool = field(
        default=LossConfig.mask_same_image,
        metadata={"help": "Mask logits between different pairs of the same image (they are not negatives)."},
    )
    group_by_image: int = field(
        default=0,
        metadata={
            "help": "Lay batches out as groups of this many pairs of one image, so each image meets several of its "
            "own hard negatives per batch (0: plain random sampling)."
        },
    )
    gradcache_chunk_size: int = field(
        default=0,
        metadata={
            "help": "Contrastive-aware accumulation (GradCache): compute the loss over the whole per-device batch "
            "but hold activations for only this many pairs at a time. 0: off."
        },
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata={
            "help": "Steps with a NaN/inf loss or gradient are skipped (no update); after this many the run stops."
        },
    )
    max_skipped_fraction: float = field(
        default=0.5,
        metadata={
            "help": "Stop the run (non-zero exit, naming the count) when more than this share of the pairs is "
            "skipped (missing, unreadable, oversized or outside --image_dir), or of the optimizer steps (no readable "
            "pair anywhere, non-finite loss or gradient). Checked before training for the missing files, at every "
            "log and at the end; a run in which no step was applied always fails."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that holds another run's model or checkpoints (its checkpoints are "
            "deleted first, so that `--resume_from_checkpoint last` cannot pick them). Without it such a folder is "
            "refused, unless resuming."
        },
    )
    compile_regions: bool = field(
        default=True,
        metadata={
            "help": "With --torch_compile: compile each repeated transformer block once and reuse it (accelerate's "
            "regional compilation) instead of the whole CLIP graph: a far shorter compile for the same kernels."
        },
    )
    compile_dynamic: bool = field(
        default=True,
        metadata={
            "help": "With --torch_compile: trace with symbolic batch and caption-length dimensions. Dynamic padding "
            "changes the shapes every batch; static shapes would recompile for each new one."
        },
    )
    peer_timeout: int = field(
        default=60,
        metadata={
            "help": "Over several machines: seconds without a heartbeat from a peer process (a machine that lost "
            "power, hangs or is cut off closes no socket) before the run stops with a message, exit 1, instead of "
            "waiting --ddp_timeout in the collective (hnc_clip/peers.py). 0: off. A one-machine run needs none."
        },
    )
    save_on_sigterm: bool = field(
        default=True, metadata={"help": "On SIGTERM (preemption) save a checkpoint, then stop."}
    )
    finetune_mode: str = field(
        default="full", metadata={"help": "What trains: `full`, `text`, `vision`, `last_block`, `lora`."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names LoRA adapts (both towers). Unset: the family's attention projections (q_proj, "
            "k_proj, v_proj, out_proj; for SigLIP those of the transformer blocks, hnc_clip/families.py)."
        },
    )
    # Trainer defaults that suit this recipe (still overridable on the command line).
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the caption and image columns."}
    )
    # Fast defaults (issue: "a user gets them without thinking"): unset means decided in __post_init__ from the
    # machine (`hnc_clip.machine.fast_defaults`); any explicit value wins.
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Unset: on where the GPU supports it (and not --fp16/--use_cpu)."},
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader worker processes. Unset: with a GPU, min(8, CPUs per process - 1); else 0."},
    )
    dataloader_persistent_workers: bool | None = field(
        default=None, metadata={"help": "Keep DataLoader workers between epochs. Unset: on when there are workers."}
    )

    sdpa_backends: list[str] | None = field(
        default=None,
        metadata={
            "help": "Attention kernels SDPA may choose from (`flash`, `efficient`, `math`, `cudnn`; PyTorch picks "
            "among them, flash first). Unset: `efficient math` on a GPU, `flash efficient math` on a CPU. At CLIP's "
            "sequence lengths (50 image tokens for ViT-B/32, at most 77 text tokens) the memory-efficient kernel's "
            "forward + backward ran 3x faster than flash on an H100 (bench/RESULTS.md); flash pads its "
            "backward to 128 query rows. For long sequences (ViT-L/14 at 336 px: 577 tokens) measure with "
            "bench/attention_backends.py and add `flash`. cuDNN is left out: it builds an execution plan for each "
            "new (batch, length) shape (40-66 ms each on an H100), and this recipe's batches change shape at every "
            "step (dynamic padding, one encoding per distinct image and caption)."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Kept False: HncTrainer already skips non-finite steps, whose loss never reaches the log; the "
            "Trainer's filter would add a host sync per step."
        },
    )

    def __post_init__(self):
        # Unset: batches go to the GPU with non-blocking copies from pinned memory. A blocking copy waits for the
        # previous step's kernels to drain before the CPU may queue this step's, leaving the GPU idle meanwhile.
        default_accelerator_config = self.accelerator_config is None
        # What was decided from this machine rather than given: logged at start, recorded in the card and results.
        self.machine_defaults = apply_machine_defaults(self)
        check_finite(self)
        # Imported here: registries live beside the code they name, and args must stay importable cheaply.
        from .losses import LOSSES
        from .modeling import FINETUNE_MODES
        from .schedules import SCHEDULES

        for flag, value, registry in (
            ("--loss_type", self.loss_type, LOSSES),
            ("--hard_negative_schedule", self.hard_negative_schedule, SCHEDULES),
            ("--finetune_mode", self.finetune_mode, FINETUNE_MODES),
        ):
            if value not in registry:
                raise ValueError(f"{flag} must be one of {sorted(registry)}, got {value!r}")
        self._check_ranges()
        spec = LOSSES[self.loss_type]
        if self.gradcache_chunk_size and spec.needs_reference:
            raise ValueError(f"--gradcache_chunk_size does not support --loss_type {self.loss_type} yet")
        if self.gradcache_chunk_size and self.l2_reg_weight > 0:
            raise ValueError("--gradcache_chunk_size does not support --l2_reg_weight > 0 yet")
        self._check_loss_flags()
        self._check_watch_flags()
        from .attention import SDPA_BACKENDS

        unknown = sorted(set(self.sdpa_backends) - set(SDPA_BACKENDS))
        if unknown or not self.sdpa_backends:
            raise ValueError(f"--sdpa_backends must name some of {sorted(SDPA_BACKENDS)}, got {self.sdpa_backends}")
        self._check_flags_the_loss_reads()
        # before super(): transformers imports DeepSpeed there, and what ZeRO-3 would get wrong is named first
        self.zero_stage = deepspeed_zero_stage(self.deepspeed, os.environ)
        check_zero3(self, self.zero_stage)
        super().__post_init__()
        if default_accelerator_config and self.dataloader_pin_memory:
            self.accelerator_config.non_blocking = True

    # (flag, low, high, low open, high open): the method's knobs, and the Trainer's that can poison weights.
    RANGES = (
        ("hard_negative_weight", 0, None, False, False),
        ("hard_negative_weight_min", 0, None, False, False),
        ("hard_negative_warmup_steps", 0, None, False, False),
        ("hard_negative_step_size", 0, None, False, False),  # negative: λ falls below λ_min and then below 0
        ("hard_negative_step_every", 1, None, False, False),
        ("l2_reg_weight", 0, None, False, False),
        ("kl_weight", 0, None, False, False),
        ("kl_temperature", 0, None, True, False),  # 0: logits/0, a finite loss with NaN gradients
        ("dpo_beta", 0, None, True, False),
        ("dpo_contrastive_weight", 0, None, False, False),
        ("fsc_focal_gamma", 0, None, False, False),
        ("fsc_label_smoothing", 0, 1, False, True),
        ("fsc_local_weight", 0, None, False, False),
        ("ce_clip_imc_weight", 0, None, False, False),
        ("ce_clip_cmr_weight", 0, None, False, False),
        ("ce_clip_threshold_max", 0, None, False, False),
        ("max_logit_scale", 0, None, True, False),
        ("group_by_image", 0, None, False, False),
        ("gradcache_chunk_size", 0, None, False, False),
        ("max_nonfinite_steps", 0, None, False, False),
        ("peer_timeout", 0, None, False, False),
        ("max_skipped_fraction", 0, 1, False, False),
        ("lora_r", 1, None, False, False),
        ("lora_alpha", 0, None, True, False),
        ("lora_dropout", 0, 1, False, True),
        ("learning_rate", 0, None, False, False),
        ("weight_decay", 0, None, False, False),
        ("adam_beta1", 0, 1, False, True),
        ("adam_beta2", 0, 1, False, True),
        ("adam_epsilon", 0, None, True, False),
        ("max_grad_norm", 0, None, False, False),
        ("label_smoothing_factor", 0, 1, False, False),
    )

    def _check_watch_flags(self) -> None:
        """--eval_benchmarks read now (a bad entry fails before any work); the objective's flags consistent."""
        from .evaluation.watch import parse_watches

        parse_watches(self.eval_benchmarks)
        check_range("objective_floor_margin", self.objective_floor_margin, 0)
        never = str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no"
        if self.eval_benchmarks and never and not self.eval_on_start:
            raise ValueError("--eval_benchmarks are scored at each evaluation: set --eval_strategy steps (with "
                             "--eval_steps N) or epoch, or --eval_on_start")  # fmt: skip
        if self.objective_floor_metric and not self.objective_metric:
            raise ValueError("--objective_floor_metric is the floor of --objective_metric: give that too")
        if self.objective_floor_metric and not self.eval_on_start:
            raise ValueError("--objective_floor_metric is measured on the starting model by the evaluation before "
                             "training: add --eval_on_start")  # fmt: skip
        if self.metric_for_best_model in ("objective", "eval_objective") and not self.objective_metric:
            raise ValueError("--metric_for_best_model objective needs --objective_metric (and optionally "
                             "--objective_floor_metric)")  # fmt: skip

    def _check_loss_flags(self) -> None:
        """FSC-CLIP's local-term knobs together, and λ refused for CE-CLIP, which has none."""
        from .losses import PATCH_WEIGHTS

        if self.fsc_local_normalizer not in PATCH_WEIGHTS:
            known = ", ".join(PATCH_WEIGHTS)
            raise ValueError(f"--fsc_local_normalizer {self.fsc_local_normalizer!r}: one of {known}")
        for flag, moved in (("fsc_local_normalizer", self.fsc_local_normalizer != LossConfig.fsc_local_normalizer),
                            ("fsc_local_sparsify", self.fsc_local_sparsify)):  # fmt: skip
            if moved and self.fsc_local_weight == 0:
                raise ValueError(f"--{flag} shapes FSC-CLIP's local term, which --fsc_local_weight 0 turns off")
        if self.fsc_local_sparsify and self.fsc_local_normalizer != "minmax":
            raise ValueError("--fsc_local_sparsify drops patches of the min–max weights only (--fsc_local_normalizer "
                             "minmax); the authors' softmax weights ignore it")  # fmt: skip
        weighted = self.hard_negative_weight != 1.0 or self.hard_negative_schedule != "constant"
        if self.loss_type == "ce_clip" and weighted:
            raise ValueError(
                "--loss_type ce_clip has no λ: its hard negatives sit in the image→text softmax unweighted, and its "
                "own terms have --ce_clip_imc_weight and --ce_clip_cmr_weight (leave --hard_negative_weight 1 and "
                "--hard_negative_schedule constant)"
            )

    def _check_flags_the_loss_reads(self) -> None:
        """A knob only some loss types read (`hnc_clip.losses.flag_readers`), moved off its default for another, is
        refused: the run would train something other than what was asked."""
        from .losses import flag_readers

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for flag, readers in flag_readers().items():
            if self.loss_type not in readers and getattr(self, flag) != defaults[flag]:
                raise ValueError(
                    f"--{flag} has no effect with --loss_type {self.loss_type}: it is read by --loss_type "
                    f"{', '.join(readers)} (leave it at its default, {defaults[flag]}, or pick one of those losses)"
                )
        if self.label_smoothing_factor != 0:
            raise ValueError(
                f"--label_smoothing_factor {self.label_smoothing_factor} has no effect: hnc-clip's losses never call "
                "the Trainer's label smoother (leave it 0)"
            )

    def _check_ranges(self) -> None:
        for flag, low, high, low_open, high_open in self.RANGES:
            check_range(flag, getattr(self, flag), low, high, low_open, high_open)
