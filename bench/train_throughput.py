"""Benchmark: training throughput of the real `HncTrainer` step, an HF-default-like recipe vs ours, in one run.

    python bench/train_throughput.py                                   # CPU, tiny CLIP, < 2 minutes
    python bench/train_throughput.py --device cuda --model vitb32 --batch_size 256 --num_workers 16 \\
        --torch_compile --image_cache                                  # GPU: adds the compile and cache variants

What runs: synthetic GQA-sized JPEGs (500×375, photo-like, written to a temp dir) and an HNC train-schema JSON of
their captions → `hnc_clip.data.load_hnc_pairs` (the real conversion) → `with_images` (PIL + CLIP image processor
in the DataLoader workers) or the image cache → `HncCollator` → `HncTrainer` (the loss, gather and logging code
training uses). Only two things are added, both in this file: `PaddedCollator` (padding to 77 like run_clip.py)
and `TimedHncTrainer`, which records each step's batch shape and the wall time at each step end.

Variants (one fresh model each, same data, same process, same machine):

    hf_default    fp32, eager attention, captions padded to 77, optim adamw_torch, DataLoader defaults
                  (num_workers 0, pin_memory on, no persistent workers). Note: transformers >= 5 with
                  torch >= 2.8 already defaults to adamw_torch_fused; the baseline pins the older default.
    ours          bf16 autocast + tf32 (CUDA only), SDPA, dynamic padding, adamw_torch_fused,
                  --num_workers workers, pin memory, persistent workers
    ours_cache    ours + pre-resized image cache (`hnc_clip.data.image_cache`; its build time is reported apart)
    ours_compile  ours + --torch_compile (compile time falls in the warm-up steps)

Throughput counts steps after `--warmup_steps`: samples/s = pairs trained / time between the end of the last
warm-up step and the end of the last step (data loading included; CUDA synchronised at each step end).
FLOPs are **counted**, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of
the same `CLIPConfig` on the meta device (no compute) at each step's exact shapes (B images, 2B captions of the
step's padded length). TFLOP/s therefore counts padding tokens as work: `hf_default` does more FLOPs per sample.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from models import MAX_TEXT_LENGTH, FlopCounter, build_model, clip_config
from profiling import REPO, StepProfiler, StepTimer
from synthetic_data import GQA_SIZE, write_hnc_json, write_jpegs
from transformers import CLIPProcessor

from hnc_clip.arguments import HncTrainingArguments
from hnc_clip.data import HncCollator, load_hnc_pairs, with_images
from hnc_clip.modeling import patch_embedding_as_matmul
from hnc_clip.tiny import build_image_processor, build_word_tokenizer, words_of
from hnc_clip.trainer import HncTrainer

# -- the measured trainer --------------------------------------------------------------------------------------------


@dataclass
class PaddedCollator(HncCollator):
    """`HncCollator` with an option to pad every caption to `max_length` (77), as HF's run_clip.py does."""

    pad_to_max_length: bool = False

    def __call__(self, features: list[dict]) -> dict:
        if not self.pad_to_max_length:
            return super().__call__(features)
        tokenizer = self.tokenizer
        self.tokenizer = _PadToMax(tokenizer, self.max_length)
        try:
            return super().__call__(features)
        finally:
            self.tokenizer = tokenizer


@dataclass
class PerPairCollator(PaddedCollator):
    """Every pair's image and captions encoded, shared or not, with the padding mask (as run_clip.py): undoes the
    collator's dedup."""

    omit_padding_mask: bool = False

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        if "image_index" in batch:
            batch["pixel_values"] = batch["pixel_values"][batch.pop("image_index")]
        if "text_index" in batch:
            text_index = batch.pop("text_index")
            batch.pop("positive_captions", None)  # rows are per pair now
            batch["input_ids"] = batch["input_ids"][text_index]
            batch["attention_mask"] = batch["attention_mask"][text_index]
        return batch


class _PadToMax:
    """A tokenizer whose every call pads to `max_length`, whatever padding the collator asks for."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts, **kwargs):
        return self.tokenizer(texts, **{**kwargs, "padding": "max_length", "max_length": self.max_length})


class TimedHncTrainer(HncTrainer):
    """`HncTrainer`, recording each step's (pairs B, images encoded U, captions encoded T, caption length L);
    the step itself is the parent's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes: list[tuple[int, int, int, int]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        pixels, ids = inputs["pixel_values"], inputs["input_ids"]
        pairs = inputs["image_index"].shape[0] if "image_index" in inputs else pixels.shape[0]
        self.shapes.append((int(pairs), int(pixels.shape[0]), int(ids.shape[0]), int(ids.shape[1])))
        return super().training_step(model, inputs, num_items_in_batch)


