"""The sweeper's structured config, registered as ``hydra/sweeper: tunelab_optuna``.

Hydra imports this module when it scans ``hydra_plugins`` at start-up, so it stays light: no
Optuna import here.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore

# The task config key through which a trial learns who it is (for pruning): set on each job as
# `++optuna_trial={number: N, study_name: ..., storage: ..., pruner: {...}}`. Internal: the sweep
# summary leaves it out of the overrides it lists.
TRIAL_KEY = "optuna_trial"


class Direction(Enum):
    minimize = 1
    maximize = 2


@dataclass
class TunelabOptunaSweeperConf:
    """``hydra.sweeper.*`` for ``hydra/sweeper=tunelab_optuna``."""

    _target_: str = (
        "hydra_plugins.tunelab_optuna_sweeper.tunelab_optuna_sweeper.TunelabOptunaSweeper"
    )
    # sampler and pruner reach the sweeper as configs: it builds the sampler per trial and passes
    # the pruner's config on to each trial.
    _recursive_: bool = False
    # minimize or maximize the value the task function returns (tunelab: cfg.optimized_metric).
    direction: Direction = Direction.minimize
    # Processes that share `storage` and `study_name` work on one study (created if missing).
    study_name: str | None = None
    # null: in memory, this process only. `sqlite:///path.db` (any SQLAlchemy URL), or
    # `journal:///path.log` (Optuna's JournalStorage on a file: the choice for a shared file
    # system). Three slashes then a relative path, four for an absolute one.
    storage: str | None = None
    # Trials this process adds to the study.
    n_trials: int = 20
    # Trials asked for and launched together through the Hydra launcher (the basic launcher runs
    # them one after another, submitit runs them in parallel).
    n_jobs: int = 1
    # An Optuna sampler as a `_target_` config. With a seed, trial N samples with a seed derived
    # from (seed, N): reproducible, and distinct across processes sharing the study.
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # An Optuna pruner as a `_target_` config (e.g. optuna.pruners.MedianPruner), or null.
    pruner: Any = None
    # key -> Hydra override value: `interval(1e-4,1e-2)`, `tag(log, interval(1e-4,1e-2))`,
    # `tag(int, interval(1,64))`, `choice(32,64,128)`, `range(1,5)`, or a fixed value.
    # A null value leaves the key out. Sweep overrides on the command line are added to these.
    params: dict[str, Any] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="tunelab_optuna",
    node=TunelabOptunaSweeperConf,
    provider="tunelab",
)
