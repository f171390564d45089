"""Counts ``torch.compile`` compilations during a run and reports recompilations.

With per-batch dynamic padding, every new sequence length could trigger a recompile (a
"recompilation storm"). The text model marks its batch and sequence dimensions dynamic and
batches are padded to a multiple of 8, so after the first steps nothing should recompile; this
callback checks that and says so at the end of the run (``run_info.json`` gets the counts).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


def _compilations() -> list[Any]:
    from torch._dynamo.utils import get_compilation_metrics

    return list(get_compilation_metrics())


class CompileReport(L.Callback):
    """Compilations before and after warm-up, with the recompile reasons dynamo gives.

    Warm-up ends at the first training step after both ``warmup_steps`` training steps and one
    validation run (train and eval mode each compile their own graph). Compilations after that
    are what a recompilation storm would show.

    Args:
        warmup_steps: training steps of the warm-up.
    """

    def __init__(self, warmup_steps: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self._start = 0
        self._at_warm: int | None = None
        self._validated = False
        self.report: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = len(_compilations())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._at_warm is None and self._validated and trainer.global_step >= self.warmup_steps:
            self._at_warm = len(_compilations())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        records = _compilations()[self._start :]
        warm = (self._at_warm if self._at_warm is not None else len(_compilations())) - self._start
        after = records[warm:]
        self.report = {
            "compilations": len(records),
            "recompilations": sum(r.recompile_reason is not None for r in records),
            "compilations_after_warmup": len(after),
            "reasons_after_warmup": sorted({str(r.recompile_reason) for r in after}),
        }
        if not records:
            return
        r = self.report
        message = (
            f"torch.compile: {r['compilations']} compilations ({r['recompilations']} recompiles), "
            f"{r['compilations_after_warmup']} after warm-up"
        )
        if after:
            log.warning("%s: %s", message, "; ".join(self.report["reasons_after_warmup"]))
        else:
            log.info(message)
