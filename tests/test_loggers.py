"""Experiment loggers, offline: one real run with logger=many, read back with each tool's reader."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_cfg, needs_fashion_mnist, shared_data_dir
from tunelab.config import config_dir
from tunelab.train import instantiate_dict, train
from tunelab.validation import ConfigError, validate_config

EPOCHS = 2
TINY = [
    "data.max_train_samples=256",
    "data.max_eval_samples=128",
    f"trainer.max_epochs={EPOCHS}",
    "logger=many",
]
LOGGERS = sorted(p.stem for p in (config_dir() / "logger").glob("*.yaml"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny CNN run on Fashion-MNIST logging to csv, tensorboard, mlflow and wandb at once."""
    out = tmp_path_factory.mktemp("logged") / "run"
    home = tmp_path_factory.mktemp("wandb-home")  # wandb's cache and settings, not ~/
    cfg = compose_cfg("train", TINY, out)
    (out / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # as tunelab-train's Hydra app would
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(home))
        mp.setenv("WANDB_MODE", "offline")  # the logger sets it too; restored afterwards
        train(cfg)
    return out


def _csv_values(run: Path, key: str) -> list[float]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _plots(run: Path) -> list[str]:
    return sorted(p.stem for p in run.glob("*.png"))


@needs_fashion_mnist
def test_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(
        str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    ).Reload()
    val_acc = [s.value for s in events.Scalars("val/acc")]
    # one per epoch, then the validation of the best checkpoint: the same values as the CSV
    assert len(val_acc) == EPOCHS + 1
    assert val_acc == pytest.approx(_csv_values(run, "val/acc"))
    assert [s.value for s in events.Scalars("test/acc")] == pytest.approx(
        [_metrics(run)["test/acc"]]
    )

    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.optimizer.lr"].number_value == 0.002
    assert start.session_start_info.hparams["run.git_commit"].string_value
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["val/acc", "test/acc"]

    text = events.Tensors("run_info/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"seed": 42' in text and '"git"' in text
    assert sorted(t.removeprefix("plots/") for t in events.Tags()["images"]) == _plots(run)


@needs_fashion_mnist
def test_mlflow(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run}/outputs/mlflow.db")  # paths.log_dir = <root>/outputs
    experiment = client.get_experiment_by_name("cnn_fashion_mnist")
    (found,) = client.search_runs([experiment.experiment_id])
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name == run.name

    history = client.get_metric_history(run_id, "val/acc")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        _csv_values(run, "val/acc")
    )
    assert found.data.metrics["test/acc"] == pytest.approx(_metrics(run)["test/acc"])

    info = json.loads((run / "run_info.json").read_text())
    params, tags = found.data.params, found.data.tags
    assert params["model.optimizer.lr"] == "0.002"
    assert params["trainer.max_epochs"] == str(EPOCHS)
    assert params["run.git_commit"] == info["code"]["git"] == tags["mlflow.source.git.commit"]
    assert tags["run.seed"] == "42" and "logger=many" in tags["run.overrides"]

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run_id, ".hydra")}
    expected = {"run_info.json", "metrics.json", ".hydra/config.yaml"}
    expected |= {f"{p}.png" for p in _plots(run)} | {p.name for p in run.glob("*.csv")}
    assert expected <= artifacts


