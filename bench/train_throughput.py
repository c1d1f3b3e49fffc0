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
    ours_cache    ours + pre-resized image cache (`hnc_clip.image_cache`; its build time is reported apart)
    ours_compile  ours + --torch_compile (compile time falls in the warm-up steps)

Throughput counts steps after `--warmup_steps`: samples/s = pairs trained / time between the end of the last
warm-up step and the end of the last step (data loading included; CUDA synchronised at each step end).
FLOPs are **counted**, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of
the same `CLIPConfig` on the meta device (no compute) at each step's exact shapes (B images, 2B captions of the
step's padded length). TFLOP/s therefore counts padding tokens as work: `hf_default` does more FLOPs per sample.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, TrainerCallback  # noqa: E402

from hnc_clip.args import HncTrainingArguments  # noqa: E402
from hnc_clip.data import HncCollator, load_hnc_pairs, with_images  # noqa: E402
from hnc_clip.modeling import patch_embedding_as_matmul  # noqa: E402
from hnc_clip.tiny import EOS_ID, build_image_processor, build_word_tokenizer, words_of  # noqa: E402
from hnc_clip.trainer import HncTrainer  # noqa: E402

GQA_SIZE = (500, 375)  # (width, height) of a typical GQA image
MAX_TEXT_LENGTH = 77

# -- synthetic data ------------------------------------------------------------------------------------------------

OBJECTS = "banana straw plate cup table chair man woman dog cat horse car tree building window door shirt hat".split()
ATTRIBUTES = "yellow red blue green white black brown small large wooden metal tall short open closed".split()
RELATIONS = ("to the left of", "to the right of", "on top of", "under", "behind", "in front of", "next to")


def caption(rng: random.Random) -> str:
    """An HNC-like caption of 7–22 words (HNC's are ~10–20 tokens): a relation, optionally a second clause."""
    text = f"the {rng.choice(ATTRIBUTES)} {rng.choice(OBJECTS)} is {rng.choice(RELATIONS)} the {rng.choice(OBJECTS)}"
    if rng.random() < 0.4:
        text += f" and the {rng.choice(OBJECTS)} is {rng.choice(RELATIONS)} the {rng.choice(OBJECTS)}"
    return text + "."


def photo_like(rng: np.random.Generator, size: tuple[int, int] = GQA_SIZE) -> Image.Image:
    """Smooth colour fields + mild noise: decodes like a photo (a pure-noise JPEG is ~4× larger and slower)."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_jpeg_range(image_dir: str, start: int, stop: int, size: tuple[int, int], seed: int) -> None:
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        photo_like(rng, size).save(os.path.join(image_dir, f"{2_300_000 + i}.jpg"), quality=90)


def write_jpegs(
    image_dir: str, n: int, size: tuple[int, int] = GQA_SIZE, seed: int = 0, workers: int = 1
) -> list[str]:
    """`n` JPEGs (quality 90, as GQA's) named like GQA (`<image_id>.jpg`), in `workers` processes; returns names."""
    os.makedirs(image_dir, exist_ok=True)
    bounds = [n * k // workers for k in range(workers + 1)]
    jobs = [(image_dir, a, b, size, seed) for a, b in zip(bounds, bounds[1:]) if b > a]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            pool.starmap(_write_jpeg_range, jobs)
    else:
        for job in jobs:
            _write_jpeg_range(*job)
    return [f"{2_300_000 + i}.jpg" for i in range(n)]


def write_hnc_json(path: str, image_files: list[str], pairs_per_image: int, seed: int = 0) -> list[str]:
    """A train-schema HNC file (`{image_id: {"captions": {id: {...}}}}`), one entry at a time; returns all texts."""
    rng = random.Random(seed)
    texts = []
    with open(path, "w") as f:
        f.write("{")
        for i, name in enumerate(image_files):
            captions = {}
            for k in range(pairs_per_image):
                pos, neg = caption(rng), caption(rng)
                captions[str(2 * k)] = {"caption": pos, "label": 1, "type": "relation_subj", "cpt_p_id": None}
                captions[str(2 * k + 1)] = {"caption": neg, "label": 0, "type": "relation_subj", "cpt_p_id": 2 * k}
                texts += [pos, neg]
            f.write(
                ("," if i else "") + json.dumps(os.path.splitext(name)[0]) + ":" + json.dumps({"captions": captions})
            )
        f.write("}")
    return texts


# -- model ---------------------------------------------------------------------------------------------------------


def clip_config(model: str, vocab_size: int) -> CLIPConfig:
    """`vitb32`: `CLIPConfig()` defaults (ViT-B/32 sizes); `tiny`: a small CLIP with the same 224-pixel data path."""
    # Our word tokenizer puts EOS at id 3; with eos_token_id == 2 CLIP would pool at argmax(input_ids) instead.
    special = dict(eos_token_id=EOS_ID, bos_token_id=2, pad_token_id=0)
    if model == "vitb32":
        return CLIPConfig(text_config=dict(max_position_embeddings=MAX_TEXT_LENGTH, **special))
    if model == "tiny":
        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=MAX_TEXT_LENGTH,
                **special,
            ),
            vision_config=dict(
                image_size=224,
                patch_size=32,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=2,
            ),
            projection_dim=64,
        )
    raise ValueError(f"--model must be tiny or vitb32, got {model!r}")


