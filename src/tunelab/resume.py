"""``resume=RUN_DIR``: continue a run in its own directory from its ``last.ckpt``.

The run's recorded config (``RUN_DIR/.hydra/config.yaml``) is reused, so nothing has to be
repeated on the command line; ``key=value`` overrides given alongside still apply (e.g.
``trainer.max_epochs=10`` to extend a run). Hydra's record of the resume goes to
``RUN_DIR/.hydra/resume-<time>/``, so the original record is never overwritten, and the
checkpoint callbacks keep their state because their directory does not change.

A resume that is refused (a group override, a rejected value, a run that is not a tunelab run)
changes nothing in RUN_DIR: :func:`resume_overrides` checks the resumed config before Hydra
writes its record and log file there.
"""

from __future__ import annotations

import json
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
    """Make a ``resume=RUN_DIR`` launch write into RUN_DIR (Hydra overrides added to ``args``).

    The resumed config is checked first (:func:`check_resume`), so a refused resume leaves
    RUN_DIR as it was.
    """
    values = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not values or values[-1] in ("", "null"):
        return args
    run = _run_dir(values[-1])
    check_resume(run, values[-1], [a for a in args if not a.startswith("-")])
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return [*args, f"hydra.run.dir={run}", f"hydra.output_subdir=.hydra/resume-{stamp}"]


def check_resume(run: Path, value: str, overrides: list[str]) -> None:
    """Refuse, before anything is written, a resume of ``run`` that the run itself would refuse:
    a config group override, a config that does not validate, an unreadable run record."""
    from tunelab.validation import validate_config

    merged = _merged(run, value, overrides)
    with open_dict(merged):
        merged.paths.output_dir = str(run)  # Hydra's runtime dir, which is not set up yet
    validate_config(merged)
    info = run / "run_info.json"
    record: dict = {}
    if info.is_file():
        try:
            record = json.loads(info.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(
                f"resume={value}: {info} is not valid JSON ({err}); the run record is damaged. "
                "Start a new run with ckpt_path=" + str(run / "checkpoints" / "last.ckpt")
            ) from None
    check_same_data(merged, record, value)


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The recorded config of ``cfg.resume`` with ``overrides`` applied and ``ckpt_path`` set."""
    merged = _merged(_run_dir(cfg.resume), cfg.resume, overrides)
    with open_dict(merged):
        merged.paths = cfg.paths
        # Loggers would rewrite the logs of the first part; give the resumed part its own version.
        for logger in (merged.get("logger") or {}).values():
            if logger is not None and "version" in logger:
                logger.version = f"resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    return merged


def _merged(run: Path, value: str, overrides: list[str]) -> DictConfig:
    """The run's recorded config with the ``key=value`` ``overrides``, ``resume`` and
    ``ckpt_path`` set; a config group override is refused."""
    extra = [o for o in overrides if not o.startswith(("resume=", "hydra.", "+hydra.", "++hydra."))]
    groups = [o for o in extra if "=" in o and _is_group(o.split("=", 1)[0].lstrip("+~"))]
    if groups:
        raise ValueError(
            f"resume={value} keeps the run's config groups; {groups} would change them. "
            "Give key=value overrides only (e.g. trainer.max_epochs=10), or start a new run "
            "with ckpt_path=.../last.ckpt"
        )
    recorded = run / ".hydra" / "config.yaml"
    try:
        saved = OmegaConf.load(recorded)
    except Exception as err:  # YAML, encoding, or not a mapping
        raise ValueError(
            f"resume={value}: {recorded} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); the run's config record is "
            "damaged. Start a new run with ckpt_path=" + str(run / "checkpoints" / "last.ckpt")
        ) from None
    if not isinstance(saved, DictConfig):
        raise ValueError(
            f"resume={value}: {recorded} holds no config mapping; the run's config record is "
            "damaged. Start a new run with ckpt_path=" + str(run / "checkpoints" / "last.ckpt")
        )
    try:
        given = OmegaConf.from_dotlist([o.lstrip("+") for o in extra])
    except Exception as err:  # Hydra's own parser refuses these later, with its message
        raise ValueError(
            f"resume={value}: the overrides {extra} cannot be parsed ({type(err).__name__}); "
            "give them as key=value, e.g. trainer.max_epochs=10"
        ) from None
    merged = OmegaConf.merge(saved, given)
    with open_dict(merged):
        merged.resume = str(run)
        merged.ckpt_path = str(run / "checkpoints" / "last.ckpt")
    return merged


def check_same_data(cfg: DictConfig, record: dict, value: str) -> None:
    """Refuse the resume when the data now differs from the data the run was trained on (the
    fingerprint its ``run_info.json`` ``record`` holds), unless ``resume_allow_data_change=true``;
    the run then records both fingerprints (``resume_data_change``)."""
    recorded = (record.get("data") or {}).get("fingerprint") or record.get("data_fingerprint")
    if not recorded or cfg.get("resume_allow_data_change"):
        return
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="partial")
    datamodule.prepare_data()
    datamodule.setup("fit")
    now = getattr(datamodule, "fingerprint", None)
    if now is not None and now != recorded:
        raise ValueError(
            f"resume={value}: the data differs from the data this run was trained on "
            f"(fingerprint {recorded}, now {now}); restore it, start a new run with "
            "ckpt_path=.../last.ckpt, or continue anyway with resume_allow_data_change=true"
        )


def _is_group(key: str) -> bool:
    """Whether ``key`` names a config group (``model``, ``hparams_search``; a folder of
    ``conf/``), not a top-level value such as ``seed`` or ``resume_allow_data_change``."""
    from tunelab.config import config_dir

    if "/" in key:  # hydra/launcher=...
        return True
    return "." not in key and (config_dir() / key).is_dir()
