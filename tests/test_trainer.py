"""End-to-end `main()` runs on the real-format samples with a tiny CLIP: fine-tune modes, losses, save/reload."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from hnc_clip.losses import LOSSES
from hnc_clip.scripts import train as train_app

from .helpers import REPO, TEST_SAMPLE, TRAIN_SAMPLE, changed, run, weights


def expected_trainable(names, mode: str, text_layers=2, vision_layers=2) -> set[str]:
    rules = {
        "full": lambda n: True,
        "text": lambda n: n.startswith(("text_model.", "text_projection.")),
        "vision": lambda n: n.startswith(("vision_model.", "visual_projection.")),
        "last_block": lambda n: n.startswith((
            f"text_model.encoder.layers.{text_layers - 1}.", "text_model.final_layer_norm.", "text_projection.",
            f"vision_model.encoder.layers.{vision_layers - 1}.", "vision_model.post_layernorm.", "visual_projection.",
        )),
        "lora": lambda n: n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")),
    }
    return {n for n in names if rules[mode](n)}


@pytest.mark.parametrize("mode", ["full", "text", "vision", "last_block", "lora"])
def test_finetune_mode_changes_exactly_its_parameters(tmp_path, tiny_clip_dir, sample_image_dir, mode):
    before = weights(tiny_clip_dir)
    _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--finetune_mode", mode, "--lora_r", "4")
    after = weights(out)  # LoRA is merged on save: same keys as the base model, no peft needed to load
    want = expected_trainable(before, mode)
    moved = changed(before, after)
    # Frozen parameters are bit-identical...
    assert moved <= want, f"frozen parameters moved: {sorted(moved - want)[:5]}"
    # ...and every trainable tensor moved. (Token/position embeddings move only in the rows a batch used,
    # but each tensor as a whole changes.)
    assert moved == want, f"trainable parameters did not move: {sorted(want - moved)[:5]}"


def test_save_reload_roundtrip(tmp_path, tiny_clip_dir, sample_image_dir):
    results, out = run(tmp_path, tiny_clip_dir, sample_image_dir)
    model = CLIPModel.from_pretrained(out, use_safetensors=True)
    processor = CLIPProcessor.from_pretrained(out)
    inputs = processor(text=["the yellow banana is to the left of the straw"], return_tensors="pt")
    assert model.get_text_features(**inputs).pooler_output.shape == (1, 16)
    for name in ("train_results.json", "all_results.json", "trainer_state.json", "README.md"):
        assert (tmp_path / "out" / name).exists(), name
    assert not list((tmp_path / "out").glob("pytorch_model*.bin"))  # weights in safetensors only
    card = (tmp_path / "out" / "README.md").read_text()
    assert "loss_type | hnc" in card and str(TRAIN_SAMPLE) in card
    assert math.isfinite(results["train_loss"]) and results["train_samples"] == 594


def test_push_to_hub_uploads_model_processor_and_card(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch):
    """`--push_to_hub` through the Trainer's own Hub calls, with the Hub client replaced by a recorder (no network):
    one repo created, one upload of a folder that loads as CLIPModel + CLIPProcessor and carries the card with
    this run's metrics."""
    import transformers.trainer

    calls = []

    class RecordingHub:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
            # what would be uploaded, read now (the folder is the output dir, which the run keeps writing to)
            snapshot = tmp_path / f"upload{len(calls)}"
            shutil.copytree(folder_path, snapshot, ignore=shutil.ignore_patterns(*kwargs.get("ignore_patterns", [])))
            calls.append(("upload_folder", repo_id, commit_message, snapshot))

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: RecordingHub())
    results, _ = run(tmp_path, tiny_clip_dir, sample_image_dir, "--push_to_hub", "--hub_model_id", "me/hnc-test",
                     "--hub_token", "not-a-real-token", "--do_eval", "--validation_file", str(TEST_SAMPLE),
                     "--max_eval_samples", "16")
    assert [c[:3] for c in calls] == [("create_repo", "me/hnc-test", True),
                                     ("upload_folder", "me/hnc-test", "hnc-clip: hnc fine-tune")]
    pushed = calls[1][3]
    CLIPModel.from_pretrained(pushed, use_safetensors=True)
    CLIPProcessor.from_pretrained(pushed)
    card = (pushed / "README.md").read_text()
    assert "loss_type | hnc" in card and "me/hnc-test" in card
    # the metrics of this run, evaluation included (pushed once, after it), not a placeholder
    assert f"train_loss: {results['train_loss']:.4f}" in card and f"eval_loss: {results['eval_loss']:.4f}" in card


