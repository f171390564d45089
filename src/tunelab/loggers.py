"""Experiment loggers: what each one receives besides the metrics Lightning sends it.

``log_run_start`` gives every logger the resolved config as hyperparameters; ``log_run_end``
hands it the run's files (run record, metrics, plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf


def log_run_start(loggers: list[Logger], cfg: DictConfig, record: dict[str, Any]) -> None:
    """Log the resolved config as hyperparameters to each logger."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(params)


def log_run_end(loggers: list[Logger], out_dir: Path, record: dict[str, Any]) -> None:
    """Hand the run's files to the loggers that keep files (none yet)."""
