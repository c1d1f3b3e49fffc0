"""Two processes over gloo (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine) give the same loss
and the same gradients as one process holding the whole global batch — for `clip`, `hnc`, `pairwise`, with pairs
of one image on both ranks, and with GradCache chunks — while the per-device loss (no gathering) does not."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from .helpers import REPO, TEST_SAMPLE, TRAIN_SAMPLE, accelerate_launch, copy_images

LOSS_TYPES = ("clip", "hnc", "pairwise")
# dist_parity.FAMILY_CASES: other families and layouts, pairs without (some of) their negatives among them
FAMILY_CASES = ["negclip", "hnc_k3", "siglip_clip", "siglip_hnc", "siglip_hnc_k3", "hnc_missing", "pairwise_missing",
                "siglip_hnc_missing", "fsc_clip_missing", "ce_clip_missing", "fsc_clip_local",
                "siglip2_naflex_hnc"]
# Relative gradient tolerance: float64 throughout, but SigLIP 2 resizes its position grid in float32
# (`Siglip2VisionEmbeddings.resize_positional_embeddings` calls `.float()`), so its gradients agree to ~1e-8.
GRAD_RTOL = {"siglip2_naflex_hnc": 1e-6}


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "parity.json"
    accelerate_launch(str(REPO / "tests" / "dist_parity.py"), str(out), undo=lambda: out.unlink(missing_ok=True))
    return json.loads(out.read_text())


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gathered_loss_and_grads_equal_single_process(parity, loss_type):
    r = parity[f"{loss_type}/gather"]
    assert r["distributed_loss"] == pytest.approx(r["single_process_loss"], rel=1e-10)
    assert r["max_grad_diff"] <= 1e-9 * max(1.0, r["max_grad"])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_device_loss_differs(parity, loss_type):
    """The check above has teeth: without gathering, loss and gradients are not the global ones."""
    r = parity[f"{loss_type}/local"]
    assert r["distributed_loss"] != pytest.approx(r["single_process_loss"], rel=1e-3)
    assert r["max_grad_diff"] > 1e-3


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_other_losses_and_layouts_equal_single_process_when_gathered(parity, case):
    """NegCLIP, K = 3 negatives per pair, and SigLIP's sigmoid (all pairs of the global batch, each once, scored
    on the process of its image): the one-process loss and gradients, and not without gathering."""
    r = parity[f"{case}/gather"]
    assert r["distributed_loss"] == pytest.approx(r["single_process_loss"], rel=1e-10)
    assert r["max_grad_diff"] <= GRAD_RTOL.get(case, 1e-9) * max(1.0, r["max_grad"])
    assert r.get("state_diff", 0.0) <= 1e-12  # CE-CLIP's thresholds: the global batch's on every process
    assert ("state_diff" in r) == (case == "ce_clip_missing")
    r = parity[f"{case}/local"]
    assert r["distributed_loss"] != pytest.approx(r["single_process_loss"], rel=1e-3)
    assert r["max_grad_diff"] > 1e-3


def test_gradcache_under_ddp_equals_single_process(parity):
    r = parity["hnc/gradcache"]
    assert r["distributed_loss"] == pytest.approx(r["single_process_loss"], rel=1e-10)
    assert r["max_grad_diff"] <= 1e-9


def launch_training(script: str, tmp_path, tiny_clip_dir, sample_image_dir, *extra: str):
    """A training script under `accelerate_launch` on the real-format sample; returns the output dir."""
    out = tmp_path / "out"
    accelerate_launch(
        str(REPO / script), "--model_name_or_path", str(tiny_clip_dir), "--train_file", str(TRAIN_SAMPLE),
        "--image_dir", str(sample_image_dir), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--do_train", "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--logging_steps",
        "1", *extra, undo=lambda: shutil.rmtree(out, ignore_errors=True),
    )
    return out


def test_run_script_under_accelerate_launch(tmp_path, tiny_clip_dir, sample_image_dir):
    """The entry script itself trains under `accelerate launch` with 2 processes and saves one loadable model."""
    from transformers import CLIPModel

    out = launch_training("run_hnc_clip.py", tmp_path, tiny_clip_dir, sample_image_dir, "--max_steps", "2",
                          "--save_strategy", "no")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # 2 processes × 4 pairs: the logged loss is over the gathered batch of 8
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == 594
    CLIPModel.from_pretrained(out, use_safetensors=True)


def test_a_nonfinite_loss_on_one_process_skips_the_step_on_all(tmp_path, tiny_clip_dir, sample_image_dir):
    """NaN on rank 1 only (`tests/dist_nan.py`): rank 0, which saves, must not move either (the flag is
    all-reduced before the fused optimizer sees it), and the next step trains."""
    from safetensors.torch import load_file

    out = launch_training("tests/dist_nan.py", tmp_path, tiny_clip_dir, sample_image_dir, "--max_steps", "2",
                          "--loss_type", "nan_on_rank1_first", "--save_strategy", "steps", "--save_steps", "1")
    before = load_file(tiny_clip_dir / "model.safetensors")
    after_1, after_2 = (load_file(out / f"checkpoint-{i}" / "model.safetensors") for i in (1, 2))
    assert all(torch.equal(before[k], after_1[k]) for k in before)
    assert any(not torch.equal(before[k], after_2[k]) for k in before)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[0]["nonfinite_steps"] == 1


@pytest.mark.parametrize("loss_type", [*LOSS_TYPES, "thesis_l2", "hnc/gradcache", "fsc_clip_local/gradcache"])
@pytest.mark.parametrize("split", ["uneven", "empty"])
def test_uneven_and_empty_local_batches_give_the_loss_of_their_union(parity, loss_type, split):
    """3 + 5 pairs (blocks of 6, padding masked), and 8 + none (rank 1's images all unreadable: it runs the
    placeholder pair, weighted 0): the same collectives on both processes (gloo aborted on unequal sizes), and the
    loss and gradients of one process holding the real rows — the per-process weights make DDP's average exact."""
    r = parity[f"{loss_type}_{split}" if loss_type.endswith("/gradcache") else f"{loss_type}/{split}"]
    assert r["distributed_loss"] == pytest.approx(r["single_process_loss"], rel=1e-10)
    assert r["max_grad_diff"] <= 1e-9 * max(1.0, r["max_grad"])


