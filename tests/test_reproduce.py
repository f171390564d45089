"""tunelab-reproduce round trip, and what run_info.json records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FASHION_MNIST, shared_data_dir
from tunelab.utils.run_record import code_version

pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("repro")
    env = {**os.environ, "TUNELAB_ROOT": str(root), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    subprocess.run(
        [sys.executable, "-m", "tunelab.train", "debug=limit", "data.max_train_samples=640",
         "data.max_eval_samples=256", "model.net.dropout=0.5", "logger=none"],
        env=env, cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    (run,) = (root / "outputs" / "cnn_fashion_mnist").iterdir()
    return run, env


def _reproduce(run: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab.reproduce", str(run), *extra],
        env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_reproduce_reports_a_match(finished_run):
    run, env = finished_run
    proc = _reproduce(run, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("match: ")
    new_dir = Path(last.split(": ", 1)[1])
    assert new_dir.parent == run.parent and new_dir != run
    assert json.loads((new_dir / "metrics.json").read_text()) == json.loads(
        (run / "metrics.json").read_text()
    )
    # the re-run used the recorded config, overrides included
    new_info = json.loads((new_dir / "run_info.json").read_text())
    assert new_info["config"]["model"]["net"]["dropout"] == 0.5


def test_reproduce_reports_a_mismatch(finished_run, tmp_path):
    run, env = finished_run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test/acc"] += 0.01
    (copy / "metrics.json").write_text(json.dumps(metrics))
    proc = _reproduce(copy, env)
    assert proc.returncode == 1
    assert "test/acc" in proc.stdout and "DIFFERS" in proc.stdout


def test_reproduce_needs_a_run_directory(tmp_path):
    proc = _reproduce(tmp_path, dict(os.environ))
    assert proc.returncode == 2 and "run_info.json not found" in proc.stderr


def test_run_record_contents(finished_run):
    run, _ = finished_run
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed"
    assert info["overrides"][:2] == ["debug=limit", "data.max_train_samples=640"]
    assert info["command"][1:3] == ["debug=limit", "data.max_train_samples=640"]
    assert info["seed"] == 42 and info["config"]["seed"] == 42
    assert info["config"]["data"]["max_train_samples"] == 640  # resolved config
    assert set(info["packages"]) >= {"torch", "lightning", "hydra-core", "transformers"}
    assert info["packages"]["torch"].startswith("2.")
    assert info["python"] == sys.version.split()[0]
    assert info["hardware"]["cpu_count"] >= 1 and "cuda_devices" in info["hardware"]
    assert info["start_time"] <= info["end_time"]
    assert len(info["data_fingerprint"]) == 16
    assert "metrics" in info and info["metrics"]["test/acc"] >= 0
    code = info["code"]
    assert "git" in code
    if code["git"] and code["dirty"]:
        assert (run / "code.diff").is_file() and code["diff_file"] == "code.diff"


def test_code_version_outside_git(tmp_path):
    version = code_version(tmp_path)
    assert version["git"] is None and "not in a git checkout" in version["note"]


def test_code_version_dirty_tree(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    assert code_version(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert code_version(tmp_path)["dirty"] is True
