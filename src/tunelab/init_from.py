"""``init_from=CKPT``: start a new run from a checkpoint's weights, and nothing else.

Unlike ``ckpt_path`` (and ``resume``), which continue a run (weights, optimizer moments,
learning-rate schedule, step count and the position in the data), ``init_from`` copies the
weights into the freshly built model before ``trainer.fit``: the optimizer, the schedule and the
step count start from zero, and the data (``data=products data.max_train_samples=500``) is
whatever this run's config says. This is how a movie-review model is adapted to another domain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from tunelab.checkpoint import load_checkpoint, state_mismatch

log = logging.getLogger(__name__)


def init_from_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    allowed_targets: Iterable[str] = (),
) -> dict[str, object]:
    """Copy a checkpoint's weights into ``model``; leave everything else of the run fresh.

    Call it after building the model and before ``trainer.fit``. The architecture is checked
    beforehand by :func:`tunelab.checkpoint.check_checkpoint_fits` (``key="init_from"``); the
    check here catches what that check could not see (models not buildable on the meta device).

    Args:
        model: the model of the new run (a LightningModule), built from this run's config.
        path: a checkpoint written by ``tunelab-train`` (any Lightning checkpoint with a
            ``state_dict`` whose keys and shapes match the model's).
        trust_checkpoint, allowed_targets: as :func:`tunelab.checkpoint.load_checkpoint` (the
            file is read weights-only unless trusted).

    Returns:
        What to record in ``run_info.json``: the resolved path, and the epoch and global step
        the checkpoint was saved at.

    Raises:
        FileNotFoundError, ValueError: as :func:`tunelab.checkpoint.load_checkpoint`, or the
            checkpoint's weights do not fit the model (config key ``init_from``).
    """
    ckpt = load_checkpoint(
        path,
        require_config=False,
        trust_checkpoint=trust_checkpoint,
        allowed_targets=allowed_targets,
    )
    parts = state_mismatch(model.state_dict(), ckpt["state_dict"])
    if parts:
        raise ValueError(
            f"init_from={path} does not fit the model of this config ("
            + "; ".join(parts)
            + "). Use the model config the checkpoint was trained with (e.g. the same model= and "
            "model.net.pretrained), or drop init_from to start from the pretrained weights"
        )
    model.load_state_dict(ckpt["state_dict"])
    source = {
        "path": str(Path(path).resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
    }
    log.info(
        "init_from: weights of %s (epoch %s, step %s); optimizer, schedule and step count start "
        "fresh",
        source["path"],
        source["epoch"],
        source["global_step"],
    )
    return source
