"""``run_info.json``: what a run needs to be understood and re-run."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab.utils.io import atomic_write_json, atomic_write_text

PACKAGES = (
    "tunelab",
    "torch",
    "lightning",
    "hydra-core",
    "omegaconf",
    "transformers",
    "torchmetrics",
    "datasets",
    "tokenizers",
    "numpy",
)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def code_version(source_dir: Path) -> dict[str, Any]:
    """Git commit and dirtiness of the checkout holding ``source_dir``, if it is one."""
    commit = _git("rev-parse", "HEAD", cwd=source_dir)
    if commit is None:
        return {"git": None, "note": f"{source_dir} is not in a git checkout"}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=source_dir) or ""
    return {"git": commit.strip(), "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda_devices": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class RunRecord:
    """Writes and updates ``run_info.json`` in a run directory (atomically, every time)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        overrides: list[str],
        seed: int,
        continuing: bool = False,
    ):
        self.path = Path(run_dir) / "run_info.json"
        if continuing and self.path.is_file():
            # The same run, continued in place: keep its record and note the resume.
            try:
                self.data = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{self.path} is not valid JSON ({err}); the run record is damaged. Start "
                    f"a new run with ckpt_path={Path(run_dir) / 'checkpoints' / 'last.ckpt'}"
                ) from None
            self.data.setdefault("resumes", []).append(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                    "overrides": overrides,
                    "previous_status": self.data.get("status"),
                    "code": code_version(Path(__file__).resolve().parent),
                }
            )
            self.data.update(status="running", config=config)
            self.write()
            return
        source_dir = Path(__file__).resolve().parent
        code = code_version(source_dir)
        if code.get("dirty"):
            diff = _git("diff", "HEAD", cwd=source_dir)
            if diff:
                atomic_write_text(Path(run_dir) / "code.diff", diff)
                code["diff_file"] = "code.diff"
        self.data: dict[str, Any] = {
            "status": "running",
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "overrides": overrides,
            "seed": seed,
            "config": config,
            "code": code,
            "python": sys.version.split()[0],
            "packages": package_versions(),
            "hardware": hardware(),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, **fields: Any) -> None:
        self.update(status=status, end_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)

    def write(self) -> None:
        if process_rank() == 0:  # one record per run, however many processes train it
            atomic_write_json(self.path, self.data)


def process_rank() -> int:
    """This process's global rank in a distributed run, from the launcher's environment
    (Lightning's child processes, SLURM tasks, torchrun), before any process group exists."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra app ([] outside one)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # outside a Hydra app (tests, notebooks)
        return []


def run_recorded(
    cfg: Any, work: Callable[[Any, Path, RunRecord], dict[str, float]]
) -> dict[str, float]:
    """Run ``work(cfg, run_dir, record)`` with ``run_info.json`` marking the outcome.

    The record says ``running`` while it works, then ``completed`` with the metrics, or
    ``failed`` / ``interrupted`` with the error, which is re-raised.
    """
    from omegaconf import OmegaConf

    overrides = hydra_overrides()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from tunelab.slurm import requeued_checkpoint

    continuing = bool(cfg.get("resume")) or requeued_checkpoint(run_dir) is not None
    seed = cfg.get("seed")  # as given: a bad one (seed=abc) is refused by the config check
    record = RunRecord(
        # throw_on_missing: a ??? value left unset is a config error before anything is recorded
        run_dir,
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True),
        overrides,
        seed,
        continuing,
    )
    from tunelab.interrupt import as_interruption, resume_hint, signal_name, sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM outside a training stage: recorded, not a silent death
            metrics = work(cfg, run_dir, record)
    except BaseException as err:
        # SIGTERM or Ctrl-C: stopped, not broken. Recorded as interrupted with the command that
        # continues the run; re-raised as RunInterrupted (exit code 128 + signal number).
        stopped = as_interruption(err)
        if stopped is not None:
            resume = resume_hint(stopped, run_dir, cfg.get("task_name"))
            record.finish(
                "interrupted",
                error=f"{signal_name(stopped.signum)}: {stopped}",
                resume_command=resume,
            )
            if stopped is err:
                raise
            raise stopped from err
        status = "pruned" if type(err).__name__ == "TrialPruned" else "failed"  # Optuna pruner
        record.finish(status, error=f"{type(err).__name__}: {err}")
        raise
    record.finish("completed", metrics=metrics)
    return metrics