@pytest.mark.parametrize("case", FAMILY_CASES)
@pytest.mark.parametrize("split", ["uneven", "empty"])
def test_uneven_batches_of_the_other_families_and_layouts_give_the_loss_of_their_union(parity, case, split):
    """The padding under the other layouts: K = 3 negatives padded block by block (and their columns masked), SigLIP's
    sigmoid over padded columns (each contributes nothing), NegCLIP, SigLIP 2 NaFlex (an empty process's placeholder
    is patch rows with their mask and grid: the config has no image_size); the placeholder brings K negatives too."""
    r = parity[f"{case}/{split}"]
    assert r["distributed_loss"] == pytest.approx(r["single_process_loss"], rel=1e-10)
    assert r["max_grad_diff"] <= GRAD_RTOL.get(case, 1e-9) * max(1.0, r["max_grad"])
    assert r.get("state_diff", 0.0) <= 1e-12  # padding and the placeholder are left out of CE-CLIP's thresholds


def test_two_processes_with_a_third_of_the_images_corrupt_finish_count_them_and_save(tmp_path, tiny_clip_dir,
                                                                                     sample_image_dir):
    """A third of the images are git-lfs pointers, and rank 1's first batch has no readable image at all: every step
    still puts both processes through the same collectives (gloo used to abort on the unequal sizes; NCCL would hang),
    step 1 trains on rank 0's pairs (not skipped), the skipped pairs of both processes are counted, evaluation
    scores only readable pairs, and the saved model loads."""
    from transformers import CLIPModel

    names = sorted(p.name for p in sample_image_dir.iterdir())
    images = copy_images(sample_image_dir, tmp_path / "images", corrupt=set(names[::3]))
    out = launch_training("tests/dist_corrupt.py", tmp_path, tiny_clip_dir, images, "--train_file", str(TEST_SAMPLE),
                          "--per_device_train_batch_size", "8", "--max_steps", "6", "--save_strategy", "no",
                          "--do_eval", "--validation_file", str(TEST_SAMPLE), "--max_eval_samples", "40",
                          "--per_device_eval_batch_size", "8", "--eval_strategy", "steps", "--eval_steps", "6",
                          )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[0]["skipped_images"] >= 8 and history[0]["skipped_steps"] == 0  # rank 1's whole first batch
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_skipped_images"] == sum(h.get("skipped_images", 0) for h in history if "loss" in h) > 8
    assert results["train_pairs"] + results["train_skipped_images"] == 6 * 2 * 8
    assert 0 < results["eval_samples"] < 40 and math.isfinite(results["eval_loss"])
    assert results["eval_samples"] + results["eval_skipped_images"] == 40  # each pair once (no even-out repeats)
    logged = [h for h in history if "eval_loss" in h][-1]  # step 6's evaluation, logged: the same numbers
    assert (logged["eval_samples"], logged["eval_skipped_images"]) == (results["eval_samples"],
                                                                       results["eval_skipped_images"])
    CLIPModel.from_pretrained(out, use_safetensors=True)


def test_two_process_evaluation_scores_every_hard_image_pair_of_the_last_uneven_batch(tmp_path, tiny_clip_dir,
                                                                                     sample_image_dir, sample_pairs):
    """11 table rows, each bringing one hard-image pair, evaluated 8 per process: the last (only) batch is uneven,
    and dropping accelerate's even-out repeats by position dropped the hard-image pairs too (22 pairs scored 11)."""
    rows = [{"image_path": p["image_file"], "caption": p["positive"], "negative_captions": [p["negative"]],
             "hard_images": [(i + 1) % 11]} for i, p in enumerate(sample_pairs["train"][:11])]  # fmt: skip
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # --overwrite_output_dir: a launch retried after a rendezvous failure finds the first try's files
    out = launch_training("run_hnc_clip.py", tmp_path, tiny_clip_dir, sample_image_dir, "--train_file", str(table),
                          "--negative_image_column", "hard_images", "--max_steps", "1", "--save_strategy", "no",
                          "--do_eval", "--validation_file", str(table), "--per_device_eval_batch_size", "8",
                          "--loss_type", "negclip", "--mask_same_image", "false",
                          "--overwrite_output_dir")  # fmt: skip
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] + results["eval_skipped_images"] == 22
