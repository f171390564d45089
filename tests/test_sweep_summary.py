"""The sweep summary written after a multirun, and tunelab-sweep-summary."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.helpers import FASHION_MNIST, shared_data_dir
from tunelab.config import config_dir
from tunelab.sweep_summary import SweepSummaryCallback, collect, figure
from tunelab.sweep_summary import main as summary_main
from tunelab.utils.run_record import RunRecord

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed"
)

SWEEP = [
    "debug=limit",
    "data.max_train_samples=256",
    "data.max_eval_samples=128",
    "logger=none",
    "trainer.max_epochs=1",
]

# Job values of a made-up sweep whose best is neither first nor last, with a failed job and a
# pruned one in between: a running max and a running min differ at every completed job but one.
VALUES = [0.42, 0.31, 0.55, None, 0.47, 0.28, "pruned", 0.61]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _running(values: list[float], best) -> list[float]:
    return list(itertools.accumulate(values, best))


def _make_sweep(sweep: Path, metric: str) -> None:
    """Job folders 0/ ... with the run_info.json that RunRecord writes for each outcome."""
    for job, value in enumerate(VALUES):
        overrides = [
            f"model.optimizer.lr={10 ** -(job + 2)}",
            f"++optuna_trial={{number: {job}, study_name: s, pruner: {{n_warmup_steps: 1}}}}",
        ]
        record = RunRecord(sweep / str(job), {"optimized_metric": metric}, overrides, seed=job)
        if value is None:
            record.finish("failed", error="RuntimeError: out of memory")
        elif value == "pruned":
            record.finish("pruned", error="TrialPruned: epoch 1")
        else:
            record.finish("completed", metrics={metric: value, "other/metric": -1.0})


def _sweep_config(sweep: Path, *overrides: str):
    """The config Hydra hands a multirun callback: train.yaml with its hydra node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra.sweep.dir={sweep}", *overrides],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize(
    ("overrides", "best"),
    [
        # the Optuna sweeper's structured config holds the Direction enum
        (["hparams_search=cnn_optuna"], max),
        (["hparams_search=cnn_optuna", "hydra.sweeper.direction=minimize"], min),
        ([], max),  # Hydra's basic sweeper: no direction, tunelab's metrics default to val/acc
    ],
    ids=["optuna-maximize", "optuna-minimize", "basic"],
)
def test_best_so_far_follows_the_sweep_direction(overrides, best, tmp_path):
    sweep = tmp_path / "multirun"
    _make_sweep(sweep, "val/f1")
    cfg = _sweep_config(sweep, *overrides)
    SweepSummaryCallback().on_multirun_end(cfg)

    rows = _csv(sweep / "sweep_summary.csv")
    assert [int(r["job"]) for r in rows] == list(range(len(VALUES)))
    assert [r["status"] for r in rows] == [
        "failed" if v is None else "pruned" if v == "pruned" else "completed" for v in VALUES
    ]
    done = [(job, v) for job, v in enumerate(VALUES) if isinstance(v, float)]
    expected = dict(zip([j for j, _ in done], _running([v for _, v in done], best), strict=True))
    # a failed or pruned job carries the best of the jobs before it
    carried, by_job = None, {}
    for job in range(len(VALUES)):
        carried = expected.get(job, carried)
        by_job[job] = carried
    assert [float(r["best_so_far"]) for r in rows] == [by_job[j] for j in range(len(VALUES))]
    for r in rows:
        assert r["metric"] == "val/f1"
        assert r["overrides"].startswith("model.optimizer.lr=")
        assert "optuna_trial" not in r["overrides"], r["overrides"]

    # the plotted line is that series too
    maximize = best is max
    fig = figure(collect(sweep, maximize), maximize)
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("best so far")]
    assert list(line.get_xdata()) == list(expected)
    assert list(line.get_ydata()) == list(expected.values())
    assert (sweep / "sweep_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # tunelab-sweep-summary reads the direction from the multirun.yaml the sweeper saved
    OmegaConf.save(cfg, sweep / "multirun.yaml")
    (sweep / "sweep_summary.csv").unlink()
    assert summary_main([str(sweep)]) == 0
    assert _csv(sweep / "sweep_summary.csv") == rows


@needs_fashion_mnist
def test_optuna_multirun_writes_summary_and_cli_regenerates_it(tmp_path):
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    search = ["hparams_search=cnn_optuna", "hydra.sweeper.n_trials=3"]
    cmd = [sys.executable, "-m", "tunelab.train", "-m", *SWEEP, *search]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "cnn_fashion_mnist" / "multirun").iterdir()
    rows = _csv(sweep / "sweep_summary.csv")
    assert [int(r["job"]) for r in rows] == [0, 1, 2]
    assert {r["status"] for r in rows} == {"completed"}
    values = [float(r["value"]) for r in rows]
    assert [float(r["best_so_far"]) for r in rows] == _running(values, max)  # direction: maximize
    for r in rows:
        assert r["metric"] == "val/acc" and "model.optimizer.lr=" in r["overrides"]
        assert "optuna_trial" not in r["overrides"]
        assert 0.0 <= float(r["value"]) <= 1.0 and float(r["duration_s"]) >= 0
    png = sweep / "sweep_summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    png.unlink()
    (sweep / "sweep_summary.csv").unlink()
    cli = [sys.executable, "-m", "tunelab.sweep_summary", str(sweep)]
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == [str(sweep / "sweep_summary.csv"), str(png)]
    assert png.is_file() and _csv(sweep / "sweep_summary.csv") == rows


def test_summary_cli_rejects_a_non_sweep_dir(tmp_path):
    cli = [sys.executable, "-m", "tunelab.sweep_summary", str(tmp_path)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 2 and "not a multirun dir" in proc.stderr
