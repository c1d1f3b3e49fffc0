"""Small CLIP and SigLIP models, a small causal LM, and their tokenizers, built in code and run offline.

Used by the tests and by the synthetic world (`hnc_clip.demo.world`): no machine here can download
`openai/clip-vit-base-patch32`, so we build a `CLIPModel` + `CLIPProcessor` from scratch and save them
with `save_pretrained`. The result loads through exactly the same code path as a Hub checkpoint.

EOS pooling: transformers' CLIP text tower pools at `argmax(input_ids)` when `eos_token_id == 2` (a legacy
of the original checkpoints) and at the first `eos_token_id` otherwise. Our vocabularies put EOS at id 3 and
set `text_config.eos_token_id = 3`, so pooling reads the first EOS, whatever the vocabulary size.

SigLIP (`save_tiny_siglip`): a `SiglipModel` + `SiglipProcessor` whose tokenizer is laid out as SigLIP's
sentencepiece one — no BOS, `</s>` appended, and `</s>` also the pad token — but word-level (the `tokenizers`
library; no sentencepiece model to train). Its logit scale and bias start at the paper's t' = log 10, b = −10.

Causal LM (`save_tiny_causal_lm`): a randomly initialised GPT-2 with a byte-level BPE tokenizer trained on the
given texts (GPT-2's layout: `<|endoftext|>` is BOS, EOS and pad), for the LM negatives (`hnc-clip-negatives`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0..3
EOS_ID = 3

_WORD = re.compile(r"[a-z0-9]+")


def words_of(texts: Iterable[str]) -> list[str]:
    """Sorted set of lower-case words in `texts` (the same split the tokenizer's pre-tokenizer makes)."""
    vocab: set[str] = set()
    for text in texts:
        vocab.update(_WORD.findall(text.lower()))
    return sorted(vocab)


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: lower-cases, drops punctuation, wraps each text as `[BOS] words [EOS]`."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
    )


def build_tiny_clip(
    vocab_size: int,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    projection_dim: int = 32,
    max_position_embeddings: int = 32,
    text_hidden_size: int | None = None,
    text_num_layers: int | None = None,
    hidden_act: str = "quick_gelu",
    seed: int = 0,
) -> CLIPModel:
    """A randomly initialised `CLIPModel` of the given size (deterministic for `seed`)."""
    import torch

    text_hidden = text_hidden_size or hidden_size
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=text_hidden,
            intermediate_size=4 * text_hidden,
            num_hidden_layers=text_num_layers or num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=EOS_ID,
            hidden_act=hidden_act,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            hidden_act=hidden_act,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def build_image_processor(image_size: int = 32) -> CLIPImageProcessor:
    """CLIP preprocessing (resize shortest edge, centre crop, CLIP mean/std) at `image_size`."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def save_tiny_clip(output_dir: str, texts: Iterable[str], image_size: int = 32, **model_kwargs) -> str:
    """Build a tokenizer from the words of `texts`, a tiny CLIP for it, and `save_pretrained` both."""
    max_len = model_kwargs.pop("max_position_embeddings", 32)
    tokenizer = build_word_tokenizer(words_of(texts), model_max_length=max_len)
    model = build_tiny_clip(
        vocab_size=len(tokenizer), image_size=image_size, max_position_embeddings=max_len, **model_kwargs
    )
    processor = CLIPProcessor(image_processor=build_image_processor(image_size), tokenizer=tokenizer)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# SigLIP

SIGLIP_EOS, SIGLIP_UNK = "</s>", "<unk>"  # ids 0, 1; `</s>` pads too, as in SigLIP's tokenizer


def build_siglip_word_tokenizer(words: Iterable[str], model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with SigLIP's layout: lower-cases, drops punctuation, `words </s>`, pad = `</s>`."""
    vocab = {SIGLIP_EOS: 0, SIGLIP_UNK: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SIGLIP_UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {SIGLIP_EOS}", special_tokens=[(SIGLIP_EOS, vocab[SIGLIP_EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SIGLIP_EOS, eos_token=SIGLIP_EOS, unk_token=SIGLIP_UNK,
        model_max_length=model_max_length,
    )  # fmt: skip


