"""Seeded sampling that stays distinct across processes sharing a study.

A sampler built once with a seed draws the same sequence in every process: two workers started
together, or a sweep resumed against its storage, would propose the trials the first one already
ran. Here each trial gets a fresh sampler seeded from ``(seed, trial number)``; trial numbers are
unique within a study, so a single process is reproducible and workers never repeat each other.
Optuna's samplers read the study's history from storage, so nothing is lost by building one per
trial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna import Study
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a sweep seeded with ``seed`` (NumPy's way of
    deriving independent child streams: a spawn key)."""
    return int(np.random.SeedSequence(seed % 2**32, spawn_key=(number,)).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to ``make_sampler(trial_seed(seed, trial.number))``."""

    def __init__(self, make_sampler: Callable[[int], BaseSampler], seed: int) -> None:
        self._make_sampler = make_sampler
        self._seed = seed
        self._samplers: dict[int, BaseSampler] = {}  # trials asked here and not yet told

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._samplers:
            self._samplers[trial.number] = self._make_sampler(trial_seed(self._seed, trial.number))
        return self._samplers[trial.number]

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler = self._sampler(trial)
        self._samplers.pop(trial.number, None)
        sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's sampler is seeded from its number."""
