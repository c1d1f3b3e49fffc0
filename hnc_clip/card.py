"""Model cards: the one written with a fine-tuned model (data, loss, hyper-parameters, the run's metrics) and the
evaluation results merged into a card's `model-index` (what the Hub reads) and a results table.

Writing the card of a local folder is plain file I/O and works offline. Pushing happens only for a model given as a
Hub repo id *and* with explicit permission (`--push_to_hub`), through `ModelCard.push_to_hub`.
"""

from __future__ import annotations

import logging
import os
import re

from huggingface_hub import EvalResult, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

HYPERPARAMETERS = (
    "loss_type",
    "hard_negative_weight",
    "hard_negative_schedule",
    "hard_negative_weight_min",
    "hard_negative_warmup_steps",
    "l2_reg_weight",
    "kl_weight",
    "dpo_beta",
    "finetune_mode",
    "lora_r",
    "lora_alpha",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "weight_decay",
    "warmup_steps",
    "seed",
    "max_logit_scale",
    "gather_negatives",
    "mask_same_image",
)

TEMPLATE = """# {model_name}

CLIP fine-tuned with **Hard Negative Captions** (HNC) by the hnc-clip recipe: the CLIP contrastive loss plus a
weighted hard-negative term, so that the model tells "the cup is left of the plate" from "right of" while keeping
its object recognition.

- Base model: `{base_model}`
- Training data: {train_file}{sources}
- Validation data: {validation_file}
- Loss: `{loss_type}`

## Hyper-parameters

| name | value |
|---|---|
{rows}

Settings decided from the training machine (flags left unset): {machine_defaults}

## Results

{results}

## Use

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("{repo}")  # CLIPModel, SiglipModel, ...: the base model's class
processor = AutoProcessor.from_pretrained("{repo}")
```
"""


def write_model_card(
    output_dir: str,
    training_args,
    model_name: str | None = None,
    base_model: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    metrics: dict | None = None,
    machine_defaults: dict | None = None,
    train_sources: list[dict] | None = None,
) -> str:
    rows = "\n".join(f"| {k} | {getattr(training_args, k)} |" for k in HYPERPARAMETERS if hasattr(training_args, k))
    metrics = metrics or {}
    results = "\n".join(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items())
    name = model_name or os.path.basename(os.path.normpath(output_dir))
    data = ModelCardData(
        library_name="transformers",
        base_model=base_model if base_model and not os.path.isdir(base_model) else None,
        tags=["clip", "hard-negatives", "hnc", "contrastive", "hnc-clip"],
        datasets=None,
        pipeline_tag="zero-shot-image-classification",
    )
    content = f"---\n{data.to_yaml()}\n---\n" + TEMPLATE.format(
        model_name=name,
        base_model=base_model,
        train_file=train_file,
        sources=sources_table(train_sources, metrics) if train_sources else "",
        validation_file=validation_file,
        loss_type=getattr(training_args, "loss_type", None),
        rows=rows,
        results=results or "(see `all_results.json`)",
        machine_defaults=", ".join(f"`{k}={v}`" for k, v in (machine_defaults or {}).items()) or "none",
        repo=getattr(training_args, "hub_model_id", None) or name,
    )
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    ModelCard(content).save(path)
    return path


def sources_table(sources: list[dict], metrics: dict) -> str:
    """The mixed training sources: each one's weight and its share of the records the run read (counted per
    batch, `source/<name>`, summed over processes)."""
    counts = {s["name"]: metrics.get(f"train_source/{s['name']}", 0) for s in sources}
    total = sum(counts.values())
    rows = []
    for s in sources:
        n = counts[s["name"]]
        share = f"{n / total:.1%}" if total else "–"
        rows.append(f"| {s['name']} | `{s['source']}` | {s['probability']:.3g} | {share} ({n:,}) |")
    rows = "\n".join(rows)
    return ("\n\n| source | location | weight | share read (records) |\n|---|---|---|---|\n" + rows + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Evaluation results in a card

# task -> (model-index task type, task name, [(result key, metric type, metric name)]).
# Pairwise caption selection has no Hub task id of its own; a descriptive type keeps it apart from classification.
CARD_METRICS = {
    "pairwise": (
        "image-text-matching",
        "Hard-negative caption selection",
        [("accuracy", "accuracy", "Pairwise accuracy"), ("macro_accuracy", "accuracy", "Macro accuracy over types")],
    ),
    "retrieval": (
        "image-text-retrieval",
        "Image-text retrieval",
        [
            (f"{d}_R@{k}", "recall", f"{d.replace('_', ' ')} R@{k}")
            for d in ("image_to_text", "text_to_image")
            for k in (1, 5, 10)
        ],
    ),
    "zeroshot": (
        "zero-shot-image-classification",
        "Zero-shot image classification",
        [
            ("top1", "accuracy", "Top-1 accuracy"),
            ("top5", "accuracy", "Top-5 accuracy"),
            ("mean_per_class_recall", "recall", "Mean per-class recall"),
        ],
    ),
}

_START, _END = "<!-- hnc-clip-eval:start -->", "<!-- hnc-clip-eval:end -->"


def eval_results_for(model_results: dict, datasets: dict[str, tuple[str, str]]) -> list[EvalResult]:
    """`EvalResult`s for one model's `{task: metrics}`; `datasets` maps task -> (dataset type, dataset name)."""
    out = []
    for task, metrics in model_results.items():
        if task not in CARD_METRICS or task not in datasets:
            continue
        task_type, task_name, keys = CARD_METRICS[task]
        dataset_type, dataset_name = datasets[task]
        for key, metric_type, metric_name in keys:
            if key in metrics:
                out.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=task_name,
                        dataset_type=dataset_type,
                        dataset_name=dataset_name,
                        metric_type=metric_type,
                        metric_name=metric_name,
                        metric_value=round(float(metrics[key]), 6),
                    )
                )
    return out


