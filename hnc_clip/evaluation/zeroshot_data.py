"""Zero-shot classification inputs: an image-folder dataset, its class names and the prompt templates."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .records import Record, read_json

# A small CLIP-style ensemble (a subset of the 80 ImageNet templates of Radford et al. 2021, notebook
# `Prompt_Engineering_for_ImageNet.ipynb`): enough to average out single-prompt noise, cheap to encode.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "itap of a {}.",
)

# Which split of an image folder to score when the user does not name one: held-out data first.
_SPLIT_PREFERENCE = ("test", "validation", "train")


def load_imagefolder(data_dir: str, split: str | None = None, cache_dir: str | None = None):
    """`datasets.load_dataset("imagefolder", data_dir=...)`, one split: `split`, else test, validation or train."""
    import datasets

    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"zero-shot image folder not found: {data_dir}")
    dataset_dict = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
    if split is None:
        split = next((s for s in _SPLIT_PREFERENCE if s in dataset_dict), next(iter(dataset_dict)))
    if split not in dataset_dict:
        raise ValueError(f"split {split!r} not in {data_dir}; available: {list(dataset_dict)}")
    dataset = dataset_dict[split]
    for column in ("image", "label"):
        if column not in dataset.column_names:
            raise ValueError(f"{data_dir}: imagefolder gave no {column!r} column (columns: {dataset.column_names})")
    return dataset


def default_classname(folder: str) -> str:
    """Folder name -> prompt class name: `golden_retriever` -> `golden retriever`."""
    return folder.replace("_", " ").strip()


def read_classnames(path: str | None, folder_names: Sequence[str]) -> list[str]:
    """Class names in label-id order (the order of `folder_names`, which imagefolder sorts).

    `path` may be a JSON list (already in label order), a JSON dict folder -> name (folders it lacks keep their
    default name), or a text file with one name per line. Without `path`: folder names with `_` -> space.
    """
    defaults = [default_classname(f) for f in folder_names]
    if not path:
        return defaults
    if path.endswith(".json"):  # empty, [], {} and a byte order mark as every evaluation file (`records`)
        data = read_json(path, (list, dict))
        if isinstance(data, dict):
            by_folder = Record(path, "the top level", data)
            return [by_folder.text(f) if f in data else default for f, default in zip(folder_names, defaults)]
        names = Record(path, "the top level", {"class names": data}).texts("class names")
    else:
        with open(path, encoding="utf-8-sig") as f:
            names = [line.strip() for line in f.read().splitlines() if line.strip()]
    if len(names) != len(folder_names):
        raise ValueError(
            f"{path}: {len(names)} class names for {len(folder_names)} class folders {list(folder_names)}"
        )
    return names


def read_templates(path: str | None) -> list[str]:
    """Prompt templates from a JSON list of strings containing `{}`; default `DEFAULT_TEMPLATES`."""
    if not path:
        return list(DEFAULT_TEMPLATES)
    templates = read_json(path, list)
    if (
        not isinstance(templates, list)
        or not templates
        or not all(isinstance(t, str) and "{}" in t for t in templates)
    ):
        raise ValueError(
            f"{path}: expected a non-empty JSON list of strings with a '{{}}' slot, e.g. ['a photo of a {{}}.']"
        )
    return templates
