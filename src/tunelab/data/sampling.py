"""Which training examples a run sees: imbalanced and capped subsets, class counts, and a
class-balanced sampler that resumes mid-epoch like :class:`~tunelab.data.resumable.EpochSampler`.

The data modules call :func:`train_subset` on the training split only (validation and test stay
as they are) and :func:`train_sampler` for the training loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from tunelab.data.resumable import EpochSampler

SAMPLERS = ("random", "balanced")
Labels = Sequence[int] | np.ndarray | torch.Tensor


def _as_array(labels: Labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy().astype(np.int64)
    return np.asarray(labels, dtype=np.int64)


def class_counts(labels: Labels, num_classes: int) -> list[int]:
    """How many examples of each class ``0 .. num_classes - 1`` the labels hold."""
    return np.bincount(_as_array(labels), minlength=num_classes)[:num_classes].tolist()


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """``n / (k * count_c)`` per class: scikit-learn's ``class_weight="balanced"``.

    Raises:
        ValueError: a class has no training examples (its weight would be infinite).
    """
    n, k = sum(counts), len(counts)
    empty = [c for c, count in enumerate(counts) if count == 0]
    if empty:
        raise ValueError(
            f"model.class_weights=balanced: class(es) {empty} have no training examples, so "
            "their weight would be infinite; give the weights as a list "
            "(model.class_weights=[w0,w1,...]) or fix the data"
        )
    return [n / (k * count) for count in counts]


def imbalance_indices(labels: Labels, ratio: float, seed: int, minority: int = 1) -> np.ndarray:
    """Indices that keep every example except a seeded ``ratio`` share of class ``minority``.

    Keeps ``max(1, round(ratio * count))`` examples of class ``minority`` (chosen at random with
    ``seed``) and all others, in their original order.
    """
    y = _as_array(labels)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"data.imbalance_ratio={ratio} must be in (0, 1], e.g. 0.1")
    positives = np.flatnonzero(y == minority)
    keep = max(1, round(ratio * len(positives))) if len(positives) else 0
    chosen = np.random.default_rng(seed).choice(positives, size=keep, replace=False)
    mask = y != minority
    mask[chosen] = True
    return np.flatnonzero(mask)


def stratified_first_k(labels: Labels, k: int, seed: int) -> np.ndarray:
    """The first ``k`` examples of a seeded shuffle, with each class's share of ``k`` kept.

    Each class gets ``k * count_c / n`` places (largest remainders round, so the quotas sum to
    ``k``) and fills them with its first members in the shuffled order; the result is in the
    shuffled order. ``k >= n`` keeps everything, shuffled.
    """
    y = _as_array(labels)
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    if k >= n:
        return perm
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * k / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: k - int(quota.sum())]:
        quota[i] += 1
    shuffled = y[perm]
    keep = np.zeros(n, dtype=bool)
    for c, q in zip(classes, quota, strict=True):
        keep[np.flatnonzero(shuffled == c)[:q]] = True
    return perm[keep]


def train_subset(
    labels: Labels,
    seed: int,
    imbalance_ratio: float | None = None,
    max_train_samples: int | None = None,
) -> np.ndarray | None:
    """The training indices to keep (``None``: all, in order): first the imbalance, then the cap.

    Args:
        labels: the training split's labels.
        seed: the data's split seed (the same subset for every run of a data config).
        imbalance_ratio: keep this share of class 1 (``data.imbalance_ratio``).
        max_train_samples: keep this many (``data.max_train_samples``; stratified).
    """
    y = _as_array(labels)
    index = np.arange(len(y))
    if imbalance_ratio is not None:
        index = index[imbalance_indices(y, imbalance_ratio, seed)]
    if max_train_samples is not None and max_train_samples < len(index):
        index = index[stratified_first_k(y[index], max_train_samples, seed)]
    elif imbalance_ratio is None:
        return None
    return index


class BalancedEpochSampler(EpochSampler):
    """Draws each epoch's indices with replacement so that every class is equally likely.

    Example ``i`` of class ``c`` has weight ``1 / count_c`` (as with
    ``torch.utils.data.WeightedRandomSampler``); an epoch draws as many indices as the split
    has. The draw is a function of ``(seed, epoch)`` only, so DDP sharding and the mid-epoch
    resume of :class:`EpochSampler` (through ``ResumableDataLoader``) work unchanged.

    Args:
        labels: the training split's labels.
        seed: base seed; epoch ``e`` uses a generator seeded with ``seed`` and ``e``.
        num_replicas: number of data-parallel processes.
        rank: this process's rank among them.
    """

    def __init__(self, labels: Labels, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        y = _as_array(labels)
        super().__init__(len(y), seed=seed, num_replicas=num_replicas, rank=rank)
        counts = np.bincount(y)
        self.weights = torch.as_tensor(1.0 / counts[y], dtype=torch.float64)

    def indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.multinomial(self.weights, self.num_samples, True, generator=g).tolist()


def train_sampler(
    kind: Literal["random", "balanced"],
    labels: Labels,
    seed: int,
    lengths: Sequence[int] | None = None,
    batch_size: int = 1,
    num_replicas: int = 1,
    rank: int = 0,
) -> EpochSampler:
    """The training sampler for ``data.sampler``: ``random`` (shuffled, or length-grouped when
    ``lengths`` are given) or ``balanced`` (:class:`BalancedEpochSampler`; no length grouping).
    """
    if kind == "balanced":
        return BalancedEpochSampler(labels, seed, num_replicas=num_replicas, rank=rank)
    if kind != "random":
        raise ValueError(f"data.sampler={kind!r}: use random or balanced")
    return EpochSampler(
        len(labels),
        seed=seed,
        lengths=lengths,
        batch_size=batch_size,
        num_replicas=num_replicas,
        rank=rank,
    )
