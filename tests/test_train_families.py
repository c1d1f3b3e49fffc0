"""A tiny SigLIP through the whole recipe: every loss with a sigmoid form trains, saves, reloads with `AutoModel` and
evaluates through the evaluation suite; fine-tune modes, the image cache and the logit-scale clamp per family."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModel

from hnc_clip.losses import losses_for
from hnc_clip.scripts import evaluate as eval_app

from .helpers import TEST_SAMPLE, changed, run, weights


@pytest.mark.parametrize("loss_type", losses_for("sigmoid"))
def test_tiny_siglip_trains_every_applicable_loss(tmp_path, tiny_siglip_dir, sample_image_dir, loss_type):
    evaluate = ("--do_eval", "--validation_file", str(TEST_SAMPLE), "--max_eval_samples", "16",
                "--per_device_eval_batch_size", "8") if loss_type == "hnc" else ()  # the same loss code either way
    results, out = run(tmp_path, tiny_siglip_dir, sample_image_dir, "--loss_type", loss_type, *evaluate)
    assert math.isfinite(results["train_loss"]) and math.isfinite(results.get("eval_loss", 0.0))
    logged = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"][0]
    components = {k for k in logged if k.endswith("_loss")}
    assert sum(logged[k] for k in components) == pytest.approx(logged["loss"], rel=1e-4)
    reloaded = AutoModel.from_pretrained(out, use_safetensors=True)
    assert type(reloaded).__name__ == "SiglipModel"
    moved = changed(weights(tiny_siglip_dir), weights(out))
    assert {"logit_scale", "logit_bias", "text_model.head.weight", "vision_model.head.probe"} <= moved


def test_trained_siglip_and_clip_evaluate_through_the_suite(tmp_path, tiny_siglip_dir, tiny_clip_dir,
                                                            sample_image_dir):
    """Base and tuned, side by side, for each family (CLIP tuned with `negclip`)."""
    _, siglip_out = run(tmp_path / "s", tiny_siglip_dir, sample_image_dir, "--loss_type", "hnc")
    _, clip_out = run(tmp_path / "c", tiny_clip_dir, sample_image_dir, "--loss_type", "negclip")
    assert type(AutoModel.from_pretrained(clip_out, use_safetensors=True)).__name__ == "CLIPModel"
    for base, tuned in ((tiny_siglip_dir, siglip_out), (tiny_clip_dir, clip_out)):
        results = eval_app.run(eval_app.EvalArguments(
            model_name_or_path=[str(base), tuned], task=["pairwise"], data_file=[str(TEST_SAMPLE)],
            image_dir=str(sample_image_dir), output_dir=str(tmp_path / "eval" / base.name), device="cpu",
            plots=False, max_pairs=32,
        ))
        assert len(results) == 2
        for r in results.values():
            assert r["pairwise"]["num_pairs"] == 32 and 0.0 <= r["pairwise"]["accuracy"] <= 1.0


def siglip_expected_trainable(names, mode: str) -> set[str]:
    rules = {
        "full": lambda n: True,
        "text": lambda n: n.startswith("text_model."),
        "vision": lambda n: n.startswith("vision_model."),
        "last_block": lambda n: n.startswith((
            "text_model.encoder.layers.1.", "text_model.final_layer_norm.", "text_model.head.",
            "vision_model.encoder.layers.1.", "vision_model.post_layernorm.", "vision_model.head.",
        )),
        "lora": lambda n: ".self_attn." in n and n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                             "out_proj.weight")),
    }
    return {n for n in names if rules[mode](n)}


@pytest.mark.parametrize("mode", ["text", "vision", "last_block", "lora"])
def test_siglip_finetune_mode_changes_exactly_its_parameters(tmp_path, tiny_siglip_dir, sample_image_dir, mode):
    before = weights(tiny_siglip_dir)
    _, out = run(tmp_path, tiny_siglip_dir, sample_image_dir, "--finetune_mode", mode, "--lora_r", "4")
    moved, want = changed(before, weights(out)), siglip_expected_trainable(before, mode)
    assert moved == want, (sorted(moved - want)[:5], sorted(want - moved)[:5])


def test_a_loss_without_a_sigmoid_form_is_refused_for_siglip(tmp_path, tiny_siglip_dir, sample_image_dir):
    with pytest.raises(ValueError, match="--loss_type thesis_l2 does not train a siglip model"):
        run(tmp_path, tiny_siglip_dir, sample_image_dir, "--loss_type", "thesis_l2")


def test_fsc_clip_local_term_is_refused_for_siglip_before_training(tmp_path, tiny_siglip_dir, sample_image_dir):
    with pytest.raises(ValueError, match="--fsc_local_weight 0.2: FSC-CLIP's local term .* a siglip model has no"):
        run(tmp_path, tiny_siglip_dir, sample_image_dir, "--loss_type", "fsc_clip", "--fsc_local_weight", "0.2")
    assert not (tmp_path / "out" / "trainer_state.json").exists()


def test_logit_scale_clamp_follows_the_family(tmp_path, tiny_siglip_dir, sample_image_dir):
    """SigLIP learns t = exp(t') unclamped (big_vision); `--max_logit_scale` still clamps when given."""
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(tiny_siglip_dir)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    model.save_pretrained(tiny_siglip_dir)
    _, free = run(tmp_path / "a", tiny_siglip_dir, sample_image_dir)
    _, clamped = run(tmp_path / "b", tiny_siglip_dir, sample_image_dir, "--max_logit_scale", "100")
    assert weights(free)["logit_scale"].item() > math.log(400.0)
    assert weights(clamped)["logit_scale"].item() <= math.log(100.0) + 1e-6


def test_siglip_from_the_uint8_image_cache_equals_decoding(tmp_path, tiny_siglip_dir, sample_image_dir):
    """The cache holds SigLIP's resize (no crop) and the same training follows from it as from the JPEGs."""
    from transformers import AutoProcessor

    from hnc_clip.data.image_cache import prepare

    processor = AutoProcessor.from_pretrained(tiny_siglip_dir).image_processor
    cache = tmp_path / "img_cache"
    assert prepare(str(sample_image_dir), str(cache), processor, progress=False)["shape"][1:] == [32, 32, 3]
    sgd = ("--optim", "sgd", "--learning_rate", "0.1")
    _, decoded = run(tmp_path / "a", tiny_siglip_dir, sample_image_dir, *sgd)
    _, cached = run(tmp_path / "b", tiny_siglip_dir, sample_image_dir, *sgd, "--image_cache_dir", str(cache))
    a, b = weights(decoded), weights(cached)
    assert changed(weights(tiny_siglip_dir), b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_tiny_siglip2_naflex_trains_and_embeds_as_its_image_processor(tmp_path, sample_image_dir, sample_pairs):
    """SigLIP 2 NaFlex: each image its own patch grid (`pixel_attention_mask`, `spatial_shapes` travel with the
    pixels, through GradCache's chunks too); the batch's image embeddings are the model's own on its processor's
    output."""
    import torch.nn.functional as F
    from PIL import Image
    from transformers import AutoProcessor

    from hnc_clip.data import HncCollator, ImageJoin
    from hnc_clip.forward import embed
    from hnc_clip.tiny import save_tiny_siglip2

    model_dir = save_tiny_siglip2(str(tmp_path / "siglip2"))
    _, out = run(tmp_path, model_dir, sample_image_dir, "--loss_type", "hnc", "--gradcache_chunk_size", "3")
    model = AutoModel.from_pretrained(out, use_safetensors=True).eval()
    assert type(model).__name__ == "Siglip2Model" and changed(weights(model_dir), weights(out))
    processor = AutoProcessor.from_pretrained(out)
    rows = sample_pairs["train"][:6]
    batch = ImageJoin(str(sample_image_dir), processor.image_processor)({k: [r[k] for r in rows] for k in rows[0]})
    features = [{k: batch[k][i] for k in batch} for i in range(len(rows))]
    collated = HncCollator(processor.tokenizer, max_length=64, padding="max_length", omit_padding_mask=False)(features)
    files = list(dict.fromkeys(r["image_file"] for r in rows))
    images = [Image.open(sample_image_dir / f).convert("RGB") for f in files]
    with torch.no_grad():
        got = embed(model, collated).image
        want = F.normalize(model.get_image_features(**processor.image_processor(images, return_tensors="pt"))
                           .pooler_output, dim=-1)[[files.index(r["image_file"]) for r in rows]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    from hnc_clip.evaluation.encode import ClipEncoder

    encoder = ClipEncoder(model, processor, progress=False)
    torch.testing.assert_close(encoder.encode_images(images)[[files.index(r["image_file"]) for r in rows]], want,
                               rtol=1e-5, atol=1e-6)
    assert encoder.encode_texts(["a red cube"]).shape == (1, 32)
