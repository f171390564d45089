"""Training entry point: ``tunelab-train [experiment=NAME] [key=value ...]``.

``train(cfg)`` does the work and is what tests and sweeps call; ``main`` is the thin Hydra
wrapper behind the console script.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from tunelab.checkpoint import (
    ConfigInCheckpoint,
    check_checkpoint_fits,
    store_decision_threshold,
)
from tunelab.cli import run_cli, run_task
from tunelab.compile_report import CompileReport
from tunelab.config import config_dir
from tunelab.console import print_config_tree, print_metrics
from tunelab.init_from import init_from_checkpoint
from tunelab.loggers import log_run_end, log_run_start
from tunelab.pruning import pruning_callbacks
from tunelab.report import limited_evaluation
from tunelab.resume import resume_overrides, resumed_config
from tunelab.safety import checkpoint_trust
from tunelab.slurm import SlurmRequeue, in_slurm_job, requeued_checkpoint
from tunelab.tuning import run_tuner
from tunelab.utils.io import atomic_write_json
from tunelab.utils.run_dir import claimed_cli_run_dir, claimed_run_dir
from tunelab.utils.run_record import RunRecord, hydra_overrides, process_rank, run_recorded
from tunelab.validation import validate_config

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def final_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Merge Lightning's result dicts into ``{"val/acc": ..., "test/f1": ...}``."""
    out: dict[str, float] = {}
    for r in results:
        out.update({k: float(v) for k, v in r.items() if "/" in k and not k.endswith("_step")})
    return out


def prepare_data(datamodule: L.LightningDataModule, cfg: DictConfig) -> dict[str, Any]:
    """Read the data before the model is built, so that the classes it has (label names from a
    file, class folders) size the model: they are written into ``cfg.data``, which the model
    config interpolates and every checkpoint stores. Returns what the run record keeps."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    described = datamodule.describe() if hasattr(datamodule, "describe") else {}
    if "label_names" in described:
        with open_dict(cfg):
            cfg.data.num_classes = described["num_classes"]
            cfg.data.label_names = described["label_names"]
        log.info("classes: %s", ", ".join(described["label_names"]))
    return described


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, then validate and test the best checkpoint; return the final metrics.

    The run directory ``cfg.paths.output_dir`` receives ``checkpoints/``, ``metrics.json`` and
    ``run_info.json``. With ``cfg.resume`` set, the run recorded there continues in place.
    """
    if cfg.get("resume"):
        cfg = resumed_config(cfg, hydra_overrides())
    run_dir = Path(cfg.paths.output_dir)  # claimed: a second run on it is refused
    continuing = bool(cfg.get("resume")) or requeued_checkpoint(run_dir) is not None
    with claimed_run_dir(run_dir, continuing):
        return run_recorded(cfg, _train)


