"""The model card pushed with a fine-tuned model: data, loss and hyper-parameters, as Hub metadata + text."""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

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
- Training data: {train_file}
- Validation data: {validation_file}
- Loss: `{loss_type}`

## Hyper-parameters

| name | value |
|---|---|
{rows}

## Results

{results}

## Use

```python
from transformers import CLIPModel, CLIPProcessor
model = CLIPModel.from_pretrained("{repo}")
processor = CLIPProcessor.from_pretrained("{repo}")
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
        validation_file=validation_file,
        loss_type=getattr(training_args, "loss_type", None),
        rows=rows,
        results=results or "(see `all_results.json`)",
        repo=getattr(training_args, "hub_model_id", None) or name,
    )
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    ModelCard(content).save(path)
    return path