def test_wandb_run_gets_the_recipe_metrics_and_config(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch):
    """`--report_to wandb` (a real offline run: no network) receives the loss components and similarity statistics
    that `HncTrainer.log` adds, and the recipe's own flags in the run config. (wandb ≥ 0.2x writes offline runs in
    its Go core's binary log, which Python no longer reads back, so what reaches `Run.log` is recorded on the way.)"""
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "hnc-clip-test")
    logged = []
    real_log = Run.log

    def recording_log(self, data, *args, **kwargs):
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", recording_log)
    try:
        run(tmp_path, tiny_clip_dir, sample_image_dir, "--report_to", "wandb", "--run_name", "wandb-test")
        config = dict(wandb.run.config)
    finally:
        wandb.finish()
    steps = [d for d in logged if "train/contrastive_loss" in d]
    assert len(steps) == 3  # --logging_steps 1, --max_steps 3
    for key in ("train/contrastive_loss", "train/hard_negative_loss", "train/hard_negative_accuracy",
                "train/margin", "train/logit_scale", "train/nonfinite_steps", "train/loss"):
        assert all(math.isfinite(d[key]) for d in steps), key
    assert config["loss_type"] == "hnc" and config["hard_negative_weight"] == 1.0
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the real offline run was written


# Losses with settings that change what a step encodes: FSC-CLIP's local term (token and patch embeddings), also
# through GradCache's cache.
LOSS_CASES = {**{name: [] for name in sorted(LOSSES)}, "fsc_clip+local": ["--fsc_local_weight", "0.2"],
              "fsc_clip+local+gradcache": ["--fsc_local_weight", "0.2", "--gradcache_chunk_size", "2",
                                           "--l2_reg_weight", "0"]}  # fmt: skip


@pytest.mark.parametrize("case", LOSS_CASES)
def test_every_loss_trains_and_logs_components(tmp_path, tiny_clip_dir, sample_image_dir, case):
    loss_type = case.split("+")[0]
    results, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--loss_type", loss_type, "--l2_reg_weight", "0.1",
                       "--validation_file", str(TEST_SAMPLE), "--max_eval_samples", "16", "--do_eval",
                       "--per_device_eval_batch_size", "8", *LOSS_CASES[case])
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    if LOSSES[loss_type].uses_negatives:
        assert 0.0 <= results["eval_hard_negative_accuracy"] <= 1.0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    logged = state["log_history"][0]
    expected = {"loss", "cos_positive", "cos_random_negative", "hard_negative_weight", "logit_scale"}
    if LOSSES[loss_type].uses_negatives:  # `clip` does not encode the negatives at all
        expected |= {"cos_hard_negative", "margin", "hard_negative_accuracy"}
    else:
        assert "cos_hard_negative" not in logged
    assert expected <= set(logged), expected - set(logged)
    components = {k for k in logged if k.endswith("_loss")}
    assert components, logged
    assert sum(logged[k] for k in components) == pytest.approx(logged["loss"], rel=1e-4)
    if loss_type == "ce_clip":  # its adaptive thresholds, carried from step to step, are logged
        assert math.isfinite(logged["ce_clip_threshold"]) and logged["ce_clip_threshold"] >= 0
    assert ("local_hard_negative_loss" in logged) == ("+local" in case)
    assert ("eval_local_hard_negative_loss" in results) == ("+local" in case)


