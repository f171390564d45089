"""The plugin class Hydra finds by scanning ``hydra_plugins``; the work is in ``_impl``.

Hydra imports this module at every start-up, so Optuna is imported only when a sweep is built.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class TunelabOptunaSweeper(Sweeper):
    """Hydra sweeper on Optuna: persistent, shareable studies and pruning."""

    def __init__(
        self,
        direction: Any,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: DictConfig | None,
        pruner: DictConfig | None,
        params: DictConfig | None,
    ) -> None:
        from ._impl import TunelabOptunaSweeperImpl

        self.sweeper = TunelabOptunaSweeperImpl(
            direction=direction,
            study_name=study_name,
            storage=storage,
            n_trials=n_trials,
            n_jobs=n_jobs,
            sampler=sampler,
            pruner=pruner,
            params=params,
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