def _train(cfg: DictConfig, out_dir: Path, record: RunRecord) -> dict[str, float]:
    validate_config(cfg)  # every config problem at once, before anything heavy
    if cfg.get("extras", {}).get("print_config") and process_rank() == 0:
        print_config_tree(cfg, save_to=out_dir / "config_tree.log")
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.accelerator.matmul_precision)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="partial")
    before = (record.data.get("data") or {}).get("fingerprint")  # a resumed run's
    record.update(data=(described := prepare_data(datamodule, cfg)))
    if before and described.get("fingerprint") not in (None, before):  # resume_allow_data_change
        record.update(resume_data_change={"recorded": before, "now": described["fingerprint"]})
    if cfg.get("ckpt_path"):
        check_checkpoint_fits(cfg.ckpt_path, cfg.model, **checkpoint_trust(cfg))
    if cfg.get("init_from"):
        check_checkpoint_fits(cfg.init_from, cfg.model, key="init_from", **checkpoint_trust(cfg))
    model: L.LightningModule = instantiate(cfg.model, _convert_="partial")
    if hasattr(model, "parameter_counts"):
        record.update(parameters=(counts := model.parameter_counts()))
        log.info(
            "parameters: %(trainable)d trainable of %(total)d (%(trainable_percent)s%%)", counts
        )
    if cfg.get("init_from") and not cfg.get("ckpt_path"):  # a resumed run has its own weights
        source = init_from_checkpoint(model, cfg.init_from, **checkpoint_trust(cfg))
        record.update(init_from=source)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    callbacks.append(ConfigInCheckpoint(cfg.model, cfg.data))
    callbacks.extend(pruning_callbacks(cfg))
    compile_report = CompileReport() if cfg.model.get("compile") else None
    if compile_report is not None:
        callbacks.append(compile_report)
    ckpt_path = cfg.get("ckpt_path")
    if in_slurm_job():
        callbacks.append(
            SlurmRequeue(
                out_dir / "checkpoints" / "last.ckpt",
                on_requeue=lambda step: record.update(status="requeued", requeued_at_step=step),
            )
        )
        requeued = requeued_checkpoint(out_dir)
        if requeued is not None:
            log.info("SLURM restart: resuming from %s", requeued)
            record.update(resumed_from_requeue=str(requeued))
            ckpt_path = str(requeued)
    loggers = instantiate_dict(cfg.get("logger"))
    if not loggers:  # logger=none: nothing to send learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_run_start(loggers, cfg, record.data)

    if cfg.get("tune"):
        settings = OmegaConf.to_container(cfg.tune, resolve=True)
        mode, apply = settings.pop("mode"), settings.pop("apply", True)
        record.update(tune=run_tuner(trainer, model, datamodule, mode, out_dir, apply, **settings))
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    record.update(data_fingerprint=getattr(datamodule, "fingerprint", None))
    if compile_report is not None and compile_report.report:
        record.update(compile=compile_report.report)

    metrics = final_metrics([dict(trainer.callback_metrics)])
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or None
        if ckpt is None:
            log.warning(
                "no best checkpoint (fast_dev_run or no checkpoint callback): "
                "validating and testing the current weights"
            )
        extra = {}
        if getattr(model, "auto_threshold", False):  # model.decision_threshold=auto
            extra["decision_threshold"] = _choose_threshold(model, trainer, datamodule, ckpt)
            record.update(decision_threshold=extra["decision_threshold"])
        val = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        metrics = final_metrics(val + test)
        # A run started from another run's checkpoint (ckpt_path=) that has not improved on it
        # yet keeps that run's best, outside this run's directory.
        inside = best and Path(best).resolve().is_relative_to(Path(out_dir).resolve())
        where = str(Path(best).resolve().relative_to(Path(out_dir).resolve())) if inside else best
        metrics_ckpt = {"best_ckpt": where} if best else {}
        metrics_ckpt.update(extra)
        if limited := limited_evaluation(model, datamodule):
            metrics_ckpt["limited_evaluation"] = limited  # the metrics and reports cover these
            log.warning("limited evaluation: %s", limited)
        if trainer.is_global_zero:
            atomic_write_json(out_dir / "metrics.json", {**metrics, **metrics_ckpt})
            if hasattr(model, "export_pretrained"):
                exported = _unsharded(model, trainer, best)
                exported.export_pretrained(out_dir / "hf_model", datamodule)
    if trainer.is_global_zero:
        record.update(metrics=metrics)  # the run record the loggers keep carries the results
        log_run_end(loggers, out_dir, record.data)
        print_metrics(metrics, out_dir)
    return metrics


def _choose_threshold(
    model: L.LightningModule,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    ckpt: str | None,
) -> float:
    """Set the model's threshold to the validation-F1-best one of checkpoint ``ckpt`` (or the
    current weights) and store it in that checkpoint, which is then tested and exported."""
    trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    threshold, f1 = model.choose_threshold()
    log.info("decision threshold %.4f (validation F1 %.4f)", threshold, f1)
    if ckpt and Path(ckpt).is_file() and trainer.is_global_zero:  # not a sharded folder
        store_decision_threshold(ckpt, threshold)
    trainer.strategy.barrier()  # every process reloads the checkpoint next
    return threshold


def _unsharded(model: L.LightningModule, trainer: L.Trainer, best: str) -> L.LightningModule:
    """The model to export: itself, or under FSDP (whose parameters are shards) a copy rebuilt
    on the CPU from the consolidated best checkpoint the strategy wrote."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return model
    if not best:
        raise RuntimeError("FSDP: no consolidated checkpoint to export the model from")
    from tunelab.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(best), best, compile=False)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)


def _main() -> None:
    sys.argv[1:] = resume_overrides(sys.argv[1:])  # a refused resume is refused here
    with claimed_cli_run_dir(sys.argv[1:]):  # before Hydra writes into hydra.run.dir
        _hydra_main()


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
