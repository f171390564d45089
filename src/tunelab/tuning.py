"""``tune=lr_find`` and ``tune=batch_size``: Lightning's tuner before training.

The suggestion is written to ``tune.json`` (and the range test's plot to ``lr_find.png``) in the
run directory, and with ``apply`` it is used by the run that follows.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.tuner import Tuner

from tunelab.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def run_tuner(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    mode: str,
    out_dir: Path,
    apply: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Run Lightning's learning-rate or batch-size finder; return (and save) the result.

    Args:
        trainer: the run's trainer (the tuner restores its state afterwards).
        model: the run's module; its ``optimizer_factory`` gets the suggested ``lr``.
        datamodule: the run's data; its ``batch_size`` gets the found size.
        mode: ``lr_find`` or ``batch_size``.
        out_dir: the run directory (``tune.json``, ``lr_find.png``).
        apply: use the suggestion for the run that follows.
        **settings: the finder's own arguments (``min_lr``, ``max_lr``, ``num_training`` for
            ``lr_find``; ``scale_mode``, ``steps_per_trial``, ``init_val``, ``max_trials`` for
            ``batch_size``).
    """
    tuner = Tuner(trainer)
    if mode == "lr_find":
        finder = tuner.lr_find(model, datamodule=datamodule, update_attr=False, **settings)
        suggestion = finder.suggestion() if finder is not None else None
        result: dict[str, Any] = {"mode": mode, "suggested_lr": suggestion, **settings}
        if finder is not None:
            import matplotlib

            matplotlib.use("Agg")
            fig = finder.plot(suggest=suggestion is not None, show=False)
            fig.savefig(out_dir / "lr_find.png", dpi=120, bbox_inches="tight")
            result["plot"] = "lr_find.png"
        if apply and suggestion is not None:
            model.optimizer_factory = functools.partial(model.optimizer_factory, lr=suggestion)
    elif mode == "batch_size":
        scale_mode = settings.pop("scale_mode", "power")
        size = tuner.scale_batch_size(
            model, datamodule=datamodule, mode=scale_mode, batch_arg_name="batch_size", **settings
        )
        result = {"mode": mode, "batch_size": size, "scale_mode": scale_mode, **settings}
        if not apply:
            datamodule.batch_size = settings.get("init_val", datamodule.batch_size)
    else:
        raise ValueError(f"tune.mode={mode!r}: use lr_find or batch_size")
    result["applied"] = apply
    atomic_write_json(out_dir / "tune.json", result)
    log.info("tune=%s: %s", mode, result)
    return result