def test_hard_negative_weight_schedule_is_logged(tmp_path, tiny_clip_dir, sample_image_dir):
    run(tmp_path, tiny_clip_dir, sample_image_dir, "--hard_negative_schedule", "step", "--hard_negative_weight", "1",
        "--hard_negative_weight_min", "0.2", "--hard_negative_step_size", "0.3", "--hard_negative_step_every", "1")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    lams = [h["hard_negative_weight"] for h in state["log_history"] if "hard_negative_weight" in h]
    assert lams == pytest.approx([0.2, 0.5, 0.8])


def test_logit_scale_is_clamped(tmp_path, tiny_clip_dir, sample_image_dir):
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    model.save_pretrained(tiny_clip_dir)
    _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--max_logit_scale", "100")
    assert weights(out)["logit_scale"].item() <= math.log(100.0) + 1e-6


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--loss_type must be one of"):
        train_app.parse_args(["--output_dir", "x", "--loss_type", "nope"])
    with pytest.raises(ValueError, match="--finetune_mode must be one of"):
        train_app.parse_args(["--output_dir", "x", "--finetune_mode", "half"])
    with pytest.raises(ValueError, match="--on_missing_image"):
        train_app.parse_args(["--output_dir", "x", "--on_missing_image", "ignore"])


def test_yaml_config_and_cli_script(tmp_path, tiny_clip_dir, sample_image_dir, sample_pairs):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_clip_dir}\ntrain_file: {TRAIN_SAMPLE}\nimage_dir: {sample_image_dir}\n"
        f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\ndo_train: true\nmax_steps: 2\n"
        "per_device_train_batch_size: 4\nloss_type: pairwise\nhard_negative_weight: 0.5\nuse_cpu: true\n"
        "caption_types: [relation_subj, relation_obj]\nsave_strategy: 'no'\n"
    )
    model_args, data_args, training_args = train_app.parse_args([str(config)])
    assert training_args.loss_type == "pairwise" and training_args.hard_negative_weight == 0.5
    assert data_args.caption_types == ["relation_subj", "relation_obj"]
    proc = subprocess.run([sys.executable, str(REPO / "run_hnc_clip.py"), str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "train_results.json").read_text())
    wanted = sum(p["type"] in ("relation_subj", "relation_obj") for p in sample_pairs["train"])
    assert metrics["train_samples"] == wanted == 85  # (96 + 74 captions of those types) / 2 per pair


