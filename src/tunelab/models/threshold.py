"""Choosing a binary classifier's decision threshold on validation data.

``model.decision_threshold=auto`` asks ``tunelab-train`` to pick, after training, the threshold on
``P(class 1)`` that maximises the F1 score of class 1 on the validation split
(:func:`best_f1_threshold`). The threshold is stored in the checkpoints and the exported model and
used by ``tunelab-eval`` and ``tunelab-predict``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics.functional.classification import binary_precision_recall_curve

Threshold = float | Literal["auto"]


def parse_threshold(value: Threshold | str) -> tuple[float, bool]:
    """``(threshold to use now, whether to choose one after training)`` for a config value."""
    if value == "auto":
        return 0.5, True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"model.decision_threshold={value!r} must be a probability in (0, 1) (0.5: the "
            "most probable class) or auto (the validation-F1-best threshold)"
        )
    return float(value), False


def best_f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The threshold on ``scores`` (``P(class 1)``) that maximises class 1's F1 on these labels.

    Every distinct score is a candidate (the exact precision-recall curve); class 1 is predicted
    where ``score >= threshold``. The threshold returned lies halfway between the best candidate
    and the next lower score, so that it makes the same predictions on this data and does not
    sit on one example's score. Ties in F1 go to the highest threshold.

    Args:
        scores: ``P(class 1)`` per example, shape ``(N,)``.
        labels: 0/1 labels, shape ``(N,)``.

    Returns:
        ``(threshold, F1 at that threshold)``.

    Raises:
        ValueError: no examples, or no example of class 1 (every threshold has F1 0).
    """
    scores = scores.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if scores.numel() == 0 or int(labels.sum()) == 0:
        raise ValueError(
            "model.decision_threshold=auto needs validation examples of class 1 to choose a "
            f"threshold (got {scores.numel()} examples, {int(labels.sum())} of class 1); set "
            "model.decision_threshold=0.5 or give the validation split positive examples"
        )
    precision, recall, thresholds = binary_precision_recall_curve(scores, labels)
    # the last (precision 1, recall 0) point has no threshold
    precision, recall = precision[:-1], recall[:-1]
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros(1)
    )
    best = int(torch.nonzero(f1 == f1.max()).max())  # thresholds ascend: the highest best one
    below = scores[scores < thresholds[best]]
    low = float(below.max()) if below.numel() else 0.0
    return (low + float(thresholds[best])) / 2, float(f1[best])
