"""OpenAI-format and open_clip CLIP checkpoints -> Hugging Face `CLIPModel` + `CLIPProcessor`.

The published compositionality baselines (NegCLIP, CE-CLIP, FSC-CLIP, DAC, ...) ship `.pt` files: an OpenAI JIT
archive, a bare OpenAI/open_clip state dict (`visual.conv1.weight`, `transformer.resblocks.N...`), or an open_clip
training checkpoint `{"epoch", "state_dict": {"module.visual...": ...}, ...}`. All three are pickles, which can run
code when loaded: `load_checkpoint` refuses them unless `allow_pickle=True` (`--allow_pickle`), and then reads them
with `torch.jit.load` (OpenAI's archives) or torch's weights-only unpickler, never a full `pickle.load`. Note that
`torch.jit.load` runs the archive's own code (TorchScript, the serialized model's methods and its class setup): a
JIT archive is as trusted as a pickle, which is why it needs the flag too.
`open_clip_model.safetensors` files need no such permission.

The architecture is read off the tensors as OpenAI's `build_model` does (widths, layer counts, patch size, context
length); heads are width / 64 as in OpenAI's and open_clip's ViT configs. Only ViT image towers exist in HF CLIP, so
ResNet checkpoints are refused. OpenAI-initialised models use QuickGELU (`activation="quick_gelu"`, the default);
open_clip models trained from scratch without `-quickgelu` use GELU.

The tokenizer is OpenAI's BPE (`bpe_simple_vocab_16e6.txt.gz`, shipped in the `open_clip_torch` and OpenAI `clip`
packages): `clip_tokenizer(bpe_path)` builds a `CLIPTokenizer` from it that tokenizes as open_clip does.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import os
import re

import torch

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class PickleRefused(ValueError):
    """A pickled checkpoint without `allow_pickle`."""


def is_checkpoint_file(path: str) -> bool:
    return os.path.isfile(path) and (path.endswith(PICKLE_SUFFIXES) or path.endswith(".safetensors"))


def _unwrap(obj) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI/open_clip checkpoint: `state_dict` of a training checkpoint, DDP `module.` removed."""
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"not a CLIP state dict: got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def load_checkpoint(path: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in `path` (`.safetensors`, or a pickle with `allow_pickle`)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return _unwrap(load_file(path))
    if not allow_pickle:
        raise PickleRefused(
            f"{path} is a pickle (.pt/.pth/.bin): loading it can run arbitrary code. Pass --allow_pickle if you "
            "trust its source (e.g. a paper's released checkpoint)."
        )
    try:
        return _unwrap(torch.jit.load(path, map_location="cpu"))  # OpenAI's released JIT archives
    except RuntimeError:
        pass
    # torch's restricted unpickler only; argparse Namespaces (the `args` some training checkpoints keep) allowed too
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return _unwrap(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # the weights-only unpickler's refusal (UnpicklingError) or a broken file
            raise ValueError(
                f"{path} holds objects beyond tensors that torch's weights-only loader refuses ({err}); load it in a "
                "trusted session and re-save `checkpoint['state_dict']` with torch.save"
            ) from err


def _count_layers(sd: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pattern.match(k))})


def infer_config(sd: dict[str, torch.Tensor], activation: str = "quick_gelu"):
    """A `CLIPConfig` for an OpenAI-layout ViT state dict, read off its tensor shapes (OpenAI's `build_model`)."""
    from transformers import CLIPConfig

    if "visual.conv1.weight" not in sd:
        raise ValueError("only ViT image towers convert to HF CLIP (no visual.conv1.weight: a ResNet checkpoint?)")
    read = ("text_projection", "visual.proj", "token_embedding.weight", "visual.positional_embedding",
            "ln_final.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight",
            "visual.transformer.resblocks.0.mlp.c_fc.weight")  # fmt: skip
    missing = [k for k in read if k not in sd]
    if missing:
        raise ValueError(f"not an OpenAI/open_clip CLIP state dict: missing {missing}")
    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(
        text_config=dict(
            vocab_size=sd["token_embedding.weight"].shape[0],
            hidden_size=text_width,
            intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_layers(sd, "transformer.resblocks."),
            num_attention_heads=text_width // 64 or 1,
            max_position_embeddings=sd["positional_embedding"].shape[0],
            hidden_act=activation,
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_layers(sd, "visual.transformer.resblocks."),
            num_attention_heads=vision_width // 64 or 1,
            image_size=patch * grid,
            patch_size=patch,
            hidden_act=activation,
            layer_norm_eps=1e-5,
        ),
        projection_dim=sd["text_projection"].shape[1],
    )


