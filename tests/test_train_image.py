"""The CNN end to end on real Fashion-MNIST: train, run directory, eval, predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import compose_cfg, needs_fashion_mnist
from tunelab.checkpoint import load_checkpoint
from tunelab.data.images import read_fashion_mnist
from tunelab.evaluate import evaluate
from tunelab.predict import predict
from tunelab.train import train

pytestmark = needs_fashion_mnist

QUICK = [
    "experiment=cnn_fashion_mnist",
    "trainer.max_epochs=1",
    "data.max_train_samples=4000",
    "data.max_eval_samples=1000",
    "logger=csv",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("cnn-run")
    metrics = train(compose_cfg("train", QUICK, out))
    return out, metrics


def test_one_epoch_beats_chance(trained_run):
    _, metrics = trained_run
    # 10 balanced classes: chance is 0.10. One epoch on 4,000 images reaches ~0.75.
    assert metrics["test/acc"] > 0.6
    assert metrics["val/acc"] > 0.6
    for stage in ("val", "test"):
        for name in ("acc", "precision", "recall", "f1", "loss"):
            assert f"{stage}/{name}" in metrics


def test_run_directory_contents(trained_run):
    out, metrics = trained_run
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "best.ckpt").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert saved["best_ckpt"] == "checkpoints/best.ckpt"
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 42
    assert info["config"]["data"]["max_train_samples"] == 4000
    assert info["data_fingerprint"]
    logged = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_epoch" in logged and "val/acc" in logged


def test_checkpoint_carries_its_configs_and_loads_eagerly(trained_run):
    out, _ = trained_run
    ckpt = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert ckpt["tunelab"]["data"]["num_classes"] == 10
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])


def test_eval_recomputes_the_test_metrics(trained_run, tmp_path):
    out, metrics = trained_run
    cfg = compose_cfg("eval", [f"ckpt_path={out}/checkpoints/best.ckpt", "logger=none"], tmp_path)
    result = evaluate(cfg)
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == pytest.approx(
        metrics["test/acc"], abs=1e-6
    )
    # the checkpoint's confusion matrix, as the training run wrote it
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert (tmp_path / "confusion_matrix.csv").read_text() == (
        out / "confusion_matrix.csv"
    ).read_text()


def test_predict_api_and_cli_agree_with_labels(trained_run, tmp_path):
    out, _ = trained_run
    x, y = read_fashion_mnist(Path("/usr/share/datasets/fashion-mnist"))["test"]
    npz = tmp_path / "few.npz"
    np.savez(npz, x=x[:32, 0])
    rows = predict(out / "checkpoints" / "best.ckpt", images=npz)
    assert len(rows) == 32
    assert np.mean([r["label"] == t for r, t in zip(rows, y[:32], strict=True)]) > 0.6
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label_name"] == max(r["probabilities"], key=r["probabilities"].get)

    # An image file, through the console script, as a user would.
    from PIL import Image

    Image.fromarray(x[0, 0]).save(tmp_path / "shoe.png")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab.predict",
            f"ckpt_path={out}/checkpoints/best.ckpt",
            f"input={tmp_path / 'shoe.png'}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["label"] == rows[0]["label"]
    assert row["probabilities"][row["label_name"]] == pytest.approx(
        rows[0]["probabilities"][rows[0]["label_name"]], abs=1e-5
    )


def test_same_config_twice_gives_identical_weights(tmp_path):
    overrides = [
        "experiment=cnn_fashion_mnist",
        "debug=limit",
        "data.max_train_samples=640",
        "data.max_eval_samples=256",
        "logger=none",
    ]
    m1 = train(compose_cfg("train", overrides, tmp_path / "a"))
    m2 = train(compose_cfg("train", overrides, tmp_path / "b"))
    assert m1 == m2
    w1 = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    w2 = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
