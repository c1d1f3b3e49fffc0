"""Benchmark: images/s of the image path, per DataLoader worker: PIL + CLIP processor vs image cache vs GPU decode.

    python bench/data_pipeline.py                                    # CPU: ImageJoin vs CachedImageJoin
    python bench/data_pipeline.py --device cuda --num_workers 16     # + nvJPEG decode/resize on the GPU, + 16 workers

On synthetic GQA-sized JPEGs (500×375, photo-like, ~45 KB; the files stay in the page cache, as GQA's 20 GB do on
a training machine). Each path turns a batch of `image_file` names into normalised [3, 224, 224] float tensors:

    pil          `hnc_clip.data.ImageJoin`: PIL decode + the CLIP image processor (its backend: PIL here,
                 torchvision where installed), what training does per pair
    cache        `hnc_clip.data.image_cache.CachedImageJoin`: a row of the pre-resized uint8 cache, normalised
    gpu_decode   `torchvision.io.decode_jpeg(device="cuda")` on a batch + resize/crop/normalise on the GPU
                 (only with --device cuda and torchvision); one process, the whole GPU — not per worker

"per worker" rows run in this process with one torch thread, as a DataLoader worker does; `--num_workers N` adds
rows through a real `torch.utils.data.DataLoader` with N workers over a `datasets` dataset (`with_transform`).
Training needs batch_size × steps/s images/s; the per-worker rate tells how many workers that takes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from profiling import REPO
from synthetic_data import write_jpegs

from hnc_clip.tiny import build_image_processor


def _names(files: list[str], n: int) -> list[str]:
    return [files[i % len(files)] for i in range(n)]


def time_transform(transform, files: list[str], n_images: int, batch: int) -> dict:
    """Images/s of `transform` over `n_images` names (cycling through `files`), after one warm-up batch."""
    transform({"image_file": files[:batch]})
    names = _names(files, n_images)
    t0 = time.perf_counter()
    for i in range(0, len(names), batch):
        out = transform({"image_file": names[i : i + batch]})["pixel_values"]
        assert all(p is not None for p in out)
    seconds = time.perf_counter() - t0
    return {"images": len(names), "seconds": seconds, "images_per_s": len(names) / seconds}


def time_dataloader(transform, files: list[str], n_images: int, batch: int, workers: int) -> dict:
    """Images/s through a DataLoader with `workers` processes over a `datasets` dataset, as training reads it."""
    import datasets

    ds = datasets.Dataset.from_dict({"image_file": _names(files, n_images)}).with_transform(transform)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        collate_fn=lambda rows: torch.stack([r["pixel_values"] for r in rows]),
        persistent_workers=False,
        pin_memory=False,
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = sum(x.shape[0] for x in it)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def gpu_decode_transform(image_dir: str, processor):
    """A batch of names → decode on the GPU (nvJPEG) → resize/crop/normalise on the GPU, as the processor would."""
    import torchvision
    import torchvision.transforms.v2.functional as tvF

    from hnc_clip.data.image_cache import crop_hw

    h, w = crop_hw(processor)
    edge = processor.size["shortest_edge"] if isinstance(processor.size, dict) else processor.size.shortest_edge
    mean = torch.tensor(processor.image_mean, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device="cuda").view(1, 3, 1, 1)

    def transform(batch: dict) -> dict:
        data = [torchvision.io.read_file(os.path.join(image_dir, n)) for n in batch["image_file"]]
        images = torchvision.io.decode_jpeg(data, device="cuda", mode=torchvision.io.ImageReadMode.RGB)
        out = []
        for img in images:  # GQA sizes vary, so resize one by one (all share the size here, but don't rely on it)
            img = tvF.resize(img, [edge], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
            out.append(tvF.center_crop(img, [h, w]))
        pixels = (torch.stack(out).float() * float(processor.rescale_factor) - mean) / std
        torch.cuda.synchronize()
        batch["pixel_values"] = list(pixels)
        return batch

    return transform


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--files", type=int, default=128, help="Distinct JPEGs written (then cycled through).")
    parser.add_argument("--images", type=int, default=None, help="Images per measurement (default 256 / 2048).")
    parser.add_argument("--batch", type=int, default=32, help="Names per transform call (= a DataLoader batch).")
    parser.add_argument("--num_workers", type=int, default=0, help="Also measure a DataLoader with N workers.")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "data_pipeline.json"))
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    cuda = args.device == "cuda"
    args.images = args.images or (2048 if cuda else 256)
    torch.set_num_threads(1)  # what a DataLoader worker gets

    from hnc_clip.data import ImageJoin
    from hnc_clip.data.image_cache import CachedImageJoin, prepare

    work_dir = tempfile.mkdtemp(prefix="data_pipeline_", dir=args.work_dir)
    rows: list[dict] = []
    info: dict = {}
    try:
        image_dir, cache_dir = os.path.join(work_dir, "images"), os.path.join(work_dir, "cache")
        files = write_jpegs(image_dir, args.files)
        info["jpeg_kb_mean"] = np.mean([os.path.getsize(os.path.join(image_dir, f)) for f in files]) / 1024
        processor = build_image_processor(args.image_size)
        info["image_processor"] = type(processor).__name__
        t0 = time.perf_counter()
        prepare(image_dir, cache_dir, processor, files, num_workers=max(1, args.num_workers), progress=False)
        info["cache_build_s"] = time.perf_counter() - t0
        info["cache_build_workers"] = max(1, args.num_workers)

        paths = {"pil": ImageJoin(image_dir, processor), "cache": CachedImageJoin(cache_dir, processor)}
        for name, transform in paths.items():
            rows.append(
                {
                    "path": name,
                    "mode": "per worker (1 thread)",
                    **time_transform(transform, files, args.images, args.batch),
                }
            )
            print(rows[-1], flush=True)
        if cuda:
            try:
                gpu = gpu_decode_transform(image_dir, processor)
                row = {
                    "path": "gpu_decode",
                    "mode": "one process, GPU",
                    **time_transform(gpu, files, args.images, args.batch),
                }
                ref = torch.stack(ImageJoin(image_dir, processor)({"image_file": files[:8]})["pixel_values"])
                got = torch.stack(gpu({"image_file": files[:8]})["pixel_values"]).cpu()
                row["max_abs_diff_vs_pil"] = float((got - ref).abs().max())  # nvJPEG's IDCT ≠ libjpeg's, ~1–3/255
                rows.append(row)
            except Exception as err:  # no torchvision / no nvJPEG: say so, keep the CPU rows
                rows.append({"path": "gpu_decode", "error": f"{type(err).__name__}: {err}"})
            print(rows[-1], flush=True)
        if args.num_workers > 0:
            for name, transform in paths.items():
                n = max(args.images, 8 * args.batch * args.num_workers)
                rows.append(
                    {
                        "path": name,
                        "mode": f"DataLoader, {args.num_workers} workers",
                        **time_dataloader(transform, files, n, args.batch, args.num_workers),
                    }
                )
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    print(f"\n{'path':<12} {'mode':<26} {'images/s':>10}")
    for r in rows:
        print(
            f"{r['path']:<12} {r.get('mode', ''):<26} "
            + (f"{r['images_per_s']:>10.0f}" if "images_per_s" in r else r.get("error", ""))
        )
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    result = {
        "machine": {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__},
        "info": info,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