def _blocks(sd: dict, src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        q, k, v = sd[s + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = sd[s + "attn.in_proj_bias"].chunk(3, dim=0)
        out.update(
            {
                d + "self_attn.q_proj.weight": q,
                d + "self_attn.k_proj.weight": k,
                d + "self_attn.v_proj.weight": v,
                d + "self_attn.q_proj.bias": qb,
                d + "self_attn.k_proj.bias": kb,
                d + "self_attn.v_proj.bias": vb,
                d + "self_attn.out_proj.weight": sd[s + "attn.out_proj.weight"],
                d + "self_attn.out_proj.bias": sd[s + "attn.out_proj.bias"],
                d + "layer_norm1.weight": sd[s + "ln_1.weight"],
                d + "layer_norm1.bias": sd[s + "ln_1.bias"],
                d + "layer_norm2.weight": sd[s + "ln_2.weight"],
                d + "layer_norm2.bias": sd[s + "ln_2.bias"],
                d + "mlp.fc1.weight": sd[s + "mlp.c_fc.weight"],
                d + "mlp.fc1.bias": sd[s + "mlp.c_fc.bias"],
                d + "mlp.fc2.weight": sd[s + "mlp.c_proj.weight"],
                d + "mlp.fc2.bias": sd[s + "mlp.c_proj.bias"],
            }
        )
    return out


def convert_state_dict(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """OpenAI-layout tensors -> `CLIPModel` tensors (fused qkv split, projections transposed)."""
    tv, vv = "text_model.", "vision_model."
    out = {
        tv + "embeddings.token_embedding.weight": sd["token_embedding.weight"],
        tv + "embeddings.position_embedding.weight": sd["positional_embedding"],
        tv + "final_layer_norm.weight": sd["ln_final.weight"],
        tv + "final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        vv + "embeddings.class_embedding": sd["visual.class_embedding"],
        vv + "embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        vv + "embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        vv + "pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        vv + "pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        vv + "post_layernorm.weight": sd["visual.ln_post.weight"],
        vv + "post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
        "logit_scale": sd["logit_scale"],
    }
    out.update(_blocks(sd, "transformer.resblocks.", tv + "encoder.layers.", config.text_config.num_hidden_layers))
    out.update(
        _blocks(sd, "visual.transformer.resblocks.", vv + "encoder.layers.", config.vision_config.num_hidden_layers)
    )
    return {k: v.float().contiguous() for k, v in out.items()}


def check_size(sd: dict[str, torch.Tensor], config) -> None:
    """The model `config` describes, counted on the meta device (nothing allocated), must not need more values than
    the checkpoint holds: the config is read off tensor shapes, and a tensor of shape [1_000_000, 0] holds nothing
    while naming a width (a 683 KB file described a model of ~150 GiB)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        needed = sum(p.numel() for p in CLIPModel(config).parameters())
    held = sum(t.numel() for t in sd.values())
    if needed > held:
        raise ValueError(
            f"the checkpoint's tensor shapes describe a CLIP of {needed:,} parameters, but it holds {held:,} values: "
            "not a consistent OpenAI/open_clip state dict (nothing was allocated)"
        )


def to_hf_model(sd: dict[str, torch.Tensor], activation: str = "quick_gelu"):
    """A `CLIPModel` (eval mode, fp32) with the checkpoint's weights; every HF parameter must be filled."""
    from transformers import CLIPModel

    config = infer_config(sd, activation)
    check_size(sd, config)
    model = CLIPModel(config)
    state = convert_state_dict(sd, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"conversion left parameters unset {missing[:5]} or unused {unexpected[:5]}")
    from ..modeling import check_finite_weights

    return check_finite_weights(model, "the checkpoint").eval()


def default_bpe_path() -> str | None:
    """OpenAI's BPE merges shipped by an installed `open_clip_torch` or OpenAI `clip` (found without importing it)."""
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except ValueError:  # a module object without a spec sits in sys.modules
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")
            if os.path.isfile(path):
                return path
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as OpenAI's `simple_tokenizer.bytes_to_unicode`."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=4)
def clip_tokenizer(bpe_path: str, model_max_length: int = 77):
    """A `CLIPTokenizer` from OpenAI's `bpe_simple_vocab_16e6.txt.gz`: the vocabulary OpenAI's SimpleTokenizer
    builds (bytes, bytes + `</w>`, the first 48,894 merges, the two special tokens) and the same merges."""
    from transformers import CLIPTokenizer

    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        merges=pairs,
        model_max_length=model_max_length,
        # Padding (open_clip pads with id 0, this with <|endoftext|>) sits after the first end-of-text, where the
        # causal mask and end-of-text pooling never look.
    )


def clip_processor(image_size: int, bpe_path: str | None = None, tokenizer_name: str | None = None):
    """`CLIPProcessor`: OpenAI's preprocessing (bicubic shortest-edge resize, centre crop, OpenAI mean/std) at
    `image_size`, and OpenAI's BPE from `bpe_path` (default: an installed open_clip/clip) or a Hub tokenizer."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_MEAN),
        image_std=list(OPENAI_STD),
        resample=3,  # bicubic, as OpenAI's `_transform`
    )
    bpe_path = bpe_path or default_bpe_path()
    if bpe_path:
        tokenizer = clip_tokenizer(bpe_path)
    elif tokenizer_name:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_name)
    else:
        raise FileNotFoundError(
            "no CLIP BPE vocabulary: pass --bpe_path bpe_simple_vocab_16e6.txt.gz (shipped in open_clip_torch), "
            "or --tokenizer openai/clip-vit-base-patch32"
        )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def convert_checkpoint(
    path: str,
    output_dir: str | None = None,
    allow_pickle: bool = False,
    activation: str = "quick_gelu",
    bpe_path: str | None = None,
    tokenizer_name: str | None = None,
):
    """`(CLIPModel, CLIPProcessor)` for an OpenAI/open_clip checkpoint file, saved to `output_dir` when given."""
    sd = load_checkpoint(path, allow_pickle=allow_pickle)
    model = to_hf_model(sd, activation)
    processor = clip_processor(model.config.vision_config.image_size, bpe_path, tokenizer_name)
    if output_dir:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor
