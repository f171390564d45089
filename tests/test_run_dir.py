"""Run directories: the CLI's layout, and a directory is never reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.helpers import FASHION_MNIST
from tunelab import config


def test_new_run_dir_never_reuses(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_RUN_DIRS", {})
    first = config.new_run_dir(str(tmp_path / "exp"))
    monkeypatch.setattr(config, "_RUN_DIRS", {})  # as a second process would
    second = config.new_run_dir(str(tmp_path / "exp"))
    assert first != second
    assert os.path.isdir(first) and os.path.isdir(second)
    # Within one process Hydra may resolve the run dir again: same answer.
    assert config.new_run_dir(str(tmp_path / "exp")) == second


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_cli_run_directory_layout(tmp_path):
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tunelab.train",
        "debug=limit",
        "data.max_train_samples=640",
        "data.max_eval_samples=256",
        "seed=7",
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp_path)
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp_path)
    runs = sorted((tmp_path / "outputs" / "cnn_fashion_mnist").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / ".hydra" / "config.yaml").is_file()
        assert "seed=7" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["test/acc"] <= 1.0
        info = json.loads((run / "run_info.json").read_text())
        assert info["status"] == "completed"
        assert info["overrides"] == cmd[3:]
        assert info["command"][1:] == cmd[3:]
