"""Per-run plots and tables: learning curves, the test confusion matrix, the worst errors.

:class:`RunReport` (``callbacks.run_report``) keeps the per-epoch headline metrics in its own
state, so they survive a resume, and writes into the run directory:

- ``learning_curves.png``: training and validation loss, and the main metric, per epoch;
- ``confusion_matrix.png``: true against predicted class on the test set (counts, coloured by
  the share of each true class), with the decision threshold of binary models applied; the
  counts also as ``confusion_matrix.csv`` (rows: true class, columns: predicted);
- ``errors.csv`` (text models): the test examples the model got wrong with the most confidence.

Plots use Matplotlib's object API (``Figure``) with no pyplot state and no GUI backend, so they
work on a headless machine and inside a notebook alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import multiclass_confusion_matrix

from tunelab.console import EpochCompleted
from tunelab.models.metrics import predicted_labels
from tunelab.utils.io import atomic_write_bytes, atomic_write_csv

LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
CONFUSION_MATRIX_CSV = "confusion_matrix.csv"
ERRORS = "errors.csv"


class RunReport(EpochCompleted, L.Callback):
    """Writes the learning curves after training and the test-set plots after testing.

    Args:
        dirpath: the run directory.
        metric: the main metric, e.g. ``val/acc`` (its stage prefix is ignored): plotted for the
            training and validation sets beside the loss.
        top_errors: rows of ``errors.csv`` (text models); 0 writes none.
    """

    def __init__(self, dirpath: str | Path, metric: str = "val/acc", top_errors: int = 20) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.metric = metric.rpartition("/")[2]
        self.top_errors = top_errors
        self.history: list[dict[str, float]] = []
        self._trainer: L.Trainer | None = None

    # ---- learning curves -----------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def epoch_completed(self, trainer: L.Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": float(epoch + 1), "step": float(trainer.global_step)}
        for stage in ("train", "val"):
            for name in ("loss", self.metric):
                if f"{stage}/{name}" in metrics:
                    row[f"{stage}/{name}"] = metrics[f"{stage}/{name}"]
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the last epoch's row
        if trainer.is_global_zero and self.history:
            fig = learning_curves(self.history, self.metric)
            save(fig, self.dirpath / LEARNING_CURVES)

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint written at an epoch's end (after the module logged its training metrics)
        # must hold that epoch's row, or a run resumed from it would miss the epoch.
        if self._pending is not None and self._trainer is not None:
            self.flush_epoch(self._trainer)
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]

    # ---- test set ------------------------------------------------------------------------
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_test_report(pl_module, trainer.datamodule, self.dirpath, self.top_errors)


def write_test_report(
    model: L.LightningModule, datamodule: Any, dirpath: Path, top_errors: int = 20
) -> None:
    """The confusion matrix (PNG and CSV) and, for text data, ``errors.csv`` of the latest test
    epoch of ``model`` (a tunelab classifier; other modules are skipped)."""
    collected = getattr(model, "collected", None)
    if collected is None:
        return
    probs, labels = collected("test")  # every process holds all of it, also under DDP
    if not len(labels):
        return
    preds = predicted_labels(probs, getattr(model, "decision_threshold", 0.5))
    names = class_names(model, datamodule, probs.shape[-1])
    matrix = multiclass_confusion_matrix(preds, labels, num_classes=probs.shape[-1])
    total = split_size(datamodule, "test")
    save(confusion_matrix(matrix, names, of=total), dirpath / CONFUSION_MATRIX)
    write_matrix(dirpath / CONFUSION_MATRIX_CSV, matrix, names)
    texts = getattr(datamodule, "texts", None)
    if texts is not None and top_errors > 0:
        # A limited test (trainer.limit_test_batches, fast_dev_run) saw the split's first
        # batches: the loader does not shuffle, so those are its first len(labels) texts.
        evaluated = texts("test")[: len(labels)]
        write_errors(dirpath / ERRORS, evaluated, probs, preds, labels, names, top_errors)


def split_size(datamodule: Any, split: str) -> int | None:
    """Examples in a data module's split (None where it does not say)."""
    splits = getattr(datamodule, "splits", None) or {}
    return len(splits[split]) if split in splits else None


