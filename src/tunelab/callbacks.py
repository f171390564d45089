"""Lightning callbacks of tunelab's own (built from ``conf/callbacks/*.yaml``)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss, metric or weights; the run stopped before saving
    it (and is recorded ``failed``)."""


class FaultGuard(L.Callback):
    """Stops a run at the first non-finite training loss, before any checkpoint can save it.

    The loss is checked in ``on_train_batch_end``, which Lightning runs before the
    ``ModelCheckpoint`` callbacks (it moves them to the end of the list), so ``last.ckpt`` keeps
    the last good weights. Weights are checked again whenever a checkpoint is about to be
    written: a step whose loss was finite can still leave infinite weights behind. The epoch
    averages of the losses and the checkpoint monitors (``val/loss``, ``val/acc``) are checked
    after each validation and epoch, so a diverged run ends ``failed``. When the run
    fails for any reason, the exception is given a ``tunelab_context`` (stage, step, batch, batch
    size) that the command line turns into advice (e.g. for out-of-memory errors).

    Args:
        check_every_n_steps: check the loss every N training batches (each check is one device
            sync); checkpoints are always checked.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"callbacks.fault_guard.check_every_n_steps={check_every_n_steps} must be >= 1"
            )
        self.check_every_n_steps = check_every_n_steps
        self.last_saved_step: int | None = None

    # ---- non-finite loss ---------------------------------------------------------------------
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx % self.check_every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if bool(torch.isfinite(loss.detach()).all()):  # device sync
            return
        value = loss.detach().float().cpu().reshape(-1)[0].item()
        raise NonFiniteLossError(
            f"the training loss is {value} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {batch_idx}); the run stopped before saving it. "
            + self._kept(trainer)
            + self._hint(trainer)
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        floats = [
            (k, t)
            for k, t in checkpoint.get("state_dict", {}).items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]
        if floats:
            finite = torch.stack([torch.isfinite(t).all() for _, t in floats])
            if not bool(finite.all()):  # one device sync per checkpoint
                first = floats[int((~finite).nonzero()[0])][0]
                raise NonFiniteLossError(
                    f"the weights became NaN or infinite (first: {first}) by step "
                    f"{trainer.global_step} (epoch {trainer.current_epoch}); the run stopped "
                    "instead of saving them. " + self._kept(trainer) + self._hint(trainer)
                )
        self.last_saved_step = trainer.global_step

    def _kept(self, trainer: L.Trainer) -> str:
        paths = []
        for cb in trainer.checkpoint_callbacks:
            for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
                if p and Path(p).is_file() and p not in paths:
                    paths.append(p)
        if not paths:
            return "No checkpoint had been saved yet. "
        step = f" (last written at step {self.last_saved_step})" if self.last_saved_step else ""
        return f"The checkpoints saved before are kept{step}: {', '.join(paths)}. "

    @staticmethod
    def _hint(trainer: L.Trainer) -> str:
        lr = None
        if trainer.optimizers:
            lr = float(trainer.optimizers[0].param_groups[0].get("lr", math.nan))
        hint = "Usually the learning rate is too high"
        hint += f" (model.optimizer.lr; {lr:.3g} at this step)" if lr is not None else ""
        hint += ": lower model.optimizer.lr, or set trainer.gradient_clip_val=1.0"
        precision = str(trainer.precision)
        if not precision.startswith(("32", "64")):
            hint += (
                f". Low precision can overflow too (trainer.precision={precision}): try "
                "accelerator.precision=32-true"
            )
        run = trainer.default_root_dir
        if not (Path(run) / "checkpoints" / "last.ckpt").is_file():
            return hint + ", and start the run again."
        return hint + f". Then continue from the last checkpoint: resume={run} with the new value."

    # ---- non-finite epoch metrics ------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # During training only, and before the checkpoint callbacks (Lightning runs them last)
        # could keep weights whose validation loss is infinite as the best or the last.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._check_metrics(trainer, f"after the validation of epoch {trainer.current_epoch}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0:  # the previous epoch's averages are complete now
            self._check_metrics(trainer, f"after epoch {trainer.current_epoch - 1}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_metrics(trainer, f"after epoch {trainer.current_epoch}")

    def _check_metrics(self, trainer: L.Trainer, when: str) -> None:
        """Fail on a non-finite loss or checkpoint monitor (a diverged run is not completed).

        Each finite training step can still add up to an infinite epoch average (a loss of 1e30
        in float32), and a model can give infinite validation losses on finite training losses.
        """
        monitors = {getattr(cb, "monitor", None) for cb in trainer.checkpoint_callbacks}
        bad = {}
        for name, value in trainer.callback_metrics.items():
            if not (name in monitors or name.rpartition("/")[2].startswith("loss")):
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = float(value.detach().float().cpu())  # device sync, once per epoch
            if isinstance(value, float) and not math.isfinite(value):
                bad[name] = value
        if bad:
            listed = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise NonFiniteLossError(
                f"the run diverged: {listed} {when} (step {trainer.global_step}); the run "
                "stopped before saving it. " + self._kept(trainer) + self._hint(trainer)
            )

    # ---- context for any failure -------------------------------------------------------------
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        stage = trainer.state.stage.value if trainer.state.stage is not None else ""
        training = stage == "train"
        dm = trainer.datamodule
        key, size = "data.batch_size", getattr(dm, "batch_size", None)
        if not training:
            key, size = "data.eval_batch_size", getattr(dm, "eval_batch_size", size)
        names = {"train": "training", "validate": "validating", "test": "testing"}
        context = {
            "stage": names.get(stage),
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": trainer.fit_loop.epoch_loop.batch_idx if training else None,
            "batch_size_key": key,
            "batch_size": size,
        }
        with contextlib.suppress(AttributeError):  # some builtin exceptions take no attributes
            exception.tunelab_context = context  # type: ignore[attr-defined]


class GradNormMonitor(L.Callback):
    """Logs ``train/grad_norm``, the total norm of all gradients, before each optimizer step.

    Exploding or vanishing gradients show here first. Computed only on steps that the trainer
    logs (``trainer.log_every_n_steps``): one fused norm over all gradients, one device sync.

    Args:
        norm_type: the p of the p-norm (2 for Euclidean, ``inf`` for the largest entry).
    """

    def __init__(self, norm_type: float = 2.0) -> None:
        self.norm_type = float(norm_type)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step % max(trainer.log_every_n_steps, 1):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads, self.norm_type)
        total = torch.linalg.vector_norm(torch.stack(norms), self.norm_type)
        pl_module.log("train/grad_norm", total, on_step=True, on_epoch=False)


class RelocatableModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose state survives a moved or copied run directory.

    The state holds absolute paths. When a run directory is moved (rsync'ed from a cluster,
    renamed) and resumed, Lightning sees another ``dirpath``, drops the best scores and keeps
    ``best_model_path`` pointing at the old place: the resumed run would then test and export
    the old directory's checkpoint, or fail where it is gone. Here, when the checkpoint being
    loaded lies in this callback's own directory (the same run, moved), the paths under the old
    directory are moved under the new one and the scores are kept. A new run started from
    another run's checkpoint (``ckpt_path=``) keeps Lightning's behaviour: it starts its own
    best.

    Args:
        save_last_on_epoch_end: also write ``last.ckpt`` at the end of every training epoch
            (after its validation), whatever the other triggers (``every_n_train_steps``, which
            Lightning does not allow to combine with ``every_n_epochs``). A run stopped at any
            point then resumes from its last epoch at worst, with that epoch's validation done.
        *args, **kwargs: those of Lightning's ``ModelCheckpoint``.
    """

    _trainer: L.Trainer | None = None

    def __init__(self, *args: Any, save_last_on_epoch_end: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_last_on_epoch_end = save_last_on_epoch_end

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not (self.save_last_on_epoch_end and self.save_last):
            return
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        # Not skipped when a step-triggered save already happened at this step: that one was
        # written before the epoch's validation, and a resume from it would skip the validation.
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer  # setup runs before the checkpoint is restored

    @property
    def state_key(self) -> str:
        # Lightning's key names the class: keep its name, so checkpoints of runs made with the
        # stock ModelCheckpoint restore into this one and the other way round.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new and self._loading_from(new):

            def moved(path: str | None) -> str | None:
                if not path or not Path(path).is_relative_to(old):
                    return path
                return str(Path(new) / Path(path).relative_to(old))

            state_dict = {
                **state_dict,
                "dirpath": new,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {
                    moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()
                },
            }
        super().load_state_dict(state_dict)

    def _loading_from(self, dirpath: str) -> bool:
        """Whether the checkpoint being restored lies in ``dirpath``."""
        ckpt = getattr(self._trainer, "ckpt_path", None)
        return bool(ckpt) and Path(ckpt).resolve().parent == Path(dirpath).resolve()
