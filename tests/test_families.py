"""Model families (`hnc_clip.families`): picked from the config, each fed its text as it was trained, LoRA targets
that train, the image cache's geometry, the evaluation encoder; checked against the models' own transformers API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, BertConfig, CLIPConfig, MetaClip2Config, Siglip2Config, SiglipConfig

from hnc_clip.data import HncCollator
from hnc_clip.families import MODEL_FAMILIES, UnsupportedModelError, family_of
from hnc_clip.forward import embed

CAPTIONS = ["the yellow banana is to the left of the straw", "a man", "the straw is to the left of the banana"]


def test_family_is_picked_from_the_config():
    got = {type(c).__name__: (family_of(c).name, family_of(c).model_class)
           for c in (CLIPConfig(), MetaClip2Config(), SiglipConfig(), Siglip2Config())}
    assert got == {"CLIPConfig": ("clip", "CLIPModel"), "MetaClip2Config": ("metaclip_2", "MetaClip2Model"),
                   "SiglipConfig": ("siglip", "SiglipModel"), "Siglip2Config": ("siglip2", "Siglip2Model")}
    assert {f.contrastive for f in MODEL_FAMILIES.values()} == {"softmax", "sigmoid"}
    with pytest.raises(UnsupportedModelError, match="'bert' is not a supported dual encoder; supported:"):
        family_of(BertConfig())


def test_load_model_builds_the_checkpoints_class(tiny_siglip_dir, tiny_clip_dir):
    from hnc_clip.arguments import ModelArguments
    from hnc_clip.modeling import load_model

    assert type(load_model(ModelArguments(model_name_or_path=str(tiny_siglip_dir)))).__name__ == "SiglipModel"
    assert type(load_model(ModelArguments(model_name_or_path=str(tiny_clip_dir)))).__name__ == "CLIPModel"


def batch_of(processor, family, captions=CAPTIONS, max_length=32):
    features = [{"pixel_values": torch.zeros(3, 32, 32), "positive": c, "negative": c + " not", "image_id": str(i)}
                for i, c in enumerate(captions)]
    return HncCollator(processor.tokenizer, max_length=max_length, **family.collator_kwargs())(features)


def test_siglip_text_is_padded_to_its_length_without_a_mask(tiny_siglip_dir):
    """The collator and `embed` give each caption the embedding SigLIP's documented usage gives it
    (`processor(text, padding="max_length")`, no mask: transformers' SiglipModel docstring); dynamic padding, which
    is right for CLIP, gives another one (the pooled last position is then a different token)."""
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_siglip_dir)
    family = family_of(model)
    batch = batch_of(processor, family)
    assert batch["input_ids"].shape[1] == 32 and "right_padded" not in batch
    with torch.no_grad():
        got = embed(model, batch).positive
        ids = processor(text=CAPTIONS, padding="max_length", max_length=32, return_tensors="pt")["input_ids"]
        want = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        dynamic = processor(text=CAPTIONS, padding=True, return_tensors="pt")["input_ids"]
        other = F.normalize(model.get_text_features(input_ids=dynamic).pooler_output, dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got - other).abs().max() > 1e-3


def test_metaclip_2_follows_the_clip_rules():
    """A causal tower pooled at the first EOS: right padding without the mask equals the masked forward."""
    from transformers import MetaClip2Model

    from hnc_clip.tiny import build_word_tokenizer, words_of

    tok = build_word_tokenizer(words_of(CAPTIONS), model_max_length=16)
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = MetaClip2Config(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=16, eos_token_id=3, pad_token_id=0,
                         bos_token_id=2, **tower),
        vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=8,
    )
    torch.manual_seed(0)
    model = MetaClip2Model(config).eval()
    batch = batch_of(type("P", (), {"tokenizer": tok})(), family_of(model), max_length=16)
    assert batch["right_padded"] is True
    with torch.no_grad():
        got = embed(model, batch).positive
        tokens = tok(CAPTIONS, padding=True, return_tensors="pt")
        want = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_siglip_lora_adapts_the_blocks_attention_only(tiny_siglip_dir):
    """SigLIP's vision head is an nn.MultiheadAttention whose out_proj its forward never calls: the family's LoRA
    targets leave it out, and every adapter gets a gradient."""
    from types import SimpleNamespace

    from transformers import SiglipModel

    from hnc_clip.modeling import FINETUNE_MODES, LogitScaleTap, unwrap_dual_encoder

    base = SiglipModel.from_pretrained(tiny_siglip_dir)
    args = SimpleNamespace(lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_target_modules=None)
    model = FINETUNE_MODES["lora"](base, args)
    adapters = [n for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all(".self_attn." in n for n in adapters)
    assert unwrap_dual_encoder(model) is base
    tap = LogitScaleTap(model)
    batch = batch_of(AutoProcessor.from_pretrained(tiny_siglip_dir), family_of(model))
    batch["pixel_values"] = torch.randn(3, 3, 32, 32)
    emb = embed(model, batch)
    assert tap.bias.item() == pytest.approx(-10.0) and tap.value.item() == pytest.approx(10.0)
    (emb.image.sum() + emb.positive.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # lora_B starts at zero (so lora_A's first gradient is zero): B's gradient shows the adapter is in the forward
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_image_cache_geometry_per_family():
    from transformers import Siglip2ImageProcessor

    from hnc_clip.data.image_cache import crop_hw
    from hnc_clip.tiny import build_image_processor, build_siglip_image_processor

    assert crop_hw(build_image_processor(32)) == (32, 32)  # CLIP: shortest edge 32, then a 32×32 crop
    assert crop_hw(build_siglip_image_processor(48)) == (48, 48)  # SigLIP: resized to 48×48, no crop
    with pytest.raises(ValueError, match="NaFlex"):
        crop_hw(Siglip2ImageProcessor())


def test_evaluation_encoder_feeds_siglip_as_it_was_trained(tiny_siglip_dir):
    from PIL import Image

    from hnc_clip.evaluation.encode import ClipEncoder, load_clip

    model, processor = load_clip(str(tiny_siglip_dir), "cpu")
    encoder = ClipEncoder(model, processor, batch_size=2, progress=False)
    texts = encoder.encode_texts(CAPTIONS)
    images = [Image.new("RGB", (40, 30), (20 * i, 90, 200)) for i in range(3)]
    with torch.no_grad():
        ids = processor(text=CAPTIONS, padding="max_length", max_length=32, return_tensors="pt")["input_ids"]
        want_t = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        want_i = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(texts, want_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder.encode_images(images), want_i, rtol=1e-5, atol=1e-6)
    assert encoder.encode_texts([]).shape == (0, 32)


@pytest.mark.parametrize("name", sorted(MODEL_FAMILIES))
def test_the_placeholder_pair_runs_through_every_family(name):
    """A process whose batch has no readable image runs a placeholder pair so that it enters the collectives the
    others enter (`placeholder_batch`): it must be an input its family's model takes (SigLIP 2 NaFlex: patch rows,
    their mask and grid; its config has no image_size), with every per-image input the collator would bring."""
    from hnc_clip.forward import build_loss_inputs, placeholder_batch
    from hnc_clip.tiny import build_tiny_clip, build_tiny_siglip, build_tiny_siglip2

    builders = {"clip": lambda: build_tiny_clip(40, image_size=32, patch_size=8, hidden_size=32, projection_dim=16),
                "metaclip_2": None, "siglip": lambda: build_tiny_siglip(40), "siglip2": lambda: build_tiny_siglip2(40)}
    if builders[name] is None:
        config = MetaClip2Config(text_config=dict(vocab_size=40, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2, eos_token_id=3),
                                 vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2), projection_dim=16)
        model = MODEL_FAMILIES[name].cls(config)
    else:
        model = builders[name]()
    batch = placeholder_batch(model, "cpu", negatives=2, negative_mask=True)
    assert set(MODEL_FAMILIES[name].pixel_inputs) <= set(batch)
    inputs = build_loss_inputs(model, batch, world_size=1)
    assert inputs.local.image.shape[0] == 1 and inputs.local.negative.shape[0] == 2
    assert torch.isfinite(inputs.local.image).all() and torch.isfinite(inputs.local.positive).all()