def build_tiny_siglip(
    vocab_size: int,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 32,
    seed: int = 0,
) -> SiglipModel:
    """A randomly initialised `SiglipModel` of the given size (deterministic for `seed`)."""
    import math

    import torch

    tower = dict(
        hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )  # fmt: skip
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, pad_token_id=0,
                         eos_token_id=0, **tower),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **tower),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():  # transformers initialises both to 0; SigLIP trains from t' = log 10, b = -10
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def build_siglip_image_processor(image_size: int = 32) -> SiglipImageProcessor:
    """SigLIP preprocessing: resize to image_size × image_size (no crop), mean = std = 0.5."""
    return SiglipImageProcessor(size={"height": image_size, "width": image_size})


def save_tiny_siglip(output_dir: str, texts: Iterable[str], image_size: int = 32, **model_kwargs) -> str:
    """Build a SigLIP-layout tokenizer from the words of `texts`, a tiny SigLIP for it, and `save_pretrained`."""
    max_len = model_kwargs.pop("max_position_embeddings", 32)
    tokenizer = build_siglip_word_tokenizer(words_of(texts), model_max_length=max_len)
    model = build_tiny_siglip(
        vocab_size=len(tokenizer), image_size=image_size, max_position_embeddings=max_len, **model_kwargs
    )
    processor = SiglipProcessor(image_processor=build_siglip_image_processor(image_size), tokenizer=tokenizer)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def build_siglip2_char_tokenizer(model_max_length: int = 64) -> Siglip2Tokenizer:
    """SigLIP 2's own tokenizer class (Gemma BPE + lower-casing; transformers loads a `Siglip2Processor` with no
    other) with a character vocabulary and no merges: every lower-case letter and digit a token, `▁` the space."""
    import string

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "\u2581" + string.ascii_lowercase + string.digits:
        vocab.setdefault(ch, len(vocab))
    return Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_tiny_siglip2(
    vocab_size: int, patch_size: int = 8, max_num_patches: int = 16, hidden_size: int = 32, num_layers: int = 2,
    num_heads: int = 2, max_position_embeddings: int = 64, seed: int = 0,
) -> Siglip2Model:
    """A randomly initialised SigLIP 2 NaFlex `Siglip2Model` (images as up to `max_num_patches` patch rows of
    3·patch_size² values; deterministic for `seed`)."""
    import math

    import torch

    tower = dict(
        hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
    )  # fmt: skip
    config = Siglip2Config(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, pad_token_id=0,
                         eos_token_id=1, **tower),
        vision_config=dict(patch_size=patch_size, num_patches=max_num_patches, **tower),
    )
    torch.manual_seed(seed)
    model = Siglip2Model(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def save_tiny_siglip2(
    output_dir: str, patch_size: int = 8, max_num_patches: int = 16, hidden_size: int = 32, num_layers: int = 2,
    num_heads: int = 2, max_position_embeddings: int = 64, seed: int = 0,
) -> str:
    """A tiny SigLIP 2 NaFlex (`Siglip2Model`: each image resized to at most `max_num_patches` patches, keeping its
    aspect ratio) + `Siglip2Processor` with a character-level tokenizer, saved with `save_pretrained`."""
    tokenizer = build_siglip2_char_tokenizer(max_position_embeddings)
    model = build_tiny_siglip2(len(tokenizer), patch_size, max_num_patches, hidden_size, num_layers, num_heads,
                               max_position_embeddings, seed)  # fmt: skip
    image_processor = Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=max_num_patches)
    model.save_pretrained(output_dir)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


LM_EOS = "<|endoftext|>"


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (every byte is a token, so any text encodes; `\\n` too)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[LM_EOS], initial_alphabet=alphabet,
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=LM_EOS, eos_token=LM_EOS, pad_token=LM_EOS)


def save_tiny_causal_lm(output_dir: str, texts: Iterable[str], vocab_size: int = 400, seed: int = 0,
                        **config_kwargs) -> str:  # fmt: skip
    """A random GPT-2 (1 layer, width 32 unless `config_kwargs` say otherwise) + a BPE tokenizer for `texts`,
    saved with `save_pretrained`: it loads through `AutoModelForCausalLM` / `AutoTokenizer` as a Hub model does."""
    import torch

    tokenizer = build_bpe_tokenizer(texts, vocab_size)
    eos = tokenizer.convert_tokens_to_ids(LM_EOS)
    config = GPT2Config(**{"vocab_size": len(tokenizer), "n_positions": 1024, "n_embd": 32, "n_layer": 1,
                           "n_head": 2, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
                           **config_kwargs})  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