def test_training_from_the_uint8_image_cache_equals_decoding(tmp_path, tiny_clip_dir, sample_image_dir):
    """`--image_cache_dir` (uint8 rows, normalised in the forward) trains the same weights as decoding JPEGs."""
    from hnc_clip.data.image_cache import prepare
    from hnc_clip.tiny import build_image_processor

    processor = CLIPProcessor.from_pretrained(tiny_clip_dir).image_processor
    assert type(processor) is type(build_image_processor(32))  # the PIL backend: the cache holds its exact output
    cache = tmp_path / "img_cache"
    prepare(str(sample_image_dir), str(cache), processor, progress=False)
    # SGD: Adam's m/√v turns float-rounding differences of near-zero gradients into lr-sized steps.
    sgd = ("--optim", "sgd", "--learning_rate", "0.1")
    _, decoded = run(tmp_path / "a", tiny_clip_dir, sample_image_dir, *sgd)
    _, cached = run(tmp_path / "b", tiny_clip_dir, sample_image_dir, *sgd, "--image_cache_dir", str(cache))
    before, a, b = weights(tiny_clip_dir), weights(decoded), weights(cached)
    assert changed(before, b)  # it trained
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_torch_compile_regions_train_the_same_weights(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch):
    """`--torch_compile` goes through accelerate's regional compilation (each encoder layer compiled, reused) and
    trains what eager trains. `aot_eager` runs dynamo + AOT autograd without generating C++ (fast on CPU)."""
    import torch._dynamo

    for var in ("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "ACCELERATE_DYNAMO_USE_DYNAMIC"):
        monkeypatch.setenv(var, "0")  # the environment says off: the flags alone must turn them on
    sgd = ("--optim", "sgd", "--learning_rate", "0.1")
    _, eager = run(tmp_path / "a", tiny_clip_dir, sample_image_dir, *sgd)
    torch._dynamo.reset()
    compiled_modules = []
    real_compile = torch.compile

    def spy(module, *args, **kwargs):
        compiled_modules.append(type(module).__name__)
        return real_compile(module, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    _, compiled = run(
        tmp_path / "b", tiny_clip_dir, sample_image_dir, *sgd, "--torch_compile", "--torch_compile_backend",
        "aot_eager",
    )
    torch._dynamo.reset()
    assert compiled_modules.count("CLIPEncoderLayer") == 4  # 2 text + 2 vision layers, each its own region
    assert os.environ["ACCELERATE_DYNAMO_USE_DYNAMIC"] == "0"  # the flags reach accelerate, not the environment
    assert "CLIPModel" not in compiled_modules  # not the whole graph
    a, b = weights(eager), weights(compiled)
    assert changed(weights(tiny_clip_dir), b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_loaded_model_has_input_embeddings(tiny_clip_dir):
    """Generic tools (accelerate's FSDP2 preparation among them) call `get_input_embeddings()`; transformers'
    raises for CLIPModel."""
    from types import SimpleNamespace

    from hnc_clip.modeling import load_model

    args = SimpleNamespace(model_name_or_path=str(tiny_clip_dir), cache_dir=None, model_revision="main", token=None,
                           trust_remote_code=False, attn_implementation=None, patch_embedding_as_matmul=True)
    model = load_model(args)
    assert model.get_input_embeddings() is model.text_model.embeddings.token_embedding
    with pytest.raises(NotImplementedError):
        CLIPModel.from_pretrained(tiny_clip_dir).get_input_embeddings()  # what load_model works around


# Ops that make the CPU wait for the GPU: a host read of a value (`.item()`, `bool(t)`, `if t:` all run
# `_local_scalar_dense`), or an output whose size depends on the data (`unique`, `nonzero` — also behind boolean-mask
# indexing —, `masked_select`), which CUDA must copy back before the caller can go on. On the CPU they wait for
# nothing, but the profiler records them by name all the same.
SYNCING_OPS = {"aten::_local_scalar_dense", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
               "aten::nonzero", "aten::masked_select"}


@pytest.mark.parametrize("optim, loss_type, syncs", [
    *[("adamw_torch_fused", loss, 0) for loss in sorted(LOSSES)], ("adamw_torch", "hnc", 1),
])
def test_a_training_step_does_not_wait_for_the_device(tmp_path, tiny_clip_dir, sample_image_dir, optim, loss_type,
                                                      syncs):
    """From step begin to step end (forward, loss, backward, clipping, optimizer, callbacks) the CPU never waits for
    the device with a fused optimizer (the default), whatever the loss: the finite-loss flag goes to the optimizer
    as `found_inf` (`StepGuard`). With an optimizer that cannot skip a step by itself it waits once: the
    finite-loss check, made after the backward is queued. (Each wait on CUDA stalls the CPU until the GPU is done,
    so the next kernels queue late: a step full of them is launch-bound. Metrics are summed as device tensors; the
    Trainer's nan filter is off; captions are right-padded so transformers builds no padding mask, which would read
    the mask on the host; the `clip` loss finds its positives' rows without `unique`.)"""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class CountSyncs(TrainerCallback):
        def __init__(self):
            self.per_step, self.prof = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            self.prof.__exit__(None, None, None)
            self.per_step.append(sum(1 for e in self.prof.events() if e.name in SYNCING_OPS
                                     and not within(e, "Optimizer.step#")))

    def within(event, prefix):
        # torch's optimizers read each parameter's step counter on the host: a CPU tensor (the fused CUDA kernel
        # and capturable ones keep it on the device), so no device to wait for. (On a GPU the bench's profile
        # counts real syncs by source line: `host_syncs_by_line`.)
        while event is not None and not event.name.startswith(prefix):
            event = event.cpu_parent
        return event is not None

    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(tiny_clip_dir), "--train_file", str(TRAIN_SAMPLE), "--image_dir",
        str(sample_image_dir), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--do_train",
        "--max_steps", "3", "--per_device_train_batch_size", "8", "--logging_steps", "2", "--save_strategy", "no",
        "--use_cpu", "--dataloader_num_workers", "0", "--optim", optim, "--loss_type", loss_type,
        "--l2_reg_weight", "0.1",
    ]
    counter = CountSyncs()
    train_app.main(*train_app.parse_args(argv), callbacks=[counter])
    assert counter.per_step == [syncs] * 3
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"][0]
    assert logged["logit_scale"] > 0 and math.isfinite(logged["loss"])  # still logged, as floats
    if LOSSES[loss_type].uses_negatives:
        assert 0 <= logged["hard_negative_accuracy"] <= 1


def test_fast_defaults_follow_the_machine_and_yield_to_flags(tmp_path):
    from types import SimpleNamespace

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.machine import fast_defaults

    unset = SimpleNamespace(use_cpu=False, fp16=False, dataloader_num_workers=None)
    gpu = fast_defaults(unset, cuda_bf16=True, cpus=16, local_world_size=1)
    assert gpu == {"bf16": True, "dataloader_num_workers": 8, "dataloader_persistent_workers": True,
                   "sdpa_backends": ["efficient", "math"]}
    per_rank = fast_defaults(unset, cuda_bf16=True, cpus=16, local_world_size=4)  # 4 CPUs per process
    assert per_rank["dataloader_num_workers"] == 3
    fp16 = SimpleNamespace(use_cpu=False, fp16=True, dataloader_num_workers=2)
    assert fast_defaults(fp16, cuda_bf16=True, cpus=16, local_world_size=1) == {
        "bf16": False, "dataloader_num_workers": 2, "dataloader_persistent_workers": True,
        "sdpa_backends": ["efficient", "math"]}
    # This machine (no GPU): full precision, data loading in the training process.
    args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert (args.bf16, args.dataloader_num_workers, args.dataloader_persistent_workers) == (False, 0, False)
    assert args.sdpa_backends == ["flash", "efficient", "math"]  # PyTorch's own choice on a CPU
    explicit = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, dataloader_num_workers=1)
    assert (explicit.dataloader_num_workers, explicit.dataloader_persistent_workers) == (1, True)
    def parsed(*flags):
        return train_app.parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu",
                                        *flags])[2]

    assert parsed("--bf16").bf16 is True and parsed("--bf16", "false").bf16 is False and parsed().bf16 is False
    assert parsed("--dataloader_num_workers", "2").dataloader_persistent_workers is True
    assert parsed("--sdpa_backends", "math").sdpa_backends == ["math"]
    # Non-blocking host-to-device copies from pinned memory (none on --use_cpu, where the Trainer pins nothing);
    # the Trainer's per-step nan filter (a host sync) off.
    def blocking(**kw):
        return not HncTrainingArguments(output_dir=str(tmp_path), **kw).accelerator_config.non_blocking

    assert not blocking() and blocking(dataloader_pin_memory=False) and blocking(use_cpu=True)
    assert blocking(accelerator_config={"non_blocking": False})
    assert parsed().logging_nan_inf_filter is False


