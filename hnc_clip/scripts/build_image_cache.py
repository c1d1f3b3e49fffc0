"""Build the pre-resized image cache (`hnc_clip.data.image_cache`) that training reads with `--image_cache_dir`.

    hnc-clip-image-cache --image_dir gqa/images --output_dir gqa/cache-224 \
        --model_name_or_path openai/clip-vit-base-patch32 --hnc_file hnc_clean_strict_train.json --num_workers 16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hnc_clip.callbacks import Preempted, SaveOnSigterm
from hnc_clip.data.image_cache import list_hnc_images, prepare
from hnc_clip.data.images import MAX_IMAGE_PIXELS
from hnc_clip.errors import RunAbortedError
from hnc_clip.output_dir import claim_folder


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnc-clip-image-cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_dir", required=True, help="Folder of the images (GQA: `<image_id>.jpg`).")
    parser.add_argument("--output_dir", required=True, help="Cache directory to write (index.json + pixels-*.npy).")
    parser.add_argument(
        "--model_name_or_path", required=True, help="Model or processor whose image processor sets size and crop."
    )
    parser.add_argument("--hnc_file", default=None, help="Cache only the images this HNC file uses (default: all).")
    parser.add_argument("--cache_dir", default=None, help="`datasets` cache for the HNC conversion (as training).")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="Worker processes.")
    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help="Record as failed an image of more pixels (as training's flag).")  # fmt: skip
    return parser


def main(args: argparse.Namespace) -> dict:
    """Write the cache for parsed `args` (`make_parser().parse_args(argv)`); return its index."""
    from transformers import AutoImageProcessor

    # Claimed first: a rebuild replaces the cache atomically (`prepare`), two builds at once would only waste each
    # other's work (the HNC conversion included).
    with claim_folder(args.output_dir, "hnc-clip-image-cache"):
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
        files = list_hnc_images(args.hnc_file, args.cache_dir) if args.hnc_file else None
        index = prepare(args.image_dir, args.output_dir, processor, files, num_workers=args.num_workers,
                        max_pixels=args.max_image_pixels)  # fmt: skip
    print(json.dumps({"cached": len(index["files"]), "failed": len(index["failed"]), "shape": index["shape"]}))
    return index


def cli(argv: list[str] | None = None) -> int:
    """`hnc-clip-image-cache`: exit status 0 once the outputs are written (errors raise); 143 on SIGTERM, after
    stopping the workers and removing the half-written pixels (the previous cache, if any, stays valid)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    args = make_parser().parse_args(argv)
    sigterm = SaveOnSigterm(save=False).install()
    try:
        main(args)
    except Preempted:
        return 143
    except RunAbortedError as err:  # another build writes to --output_dir
        print(f"hnc-clip-image-cache: error: {err}", file=sys.stderr)
        return 1
    finally:
        sigterm.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