# -- variants --------------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    name: str
    bf16: bool = False
    tf32: bool = False
    attn: str = "sdpa"
    pad_to_max_length: bool = False
    optim: str = "adamw_torch_fused"
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    torch_compile: bool = False
    encode_shared_once: bool = True  # HncCollator's dedup; False: PerPairCollator (run_clip.py's way)
    image_cache: bool = False  # uint8 rows from `hnc_clip.data.image_cache`, normalised on the device (as in training)
    group_by_image: int = 0  # `--group_by_image k`: batches of k-pair groups sharing an image (HNC's structure)
    batch_size: int | None = None  # pairs per step; None: --batch_size
    patch_matmul: bool = True  # `--patch_embedding_as_matmul` (the default); False: cuDNN's 32x32 convolution
    sdpa_backends: tuple[str, ...] | None = None  # `--sdpa_backends`; None: the recipe's default for the machine
    compile_regions: bool = True  # `--compile_regions` (the default); False: the whole model as one graph
    skip_on_device: bool = True  # StepGuard skips NaN steps on the device (fused AdamW); False: a sync per step
    cpp_wrapper: bool = False  # inductor's C++ wrapper: kernels launched from C++, not from generated Python


def recipes(args) -> list[Recipe]:
    """The variants to run: `--variants` as given, else hf_default, ours (+ ours_cache, + ours_compile by flag)."""
    cuda = args.device == "cuda"
    ours = Recipe("ours", bf16=cuda, tf32=cuda, num_workers=args.num_workers, persistent_workers=args.num_workers > 0)
    # Reading cached rows costs a worker ~nothing: a few keep up, and the rest of the cores stay free for the
    # training process, whose Python launches the kernels (16 busy workers on 16 cores starve it).
    cached = replace(ours, image_cache=True, num_workers=args.cache_workers, persistent_workers=args.cache_workers > 0)
    b1024_compiled = replace(cached, batch_size=1024, torch_compile=True)  # the GPU runs' main variant, its ablations
    known = {
        r.name: r
        for r in (
            Recipe(
                "hf_default", attn="eager", pad_to_max_length=True, optim="adamw_torch", encode_shared_once=False,
                patch_matmul=False,
            ),
            ours,
            replace(cached, name="ours_cache"),
            replace(ours, name="ours_compile", torch_compile=True),
            replace(cached, name="ours_cache_compile", torch_compile=True),
            replace(cached, name="ours_cache_group8", group_by_image=8),
            replace(cached, name="ours_cache_group8_compile", group_by_image=8, torch_compile=True),
            # CLIP trains on large batches (more in-batch negatives); per-step CPU work (Python, kernel launches)
            # is the same at any batch, so a larger one spends a larger share of the step computing.
            replace(cached, name="ours_cache_b1024", batch_size=1024),
            replace(b1024_compiled, name="ours_cache_b1024_compile"),
            replace(cached, name="ours_cache_b2048_compile", batch_size=2048, torch_compile=True),
            # The whole model as one graph: embeddings, layer norms and projections fused too, fewer launches.
            replace(b1024_compiled, name="ours_cache_b1024_compile_full", compile_regions=False),
            # Ablations: each undoes one default of ours.
            replace(b1024_compiled, name="ours_cache_b1024_compile_conv", patch_matmul=False),
            replace(b1024_compiled, name="ours_cache_b1024_compile_cudnn",
                    sdpa_backends=("flash", "efficient", "math", "cudnn")),
            # Attention for short sequences (50 and ~22 tokens): flash's backward was 25 % of the compiled step.
            replace(b1024_compiled, name="ours_cache_b1024_compile_flash",
                    sdpa_backends=("flash", "efficient", "math")),
            replace(b1024_compiled, name="ours_cache_b1024_compile_math", sdpa_backends=("math",)),
            replace(b1024_compiled, name="ours_cache_b1024_compile_efficient", sdpa_backends=("efficient",)),
            # The finite-loss check as a host sync after the backward (`StepGuard`'s fallback path).
            replace(b1024_compiled, name="ours_cache_b1024_compile_hostsync", skip_on_device=False),
            # Less CPU per compiled call (a profiled step spent ~2 ms of CPU per compiled layer call).
            replace(b1024_compiled, name="ours_cache_b1024_compile_cppwrap", cpp_wrapper=True),
        )
    }
    names = args.variants or (
        ["hf_default", "ours"] + ["ours_cache"] * args.image_cache + ["ours_compile"] * args.torch_compile
    )
    unknown = set(names) - set(known)
    if unknown:
        raise ValueError(f"--variants: unknown {sorted(unknown)}; choose from {list(known)}")
    return [known[n] for n in names]


