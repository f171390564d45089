"""Stopping a run on a signal at a step boundary: SIGTERM and SIGINT here, SIGUSR1 in slurm.py.

A signal can arrive at any instruction, halfway through an optimizer step or a checkpoint write.
The handlers here only note it; the callbacks act at the next boundary where the state is
consistent: after an optimizer step (never inside a gradient-accumulation window) or after a
validation, test or predict batch. :class:`StopOnSignal` then saves ``last.ckpt`` through the
trainer (atomically, with the resumable loader's position) and stops the run with
:class:`RunInterrupted`, whose exit code is the shell's convention for death by that signal
(130 for SIGINT, 143 for SIGTERM). SIGTERM is what cloud preemption, Kubernetes and most
schedulers send before they kill a job.

A run stopped during the validation of a training epoch saves the state of that epoch with
its validation marked as not yet begun, so ``resume=`` runs that validation again in full:
``best.ckpt`` considers it and the learning curve gets its point.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class RunInterrupted(SystemExit):
    """The run was stopped by a signal; exits with ``128 + signum`` (130 SIGINT, 143 SIGTERM).

    A ``SystemExit``, so that nothing on the way out reports it as an error, yet not a
    ``KeyboardInterrupt``, which Lightning turns into ``sys.exit(1)``.

    Args:
        signum: the signal that stopped the run.
        message: one line saying where it stopped and what was saved.
        checkpoint: the checkpoint saved on the way out, if one was.
    """

    def __init__(self, signum: int, message: str = "", checkpoint: Path | None = None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.message = message or f"stopped by {signal_name(signum)}"
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StepBoundarySignal(L.Callback):
    """Base of the callbacks that act on a signal at the next step boundary.

    The handler only records the signal (``received``). Subclasses override
    :meth:`on_signal_at_step`, called after the first optimizer step that ends once the signal
    has arrived. In a distributed run the ranks agree on that step first (they receive the
    signal at different instants, and a checkpoint save is collective).

    The handlers are installed when a stage sets up and again when it starts, after Lightning
    registered its own (which would otherwise raise its ``SIGTERMException`` at a point of its
    choosing and save nothing), and the previous handlers are restored at teardown or on an
    exception.

    Args:
        signums: the signals to handle.
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(int(s) for s in signums)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = 0

    # ---- handlers ----------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum  # act at the next boundary, where the state is consistent

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works in the main thread only
        for signum in self.signums:
            previous = signal.signal(signum, self._handler)
            self._previous.setdefault(signum, previous)  # the first one is what to restore

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank received the signal (one tiny all-reduce in a distributed run)."""
        requested = self.received is not None
        if trainer.world_size > 1:
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        return requested

    # ---- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._install()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # inside a gradient-accumulation window: the gradients would be lost
        if self._agreed(trainer):
            self.on_signal_at_step(trainer)

    def on_signal_at_step(self, trainer: L.Trainer) -> None:
        """Act on the signal; the optimizer step that just ended is complete."""

    @staticmethod
    def save(trainer: L.Trainer, path: Path) -> None:
        """Save the full training state to ``path`` through the trainer (its atomic checkpoint
        IO; the resumable loader's position is part of the state)."""
        # The checkpoint callback that keeps last.ckpt must know this file is its latest: else
        # the resumed run, finding a last.ckpt it did not write, would write last-v1.ckpt.
        folder = Path(path).parent.resolve()
        for callback in trainer.checkpoint_callbacks:
            keeps_last = isinstance(callback, ModelCheckpoint) and callback.save_last
            if keeps_last and callback.dirpath and Path(callback.dirpath).resolve() == folder:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()  # Lightning calls no teardown hooks after an exception

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()


class StopOnSignal(StepBoundarySignal):
    """On SIGTERM or SIGINT: save ``last.ckpt`` at the next boundary and stop the run.

    * During training: after the current optimizer step, ``last.ckpt`` is saved and the run
      stops; ``resume=RUN_DIR`` continues it exactly.
    * During the validation of a training epoch: after the current validation batch. The
      checkpoint holds the state of the epoch just trained with its validation marked as not
      begun, so the resume validates that epoch in full.
    * During the sanity check, or a ``validate``/``test``/``predict`` stage: nothing new to
      save (training is not under way or has finished); the run stops after the current batch
      and the checkpoints saved before are kept.

    The run stops with :class:`RunInterrupted` (exit code 130 for SIGINT, 143 for SIGTERM). A
    second Ctrl-C stops at once, saving nothing more.

    Args:
        dirpath: the run's checkpoint folder; ``last.ckpt`` is written there.
        filename: the checkpoint's file name.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last.ckpt") -> None:
        super().__init__((signal.SIGINT, signal.SIGTERM))
        self.path = Path(dirpath) / filename
        self._validation_pending = False

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise RunInterrupted(signum, "interrupted at once by a second Ctrl-C")
        super()._handler(signum, frame)

    # ---- where to stop -----------------------------------------------------------------------
    def on_signal_at_step(self, trainer: L.Trainer) -> None:
        self._stop(trainer, "training", save=True)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        if not self._agreed(trainer):
            return
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting:
            self._validation_pending = True  # see on_save_checkpoint
        where = "the validation of epoch" if fitting else "validation"
        self._stop(trainer, where, save=fitting)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        if self._agreed(trainer):
            self._stop(trainer, "testing", save=False)

    def on_predict_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        if self._agreed(trainer):
            self._stop(trainer, "predicting", save=False)

    def _stop(self, trainer: L.Trainer, where: str, save: bool) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM  # another rank's
        if where == "the validation of epoch":
            where += f" {trainer.current_epoch}"
        where += f" at step {trainer.global_step}"
        if save and not trainer.fast_dev_run:
            self.save(trainer, self.path)
            message = f"interrupted by {signal_name(signum)} during {where}: saved {self.path}"
            if self._validation_pending:
                message += " (the resume validates that epoch again)"
            raise RunInterrupted(signum, message, checkpoint=self.path)
        raise RunInterrupted(signum, f"interrupted by {signal_name(signum)} during {where}")

    # ---- the checkpoint of an interrupted validation ------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._validation_pending:
            return
        # The weights, optimizer and training loop are those of the end of the epoch (validation
        # changes none of them). Lightning resumes a validation that a checkpoint marks as begun
        # but not one batch done ("restarted mid-evaluation") by running it to the end: marking
        # it so, with no batch counted, makes the resume run the whole validation again.
        loop = checkpoint["loops"]["fit_loop"]
        progress = loop["epoch_loop.val_loop.batch_progress"]
        for part in ("total", "current"):
            progress[part] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["is_last_batch"] = False


# ---- outside the trainer's stages ------------------------------------------------------------
def _raise_interrupted(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`RunInterrupted` (as Ctrl-C raises ``KeyboardInterrupt``) while
    the block runs, so that a run stopped outside a training stage (loading data, writing its
    reports) is still recorded as interrupted instead of dying silently. Inside a stage
    :class:`StopOnSignal` replaces this handler with its own and restores it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def as_interruption(err: BaseException) -> RunInterrupted | None:
    """``err`` as a :class:`RunInterrupted` if a signal stopped the run, else None.

    Besides tunelab's own, these are Ctrl-C (``KeyboardInterrupt``, which Lightning turns into
    ``sys.exit(1)`` raised while handling it) and Lightning's ``SIGTERMException`` (raised when
    no :class:`StopOnSignal` is installed, e.g. ``callbacks=none``).
    """
    if isinstance(err, RunInterrupted):
        return err
    if isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    ):
        return RunInterrupted(signal.SIGINT)
    if type(err).__name__ == "SIGTERMException":
        return RunInterrupted(signal.SIGTERM)
    return None


def resume_hint(err: RunInterrupted, run_dir: Path, task: str | None) -> str | None:
    """Add to ``err``'s message what to do next; return the command that resumes the run (None
    where there is none: nothing saved yet, or not a training run)."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    if task == "train" and last.is_file():
        command = f"tunelab-train resume={run_dir}"
        if err.checkpoint is None:
            err.message += f"; {last} is kept"
        err.message += f"; continue with: {command}"
        return command
    if task == "train":
        err.message += "; no checkpoint was saved yet: start the run again"
    else:
        err.message += "; run the command again"
    return None
