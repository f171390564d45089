"""``tunelab.load_model(path)``: a trained model from its checkpoint alone, ready for inference.

A tunelab checkpoint carries the resolved model and data configs it was trained with, so
nothing else is needed to rebuild the model: no config, no ``num_classes``, no network object.
Loading goes through :func:`tunelab.checkpoint.load_checkpoint` (safe by default) and
:func:`tunelab.checkpoint.model_from_checkpoint`; ``<Module>.load_from_checkpoint(path)`` of
both model families is this function too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.models.classifier import ClassifierModule


def load_model(
    path: str | Path,
    device: Any = "cpu",
    trust_checkpoint: bool = False,
    allowed_targets: Sequence[str] = (),
    **model_overrides: Any,
) -> ClassifierModule:
    """Rebuild the model a ``tunelab-train`` checkpoint holds, weights loaded, in eval mode.

    Args:
        path: a checkpoint of a tunelab run, e.g. ``outputs/<experiment>/<run>/checkpoints/
            best.ckpt``.
        device: where to put the model (``"cpu"``, ``"cuda"``, a ``torch.device``).
        trust_checkpoint: load a checkpoint that needs more than weights and plain types, and
            build whatever its stored config names (only for checkpoints you trust).
        allowed_targets: more ``_target_`` prefixes its stored config may build.
        **model_overrides: model config values to change, e.g. ``compile=False``.

    Returns:
        The LightningModule (``ImageClassifier`` or ``TextClassifier``), with its
        ``label_names`` (the data's class names, index = label id) and, for binary tasks, the
        ``decision_threshold`` it was tested with.
    """
    from tunelab.checkpoint import load_checkpoint, model_from_checkpoint, stored_configs

    trust = {"trust_checkpoint": trust_checkpoint, "allowed_targets": list(allowed_targets)}
    ckpt = load_checkpoint(path, **trust)
    model_overrides.setdefault("compile", False)
    model = model_from_checkpoint(ckpt, path, **trust, **model_overrides)
    _, data_cfg = stored_configs(ckpt)
    names = data_cfg.get("label_names")
    if names and len(names) == model.num_classes and "label_names" not in ckpt["tunelab"]["model"]:
        model.label_names = [str(n) for n in names]  # a checkpoint from before models kept them
    return model.to(device)