def run_variant(recipe: Recipe, args, data: dict, flops: FlopCounter) -> dict:
    """Train `warmup_steps + steps` steps of a fresh model under `recipe`; return throughput and FLOP rate."""
    # TF32 matmuls through torch's own switch (not TrainingArguments.tf32, whose spelling moves between versions);
    # set for every variant, since it is process-wide and the variants share the process.
    torch.set_float32_matmul_precision("high" if recipe.tf32 else "highest")
    if recipe.torch_compile:
        # Each variant compiles afresh: graphs and recompile budgets (cache_size_limit) left by an earlier variant's
        # model could otherwise make a later one fall back to eager without a word.
        torch._dynamo.reset()
    model = build_model(data["config"], recipe.attn, args.seed)
    if recipe.patch_matmul:
        patch_embedding_as_matmul(model)  # what load_model does for --patch_embedding_as_matmul (default)
    processor = data["processor"]
    affine = None
    if recipe.image_cache:
        from hnc_clip.data import pixel_affine, with_cached_images

        dataset = with_cached_images(data["pairs"], data["cache_dir"], processor.image_processor, as_uint8=True)
        affine = pixel_affine(processor.image_processor)
    else:
        dataset = with_images(data["pairs"], data["image_dir"], processor.image_processor)
    collator = (PaddedCollator if recipe.encode_shared_once else PerPairCollator)(
        processor.tokenizer, max_length=MAX_TEXT_LENGTH, pixel_affine=affine,
        pad_to_max_length=recipe.pad_to_max_length,
    )
    measured_end = args.warmup_steps + args.steps
    profiled = recipe.name in (args.profile or [])
    batch_size = recipe.batch_size or args.batch_size
    training_args = HncTrainingArguments(
        output_dir=os.path.join(data["work_dir"], f"out_{recipe.name}"),
        max_steps=measured_end + (args.profile_steps if profiled else 0),
        per_device_train_batch_size=batch_size,
        learning_rate=1e-5,
        bf16=recipe.bf16,
        optim=recipe.optim,
        torch_compile=recipe.torch_compile,
        group_by_image=recipe.group_by_image,
        sdpa_backends=None if recipe.sdpa_backends is None else list(recipe.sdpa_backends),
        compile_regions=recipe.compile_regions,
        torch_compile_backend=args.compile_backend if recipe.torch_compile else None,
        dataloader_num_workers=recipe.num_workers,
        dataloader_pin_memory=recipe.pin_memory,
        dataloader_persistent_workers=recipe.persistent_workers,
        dataloader_drop_last=True,  # a ragged last batch would change the shapes (and recompile)
        use_cpu=args.device == "cpu",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
    )
    w = args.warmup_steps
    timer = StepTimer(sync_at={w, measured_end})
    profiler = StepProfiler(measured_end, args.profile_steps, args.profile_dir, recipe.name) if profiled else None
    trainer = TimedHncTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[timer] + ([profiler] if profiler else []),
    )
    if not recipe.skip_on_device:
        trainer.step_guard._on_device = False  # ablation: decided here instead of from the optimizer
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    import torch._inductor.config as inductor_config

    with inductor_config.patch(cpp_wrapper=recipe.cpp_wrapper):  # process-wide: for this variant only
        trainer.train()
    total_s = time.perf_counter() - t0

    measured = trainer.shapes[w:measured_end]  # profiled steps, if any, come after and are not counted
    seconds = timer.ends[measured_end] - (timer.ends[w] if w > 0 else t0)
    samples = sum(b for b, _, _, _ in measured)
    step_flops = [flops(u, t, length) for _, u, t, length in measured]
    if timer.events:  # CUDA: device-side step durations, no per-step sync
        step_ms = timer.step_ms(max(w, 1), measured_end)
    else:  # CPU: every step's end was timed
        step_ms = 1000 * np.diff([timer.ends[i] for i in range(max(w, 1), measured_end + 1)])
    result = {
        **asdict(recipe),
        "batch_size": batch_size,
        "sdpa_backends": tuple(training_args.sdpa_backends),  # as resolved (None: the machine's default)
        "steps_measured": len(measured),
        "samples_per_s": samples / seconds,
        "step_ms_median": statistics.median(list(step_ms) or [1000 * seconds]),
        "tflops_per_s": sum(step_flops) / seconds / 1e12,
        "tflop_per_step": statistics.mean(step_flops) / 1e12,
        "caption_tokens_mean": statistics.mean(length for *_, length in measured),
        "images_per_pair": sum(u for _, u, _, _ in measured) / samples,  # < 1: pairs shared an image encoding
        "captions_per_pair": sum(t for _, _, t, _ in measured) / samples,  # < 2: repeated captions encoded once
        "total_s_with_warmup": total_s,
    }
    if args.device == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if args.peak_tflops:
        result["mfu"] = result["tflops_per_s"] / args.peak_tflops
    if profiler is not None and profiler.summary:
        result["profile"] = profiler.summary
    del trainer, model
    gc.collect()  # persistent workers exit with their DataLoader
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