def class_names(model: Any, datamodule: Any, num_classes: int) -> list[str]:
    """The model's label names (from its data config), the data module's, or the ids."""
    for owner in (model, datamodule):
        names = getattr(owner, "label_names", None)
        if names and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG, atomically: never a half-written image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def learning_curves(history: Sequence[dict[str, float]], metric: str = "acc") -> Figure:
    """Loss and ``metric`` per epoch, training against validation: two panels.

    Args:
        history: one dict per epoch with ``epoch`` and any of ``train/loss``, ``val/loss``,
            ``train/<metric>``, ``val/<metric>``.
        metric: the metric of the second panel.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, 2), ("loss", metric), strict=True):
        for stage, style in (("train", "o-"), ("val", "s-")):
            key = f"{stage}/{name}"
            rows = [r for r in history if key in r]
            if rows:
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle("learning curves")
    return fig


def confusion_matrix(matrix: torch.Tensor, names: Sequence[str], of: int | None = None) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with its counts written in.

    Cells are coloured by the share of their row, so a rare class reads as clearly as a common
    one; the title gives the accuracy, and says so where only ``total`` of the ``of`` test
    examples were evaluated (a limited run).
    """
    counts = matrix.cpu().long()
    k = len(names)
    shares = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.6 * k + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    for i in range(k):
        for j in range(k):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color=color)
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    accuracy = float(counts.diag().sum()) / max(total, 1)
    what = f"{total} examples" if of is None or of <= total else f"{total} of {of} (limited)"
    ax.set_title(f"test confusion matrix: {what}, accuracy {accuracy:.4f}")
    return fig


def write_matrix(path: Path, matrix: torch.Tensor, names: Sequence[str]) -> None:
    """The confusion matrix as CSV: a header of predicted classes, a row per true class."""
    counts = matrix.cpu().long().tolist()
    rows = ([name, *row] for name, row in zip(names, counts, strict=True))
    atomic_write_csv(path, ["true \\ predicted", *names], rows)


def write_errors(
    path: Path,
    texts: Sequence[str],
    probs: torch.Tensor,
    preds: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    top: int = 20,
) -> int:
    """Write the ``top`` wrong predictions with the highest confidence in their wrong class.

    Columns: ``index`` (row of the test split), ``label``, ``predicted``, ``confidence``
    (probability of the predicted class), ``p_label`` (probability of the true class), ``text``.

    Returns:
        The number of rows written.

    Raises:
        ValueError: ``texts`` and ``probs`` are not the same length.
    """
    if len(texts) != len(probs):
        raise ValueError(f"{len(texts)} texts but {len(probs)} predictions for {path.name}")
    wrong = (preds != labels).nonzero().flatten()
    confidence = probs.gather(1, preds[:, None]).squeeze(1)
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:top]
    rows = [
        [
            i,
            names[int(labels[i])],
            names[int(preds[i])],
            f"{float(confidence[i]):.4f}",
            f"{float(probs[i, labels[i]]):.4f}",
            texts[i],
        ]
        for i in order.tolist()
    ]
    atomic_write_csv(path, ["index", "label", "predicted", "confidence", "p_label", "text"], rows)
    return len(order)


def limited_evaluation(model: Any, datamodule: Any) -> dict[str, dict[str, int]]:
    """The val/test splits of which the latest epochs saw only part (``limit_*_batches``,
    ``fast_dev_run``): ``{"test": {"evaluated": 128, "of": 1057}}``; empty when complete."""
    collected = getattr(model, "collected", None)
    out: dict[str, dict[str, int]] = {}
    for stage in ("val", "test") if collected is not None else ():
        n, total = len(collected(stage)[1]), split_size(datamodule, stage)
        if total is not None and 0 < n < total:
            out[stage] = {"evaluated": n, "of": total}
    return out
