"""Evaluation entry point: ``tunelab-eval ckpt_path=PATH [+data.KEY=VALUE ...]``.

Rebuilds the model and data module from the configs stored in the checkpoint, computes the test
metrics and writes them to this evaluation's own run directory. With
``eval_domains=[movies,products,...]`` it also tests each listed corpus and writes
``domain_report.csv`` / ``domain_report.md`` (see :mod:`tunelab.domains`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tunelab.checkpoint import load_checkpoint, model_from_checkpoint, stored_configs
from tunelab.cli import run_cli, run_task
from tunelab.config import config_dir
from tunelab.console import print_metrics
from tunelab.domains import evaluate_domains, plan_domains, write_domain_report
from tunelab.report import write_test_report
from tunelab.safety import checkpoint_trust
from tunelab.train import final_metrics, instantiate_dict
from tunelab.utils.io import atomic_write_json
from tunelab.utils.run_record import RunRecord, run_recorded
from tunelab.validation import validate_config


def _evaluate(cfg: DictConfig, out_dir: Path, record: RunRecord) -> dict[str, float]:
    validate_config(cfg)
    trust = checkpoint_trust(cfg)
    ckpt = load_checkpoint(cfg.ckpt_path, **trust)  # weights-only, stored targets checked
    model_cfg, data_cfg = stored_configs(ckpt)
    data_cfg = evaluated_data(data_cfg, cfg.get("data") or OmegaConf.create({}))
    validate_config(cfg, model=model_cfg, data=data_cfg)  # the checkpoint's, with overrides
    domains = plan_domains(list(cfg.eval_domains), data_cfg) if cfg.get("eval_domains") else []
    for _, domain_cfg in domains[1:]:  # every corpus's problems before anything runs
        validate_config(cfg, model=model_cfg, data=domain_cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.accelerator.matmul_precision)
    model = model_from_checkpoint(ckpt, cfg.ckpt_path, compile=cfg.accelerator.compile, **trust)
    datamodule = instantiate(data_cfg, _convert_="partial")
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=instantiate_dict(cfg.get("logger")) or False, callbacks=[]
    )
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = final_metrics(results)
    record.update(data_fingerprint=getattr(datamodule, "fingerprint", None))
    if hasattr(datamodule, "describe"):
        record.update(data=datamodule.describe())
    if trainer.is_global_zero:
        extra = {"ckpt_path": str(Path(cfg.ckpt_path).resolve())}
        if getattr(model, "num_classes", None) == 2:  # the checkpoint's threshold, used above
            extra["decision_threshold"] = model.decision_threshold
        atomic_write_json(out_dir / "metrics.json", {**metrics, **extra})
        write_test_report(model, datamodule, out_dir)  # confusion matrix, errors.csv
        print_metrics(metrics, out_dir)
    if domains:  # the checkpoint's own test split above is the in-domain reference
        rows = evaluate_domains(domains, model, trainer, in_domain=(metrics, datamodule))
        if trainer.is_global_zero:
            write_domain_report(rows, out_dir, str(cfg.ckpt_path))
    return metrics


def evaluated_data(trained: DictConfig, overrides: DictConfig) -> DictConfig:
    """The data config to test on: the checkpoint's, with the ``data`` overrides of this command.

    A single file other than the one the model was trained on is tested whole (``test_size:
    all``) unless ``data.test_size`` is given: its rows were never training examples. The
    training file itself keeps its held-out test split.
    """
    data = OmegaConf.merge(trained, overrides)
    path = data.get("path")
    new_file = path is not None and Path(path).is_file() and path != trained.get("path")
    if new_file and "test_size" not in overrides:
        data.test_size = "all"
    return data


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Compute a checkpoint's test metrics; writes ``metrics.json`` in the eval run directory."""
    return run_recorded(cfg, _evaluate)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


def main() -> None:
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
