"""The sweep summary written after a multirun, and tunelab-sweep-summary."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tests.helpers import FASHION_MNIST, shared_data_dir

pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")

SWEEP = [
    "debug=limit",
    "data.max_train_samples=256",
    "data.max_eval_samples=128",
    "logger=none",
    "model.optimizer.lr=1e-3,3e-3",
    "data.batch_size=32,64",
]


def test_multirun_writes_summary_and_cli_regenerates_it(tmp_path):
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    cmd = [sys.executable, "-m", "tunelab.train", "-m", *SWEEP]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cnn_fashion_mnist" / "multirun").iterdir()
    with open(sweep / "sweep_summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["job"]) for r in rows] == [0, 1, 2, 3]
    assert {r["status"] for r in rows} == {"completed"}
    for r in rows:
        assert r["metric"] == "val/acc" and "model.optimizer.lr=" in r["overrides"]
        assert 0.0 <= float(r["value"]) <= 1.0 and float(r["duration_s"]) >= 0
    png = sweep / "sweep_summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    png.unlink()
    (sweep / "sweep_summary.csv").unlink()
    cli = [sys.executable, "-m", "tunelab.sweep_summary", str(sweep)]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == [str(sweep / "sweep_summary.csv"), str(png)]
    assert png.is_file()


def test_summary_cli_rejects_a_non_sweep_dir(tmp_path):
    cli = [sys.executable, "-m", "tunelab.sweep_summary", str(tmp_path)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 2 and "not a multirun dir" in proc.stderr