def _wandb_records(path: Path) -> Iterator:
    """The protobuf records of a ``.wandb`` file (wandb 0.31 ships no Python reader for it).

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(pending)
            pending = b""


@needs_fashion_mnist
def test_wandb_offline_run(run):
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    records = list(_wandb_records(log))
    kind = lambda r: r.WhichOneof("record_type")  # noqa: E731

    def items(name: str, field: str) -> Iterator:
        for r in records:
            if kind(r) == name:
                yield from getattr(getattr(r, name), field)

    val_acc = [
        json.loads(i.value_json) for i in items("history", "item") if i.nested_key == ["val/acc"]
    ]
    assert val_acc == pytest.approx(_csv_values(run, "val/acc"))
    config = {i.key: json.loads(i.value_json) for i in items("config", "update")}
    assert config["model.optimizer.lr"] == 0.002 and config["run.git_commit"]
    assert [r.exit.exit_code for r in records if kind(r) == "exit"] == [0]  # finished cleanly

    saved = {f.path for f in items("files", "files")}
    expected = {"run_info.json", "metrics.json", ".hydra/config.yaml"}
    expected |= {f"{p}.png" for p in _plots(run)}
    assert expected <= saved
    for name in expected:  # real files (hard links or copies), not links into the run directory
        assert (offline / "files" / name).is_file()
        assert not (offline / "files" / name).is_symlink()
    images = {p.name.split("_")[0] for p in (offline / "files" / "media" / "images").rglob("*.png")}
    assert images == {p.split("_")[0] for p in _plots(run)}


@pytest.mark.parametrize("option", LOGGERS)
def test_logger_config_validates_and_instantiates(option, compose_train):
    cfg = compose_train(f"logger={option}")
    validate_config(cfg)
    loggers = instantiate_dict(cfg.logger)  # the run itself (wandb, mlflow) starts lazily
    assert len(loggers) == len([k for k in cfg.logger if "_target_" in cfg.logger[k]])


@pytest.mark.parametrize(
    ("option", "missing"),
    [
        ("mlflow", {"mlflow"}),
        ("wandb", {"wandb"}),
        ("tensorboard", {"tensorboard", "tensorboardX"}),
    ],
)
def test_missing_logger_package_is_a_config_error(option, missing, compose_train, monkeypatch):
    cfg = compose_train(f"logger={option}")
    real = importlib.util.find_spec
    fake = lambda name, *a, **k: None if name in missing else real(name, *a, **k)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert len(err.value.problems) == 1
    assert f"logger.{option}" in str(err.value) and "pip install 'tunelab[loggers]'" in str(
        err.value
    )


def test_missing_logger_package_stops_the_run_before_training(compose_train, monkeypatch):
    cfg = compose_train("logger=mlflow")
    real = importlib.util.find_spec
    fake = lambda name, *a, **k: None if name == "mlflow" else real(name, *a, **k)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ConfigError, match=r"logger\.mlflow"):
        train(cfg)
    out = Path(cfg.paths.output_dir)
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "run_info.json").read_text())["status"] == "failed"


def test_missing_logger_package_through_the_cli(tmp_path):
    """The console script, with mlflow hidden from the import system: one error line, exit 2."""
    script = (
        "import sys; sys.modules['mlflow'] = None\n"  # as if it were not installed
        "sys.argv = ['tunelab-train', 'logger=mlflow', 'data.max_train_samples=256']\n"
        "from tunelab.train import main; main()\n"
    )
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: logger.mlflow (MLFlowLogger) needs mlflow" in proc.stderr
    assert "pip install 'tunelab[loggers]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


def test_every_experiment_config_logs_as_hyperparameters(compose_train, tmp_path):
    """MLflow's limits (key characters, value length, 100 params a call) hold for our configs."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    from tunelab.loggers import log_run_start

    long = [f"data.label_names=[{','.join(['a_rather_long_label_name'] * 20)}]"]
    record = {"code": {"git": "0" * 40, "dirty": True}, "command": ["tunelab-train"], "seed": 1}
    for experiment in sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")):
        cfg = compose_train(f"experiment={experiment}", "logger=none")
        mlflow = MLFlowLogger(experiment, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        tensorboard = TensorBoardLogger(tmp_path / experiment, default_hp_metric=False)
        log_run_start([mlflow, tensorboard], cfg, {**record, "overrides": long})
        params = mlflow.experiment.get_run(mlflow.run_id).data.params
        assert params["model._target_"] == cfg.model._target_
        assert len(params) > 100 and max(len(v) for v in params.values()) <= 250
        mlflow.finalize("success")
        tensorboard.finalize("success")


@needs_fashion_mnist  # after the module's run, whose wandb service this reuses
def test_a_wandb_run_left_open_by_a_failed_job_is_finished(run, tmp_path, compose_train):
    """In a sweep in one process, a job that failed or was pruned leaves its wandb run open."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from tunelab.loggers import log_run_start

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(tmp_path))
        failed = WandbLogger(offline=True, save_dir=tmp_path).experiment
        logger = WandbLogger(offline=True, save_dir=tmp_path)
        log_run_start([logger], compose_train("logger=none"), {})
        assert logger.experiment.id != failed.id and wandb.run is logger.experiment
        logger.experiment.finish()
