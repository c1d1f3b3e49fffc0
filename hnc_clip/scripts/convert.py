"""Convert an OpenAI-format or open_clip CLIP checkpoint to a Hugging Face `CLIPModel` + `CLIPProcessor` folder.

    hnc-clip-convert --checkpoint negclip.pt --output_dir baselines/negclip --allow_pickle

The converted folder loads with `CLIPModel.from_pretrained` and evaluates side by side with `hnc-clip-eval --model`
(which also takes the `.pt` directly). Library code: `hnc_clip.evaluation.convert`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from hnc_clip.errors import RunAbortedError

# Shared with hnc-clip-eval's flag: what --allow_pickle lets run.
ALLOW_PICKLE_HELP = (
    "Allow loading a pickled .pt/.pth/.bin/.ckpt: only for files you trust. An OpenAI TorchScript (JIT) archive is "
    "loaded with torch.jit.load, which runs the archive's own code; other pickles go through torch's weights-only "
    "unpickler."
)


@dataclass
class ConvertArguments:
    checkpoint: str = field(metadata={"help": "OpenAI JIT/.pt state dict, open_clip .pt checkpoint or .safetensors."})
    output_dir: str = field(metadata={"help": "Folder for the HF CLIPModel + CLIPProcessor."})
    allow_pickle: bool = field(
        default=False,
        metadata={"help": ALLOW_PICKLE_HELP},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the model already in --output_dir (refused without this flag)."}
    )
    activation: str = field(
        default="quick_gelu",
        metadata={"help": "quick_gelu for OpenAI-initialised models (NegCLIP, CE-CLIP, FSC-CLIP), gelu otherwise."},
    )
    bpe_path: str | None = field(
        default=None, metadata={"help": "bpe_simple_vocab_16e6.txt.gz; default: the one in an installed open_clip."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Hub tokenizer to use instead (e.g. openai/clip-vit-base-patch32)."}
    )

    def __post_init__(self):
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"--activation: quick_gelu or gelu, got {self.activation!r}")


def make_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser(ConvertArguments, prog="hnc-clip-convert")


def main(args: ConvertArguments) -> str:
    from hnc_clip.evaluation.convert import convert_checkpoint
    from hnc_clip.output_dir import MODEL_FILES, claim_folder

    with claim_folder(args.output_dir, "hnc-clip-convert", owned=MODEL_FILES, overwrite=args.overwrite_output_dir):
        model, _ = convert_checkpoint(
            args.checkpoint, args.output_dir, args.allow_pickle, args.activation, args.bpe_path, args.tokenizer
        )
    c = model.config
    logging.getLogger("hnc_clip.convert").info(
        "wrote %s: ViT %d layers x %d, patch %d, %d px; text %d layers x %d; projection %d",
        args.output_dir, c.vision_config.num_hidden_layers, c.vision_config.hidden_size, c.vision_config.patch_size,
        c.vision_config.image_size, c.text_config.num_hidden_layers, c.text_config.hidden_size, c.projection_dim,
    )  # fmt: skip
    return args.output_dir


def cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = make_parser().parse_args_into_dataclasses(args=argv)
    try:
        main(args)
    except RunAbortedError as err:  # the folder holds another model, or another run writes to it
        print(f"hnc-clip-convert: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
