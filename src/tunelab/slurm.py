"""SLURM preemption: checkpoint at a step boundary on SIGUSR1, requeue, resume in place.

SLURM sends a signal before a job's time limit (``#SBATCH --signal=USR1@90``, which the
``hydra/launcher=slurm`` configs set). Lightning's own handler saves its checkpoint inside the
signal handler, at whatever instruction the signal interrupted (possibly halfway through an
optimizer step), and submitit's preemption signal is USR2, so under submitit Lightning's handler
may be skipped (submitit#1709, lightning#14610). This callback installs its own handler that only
sets a flag (the mechanism of :mod:`tunelab.interrupt`); after the current optimizer step it saves
``last.ckpt`` (atomically, with the data position) and runs ``scontrol requeue``. The requeued job
starts the same Hydra job in the same directory, and :func:`requeued_checkpoint` finds that ``last.ckpt`` to resume from.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

from tunelab.interrupt import StepBoundarySignal

log = logging.getLogger(__name__)


def in_slurm_job() -> bool:
    """Inside a SLURM batch job (Lightning ignores interactive shells the same way)."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )


def slurm_job_id() -> str:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeued_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` of this run if this job is a SLURM requeue/restart of it, else None."""
    if not in_slurm_job() or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


class SlurmRequeue(StepBoundarySignal):
    """On ``signum`` (SIGUSR1): save ``last.ckpt`` after the current step and requeue the job.

    The signal is handled as :class:`tunelab.interrupt.StopOnSignal` handles SIGTERM: noted by
    the handler, acted on at the next optimizer-step boundary, agreed on by all ranks. After
    requeueing, the process waits to be stopped by SLURM (which requeue does) instead of
    returning: a result returned now would be taken (by submitit) as the job's final result.

    Args:
        checkpoint: where to save (the run's ``checkpoints/last.ckpt``).
        on_requeue: called with the global step after the save and the requeue (to record it).
        signum: the signal SLURM sends before the time limit.
    """

    def __init__(
        self,
        checkpoint: Path,
        on_requeue: Callable[[int], None] | None = None,
        signum: int = signal.SIGUSR1,
    ) -> None:
        super().__init__((signum,))
        self.checkpoint = Path(checkpoint)
        self.on_requeue = on_requeue
        self.signum = signum

    def on_signal_at_step(self, trainer: L.Trainer) -> None:
        self.save(trainer, self.checkpoint)
        if trainer.is_global_zero:
            job = slurm_job_id()
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"scontrol requeue {job} failed: {result.stderr.strip()}")
            log.info("requeued SLURM job %s at step %d", job, trainer.global_step)
            if self.on_requeue is not None:
                self.on_requeue(trainer.global_step)
        while True:  # SLURM stops this job now; the requeued job resumes from the checkpoint
            time.sleep(60)
