"""``resume=RUN_DIR``: continue a run in its own directory from its ``last.ckpt``.

The run's recorded config (``RUN_DIR/.hydra/config.yaml``) is reused, so nothing has to be
repeated on the command line; ``key=value`` overrides given alongside still apply (e.g.
``trainer.max_epochs=10`` to extend a run). Hydra's record of the resume goes to
``RUN_DIR/.hydra/resume-<time>/``, so the original record is never overwritten, and the
checkpoint callbacks keep their state because their directory does not change.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict


def _run_dir(value: str) -> Path:
    run = Path(value).expanduser().resolve()
    if not (run / ".hydra" / "config.yaml").is_file():
        raise FileNotFoundError(
            f"resume={value}: {run} is not a tunelab run directory (no .hydra/config.yaml); "
            "pass the directory of a run, e.g. outputs/<experiment>/<timestamp>"
        )
    if not (run / "checkpoints" / "last.ckpt").is_file():
        raise FileNotFoundError(
            f"resume={value}: {run}/checkpoints/last.ckpt does not exist (the run saved no "
            "checkpoint yet); start a new run instead"
        )
    return run


def resume_overrides(args: list[str]) -> list[str]:
    """Make a ``resume=RUN_DIR`` launch write into RUN_DIR (Hydra overrides added to ``args``)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not values or values[-1] in ("", "null"):
        return args
    run = _run_dir(values[-1])
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return [*args, f"hydra.run.dir={run}", f"hydra.output_subdir=.hydra/resume-{stamp}"]


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The recorded config of ``cfg.resume`` with ``overrides`` applied and ``ckpt_path`` set."""
    run = _run_dir(cfg.resume)
    extra = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    groups = [o for o in extra if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]
    if groups:
        raise ValueError(
            f"resume={cfg.resume} keeps the run's config groups; {groups} would change them. "
            "Give key=value overrides only (e.g. trainer.max_epochs=10), or start a new run "
            "with ckpt_path=.../last.ckpt"
        )
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    with open_dict(merged):
        merged.paths = cfg.paths
        merged.resume = str(run)
        merged.ckpt_path = str(run / "checkpoints" / "last.ckpt")
        # Loggers would rewrite the logs of the first part; give the resumed part its own version.
        for logger in (merged.get("logger") or {}).values():
            if logger is not None and "version" in logger:
                logger.version = f"resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    return merged
