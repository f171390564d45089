"""Optuna pruning from inside training: report each epoch's metric, stop a trial the pruner rejects.

The ``tunelab_optuna`` sweeper launches each trial with
``optuna_trial={number, study_name, storage, pruner}``; :func:`pruning_callbacks` turns that into
an :class:`OptunaPruning` callback. After every validation in ``fit`` the callback reports
``cfg.optimized_metric`` to the trial (step = epoch) and raises ``optuna.TrialPruned`` when the
study's pruner says so; the exception ends the run, and the sweeper records the trial as PRUNED.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Reports ``monitor`` to a running Optuna trial after each validation epoch; prunes.

    Args:
        monitor: the metric to report, e.g. ``val/acc`` (the one the study optimizes).
        study_name: the study the trial belongs to.
        trial_number: the trial's number in the study.
        storage: the study's storage URL (``sqlite:///...``, ``journal:///...``); ``None`` for an
            in-memory study run by a sweeper in this same process.
        pruner: decides whether to stop; ``None``: only report (``optuna.pruners.NopPruner``).
            For an in-memory study the sweeper's own pruner is used.

    The trial is looked up when fitting starts. If it cannot be found, or has already finished
    (a re-run of a sweep's trial, e.g. by ``tunelab-reproduce``), the callback warns and does
    nothing, so such a run trains normally.
    """

    def __init__(
        self,
        monitor: str,
        study_name: str,
        trial_number: int,
        storage: str | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        self.monitor = monitor
        self.study_name = study_name
        self.trial_number = trial_number
        self.storage = storage
        self.pruner = pruner
        self._trial: optuna.Trial | None = None
        self._warned_missing = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self._trial = self._find_trial()

    def _find_trial(self) -> optuna.Trial | None:
        import optuna

        from hydra_plugins.tunelab_optuna_sweeper.storage import live_study, open_storage

        where = self.storage or "in-memory storage"
        try:
            if self.storage is None:
                live = live_study(self.study_name)
                if live is None:
                    log.warning(
                        "pruning off: the in-memory study %r is not in this process (a trial "
                        "launched in another process needs hydra.sweeper.storage)",
                        self.study_name,
                    )
                    return None
                study, storage = live
            else:
                storage = open_storage(self.storage)
                study = optuna.load_study(
                    study_name=self.study_name, storage=storage, pruner=self.pruner
                )
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            state = storage.get_trial(trial_id).state
        except Exception as err:  # a missing storage or trial must not stop training
            log.warning(
                "pruning off: trial %d of study %r not found in %s (%s: %s)",
                self.trial_number,
                self.study_name,
                where,
                type(err).__name__,
                err,
            )
            return None
        if state.is_finished():
            log.warning(
                "pruning off: trial %d of study %r is already %s (a re-run of a sweep trial?)",
                self.trial_number,
                self.study_name,
                state.name,
            )
            return None
        return optuna.Trial(study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = trainer.current_epoch
        prune, value = False, None
        if trainer.is_global_zero and self._trial is not None:
            metric = trainer.callback_metrics.get(self.monitor)
            if metric is None:
                if not self._warned_missing:
                    log.warning(
                        "pruning off: %r is not logged during validation (have: %s)",
                        self.monitor,
                        sorted(trainer.callback_metrics),
                    )
                    self._warned_missing = True
            else:
                value = float(metric)  # .item(): a device sync, once per epoch
                self._trial.report(value, step=epoch)
                prune = self._trial.should_prune()
        # Every rank stops together (on one device this is the identity).
        if trainer.strategy.broadcast(prune, src=0):
            import optuna

            shown = "" if value is None else f": {self.monitor}={value:.4g}"
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch}{shown} (optuna trial {self.trial_number})"
            )


def pruning_callbacks(cfg: DictConfig) -> list[Callback]:
    """``[OptunaPruning(...)]`` for a trial launched by the ``tunelab_optuna`` sweeper, else ``[]``.

    Raises:
        ValueError: the run is a trial but ``optimized_metric`` is empty.
    """
    trial: Any = cfg.get("optuna_trial")
    if not trial:
        return []
    monitor = cfg.get("optimized_metric")
    if not monitor:
        raise ValueError(
            "optuna_trial is set (a sweep trial) but optimized_metric is empty: set "
            "optimized_metric=val/acc (or another metric logged during validation)"
        )
    pruner = None
    if trial.get("pruner"):
        from hydra.utils import instantiate

        pruner = instantiate(trial.pruner)
    return [
        OptunaPruning(
            monitor=str(monitor),
            study_name=str(trial.study_name),
            trial_number=int(trial.number),
            storage=trial.get("storage"),
            pruner=pruner,
        )
    ]