# Registry benchmarks (`results["benchmarks"]`): model-index task type per task shape.
BENCHMARK_TASK_TYPES = {
    "2-way": "image-text-matching",
    "n-way": "image-text-matching",
    "winoground-2x2": "image-text-matching",
    "retrieval": "image-text-retrieval",
    "classification": "zero-shot-image-classification",
}


def benchmark_eval_results(model_results: dict) -> list[EvalResult]:
    """One `EvalResult` per registry benchmark: its headline number under the benchmark's own name."""
    from hnc_clip.evaluation.benchmarks import REGISTRY

    out = []
    for name, metrics in model_results.get("benchmarks", {}).items():
        bench = REGISTRY.get(name)
        if bench is None or metrics.get("headline") is None:
            continue
        out.append(
            EvalResult(
                task_type=BENCHMARK_TASK_TYPES.get(bench.shape, "image-text-matching"),
                task_name=bench.title,
                dataset_type=name,
                dataset_name=bench.title,
                metric_type=bench.headline,
                metric_name=f"{bench.title}: {bench.headline}",
                metric_value=round(float(metrics["headline"]), 6),
            )
        )
    return out


def _same_slot(a: EvalResult, b: EvalResult) -> bool:
    return (a.task_type, a.dataset_type, a.dataset_name, a.metric_type, a.metric_name) == (
        b.task_type,
        b.dataset_type,
        b.dataset_name,
        b.metric_type,
        b.metric_name,
    )


def _results_section(model_results: dict) -> str:
    rows = [
        f"| {task} | {name} | {metrics[key]:.4f} |"
        for task, metrics in model_results.items()
        if task in CARD_METRICS
        for key, _, name in CARD_METRICS[task][2]
        if key in metrics
    ]
    rows += [f"| benchmark | {r.metric_name} | {r.metric_value:.4f} |" for r in benchmark_eval_results(model_results)]
    return "\n".join([_START, "## Evaluation results", "", "| task | metric | value |", "|---|---|---|", *rows, _END])


def update_model_card(card: ModelCard | None, model_name: str, model_results: dict, datasets: dict) -> ModelCard:
    """`card` with these results merged in: same (task, dataset, metric) entries replaced, others kept.

    The human-readable table lives between marker comments so re-running replaces it instead of appending.
    """
    new = eval_results_for(model_results, datasets) + benchmark_eval_results(model_results)
    if card is None:
        card = ModelCard(f"---\n{ModelCardData(model_name=model_name).to_yaml()}\n---\n\n# {model_name}\n")
    old = card.data.eval_results or []
    card.data.eval_results = [r for r in old if not any(_same_slot(r, n) for n in new)] + new
    # model-index entries need a name; keep the card's own if it has one.
    card.data.model_name = card.data.model_name or model_name
    section = _results_section(model_results)
    body = card.text
    if _START in body and _END in body:
        body = re.sub(re.escape(_START) + ".*?" + re.escape(_END), lambda _: section, body, flags=re.DOTALL)
    else:
        body = body.rstrip() + "\n\n" + section + "\n"
    return ModelCard(f"---\n{card.data.to_yaml()}\n---\n{body}")


def write_local_model_card(model_dir: str, model_name: str, model_results: dict, datasets: dict) -> str:
    """Merge results into `model_dir/README.md` (created if absent); returns the path."""
    path = os.path.join(model_dir, "README.md")
    card = ModelCard.load(path) if os.path.isfile(path) else None
    update_model_card(card, model_name, model_results, datasets).save(path)
    return path


def publish_results(
    model_name_or_path: str,
    model_name: str,
    model_results: dict,
    datasets: dict,
    output_dir: str,
    push_to_hub: bool = False,
) -> dict:
    """Write results into the model's card; push only for Hub repo ids and only with `push_to_hub`.

    - local folder: its `README.md` is updated (never pushed: a folder has no repo to push to);
    - Hub repo id with `push_to_hub`: the Hub card is loaded, updated and pushed with the user's token;
    - Hub repo id without it: the updated card goes to `output_dir/model_cards/<name>/README.md` for review.
    """
    if os.path.isdir(model_name_or_path):
        return {
            "card": write_local_model_card(model_name_or_path, model_name, model_results, datasets),
            "pushed": False,
        }
    if push_to_hub:
        card = update_model_card(ModelCard.load(model_name_or_path), model_name, model_results, datasets)
        card.push_to_hub(model_name_or_path, commit_message="Add hnc-clip evaluation results")
        return {"card": model_name_or_path, "pushed": True}
    local_dir = os.path.join(output_dir, "model_cards", re.sub(r"[^\w.@-]+", "_", model_name))
    os.makedirs(local_dir, exist_ok=True)
    path = os.path.join(local_dir, "README.md")
    update_model_card(None, model_name, model_results, datasets).save(path)
    logger.warning("%s is not a local folder; card written to %s (pass --push_to_hub to push it)", model_name, path)
    return {"card": path, "pushed": False}
