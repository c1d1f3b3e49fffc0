"""Published-baseline conversion: random-init open_clip models built in code with open_clip's own model code
(`tests/open_clip_code.py`), saved as the checkpoint files papers release, converted to HF `CLIPModel`; image and
text features must equal open_clip's to <= 1e-5, and the tokenizer built from OpenAI's BPE must give open_clip's
token ids."""

from __future__ import annotations

import os

import pytest
import torch

from hnc_clip.evaluation.convert import (
    PickleRefused,
    clip_tokenizer,
    convert_checkpoint,
    default_bpe_path,
    load_checkpoint,
    to_hf_model,
)

from .open_clip_code import open_clip_modules, random_open_clip

TEXTS = [
    "a photo of a cat.",
    "Two dogs playing in the snow!",
    "The cup is LEFT of the plate, isn't it?",
    "a man riding a horse & a woman walking   a dog (at 5pm)",
]


@pytest.fixture(scope="module")
def oc_model():
    return random_open_clip(width=64, layers=2, image_size=32, patch_size=8, embed_dim=16)


def _features_equal(oc, hf, tokens):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img_oc, img_hf = oc.encode_image(images), hf.get_image_features(pixel_values=images).pooler_output
        txt_oc, txt_hf = oc.encode_text(tokens), hf.get_text_features(input_ids=tokens).pooler_output
    assert img_oc.shape == img_hf.shape and txt_oc.shape == txt_hf.shape
    assert (img_oc - img_hf).abs().max() <= 1e-5
    assert (txt_oc - txt_hf).abs().max() <= 1e-5
    assert torch.allclose(hf.logit_scale, oc.logit_scale)