def test_attention_avoids_cudnn_unless_asked(tmp_path):
    """cuDNN's SDPA builds a plan per new shape (~50 ms on an H100), and every batch here has a new shape: the
    loss runs with flash / memory-efficient / math attention only, unless --sdpa_backends names cudnn."""
    import pytest

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.tiny import build_tiny_clip
    from hnc_clip.trainer import HncTrainer

    def enabled():
        b = torch.backends.cuda
        return {"flash": b.flash_sdp_enabled(), "efficient": b.mem_efficient_sdp_enabled(),
                "math": b.math_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled()}

    before = enabled()
    assert all(before.values())
    seen = {}
    for backends in (None, ["math"], ["cudnn", "flash"]):
        kw = {} if backends is None else {"sdpa_backends": backends}
        args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)
        trainer = HncTrainer(model=build_tiny_clip(16), args=args)
        with trainer.compute_loss_context_manager():
            seen[str(backends)] = sorted(k for k, v in enabled().items() if v)
        assert enabled() == before  # restored afterwards: nothing global changes
    assert seen == {
        "None": ["efficient", "flash", "math"], "['math']": ["math"], "['cudnn', 'flash']": ["cudnn", "flash"]}
    with pytest.raises(ValueError, match="--sdpa_backends must name some of"):
        HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, sdpa_backends=["fast"])


