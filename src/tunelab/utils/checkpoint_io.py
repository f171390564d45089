"""Checkpoint I/O for Lightning: atomic writes, and reads that never run code.

Writes: a kill or a full disk never leaves a half checkpoint. Reads (``trainer.fit(ckpt_path=)``,
resume, ``validate``/``test(ckpt_path=)``): weights-only, as :func:`tunelab.safety.torch_load`.
Lightning restores states and builds nothing from the configs stored in a checkpoint; tunelab's
own loaders check those (:func:`tunelab.checkpoint.load_checkpoint`, which ``ckpt_path=``,
``resume=`` and ``init_from=`` go through before training starts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tunelab.safety import torch_load


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same folder, fsync, then rename over the target.

    ``os.replace`` is atomic on POSIX file systems: readers see the previous checkpoint or the new
    one. If the write fails (killed, disk full), the temporary file is removed and the previous
    checkpoint is left as it was.

    Loads read tensors and plain data only (``weights_only=True``), whatever Lightning asks for.

    Args:
        trust_checkpoint: unpickle anything (config key ``trust_checkpoint``): only for
            checkpoints whose source is trusted.
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = bool(trust_checkpoint)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # Lightning's ``weights_only`` is ignored: only ``trust_checkpoint`` unpickles objects.
        if not get_filesystem(path).exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        local = str(path)
        if "://" in local:  # remote (fsspec): nothing tunelab can vouch for; Lightning reads it
            return super().load_checkpoint(path, map_location, not self.trust_checkpoint)
        return torch_load(local, trust_checkpoint=self.trust_checkpoint, map_location=map_location)