# -- main ------------------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("tiny", "vitb32"), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="Measured steps (default: 10 on CPU, 20 on CUDA).")
    parser.add_argument("--warmup_steps", type=int, default=None, help="Unmeasured steps first (default 2 / 5).")
    parser.add_argument("--batch_size", type=int, default=None, help="Pairs per step (default 16 on CPU, 256 CUDA).")
    parser.add_argument("--num_workers", type=int, default=None, help="DataLoader workers of `ours` (2 / 16).")
    parser.add_argument("--cache_workers", type=int, default=None, help="DataLoader workers of *_cache* (2 / 4).")
    parser.add_argument("--torch_compile", action="store_true", help="Add the ours_compile variant.")
    parser.add_argument("--image_cache", action="store_true", help="Add the ours_cache variant.")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend of *_compile variants.")
    parser.add_argument("--variants", nargs="+", default=None, help="Run exactly these variants, in this order.")
    parser.add_argument("--pairs_per_image", type=int, default=8, help="≥ 8 for the *_group8 variants.")
    parser.add_argument("--profile", nargs="+", default=None, help="Variants to profile (after their measured steps).")
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument("--profile_dir", default=os.path.join(REPO, "bench", "results", "profile"))
    parser.add_argument(
        "--images", type=int, default=None,
        help="JPEGs to write (default: enough for the steps; 4096 on CUDA). Real HNC draws a random batch from 67k "
        "images, so its pairs rarely share an image; many images keep the random-batch variants that way.",
    )
    parser.add_argument(
        "--peak_tflops", type=float, default=None,
        help="Dense bf16 peak of the device for MFU (default: 989 for H100/H200, none otherwise).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (this machine has 2 cores).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="Temp data goes here (default: system temp dir).")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "train_throughput.json"))
    return parser


def prepare_data(args, work_dir: str, batch_size: int) -> dict:
    n_pairs = batch_size * (args.warmup_steps + args.steps)
    n_images = max(2, math.ceil(n_pairs / args.pairs_per_image), args.images or 0)
    t0 = time.perf_counter()
    image_dir = os.path.join(work_dir, "images")
    workers = max(1, min(args.num_workers, os.cpu_count() or 1))
    names = write_jpegs(image_dir, n_images, seed=args.seed, workers=workers)
    texts = write_hnc_json(os.path.join(work_dir, "hnc.json"), names, args.pairs_per_image, args.seed)
    pairs = load_hnc_pairs(os.path.join(work_dir, "hnc.json"), cache_dir=os.path.join(work_dir, "hf_cache"))
    tokenizer = build_word_tokenizer(words_of(texts), model_max_length=MAX_TEXT_LENGTH)
    processor = CLIPProcessor(image_processor=build_image_processor(224), tokenizer=tokenizer)
    jpeg_kb = statistics.mean(os.path.getsize(os.path.join(image_dir, n)) for n in names) / 1024
    data = {
        "work_dir": work_dir,
        "image_dir": image_dir,
        "pairs": pairs,
        "processor": processor,
        "config": clip_config(args.model, len(tokenizer)),
        "info": {
            "images": n_images,
            "pairs": len(pairs),
            "jpeg_kb_mean": jpeg_kb,
            "size": list(GQA_SIZE),
            "write_s": time.perf_counter() - t0,
            "image_backend": type(processor.image_processor).__name__,
        },
    }
    print(f"data: {n_images} JPEGs {GQA_SIZE[0]}x{GQA_SIZE[1]} (~{jpeg_kb:.0f} KB), {len(pairs):,} pairs", flush=True)
    return data


def build_cache(args, data: dict) -> None:
    from hnc_clip.data.image_cache import prepare

    t0 = time.perf_counter()
    data["cache_dir"] = os.path.join(data["work_dir"], "image_cache")
    prepare(
        data["image_dir"],
        data["cache_dir"],
        data["processor"].image_processor,
        num_workers=max(1, args.num_workers),
        progress=False,
    )
    data["info"]["cache_build_s"] = time.perf_counter() - t0
    data["info"]["cache_build_images_per_s"] = data["info"]["images"] / data["info"]["cache_build_s"]


def print_table(rows: list[dict]) -> None:
    ok = [r for r in rows if "samples_per_s" in r]
    base = next((r for r in ok if r["name"] == "hf_default"), ok[0] if ok else None)
    print(f"speedup: vs {base['name'] if base else '-'}")
    print(
        f"{'variant':<26} {'batch':>5} {'samples/s':>10} {'speedup':>8} {'step ms':>8} {'TFLOP/s':>8} {'MFU':>6} "
        f"{'TFLOP/step':>10} {'tokens':>6} {'img/pair':>8} {'peak GB':>7}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<26} error: {r['error'].splitlines()[0][:160]}")  # in full in the JSON
            continue
        speedup = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        print(
            f"{r['name']:<26} {r['batch_size']:>5} {r['samples_per_s']:>10.1f} {speedup:>7.2f}x "
            f"{r['step_ms_median']:>8.1f} "
            f"{r['tflops_per_s']:>8.3f} {r.get('mfu', float('nan')):>6.1%} {r['tflop_per_step']:>10.4f} "
            f"{r['caption_tokens_mean']:>6.1f} {r['images_per_pair']:>8.2f} "
            f"{r.get('peak_memory_gb', float('nan')):>7.2f}"
        )
    for r in ok:
        if "profile" in r:
            p = r["profile"]
            print(
                f"profile {r['name']}: per step {p['wall_ms_per_step']:.1f} ms wall, "
                f"{p['gpu_kernel_ms_per_step']:.1f} ms GPU kernels, {p['kernel_launches_per_step']:.0f} launches, "
                f"{p['cpu_wait_on_device_ms_per_step']:.1f} ms CPU waiting on the device, "
                f"{p['dataloader_next_ms_per_step']:.1f} ms in the data loader, "
                f"{p['optimizer_step_ms_per_step']:.1f} ms optimizer, {p['host_syncs_per_step']:.1f} host syncs "
                f"{p['host_syncs_by_line']}"
            )


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    args.steps = args.steps or (20 if cuda else 10)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (5 if cuda else 2)
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.images = args.images if args.images is not None else (4096 if cuda else None)
    if args.peak_tflops is None and cuda and any(k in torch.cuda.get_device_name(0) for k in ("H100", "H200")):
        args.peak_tflops = 989.0  # dense bf16 (SXM), the usual MFU denominator
    args.num_workers = args.num_workers if args.num_workers is not None else (16 if cuda else 2)
    args.cache_workers = args.cache_workers if args.cache_workers is not None else (4 if cuda else 2)
    if not cuda:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()

    work_dir = tempfile.mkdtemp(prefix="train_throughput_", dir=args.work_dir)
    machine = {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu x{os.cpu_count()} (torch threads {args.threads})",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    result: dict = {"machine": machine, "args": vars(args), "flops": "counted: FlopCounterMode, fwd+bwd, meta device"}
    rows: list[dict] = []
    try:
        todo = recipes(args)
        data = prepare_data(args, work_dir, max(r.batch_size or args.batch_size for r in todo))
        result["data"] = data["info"]
        if any(r.image_cache for r in todo):
            build_cache(args, data)
        flops = FlopCounter(data["config"])
        for recipe in todo:
            print(f"-- {recipe.name}: {asdict(recipe)}", flush=True)
            try:
                rows.append(run_variant(recipe, args, data, flops))
            except Exception as err:  # one broken variant (e.g. compile) must not lose the others' numbers
                logging.exception(f"variant {recipe.name} failed")
                rows.append({**asdict(recipe), "error": f"{type(err).__name__}: {err}"})
            result["variants"] = rows
            _write(args.output, result)  # after each variant: a timeout later still leaves these
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(
        f"\n{args.model} on {machine['device']}, batch {args.batch_size}, {args.steps} measured steps "
        f"after {args.warmup_steps} warm-up"
    )
    print_table(rows)
    print(f"wrote {args.output}")
    return result


def _write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


if __name__ == "__main__":
    main()
