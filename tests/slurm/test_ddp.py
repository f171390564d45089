"""DDP across SLURM tasks: one job of 2 tasks (gloo on CPU) trains one run in one directory."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import FASHION_MNIST
from tests.slurm.test_launcher import _finish, _job_dirs, _multirun

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed"),
]


def test_two_task_ddp_job_writes_one_run_directory(slurm_two_cpus, tmp_path):
    overrides = [
        "experiment=cnn_fashion_mnist",
        "data.max_train_samples=1024",
        "data.max_eval_samples=256",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "logger=none",
        "accelerator=cpu",
        "strategy=ddp_cpu",  # 2 processes: SLURM starts them as 2 tasks of one job
        "hydra/launcher=slurm_ddp",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10",
    ]
    _finish(_multirun(slurm_two_cpus, tmp_path, overrides))

    (job,) = _job_dirs(tmp_path)  # one run, not one per task
    info = json.loads((job / "run_info.json").read_text())
    assert info["status"] == "completed"
    assert info["config"]["trainer"]["devices"] == 2
    ckpt = torch.load(job / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 16  # 1,024 images / (2 tasks x 32): the tasks shared the data
    metrics = json.loads((job / "metrics.json").read_text())
    assert 0.0 < metrics["test/acc"] <= 1.0
    logs = sorted(p.name for p in job.glob("train*.log"))
    assert logs == ["train.log", "train_rank1.log"]
    # Both tasks ran in the same SLURM job (submitit's per-task logs), and formed one DDP group.
    task_logs = list((job.parent / ".submitit").glob("*/*_1_log.err"))
    assert task_logs, "no log of SLURM task 1"
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in task_logs[0].read_text()
