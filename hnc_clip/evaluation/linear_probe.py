"""Linear probe: logistic regression on frozen image features, with a deterministic per-class split."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F


def split_per_class(labels: np.ndarray, train_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): each class split `train_fraction` / rest after a seeded shuffle.

    Per class, so small classes land on both sides; a class with a single image goes to train only.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = min(max(1, round(len(idx) * train_fraction)), max(1, len(idx) - 1))
        train.extend(idx[:n_train].tolist())
        test.extend(idx[n_train:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _sklearn_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int, seed: int):
    """Class probabilities `[T, C]` from scikit-learn's LogisticRegression (lbfgs, L2, C=1)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, y_train)
    # predict_proba has one column per class *seen in training*; unseen classes get -1 so they rank last.
    scores = torch.full((len(x_test), num_classes), -1.0)
    scores[:, torch.as_tensor(clf.classes_)] = torch.from_numpy(clf.predict_proba(x_test)).float()
    return scores


def _fit_torch(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int):
    """Multinomial logistic regression by full-batch L-BFGS (what sklearn's lbfgs solver does), zero-initialised."""
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)  # [D, C]
    bias = torch.zeros(num_classes, requires_grad=True)  # [C]
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def linear_probe_rankings(
    features: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    train_fraction: float = 0.5,
    weight_decay: float = 1e-3,
    max_iter: int = 100,
    top_k: int = 5,
) -> tuple[list[list[int]], list[int], str]:
    """Fit on the train split, rank classes on the test split: (ranked class ids, true labels, backend name).

    scikit-learn's `LogisticRegression` when installed, else torch L-BFGS (the project does not depend on sklearn).
    """
    labels = np.asarray(labels, dtype=np.int64)
    train, test = split_per_class(labels, train_fraction, seed)
    if len(test) == 0:
        raise ValueError("linear probe: every class has a single image, nothing left to test on")
    x = features.float().cpu()
    k = min(top_k, num_classes)
    if importlib.util.find_spec("sklearn") is None:
        weight, bias = _fit_torch(x[train], torch.from_numpy(labels[train]), num_classes, weight_decay, max_iter)
        scores = x[test] @ weight + bias  # [T, C]
        backend = "torch_lbfgs"
    else:
        scores = _sklearn_scores(x[train].numpy(), labels[train], x[test].numpy(), num_classes, seed)
        backend = "sklearn"
    ranked = scores.topk(k, dim=1).indices.tolist()
    return ranked, labels[test].tolist(), backend
