"""Exact resume: a run killed at a random step and resumed ends identical to an uninterrupted one.

Real subprocesses, real signals (SIGTERM and SIGKILL sent from outside), real checkpoints; the
comparison is exact (torch.equal on every weight, == on every metric).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import FASHION_MNIST, shared_data_dir, tiny_text_overrides

CNN = [
    "experiment=cnn_fashion_mnist",
    "data.max_train_samples=1024",
    "data.max_eval_samples=256",
    "data.batch_size=64",
    "data.augment=true",  # on-device random augmentation: exercises the per-batch RNG
    "trainer.max_epochs=2",
    "logger=csv",
]
CNN_STEPS = 2 * 1024 // 64


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNELAB_ROOT": str(root),
        "TUNELAB_DATA_DIR": str(shared_data_dir()),
        "HYDRA_FULL_ERROR": "1",
    }


def _train(root: Path, overrides: list[str]) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab.train", *overrides],
        env=_env(root),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    return run


def _step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _kill_at(proc: subprocess.Popen, root: Path, step: int, sig: int) -> Path:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {step}: {proc.stderr.read()[-2000:]}")
        runs = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
        if runs and _step(runs[0] / "checkpoints" / "last.ckpt") >= step:
            proc.send_signal(sig)
            proc.communicate(timeout=120)
            return runs[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the run to reach the kill step")


def _compare(reference: Path, resumed: Path) -> None:
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    res_metrics = json.loads((resumed / "metrics.json").read_text())
    assert res_metrics == ref_metrics
    for name in ("last.ckpt", "best.ckpt"):
        a = torch.load(reference / "checkpoints" / name, weights_only=False)
        b = torch.load(resumed / "checkpoints" / name, weights_only=False)
        assert a["global_step"] == b["global_step"]
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (name, k)
        # optimizer moments too: the resumed run is the same run, not just close
        for sa, sb in zip(
            a["optimizer_states"][0]["state"].values(),
            b["optimizer_states"][0]["state"].values(),
            strict=True,
        ):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _kill_and_resume(tmp_path: Path, overrides: list[str], total_steps: int, sig: int) -> None:
    overrides = [*overrides, "callbacks.last_checkpoint.every_n_train_steps=1"]
    reference = _train(tmp_path / "reference", overrides)
    _finish(reference)
    kill_step = random.randint(2, total_steps - 2)
    killed = _kill_at(_train(tmp_path / "killed", overrides), tmp_path / "killed", kill_step, sig)
    info = json.loads((killed / "run_info.json").read_text())
    # SIGTERM lets the run record that it was stopped; SIGKILL leaves no chance to.
    assert info["status"] == ("interrupted" if sig == signal.SIGTERM else "running")
    assert not (killed / "metrics.json").exists()
    logged_before = (killed / "csv" / "metrics.csv").is_file()  # nothing if killed early
    resumed = _train(tmp_path / "elsewhere", [f"resume={killed}"])
    _finish(resumed)
    info = json.loads((killed / "run_info.json").read_text())
    assert info["status"] == "completed" and len(info["resumes"]) == 1
    assert any((killed / ".hydra").glob("resume-*/config.yaml"))
    assert not (tmp_path / "elsewhere" / "outputs").exists()  # continued in place
    # The first part's logs are kept; the resumed part logs beside them.
    assert (killed / "csv" / "metrics.csv").is_file() == logged_before
    assert any((killed / "csv").glob("resume-*/metrics.csv"))
    _compare(_run_dir(tmp_path / "reference"), killed)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_cnn_kill_and_resume_is_exact(tmp_path, sig):
    _kill_and_resume(tmp_path, CNN, CNN_STEPS, sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_bert_kill_and_resume_is_exact(tmp_path, sig, tiny_bert_dir, sentiment_csv):
    overrides = [
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "trainer.max_epochs=2",
        "logger=csv",
    ]
    steps = 2 * ((240 - 24) // 16 + 1)  # 216 training rows in batches of 16, 2 epochs
    _kill_and_resume(tmp_path, overrides, steps, sig)


def test_resume_needs_a_run_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.train", f"resume={tmp_path}"],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "not a tunelab run directory" in proc.stderr + proc.stdout


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_moved_run_directory_resumes_with_its_own_checkpoints(tmp_path):
    """A run directory moved (rsync'ed from a cluster, renamed) resumes with its best score and
    tests and exports its own best.ckpt, not the one at the old place."""
    quick = [*CNN[:-1], "trainer.max_epochs=1", "data.max_train_samples=256", "logger=none"]
    _finish(_train(tmp_path / "first", quick))
    old = _run_dir(tmp_path / "first")
    state = torch.load(old / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    (best_key,) = [k for k in state if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")]
    score = float(state[best_key]["best_model_score"])
    run = tmp_path / "moved" / old.name
    run.parent.mkdir()
    old.rename(run)
    _finish(_train(tmp_path / "elsewhere", [f"resume={run}", "trainer.max_epochs=2"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_ckpt"] == "checkpoints/best.ckpt"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    best = state[best_key]
    assert Path(best["best_model_path"]).parent == (run / "checkpoints").resolve()
    assert float(best["best_model_score"]) >= score  # the first epoch's score was kept