def test_compiled_attention_follows_sdpa_backends_across_the_compile_cache(tmp_path, monkeypatch, request):
    """torch.compile's on-disk caches key a graph by its code, not by the SDPA backends enabled while it was traced
    (`sdpa_kernel` wraps the compiled model from outside): without a tag, a graph cached under flash is reused when
    `--sdpa_backends math` asks for math (seen on an H100, and here on CPU). The trainer's context tags the cache
    key with the backends; inductor with its FX-graph and AOTAutograd caches on, in an empty cache folder."""
    import torch._dynamo
    import torch._functorch.config
    import torch._inductor.config
    import torch.nn.functional as F
    from torch.profiler import profile

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.tiny import build_tiny_clip
    from hnc_clip.trainer import HncTrainer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    # torch's config modules restore through their own patch(): pytest 9's monkeypatch deletes a config entry on undo
    for patch in (torch._inductor.config.patch(fx_graph_cache=True),
                  torch._functorch.config.patch(enable_autograd_cache=True),
                  torch.compiler.config.patch(cache_key_tag="users-tag")):  # fmt: skip
        patch.__enter__()
        request.addfinalizer(lambda patch=patch: patch.__exit__(None, None, None))

    def attend(q):
        return F.scaled_dot_product_attention(q, q, q)

    q = torch.randn(4, 2, 16, 8, requires_grad=True)
    ran = {}
    for backends in (["flash"], ["math"], ["flash"]):
        torch._dynamo.reset()  # a fresh trace: only the on-disk caches remember the previous one
        args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", sdpa_backends=backends)
        trainer = HncTrainer(model=build_tiny_clip(16), args=args)
        compiled = torch.compile(attend, dynamic=False)
        with trainer.compute_loss_context_manager():
            compiled(q).sum().backward()
            with profile() as prof:
                compiled(q).sum().backward()
        flash = any("flash_attention" in e.name for e in prof.events())
        ran.setdefault(backends[0], []).append(flash)
    assert ran == {"flash": [True, True], "math": [False]}
    assert torch.compiler.config.cache_key_tag == "users-tag|hnc-sdpa=flash"  # the user's tag kept in front


