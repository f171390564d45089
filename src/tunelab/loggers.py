"""Experiment loggers: what each one receives besides the metrics Lightning sends it.

``log_run_start`` gives every logger the resolved config as hyperparameters, with dotted keys as
on the command line (``model.optimizer.lr``), and a compact run summary (``run.git_commit``,
``run.command``, versions, ...). ``log_run_end`` hands the loggers that keep files the run's files:
MLflow artifacts, files and images of the offline wandb run, text and images in TensorBoard. The
CSV logger needs nothing: its files are in the run directory already.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

# Files of the run directory kept by MLflow and wandb, besides its top-level *.png and *.csv
# (learning_curves.png, confusion_matrix.png, errors.csv, ...); each only if the run wrote it.
RUN_FILES = ("run_info.json", "metrics.json", ".hydra/config.yaml", ".hydra/overrides.yaml")
CODE_DIFF = "code.diff"  # uncommitted changes of a dirty checkout

log = logging.getLogger(__name__)


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The few facts of the run record worth a column in a tracker's run table."""
    code = record.get("code") or {}
    packages = record.get("packages") or {}
    return {
        "git_commit": code.get("git"),
        "git_dirty": code.get("dirty"),
        "command": " ".join(record.get("command") or []),
        "overrides": " ".join(record.get("overrides") or []),
        "seed": record.get("seed"),
        "python": record.get("python"),
        **{name: packages.get(name) for name in ("torch", "lightning", "tunelab")},
    }


def hyperparameters(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Any]:
    """The resolved config and ``run.*`` (:func:`run_summary`) as one flat dict with dotted keys."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params["run"] = run_summary(record)
    return _flatten(params)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@rank_zero_only
def log_run_start(loggers: list[Logger], cfg: DictConfig, record: dict[str, Any]) -> None:
    """Give every logger the config and the run summary as hyperparameters (MLflow: also tags).

    Args:
        loggers: the trainer's loggers.
        cfg: the composed config of the run.
        record: the run record (the content of ``run_info.json``).
    """
    params = hyperparameters(cfg, record)
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        _finish_leftover_wandb_run()
    for lg in loggers:
        lg.log_hyperparams(params)  # MLflow: values cut to 250 characters, sent 100 at a time
        if isinstance(lg, TensorBoardLogger):
            optimized = str(cfg.get("optimized_metric") or "val/acc")
            _tensorboard_hparams(lg, params, [optimized, optimized.replace("val/", "test/", 1)])
        elif isinstance(lg, MLFlowLogger):
            _mlflow_tags(lg, run_summary(record))


def _finish_leftover_wandb_run() -> None:
    """Finish a wandb run still open in this process, so that this run gets its own.

    ``log_run_end`` finishes each run's wandb run; one still open belongs to an earlier job of a
    sweep in this process that stopped early (failed or pruned), and WandbLogger would reuse it.
    """
    import wandb

    if wandb.run is not None:
        log.warning("finishing the wandb run %s left open by an earlier job", wandb.run.name)
        wandb.run.finish(exit_code=1)


def _tensorboard_hparams(lg: TensorBoardLogger, params: dict[str, Any], metrics: list[str]) -> None:
    """Write the HPARAMS-tab summary against the run's own metric curves.

    The logger's ``default_hp_metric`` (off in conf/logger/tensorboard.yaml) would instead log a
    -1 placeholder and rewrite the summary, empty, at every ``fit``/``validate``/``test``.
    """
    try:
        from torch.utils.tensorboard.summary import hparams
    except ImportError:  # only tensorboardX is installed
        from tensorboardX.summary import hparams
    plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
    # metric values are not written here: the plugin reads them from the logged curves
    writer = lg.experiment._get_file_writer()  # as TensorBoardLogger.log_hyperparams does
    for summary in hparams(plain, dict.fromkeys(metrics, 0.0)):
        writer.add_summary(summary)


def _mlflow_tags(lg: MLFlowLogger, summary: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    tags = {f"run.{k}": str(v) for k, v in summary.items() if v is not None}
    if summary.get("git_commit"):  # shown as the run's "Git commit" in the MLflow UI
        tags["mlflow.source.git.commit"] = summary["git_commit"]
    tags["mlflow.note.content"] = f"`{summary['command']}`"  # the run's description
    lg.experiment.log_batch(lg.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def run_files(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """The run's files worth keeping in a tracker, and among them its plots (``*.png``)."""
    files = [out_dir / name for name in (*RUN_FILES, CODE_DIFF)]
    files += sorted(out_dir.glob("*.png")) + sorted(out_dir.glob("*.csv"))
    files = [f for f in files if f.is_file()]
    return files, [f for f in files if f.suffix == ".png"]


def log_run_end(loggers: list[Logger], out_dir: Path, record: dict[str, Any]) -> None:
    """Hand the run's files to the loggers that keep files, then close every logger.

    Called on rank 0 once the run's files are written. The MLflow run ends FINISHED and the
    wandb run is finished, so that nothing is left open when the process exits.

    Args:
        loggers: the trainer's loggers.
        out_dir: the run directory.
        record: the run record (the content of ``run_info.json``).
    """
    out_dir = Path(out_dir)
    files, plots = run_files(out_dir)
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            for f in files:
                parent = f.parent.relative_to(out_dir).as_posix()
                lg.experiment.log_artifact(lg.run_id, str(f), None if parent == "." else parent)
        elif isinstance(lg, WandbLogger):
            _wandb_files(lg, out_dir, files, plots)
        elif isinstance(lg, TensorBoardLogger):
            writer = lg.experiment
            text = json.dumps(record, indent=2, default=str)
            writer.add_text("run_info", f"```json\n{text}\n```")  # the TEXT tab renders markdown
            for png in plots:
                writer.add_image(f"plots/{png.stem}", _read_rgb(png), dataformats="HWC")
        lg.finalize("success")  # TensorBoard: flush and close; MLflow: status FINISHED
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def _wandb_files(lg: WandbLogger, out_dir: Path, files: list[Path], plots: list[Path]) -> None:
    import wandb

    run = lg.experiment
    for f in files:  # into the offline run's files/, uploaded by `wandb sync`
        run.save(str(f), base_path=str(out_dir), policy="now", glob=False)
    if plots:
        run.log({f"plots/{png.stem}": wandb.Image(str(png)) for png in plots})


def _read_rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
