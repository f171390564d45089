"""Debugging aids: debug=overfit|profile|anomaly, callbacks=grad_norm, tune=lr_find|batch_size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import needs_fashion_mnist
from tunelab.train import train

pytestmark = needs_fashion_mnist

# A small CNN on a few Fashion-MNIST batches: seconds per run on 2 cores.
TINY = [
    "data.max_train_samples=512",
    "data.max_eval_samples=128",
    "data.batch_size=32",
    "model.net.channels=[8,16]",
    "model.net.hidden_size=32",
]
ONE_EPOCH = [*TINY, "trainer.max_epochs=1"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(run: Path, key: str) -> list[float]:
    return [float(r[key]) for r in _rows(run) if r.get(key)]


def test_overfit_drives_training_accuracy_to_nearly_one(compose_train, tmp_path):
    cfg = compose_train(
        *TINY,
        "debug=overfit",
        "trainer.overfit_batches=2",
        "model.net.dropout=0",
        out=tmp_path / "run",
    )
    train(cfg)
    acc = _column(tmp_path / "run", "train/acc")
    assert acc[0] < 0.5, "the first epoch should not already fit (the test would prove nothing)"
    assert acc[-1] >= 0.98


def test_profile_writes_its_report_in_the_run_directory(compose_train, tmp_path):
    cfg = compose_train(*ONE_EPOCH, "debug=profile", "trainer.limit_train_batches=4", out=tmp_path)
    train(cfg)
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "Mean duration" in report


def test_anomaly_detection_names_the_op_that_made_nan(compose_train, tmp_path):
    # A learning rate of 1e30 sends the weights to ~1e30 after one step; the next forward
    # overflows to inf - inf = NaN, and anomaly mode stops in the backward op that returns NaN.
    cfg = compose_train(
        *ONE_EPOCH,
        "debug=anomaly",
        "model.optimizer.lr=1e30",
        "callbacks=none",
        "logger=none",
        out=tmp_path,
    )
    with pytest.raises(RuntimeError, match="returned nan values"):
        train(cfg)


def test_grad_norm_is_logged_and_matches_the_gradients(compose_train, tmp_path):
    cfg = compose_train(
        *ONE_EPOCH, "callbacks=grad_norm", "trainer.log_every_n_steps=1", out=tmp_path
    )
    train(cfg)
    norms = _column(tmp_path, "train/grad_norm")
    assert len(norms) == 512 // 32  # every step of the epoch
    assert all(0.0 < n < 100.0 for n in norms)


def test_lr_find_saves_its_suggestion_and_uses_it(compose_train, tmp_path):
    cfg = compose_train(
        *ONE_EPOCH,
        "tune=lr_find",
        "tune.num_training=15",
        "model.scheduler=null",
        "trainer.log_every_n_steps=1",
        out=tmp_path,
    )
    train(cfg)
    result = json.loads((tmp_path / "tune.json").read_text())
    lr = result["suggested_lr"]
    assert 1e-7 <= lr <= 1.0 and result["applied"]
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    # LearningRateMonitor logs the optimizer's actual rate per parameter group.
    keys = [k for k in _rows(tmp_path)[0] if k.startswith("lr-")]
    used = [u for k in keys for u in _column(tmp_path, k)]
    assert keys and used and all(u == pytest.approx(lr) for u in used), (keys, used[:3], lr)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["tune"]["suggested_lr"] == lr


def test_batch_size_finder_doubles_and_the_run_uses_the_size(compose_train, tmp_path):
    cfg = compose_train(*ONE_EPOCH, "tune=batch_size", "tune.max_trials=3", out=tmp_path)
    train(cfg)
    size = json.loads((tmp_path / "tune.json").read_text())["batch_size"]
    # No out-of-memory on a CPU: it doubles from 32 until max_trials stops it.
    assert size in (64, 128, 256)
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["global_step"] == 512 // size  # the epoch ran at the found batch size