def test_patch_embedding_as_matmul_is_the_convolution(tmp_path, tiny_clip_dir):
    """Same function (values and weight gradients, also when the image is not a whole number of patches), same
    parameters, and a checkpoint saved from the swapped model loads as a plain CLIPModel with equal weights."""
    from transformers import CLIPModel

    from hnc_clip.arguments import ModelArguments
    from hnc_clip.modeling import PatchEmbeddingAsMatmul, load_model

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 12, kernel_size=8, stride=8, bias=False)
    fast = torch.nn.Conv2d(3, 12, kernel_size=8, stride=8, bias=False)
    fast.load_state_dict(conv.state_dict())
    fast.__class__ = PatchEmbeddingAsMatmul
    for size in ((32, 32), (35, 41)):
        x = torch.randn(5, 3, *size, dtype=torch.float64)
        want, got = conv.double()(x), fast.double()(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(want)
        (dw_want,) = torch.autograd.grad((want * g).sum(), conv.weight)
        (dw_got,) = torch.autograd.grad((got * g).sum(), fast.weight)
        torch.testing.assert_close(dw_got, dw_want, rtol=1e-12, atol=1e-12)

    model = load_model(ModelArguments(model_name_or_path=str(tiny_clip_dir)))
    assert type(model.vision_model.embeddings.patch_embedding) is PatchEmbeddingAsMatmul
    plain = load_model(ModelArguments(model_name_or_path=str(tiny_clip_dir), patch_embedding_as_matmul=False))
    assert type(plain.vision_model.embeddings.patch_embedding) is torch.nn.Conv2d
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.get_image_features(pixel_values=pixels).pooler_output,
                               plain.get_image_features(pixel_values=pixels).pooler_output, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    reloaded = CLIPModel.from_pretrained(tmp_path / "saved")
    assert type(reloaded.vision_model.embeddings.patch_embedding) is torch.nn.Conv2d
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_evaluation_reads_the_carried_loss_state_without_moving_it(tmp_path):
    """CE-CLIP's thresholds: training steps pass the run's own dict (the loss updates it), evaluation a copy."""
    from types import SimpleNamespace

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.trainer import HncTrainer

    args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", loss_type="ce_clip")
    state = {"ce_clip_thresholds": torch.tensor([1.5])}
    fake = SimpleNamespace(args=args, loss_state=state, current_hard_negative_weight=lambda: 1.0)
    assert HncTrainer.loss_config(fake, training=True).state is state
    copy = HncTrainer.loss_config(fake, training=False).state
    assert copy == state and copy is not state
    copy["ce_clip_thresholds"] = torch.tensor([9.0])
    assert state["ce_clip_thresholds"].item() == 1.5
    assert HncTrainer.loss_config(fake).ce_clip_cmr_weight == args.ce_clip_cmr_weight == 0.2


def test_the_last_uneven_evaluation_batch_keeps_the_hard_image_pairs_of_its_real_rows():
    """Under two processes accelerate evens out the last evaluation batch with repeated rows, which the trainer
    drops by input row. Hard-image pairs sit after the B rows in the batch and were dropped as if repeats: 11 real
    rows with one hard-image pair each scored 11 pairs, not 22. They now go with the row that brought them."""
    from types import SimpleNamespace

    from hnc_clip.data import HncCollator
    from hnc_clip.tiny import build_word_tokenizer
    from hnc_clip.trainer import HncTrainer

    tok = build_word_tokenizer("a b c d".split())
    px = torch.zeros(3, 2, 2)

    def row(i, readable=True):
        extra = {"pixel_values": px if readable else None, "positive": "c", "negative": "d", "image_id": f"h{i}"}
        return {"pixel_values": px, "positive": "a", "negative": "b", "image_id": f"r{i}", "hard_image_pair": extra}

    b, remainder = 8, 11  # process 0: 8 real rows; process 1: 3 real rows, 5 repeats
    scored, skipped = 0, 0
    for rank in (0, 1):
        rows = [row(rank * b + i, readable=(rank, i) != (1, 2)) for i in range(b)]  # one hard image unreadable
        batch = HncCollator(tok)(rows)
        fake = SimpleNamespace(
            accelerator=SimpleNamespace(num_processes=2, process_index=rank, gradient_state=SimpleNamespace(
                end_of_dataloader=True, remainder=remainder)),
            args=SimpleNamespace(eval_batch_size=b),
        )  # fmt: skip
        out = HncTrainer._without_repeats(fake, batch)
        scored += len(out["image_index"])
        skipped += int(out["skipped_images"])
        assert out["text_index"].numel() == 2 * len(out["image_index"])
    assert (scored, skipped) == (2 * remainder - 1, 1)