def test_tokenizer_from_openai_bpe_matches_open_clip():
    _, tokenizer_mod = open_clip_modules()
    expected = tokenizer_mod.tokenize(TEXTS)  # [4, 77], zero padded
    bpe = default_bpe_path()
    assert bpe is not None and bpe.endswith("bpe_simple_vocab_16e6.txt.gz")
    ours = clip_tokenizer(bpe)(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = ours["input_ids"]
    eot = (expected == 49407).int().argmax(-1)
    for i in range(len(TEXTS)):  # identical up to and including end-of-text; padding ids differ (0 vs 49407)
        assert ids[i, : eot[i] + 1].tolist() == expected[i, : eot[i] + 1].tolist()
    assert len(set(map(tuple, ids.tolist()))) == len(TEXTS)


@pytest.mark.parametrize("layout", ["openai_state_dict", "open_clip_training_checkpoint", "safetensors"])
def test_converted_model_gives_open_clips_features(oc_model, tmp_path, layout):
    _, tokenizer_mod = open_clip_modules()
    sd = oc_model.state_dict()
    if layout == "openai_state_dict":
        path = tmp_path / "model.pt"
        torch.save(sd, path)
    elif layout == "open_clip_training_checkpoint":  # what open_clip's training loop writes under DDP
        path = tmp_path / "epoch_5.pt"
        torch.save({"epoch": 5, "name": "negclip", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    hf, processor = convert_checkpoint(str(path), str(tmp_path / "hf"), allow_pickle=layout != "safetensors")
    _features_equal(oc_model, hf, tokenizer_mod.tokenize(TEXTS))

    from transformers import CLIPModel, CLIPProcessor

    reloaded = CLIPModel.from_pretrained(tmp_path / "hf").eval()  # the saved folder is a normal HF checkpoint
    _features_equal(oc_model, reloaded, tokenizer_mod.tokenize(TEXTS))
    tokens = CLIPProcessor.from_pretrained(tmp_path / "hf")(text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():  # through the HF tokenizer + attention mask: still open_clip's text features
        ours = reloaded.get_text_features(**tokens).pooler_output
        theirs = oc_model.encode_text(tokenizer_mod.tokenize(TEXTS))
    assert (ours - theirs).abs().max() <= 1e-5


def test_gelu_open_clip_model_converts_with_gelu(tmp_path):
    _, tokenizer_mod = open_clip_modules()
    oc = random_open_clip(quick_gelu=False, seed=3)
    hf = to_hf_model(oc.state_dict(), activation="gelu")
    _features_equal(oc, hf, tokenizer_mod.tokenize(TEXTS))
    wrong = to_hf_model(oc.state_dict(), activation="quick_gelu")
    with torch.no_grad():
        images = torch.randn(2, 3, 32, 32)
        diff = (wrong.get_image_features(pixel_values=images).pooler_output - oc.encode_image(images)).abs().max()
    assert diff > 1e-4  # the activation matters, so the flag is needed


def test_pickles_refused_without_permission(oc_model, tmp_path):
    path = tmp_path / "negclip.pt"
    torch.save(oc_model.state_dict(), path)
    with pytest.raises(PickleRefused, match="--allow_pickle"):
        load_checkpoint(str(path))
    assert set(load_checkpoint(str(path), allow_pickle=True)) == set(oc_model.state_dict())


def test_resnet_and_foreign_checkpoints_are_refused():
    with pytest.raises(ValueError, match="ResNet"):
        to_hf_model({"visual.layer1.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        to_hf_model({"visual.conv1.weight": torch.zeros(64, 3, 8, 8)})


def test_convert_cli_and_eval_accepts_the_pt_directly(oc_model, tmp_path, eval_sample_files, eval_sample_image_dir):
    from transformers import CLIPModel

    from hnc_clip.scripts.convert import cli
    from hnc_clip.scripts.evaluate import EvalArguments, run

    path = tmp_path / "negclip.pt"
    torch.save({"state_dict": oc_model.state_dict(), "epoch": 1}, path)
    assert cli(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out"), "--allow_pickle"]) == 0
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")
    CLIPModel.from_pretrained(tmp_path / "out")

    common = dict(data_file=[eval_sample_files["train"]], image_dir=eval_sample_image_dir, plots=False, device="cpu",
                  max_pairs=40, num_workers=0)  # fmt: skip
    with pytest.raises(PickleRefused):
        run(EvalArguments(model_name_or_path=[str(path)], output_dir=str(tmp_path / "e1"), **common))
    results = run(EvalArguments(model_name_or_path=[str(path), str(tmp_path / "out")], allow_pickle=True,
                                output_dir=str(tmp_path / "e2"), **common))  # fmt: skip
    assert list(results) == ["negclip", "out"]
    # the .pt converted in memory and the converted folder are the same model
    assert results["negclip"]["pairwise"]["accuracy"] == results["out"]["pairwise"]["accuracy"]
    assert results["negclip"]["pairwise"]["mean_margin"] == pytest.approx(results["out"]["pairwise"]["mean_margin"])


class Arbitrary:  # any class a pickle could name: the weights-only loader refuses it, and so do we
    pass


def test_training_checkpoint_with_args_loads_weights_only(oc_model, tmp_path):
    import argparse

    path = tmp_path / "ce_clip.pt"
    torch.save({"state_dict": oc_model.state_dict(), "args": argparse.Namespace(lr=1e-5, model="ViT-B-32")}, path)
    assert set(load_checkpoint(str(path), allow_pickle=True)) == set(oc_model.state_dict())

    torch.save({"state_dict": oc_model.state_dict(), "extra": Arbitrary()}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="weights-only loader refuses"):
        load_checkpoint(str(tmp_path / "odd.pt"), allow_pickle=True)


def test_shapes_that_describe_a_model_larger_than_the_file_are_refused_before_allocating(oc_model, tmp_path):
    """The architecture is read off tensor shapes, and a [100_000, 0] tensor holds nothing while naming an MLP width:
    such a file (683 KB described ~150 GiB) used to be built at that size; now the model is counted on the meta
    device first and refused."""
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
    sd["transformer.resblocks.0.mlp.c_fc.weight"] = torch.empty(100_000, 0)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r"describe a CLIP of [\d,]+ parameters, but it holds [\d,]+ values"):
        convert_checkpoint(str(path))


def test_the_allow_pickle_help_says_a_torchscript_archive_runs_its_own_code():
    """torch.jit.load runs a TorchScript archive's code: the flag of both applications, and the docs, say so."""
    import dataclasses

    from hnc_clip.scripts.convert import ConvertArguments
    from hnc_clip.scripts.evaluate import EvalArguments

    for args in (ConvertArguments, EvalArguments):
        (flag,) = [f for f in dataclasses.fields(args) if f.name == "allow_pickle"]
        assert "TorchScript" in flag.metadata["help"] and "runs the archive's own code" in flag.metadata["help"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for doc in ("docs/failure_modes.md", "eval/README.md"):
        with open(os.path.join(repo, doc), encoding="utf-8") as f:
            assert "runs the archive's own code" in f.read(), doc
