"""tunelab on a real SLURM cluster: multirun through submitit, and preemption with requeue."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import FASHION_MNIST, shared_data_dir

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed"),
]

TINY = [
    "experiment=cnn_fashion_mnist",
    "data.max_train_samples=2048",
    "data.max_eval_samples=256",
    "data.batch_size=32",
    "trainer.max_epochs=2",
    "logger=none",
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.mem_gb=2",
]


def _multirun(cluster, root: Path, overrides: list[str]) -> subprocess.Popen:
    env = {
        **cluster.env,
        "TUNELAB_ROOT": str(root),
        "TUNELAB_DATA_DIR": str(shared_data_dir()),
        "HYDRA_FULL_ERROR": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab.train", "-m", *overrides],
        env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _job_dirs(root: Path) -> list[Path]:
    (sweep,) = (root / "outputs" / "cnn_fashion_mnist" / "multirun").iterdir()
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


# 50-90 s. What it checks stays in `make test`: test_preempted_job_requeues_and_resumes_exactly
# launches a 2-job array through the same launcher (both jobs complete with their metrics), and
# the sweeper's tests check that each job gets its own overrides.
@pytest.mark.slow
def test_two_job_multirun_through_slurm(slurm_cluster, tmp_path):
    _finish(_multirun(slurm_cluster, tmp_path, [*TINY, "seed=1,2"]))
    jobs = _job_dirs(tmp_path)
    assert [p.name for p in jobs] == ["0", "1"]
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert all(0.0 < m["test/acc"] <= 1.0 for m in metrics)
    infos = [json.loads((p / "run_info.json").read_text()) for p in jobs]
    assert [i["seed"] for i in infos] == [1, 2]
    assert all(i["status"] == "completed" for i in infos)


def _step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def test_preempted_job_requeues_and_resumes_exactly(slurm_cluster, tmp_path):
    # Two identical runs in one array (the unused +copy key only tells them apart); task 1 is
    # signalled with USR1 mid-run, checkpoints, requeues, resumes, and must end like task 0.
    overrides = [*TINY, "callbacks.last_checkpoint.every_n_train_steps=1", "+copy=a,b"]
    proc = _multirun(slurm_cluster, tmp_path, overrides)
    deadline = time.monotonic() + 240
    target = None
    while time.monotonic() < deadline and target is None:
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        sweeps = list((tmp_path / "outputs" / "cnn_fashion_mnist" / "multirun").glob("*/1"))
        if sweeps and _step(sweeps[0] / "checkpoints" / "last.ckpt") >= 20:
            target = sweeps[0]
        time.sleep(0.1)
    assert target is not None, "task 1 never reached step 20"
    jobs = slurm_cluster.run("squeue", "-h", "-o", "%i", check=True).stdout.split()
    (task1,) = [j for j in jobs if j.endswith("_1")]
    slurm_cluster.run("scancel", "--signal=USR1", task1, check=True)
    _finish(proc)

    reference, preempted = _job_dirs(tmp_path)
    info = json.loads((preempted / "run_info.json").read_text())
    assert info["status"] == "completed"
    assert [r["previous_status"] for r in info["resumes"]] == ["requeued"]
    assert info["resumed_from_requeue"].endswith("checkpoints/last.ckpt")
    assert json.loads((preempted / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(preempted / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
