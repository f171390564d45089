"""Class labels as names: what the data says, reconciled with what the config says.

The data owns its label names (string labels in a file, class folders, a hub ``ClassLabel``).
A config may name them too (``data.label_names``, fixing their order) or leave them and
``data.num_classes`` null to take them from the data. Either way a data module ends with one
name per class, index = label id, which the model, its checkpoint, the reports, the predictions
and the Hugging Face export then carry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def settle_labels(
    found: Sequence[str] | None,
    configured: Sequence[str] | None,
    num_classes: int | None,
    max_label: int,
    where: str,
) -> tuple[list[str], int]:
    """The label names and class count of a data set.

    Args:
        found: names the data itself carries (sorted string labels, class folders, a
            ``ClassLabel``), or None for integer labels.
        configured: ``data.label_names`` (None: take the data's).
        num_classes: ``data.num_classes`` (None: as many as the data has).
        max_label: the largest label id in the data (integer labels without names count
            ``max_label + 1`` classes).
        where: the data source, for messages.

    Returns:
        ``(names, num_classes)``: one name per class (the ids as text where nothing names
        them).

    Raises:
        ValueError: the data's classes and ``data.num_classes`` / ``data.label_names`` disagree.
    """
    names = list(found) if found else (list(configured) if configured else None)
    if num_classes is None:
        num_classes = len(names) if names else max_label + 1
    if names is None:
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(
            f"{where}: the data has {len(names)} classes {names} but data.num_classes="
            f"{num_classes}; set data.num_classes={len(names)}, or data.num_classes=null to "
            "take it from the data"
        )
    return [str(n) for n in names], num_classes


def metric_suffixes(names: Sequence[str]) -> list[str]:
    """Per-class metric name parts: each label name made safe for metric keys and loggers
    (``T-shirt/top`` → ``T-shirt_top``), or the class index where two names would collide."""
    safe = [re.sub(r"[^\w.-]+", "_", str(n)).strip("_") for n in names]
    if len(set(safe)) != len(safe) or not all(safe):
        return [str(i) for i in range(len(names))]
    return safe


def describe_data(datamodule: object) -> dict[str, object]:
    """The labels and splits of a set-up tunelab data module, for ``run_info.json``."""
    splits = getattr(datamodule, "splits", {}) or {}
    return {
        "num_classes": datamodule.num_classes,
        "label_names": list(datamodule.label_names or []),
        "splits": {name: len(ds) for name, ds in splits.items()},
        "held_out": dict(getattr(datamodule, "held_out", {}) or {}),
        "fingerprint": getattr(datamodule, "fingerprint", None),
    }