def build_model(config: CLIPConfig, attn: str, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel._from_config(config, attn_implementation=attn)


class FlopCounter:
    """FLOPs of one training step (forward + backward) for U images and T captions of length L:
    U·f_image + T·f_text(L), each counted once on the meta device (a tower's FLOPs are linear in its batch) and
    memoised. U and T are what the step really encodes: the collator encodes each distinct image and caption of a
    batch once, so U ≤ B pairs and T ≤ 2B. The U×T logit matmul (< 0.01 % of a step) is left out."""

    def __init__(self, config: CLIPConfig):
        self.config = config
        self.per_image: int | None = None
        self.per_caption: dict[int, int] = {}
        self.model = None

    def _count(self, fn) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        if self.model is None:
            with torch.device("meta"):
                # eager: its bmm's count the attention FLOPs on meta; the kernel does not change the math.
                self.model = CLIPModel._from_config(self.config, attn_implementation="eager")
        counter = FlopCounterMode(display=False)
        with counter:
            fn(self.model).pooler_output.sum().backward()
        return counter.get_total_flops()

    def __call__(self, images: int, texts: int, length: int) -> int:
        if self.per_image is None:
            size = self.config.vision_config.image_size
            pixels = torch.zeros(1, 3, size, size, device="meta")
            self.per_image = self._count(lambda m: m.get_image_features(pixel_values=pixels))
        if length not in self.per_caption:
            # No attention_mask: masking adds no matmul FLOPs, and building it calls .item() (not on meta).
            ids = torch.full((1, length), 5, dtype=torch.long, device="meta")
            self.per_caption[length] = self._count(lambda m: m.get_text_features(input_ids=ids))
        return images * self.per_image + texts * self.per_caption[length]


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


class StepTimer(TrainerCallback):
    """Each optimizer step's end as a device event (CUDA) and a wall time. The device is synchronised only at
    `sync_at` steps (the measured window's two ends), not at every step: a per-step sync would stop the CPU
    from queueing the next step while the GPU finishes this one, which training never does."""

    def __init__(self, sync_at: set[int]):
        self.sync_at, self.ends, self.events = sync_at, {}, []

    def on_step_end(self, args, state, control, **kwargs):
        cuda = torch.cuda.is_available() and args.device.type == "cuda"
        if cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()
        if state.global_step in self.sync_at or not cuda:
            if cuda:
                torch.cuda.synchronize()
            self.ends[state.global_step] = time.perf_counter()

    def step_ms(self, first: int, last: int) -> list[float]:
        """Durations of steps first+1..last (1-based global steps), from device events on CUDA."""
        if self.events:
            torch.cuda.synchronize()
            return [self.events[i - 1].elapsed_time(self.events[i]) for i in range(first, last)]
        return []


class StepProfiler(TrainerCallback):
    """`torch.profiler` over steps [start, start + n) (after the measured ones, so they are not slowed): writes
    the op table (by self device time on CUDA, self CPU time otherwise), a gzipped Chrome trace and a summary of
    where a step's time goes (`summarize_profile`). On CUDA it also sets `torch.cuda.set_sync_debug_mode("warn")`
    for those steps and counts each host sync by the Python line that caused it."""

    def __init__(self, start: int, n: int, out_dir: str, name: str):
        self.start, self.n, self.out_dir, self.name, self.prof = start, n, out_dir, name, None
        self.summary: dict = {}

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.start and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            cuda = torch.cuda.is_available()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            if cuda:
                torch.cuda.synchronize()
            self.prof = profile(activities=activities, record_shapes=False)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
            self.warnings = warnings.catch_warnings(record=True)
            self.caught = self.warnings.__enter__()
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is not None and state.global_step >= self.start + self.n:
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
            wall_ms = 1000 * (time.perf_counter() - self.t0)
            self.warnings.__exit__(None, None, None)
            self.prof.__exit__(None, None, None)
            os.makedirs(self.out_dir, exist_ok=True)
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            averages = self.prof.key_averages()  # built once: it walks every recorded event
            with open(os.path.join(self.out_dir, f"{self.name}_ops.txt"), "w") as f:
                f.write(averages.table(sort_by=sort, row_limit=40))
            self.prof.export_chrome_trace(os.path.join(self.out_dir, f"{self.name}_trace.json.gz"))
            syncs = collections.Counter(
                f"{os.path.relpath(w.filename, REPO) if w.filename.startswith(REPO) else w.filename}:{w.lineno}"
                for w in self.caught
                if "synchroniz" in str(w.message)
            )
            self.summary = summarize_profile(averages, self.n, wall_ms, syncs)
            with open(os.path.join(self.out_dir, f"{self.name}_summary.json"), "w") as f:
                json.dump(self.summary, f, indent=1)
            self.prof = None


def summarize_profile(averages, steps: int, wall_ms: float, syncs: collections.Counter) -> dict:
    """Per step: wall time, GPU kernel time (sum of kernel durations: compute the GPU did), kernel launches, and
    the CPU time spent waiting on the device (synchronise calls, blocking copies), in the data loader and in the
    optimizer; plus the host syncs by source line and the 20 costliest GPU kernels (none on CPU). Wall ≫ GPU
    kernel time means the GPU waits for the CPU. `averages`: the profile's `key_averages()`."""

    from torch.autograd import DeviceType

    def cpu_ms(match) -> float:
        return sum(e.cpu_time_total for e in averages if match(e.key)) / 1000 / steps

    device_rows = [  # kernels and copies, as the op table's own total counts them
        e for e in averages
        if getattr(e, "device_type", None) == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]
    top = sorted(device_rows, key=lambda e: -e.self_device_time_total)[:20]
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    waits = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms / steps,
        "gpu_kernel_ms_per_step": sum(e.self_device_time_total for e in device_rows) / 1000 / steps,
        "kernel_launches_per_step": launches / steps,
        "cpu_wait_on_device_ms_per_step": cpu_ms(lambda k: k in waits),
        "dataloader_next_ms_per_step": cpu_ms(lambda k: k.startswith("enumerate(DataLoader)")),
        "optimizer_step_ms_per_step": cpu_ms(lambda k: k.startswith("Optimizer.step#")),
        "host_syncs_per_step": sum(syncs.values()) / steps,
        "host_syncs_by_line": dict(syncs.most_common(20)),
        # name (cut at 120 characters) -> [ms per step, calls per step]
        "top_gpu_kernels": {e.key[:120]: [e.self_device_time_total / 1000 / steps, e.count / steps] for e in top},
    }


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
    image_cache: bool = False  # uint8 rows from `hnc_clip.image_cache`, normalised on the device (as training does)
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
            # (Since run 9 the GPU default is efficient + math; `_flash` is the default before it.)
            replace(b1024_compiled, name="ours_cache_b1024_compile_flash",
                    sdpa_backends=("flash", "efficient", "math")),
            replace(b1024_compiled, name="ours_cache_b1024_compile_math", sdpa_backends=("math",)),
            replace(b1024_compiled, name="ours_cache_b1024_compile_efficient", sdpa_backends=("efficient",)),
            # The finite-loss check as a host sync after the backward (as before the fourth session).
            replace(b1024_compiled, name="ours_cache_b1024_compile_hostsync", skip_on_device=False),
            # Less CPU per compiled call: the run-7 trace spent ~2 ms of CPU per compiled layer call.
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
        from hnc_clip.image_cache import pixel_affine, with_cached_images

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
    from hnc_clip.image_cache import prepare

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
