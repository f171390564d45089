"""Classification metrics per stage."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def build_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy, precision, recall and F1: binary for 2 classes, macro-averaged otherwise."""
    if num_classes == 2:
        metrics = {
            "acc": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
        }
    else:
        kw = {"num_classes": num_classes, "average": "macro"}
        metrics = {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "precision": MulticlassPrecision(**kw),
            "recall": MulticlassRecall(**kw),
            "f1": MulticlassF1Score(**kw),
        }
    return MetricCollection(metrics, prefix=prefix)


def scores_for_metrics(logits: torch.Tensor) -> torch.Tensor:
    """What the metrics above expect: P(class 1) for binary, class probabilities otherwise."""
    probs = logits.detach().float().softmax(dim=-1)
    return probs[:, 1] if probs.shape[-1] == 2 else probs
