"""Classification metrics per stage.

:func:`build_metrics` gives the per-step collections (``acc``, ``precision``, ``recall``,
``f1``; logged as ``val/acc`` etc.). :func:`imbalance_metrics` adds, from a whole epoch's class
probabilities, what still means something when classes are imbalanced: macro-F1, precision,
recall and F1 of each class, and for binary tasks average precision (PR-AUC) and ROC-AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tunelab.data.labels import metric_suffixes


def build_metrics(num_classes: int, prefix: str, threshold: float = 0.5) -> MetricCollection:
    """Accuracy, precision, recall and F1: binary for 2 classes (class 1 is predicted when its
    probability is at least ``threshold``), macro-averaged otherwise."""
    if num_classes == 2:
        metrics = {
            "acc": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
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


def set_threshold(metrics: MetricCollection, threshold: float) -> None:
    """Make the binary metrics of a collection predict class 1 from ``threshold`` on."""
    for metric in metrics.values():
        if hasattr(metric, "threshold"):
            metric.threshold = float(threshold)


def predicted_labels(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Labels from class probabilities ``(N, C)``: class 1 where ``P(1) >= threshold`` for two
    classes, the most probable class otherwise."""
    if probs.shape[-1] == 2:
        return (probs[:, 1] >= threshold).long()
    return probs.argmax(dim=-1)


def imbalance_metric_names(num_classes: int, label_names: Sequence[str] | None = None) -> list[str]:
    """The names :func:`imbalance_metrics` returns (without the stage prefix)."""
    names = ["f1_macro"]
    for c in metric_suffixes(label_names or [str(i) for i in range(num_classes)]):
        names += [f"precision_{c}", f"recall_{c}", f"f1_{c}"]
    return names + (["pr_auc", "roc_auc"] if num_classes == 2 else [])


def imbalance_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = 0.5,
    label_names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Macro-F1, per-class precision / recall / F1 and, for two classes, PR-AUC and ROC-AUC.

    Args:
        probs: class probabilities ``(N, C)`` of a whole epoch.
        labels: true labels ``(N,)``.
        threshold: for two classes, predict class 1 where ``P(1) >= threshold``.
        label_names: the class names; ``<c>`` below is each one made safe for metric keys
            (:func:`~tunelab.data.labels.metric_suffixes`), or the class index without names.

    Returns:
        ``{"f1_macro", "precision_<c>", "recall_<c>", "f1_<c>", ("pr_auc", "roc_auc")}``; a
        class with no predictions (or no examples) scores 0 precision (or recall).
    """
    num_classes = probs.shape[-1]
    preds = predicted_labels(probs, threshold)
    kw = {"num_classes": num_classes, "average": None, "zero_division": 0}
    out = {"f1_macro": multiclass_f1_score(preds, labels, num_classes, average="macro")}
    per_class = {
        "precision": multiclass_precision(preds, labels, **kw),
        "recall": multiclass_recall(preds, labels, **kw),
        "f1": multiclass_f1_score(preds, labels, **kw),
    }
    suffixes = metric_suffixes(label_names or [str(i) for i in range(num_classes)])
    for c, suffix in enumerate(suffixes):
        for name, values in per_class.items():
            out[f"{name}_{suffix}"] = values[c]
    if num_classes == 2:
        out["pr_auc"] = binary_average_precision(probs[:, 1], labels)
        out["roc_auc"] = binary_auroc(probs[:, 1], labels)
    return out
