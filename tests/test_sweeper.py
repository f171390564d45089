"""The ``tunelab_optuna`` Hydra sweeper and the pruning callback.

CLI sweeps run the real ``tunelab-train -m`` on small slices of Fashion-MNIST; the search space
parser, the sampler and the pruning callback are tested directly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import optuna
import pytest
import torch
import yaml
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.tunelab_optuna_sweeper._impl import trial_outcome
from hydra_plugins.tunelab_optuna_sweeper._sampler import TrialSeededSampler
from hydra_plugins.tunelab_optuna_sweeper._search_space import parse_search_space
from hydra_plugins.tunelab_optuna_sweeper.storage import (
    live_study,
    normalize_storage_url,
    open_storage,
    register_live_study,
)
from tests.helpers import REPO, needs_fashion_mnist, shared_data_dir
from tunelab.config import config_dir
from tunelab.pruning import OptunaPruning, pruning_callbacks

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = [
    "experiment=cnn_fashion_mnist",
    "data.max_train_samples=256",
    "data.max_eval_samples=128",
    "debug=limit",
    "trainer.max_epochs=1",
    "logger=none",
]


def _hparams_search(name: str) -> str:
    """``hparams_search=NAME``, or ``+hparams_search=NAME`` while train.yaml has no such default."""
    defaults = yaml.safe_load((config_dir() / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(d, dict) and "hparams_search" in d for d in defaults)
    return f"{'' if listed else '+'}hparams_search={name}"


def _sweep_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.train", "-m", *SMALL, *overrides]


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNELAB_ROOT": str(root),
        "TUNELAB_DATA_DIR": str(shared_data_dir()),
        "HYDRA_FULL_ERROR": "1",
    }


def _sweep(root: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _sweep_cmd(*overrides),
        env=_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _sweep_dirs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "cnn_fashion_mnist" / "multirun").iterdir())


def _results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


# -- CLI sweeps ------------------------------------------------------------------------------


@needs_fashion_mnist
def test_local_sweep_runs_each_trial_and_writes_results(tmp_path):
    _sweep(tmp_path, _hparams_search("cnn_optuna"), "hydra.sweeper.n_trials=3")
    (sweep_dir,) = _sweep_dirs(tmp_path)
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1", "2"]
    results = _results(sweep_dir)
    assert results["direction"] == "maximize" and results["metric"] == "val/acc"
    assert results["trials_by_state"] == {"COMPLETE": 3, "PRUNED": 0, "FAIL": 0}
    trials = results["this_sweep"]["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    # The best value is the best trial's val/acc, as its run recorded it.
    best = max(trials, key=lambda t: t["value"])
    assert results["best_value"] == best["value"] and results["best_trial"] == best["number"]
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "model.net.dropout",
        "model.net.hidden_size",
        "data.batch_size",
    }
    assert 1e-4 <= results["best_params"]["model.optimizer.lr"] <= 1e-2
    assert results["best_params"]["data.batch_size"] in (32, 64, 128)
    best_run = Path(results["best_run_dir"])
    assert best_run == sweep_dir / str(best["number"])
    metrics = yaml.safe_load((best_run / "metrics.json").read_text())
    assert metrics["val/acc"] == pytest.approx(results["best_value"])
    overrides = yaml.safe_load((best_run / ".hydra" / "overrides.yaml").read_text())
    assert f"data.batch_size={results['best_params']['data.batch_size']}" in overrides
    assert (sweep_dir / "multirun.yaml").is_file()


@needs_fashion_mnist
def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # The brute-force sampler tries both batch sizes; 0 makes the data loader raise.
    _sweep(
        tmp_path,
        "hydra/sweeper=tunelab_optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "data.batch_size=choice(0,32)",
    )
    (sweep_dir,) = _sweep_dirs(tmp_path)
    results = _results(sweep_dir)
    assert results["trials_by_state"] == {"COMPLETE": 1, "PRUNED": 0, "FAIL": 1}
    by_batch = {t["params"]["data.batch_size"]: t for t in results["this_sweep"]["trials"]}
    assert by_batch[0]["state"] == "FAIL" and by_batch[0]["value"] is None
    assert by_batch[32]["state"] == "COMPLETE" and results["best_params"] == {"data.batch_size": 32}
    failed_run = Path(by_batch[0]["run_dir"])
    info = yaml.safe_load((failed_run / "run_info.json").read_text())
    assert info["status"] == "failed"


@needs_fashion_mnist
def test_a_sweep_whose_every_trial_fails_exits_nonzero(tmp_path):
    proc = _sweep(
        tmp_path,
        "hydra/sweeper=tunelab_optuna",
        "hydra.sweeper.n_trials=1",
        "data.batch_size=choice(0)",
        check=False,
    )
    assert proc.returncode != 0
    assert "all 1 trial(s) of this sweep failed" in proc.stderr
    (sweep_dir,) = _sweep_dirs(tmp_path)
    assert _results(sweep_dir)["trials_by_state"]["FAIL"] == 1


@needs_fashion_mnist
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_processes_share_one_study(tmp_path, kind):
    path = tmp_path / "studies" / ("study.log" if kind == "journal" else "study.db")
    storage = f"{kind}:///{path}"
    n1, n2 = 2, 3
    procs = [
        subprocess.Popen(
            _sweep_cmd(
                "hydra/sweeper=tunelab_optuna",
                "hydra.sweeper.direction=maximize",
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.study_name=shared",
                "hydra.sweeper.sampler.seed=0",
                f"hydra.sweeper.n_trials={n}",
                "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
                "model.net.hidden_size=choice(32, 64)",
            ),
            env=_env(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (n1, n2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.get_trials()
    assert len(trials) == n1 + n2
    assert sorted(t.number for t in trials) == list(range(n1 + n2))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # Both processes seeded the sampler alike, yet no two trials drew the same learning rate.
    assert len({t.params["model.optimizer.lr"] for t in trials}) == n1 + n2
    # Each process wrote its own results, seeing the whole study.
    dirs = _sweep_dirs(tmp_path)
    assert len(dirs) == 2
    mine = sorted(len(_results(d)["this_sweep"]["trials"]) for d in dirs)
    assert mine == sorted([n1, n2])


@needs_fashion_mnist
def test_parallel_batch_through_submitit(tmp_path):
    # n_jobs trials at a time, each in its own process (submitit's local executor).
    _sweep(
        tmp_path,
        "hydra/sweeper=tunelab_optuna",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.storage=journal:///{tmp_path}/study.log",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
    )
    (sweep_dir,) = _sweep_dirs(tmp_path)
    results = _results(sweep_dir)
    assert results["trials_by_state"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 0}
    for t in results["this_sweep"]["trials"]:
        assert (Path(t["run_dir"]) / "metrics.json").is_file()


# -- the search space ------------------------------------------------------------------------


def test_search_space_from_each_override_form():
    space = parse_search_space(
        [
            "a=interval(0.1, 0.5)",
            "b=tag(log, interval(1e-4, 1e-2))",
            "c=tag(int, interval(1, 64))",
            "d=tag(log, int, interval(1, 64))",
            "e=choice(32, 64, 128)",
            "f=range(1, 5)",
            "g=range(0, 1, 0.25)",
            "h=a,b",
            "i=shuffle(x, y, z)",
            "+j.k=choice([32,64], [64,128])",
            "l=5",
            "~m",
            "experiment=cnn_fashion_mnist",
            "e=64",  # a later fixed value wins over the search
        ]
    )
    d = space.distributions
    assert d["a"] == FloatDistribution(0.1, 0.5)
    assert d["b"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["c"] == IntDistribution(1, 64)
    assert d["d"] == IntDistribution(1, 64, log=True)
    assert d["f"] == IntDistribution(1, 4)  # range's end is excluded, as in Hydra and Python
    assert d["g"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert d["h"] == CategoricalDistribution(["a", "b"])
    assert d["i"] == CategoricalDistribution(["x", "y", "z"])  # as written, not shuffled
    assert d["+j.k"] == CategoricalDistribution(["[32,64]", "[64,128]"])
    assert "e" not in d
    assert space.fixed == ["l=5", "~m", "experiment=cnn_fashion_mnist", "e=64"]
    overrides = space.overrides({"a": 0.25, "+j.k": "[64,128]", "h": "b"})
    assert overrides[:3] == ["a=0.25", "+j.k=[64,128]", "h=b"]


def test_search_space_quotes_values_that_need_it():
    space = parse_search_space(["x=choice('a,b', plain, 'with space')", "y=choice(true, 1.5)"])
    assert space.overrides({"x": "a,b", "y": True})[:2] == ["x='a,b'", "y=true"]
    assert space.overrides({"x": "plain", "y": 1.5})[:2] == ["x=plain", "y=1.5"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("a=tag(foo, interval(1, 2))", "unknown tag"),
        ("a=tag(log, choice(1, 2))", r"interval\(\.\.\.\) only"),
        ("a=range(3, 3)", "empty"),
        ("a=tag(int, interval(1.5, 3))", "whole numbers"),
    ],
)
def test_search_space_errors_name_the_override(override, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_search_space([override])
    assert override in str(err.value)


def test_storage_urls_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_storage_url("sqlite:///a/b.db") == f"sqlite:///{tmp_path}/a/b.db"
    assert normalize_storage_url(f"journal:///{tmp_path}/j.log") == f"journal:///{tmp_path}/j.log"
    assert (tmp_path / "a").is_dir()
    assert normalize_storage_url(None) is None
    with pytest.raises(ValueError, match="names no file"):
        normalize_storage_url("sqlite:///:memory:")


# -- sampling and outcomes -------------------------------------------------------------------


def _ask_lrs(study: optuna.Study, n: int) -> list[float]:
    dist = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}
    out = []
    for _ in range(n):
        trial = study.ask(dist)
        out.append(trial.params["lr"])
        study.tell(trial, 0.5)
    return out


def _seeded(seed: int) -> TrialSeededSampler:
    return TrialSeededSampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)


def test_seeded_sampling_is_reproducible_and_distinct_across_processes(tmp_path):
    first = _ask_lrs(optuna.create_study(sampler=_seeded(42)), 3)
    again = _ask_lrs(optuna.create_study(sampler=_seeded(42)), 3)
    assert first == again
    # Two "processes" (two samplers, same seed) on one storage continue each other's sequence.
    storage = open_storage(f"journal:///{tmp_path}/s.log")
    a = optuna.create_study(study_name="s", storage=storage, sampler=_seeded(42))
    b = optuna.load_study(study_name="s", storage=storage, sampler=_seeded(42))
    lrs = _ask_lrs(a, 2) + _ask_lrs(b, 2)
    assert lrs[:2] == first[:2] and len(set(lrs)) == 4


def _job(status: JobStatus, value: object) -> JobReturn:
    ret = JobReturn()
    ret.status = status
    ret.return_value = value
    ret.overrides = []
    return ret


@pytest.mark.parametrize(
    ("status", "value", "state"),
    [
        (JobStatus.COMPLETED, 0.75, TrialState.COMPLETE),
        (JobStatus.COMPLETED, torch.tensor(0.5), TrialState.COMPLETE),
        (JobStatus.COMPLETED, None, TrialState.FAIL),
        (JobStatus.COMPLETED, math.nan, TrialState.FAIL),
        (JobStatus.COMPLETED, "high", TrialState.FAIL),
        (JobStatus.FAILED, RuntimeError("boom"), TrialState.FAIL),
        (JobStatus.FAILED, optuna.TrialPruned("epoch 1"), TrialState.PRUNED),
    ],
)
def test_job_outcomes(status, value, state):
    assert trial_outcome(_job(status, value))[0] == state


def test_pruned_wrapped_in_another_exception_is_pruned():
    try:
        try:
            raise optuna.TrialPruned("epoch 0")
        except optuna.TrialPruned as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as wrapped:
        assert trial_outcome(_job(JobStatus.FAILED, wrapped))[0] == TrialState.PRUNED


# -- pruning ---------------------------------------------------------------------------------


class _ConstantAcc(L.LightningModule):
    """A tiny model whose val/acc is ``acc`` at every epoch."""

    def __init__(self, acc: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.acc = acc

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: OptunaPruning, acc: float, epochs: int = 3) -> L.Trainer:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), 4)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_ConstantAcc(acc), train_dataloaders=data, val_dataloaders=data)
    return trainer


def _median_study(storage: str) -> optuna.Study:
    """A maximizing study whose 3 finished trials reached val/acc 0.9 at epochs 0-2."""
    study = optuna.create_study(
        study_name="prune",
        storage=open_storage(storage),
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )
    for _ in range(3):
        trial = study.ask()
        for epoch in range(3):
            trial.report(0.9, step=epoch)
        study.tell(trial, 0.9)
    return study


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.ThresholdPruner(lower=0.9),
        optuna.pruners.MedianPruner(n_startup_trials=2),
    ],
    ids=["threshold", "median"],
)
def test_pruning_callback_prunes_a_bad_trial(tmp_path, pruner):
    storage = f"sqlite:///{tmp_path}/prune.db"
    study = _median_study(storage)
    trial = study.ask()
    callback = OptunaPruning("val/acc", "prune", trial.number, storage=storage, pruner=pruner)
    with pytest.raises(optuna.TrialPruned, match="after epoch 0"):
        _fit(callback, acc=0.5)
    frozen = study.get_trials()[trial.number]
    assert frozen.intermediate_values == {0: 0.5}
    assert frozen.state == TrialState.RUNNING  # the sweeper tells it


def test_pruning_callback_lets_a_good_trial_train(tmp_path):
    storage = f"journal:///{tmp_path}/prune.log"
    study = _median_study(storage)
    trial = study.ask()
    callback = OptunaPruning(
        "val/acc", "prune", trial.number, storage, optuna.pruners.MedianPruner(n_startup_trials=2)
    )
    trainer = _fit(callback, acc=0.95)
    assert trainer.current_epoch == 3
    reported = study.get_trials()[trial.number].intermediate_values
    assert reported == {e: pytest.approx(0.95) for e in range(3)}


def test_pruning_callback_uses_an_in_memory_study_of_this_process():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        study_name="live", storage=storage, pruner=optuna.pruners.ThresholdPruner(upper=0.1)
    )
    register_live_study(study, storage)
    assert live_study("live")[0] is study
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        _fit(OptunaPruning("val/acc", "live", trial.number), acc=0.5)


def test_pruning_is_off_for_a_finished_trial_or_missing_metric(tmp_path):
    storage = f"journal:///{tmp_path}/prune.log"
    study = _median_study(storage)
    # Trial 0 is finished (as when a sweep trial's run is reproduced): train, report nothing.
    _fit(
        OptunaPruning("val/acc", "prune", 0, storage, optuna.pruners.ThresholdPruner(lower=1)), 0.5
    )
    assert study.get_trials()[0].intermediate_values == {0: 0.9, 1: 0.9, 2: 0.9}
    # A metric never logged in validation: no pruning, no error.
    trial = study.ask()
    threshold = optuna.pruners.ThresholdPruner(lower=1)
    _fit(OptunaPruning("val/f1", "prune", trial.number, storage, threshold), 0.5)
    assert study.get_trials()[trial.number].intermediate_values == {}


def test_pruning_callbacks_from_config():
    from omegaconf import OmegaConf

    assert pruning_callbacks(OmegaConf.create({"optimized_metric": "val/acc"})) == []
    cfg = OmegaConf.create(
        {
            "optimized_metric": "val/acc",
            "optuna_trial": {
                "number": 3,
                "study_name": "s",
                "storage": "sqlite:////tmp/s.db",
                "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 1},
            },
        }
    )
    (cb,) = pruning_callbacks(cfg)
    assert (cb.monitor, cb.study_name, cb.trial_number, cb.storage) == (
        "val/acc",
        "s",
        3,
        "sqlite:////tmp/s.db",
    )
    assert isinstance(cb.pruner, optuna.pruners.MedianPruner)
    cfg.optimized_metric = None
    with pytest.raises(ValueError, match="optimized_metric"):
        pruning_callbacks(cfg)


_WIRED = "pruning_callbacks" in (REPO / "src" / "tunelab" / "train.py").read_text()


@needs_fashion_mnist
@pytest.mark.skipif(not _WIRED, reason="train.py does not add tunelab.pruning's callbacks yet")
def test_cli_trials_are_pruned(tmp_path):
    # No val/acc reaches 1.1: every trial is pruned after its first epoch.
    _sweep(
        tmp_path,
        "hydra/sweeper=tunelab_optuna",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.storage=journal:///{tmp_path}/study.log",
        "hydra.sweeper.n_trials=2",
        "+hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.1}",
        "trainer.max_epochs=2",
        "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
    )
    (sweep_dir,) = _sweep_dirs(tmp_path)
    results = _results(sweep_dir)
    assert results["trials_by_state"] == {"COMPLETE": 0, "PRUNED": 2, "FAIL": 0}
    for t in results["this_sweep"]["trials"]:
        assert not (Path(t["run_dir"]) / "metrics.json").exists()  # stopped before testing
