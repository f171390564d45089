"""Where the configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import OmegaConf

_RUN_DIRS: dict[str, str] = {}


def config_dir() -> Path:
    """The ``conf/`` folder: ``TUNELAB_CONFIG_DIR``, or the one beside the source tree."""
    env = os.environ.get("TUNELAB_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "conf")
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c
    raise FileNotFoundError(
        f"tunelab's conf/ folder not found (looked in {[str(c) for c in candidates]}); "
        "install tunelab from its checkout with `pip install -e .` or set TUNELAB_CONFIG_DIR"
    )


def new_run_dir(base: str, name: object = None, sub: object = None) -> str:
    """Reserve a fresh directory ``base[/name[/sub]]/<timestamp>[_N]`` and return its path.

    ``os.mkdir`` is atomic, so two runs started in the same second get different directories and
    an existing run directory is never reused. ``name`` (the run's ``name``) must be one folder
    name, so that a run stays inside ``base`` (the outputs folder). Memoized per process, because
    Hydra may resolve ``hydra.run.dir`` more than once.
    """
    if name is not None:
        from tunelab.utils.run_dir import check_name

        check_name(str(name))
        base = str(Path(base) / str(name) / (str(sub) if sub is not None else ""))
    if base in _RUN_DIRS:
        return _RUN_DIRS[base]
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        for n in range(1000):
            path = Path(base) / (stamp if n == 0 else f"{stamp}_{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _RUN_DIRS[base] = str(path)
            return str(path)
    except OSError as err:  # a read-only or full disk: one line, not Hydra's traceback
        from tunelab.cli import report_and_exit

        report_and_exit(err)
        raise
    raise RuntimeError(f"could not create a new run directory under {base}")


def rank_suffix() -> str:
    """``""`` in the rank-0 process, ``"_rank<N>"`` in the others (their own log files)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return f"_rank{value}"
    return ""


def _if_cuda(when_cuda: object, otherwise: object) -> object:
    import torch

    return when_cuda if torch.cuda.is_available() else otherwise


def register_resolvers() -> None:
    """Register tunelab's resolvers (idempotent)."""
    # use_cache: Hydra copies the resolver cache into each job's config (also across processes,
    # e.g. SLURM jobs), so every job of a sweep resolves the same directory.
    if not OmegaConf.has_resolver("tunelab.new_run_dir"):
        OmegaConf.register_new_resolver("tunelab.new_run_dir", new_run_dir, use_cache=True)
    if not OmegaConf.has_resolver("tunelab.cwd"):
        # Like ${hydra:runtime.cwd}, but also resolvable where Hydra has not set its config yet
        # (a launcher resolving the sweep dir); cached so that jobs see the launch directory.
        OmegaConf.register_new_resolver("tunelab.cwd", os.getcwd, use_cache=True)
    if not OmegaConf.has_resolver("tunelab.rank_suffix"):
        OmegaConf.register_new_resolver("tunelab.rank_suffix", rank_suffix)
    if not OmegaConf.has_resolver("tunelab.if_cuda"):
        OmegaConf.register_new_resolver("tunelab.if_cuda", _if_cuda)


register_resolvers()
