"""Honest endings: a run stopped by SIGTERM or Ctrl-C, or one that diverged, says so.

Real ``tunelab-train`` subprocesses on a small Fashion-MNIST CNN, real signals: SIGTERM sent from
outside during training; SIGINT raised inside the process (by a test callback, at a chosen
validation batch) during the validation of an epoch. Each stopped run must exit 143 / 130, be
recorded ``interrupted`` with the command that resumes it, and resume to exactly the final
weights and metrics of an uninterrupted run (torch.equal, ==).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import FASHION_MNIST, REPO, shared_data_dir

pytestmark = pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed")

TRAIN = str(REPO / ".venv" / "bin" / "tunelab-train")
# 4 optimizer steps an epoch, 3 validation batches, 2 epochs; unlike the defaults throughout.
CNN = [
    "data.max_train_samples=256",
    "data.max_eval_samples=192",
    "data.batch_size=64",
    "data.eval_batch_size=64",
    "data.augment=true",  # per-batch random augmentation: a resume must draw the same numbers
    "trainer.max_epochs=2",
    "logger=csv",
    "extras.print_config=false",
]


# ---- test-only callbacks, added to a run with +callbacks.NAME._target_=tests.test_interrupt.X ---
class SignalAt(L.Callback):
    """Sends ``signum`` to its own process at the start of validation batch ``batch`` of epoch
    ``epoch``, once per ``marker`` file (so the resumed run is not stopped again)."""

    def __init__(self, epoch: int, batch: int, signum: str, marker: str) -> None:
        self.epoch, self.batch, self.signum, self.marker = epoch, batch, signum, Path(marker)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or self.marker.exists():
            return
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.marker.touch()
            os.kill(os.getpid(), getattr(signal, self.signum))


class SlowSteps(L.Callback):
    """Sleeps after each training step from epoch ``epoch`` on: a window to send a signal in."""

    def __init__(self, epoch: int, seconds: float) -> None:
        self.epoch, self.seconds = epoch, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch >= self.epoch:
            time.sleep(self.seconds)


class InfiniteValidation(L.Callback):
    """Makes the model's outputs infinite during the validation of ``epoch`` (its weights are
    restored before anything could save them): the validation loss is not finite, the training
    losses are."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._saved: dict[str, torch.Tensor] = {}

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.current_epoch != self.epoch:
            return
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                if name.endswith("bias"):
                    self._saved[name] = p.clone()
                    p.fill_(math.inf)

    def on_validation_epoch_end(self, trainer, pl_module):
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                if name in self._saved:
                    p.copy_(self._saved.pop(name))


# ---- helpers -------------------------------------------------------------------------------
def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNELAB_ROOT": str(root),
        "TUNELAB_DATA_DIR": str(shared_data_dir()),
        "PYTHONPATH": str(REPO),  # the test callbacks above
    }


def _start(root: Path, overrides: list[str]) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [TRAIN, *overrides],
        env=_env(root),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    return run


def _step(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _strict_json(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _assert_interrupted(run: Path, code: int, stderr: str, expected: int, sig: str) -> None:
    assert code == expected, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1, stderr[-3000:]
    info = _strict_json(run / "run_info.json")
    assert info["status"] == "interrupted"
    assert info["error"].startswith(sig)
    assert info["resume_command"] == f"tunelab-train resume={run}"
    assert info["resume_command"] in lines[0]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "metrics.json").exists()
    assert not list((run / "checkpoints").glob("*.tmp"))


def _resume(run: Path, root: Path) -> None:
    code, err = _wait(_start(root, [f"resume={run}"]))
    assert code == 0, err[-3000:]
    info = _strict_json(run / "run_info.json")
    assert info["status"] == "completed" and info["resumes"][-1]["previous_status"] == (
        "interrupted"
    )


def _assert_same_run(reference: Path, resumed: Path) -> None:
    assert _strict_json(resumed / "metrics.json") == _strict_json(reference / "metrics.json")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    for name in ("last.ckpt", "best.ckpt"):
        a = torch.load(reference / "checkpoints" / name, weights_only=False)
        b = torch.load(resumed / "checkpoints" / name, weights_only=False)
        assert a["global_step"] == b["global_step"], name
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (name, k)
        for sa, sb in zip(
            a["optimizer_states"][0]["state"].values(),
            b["optimizer_states"][0]["state"].values(),
            strict=True,
        ):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Every epoch's validation ran, with the same result: the learning curve has each point.
    curve = [
        {k: v for k, v in row.items() if k.startswith("val/") or k in ("epoch", "step")}
        for row in torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)[
            "callbacks"
        ]["RunReport"]["history"]
    ]
    ref = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)
    assert curve == [
        {k: v for k, v in row.items() if k.startswith("val/") or k in ("epoch", "step")}
        for row in ref["callbacks"]["RunReport"]["history"]
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (with the test callback's hook present but never firing)."""
    root = tmp_path_factory.mktemp("reference")
    code, err = _wait(_start(root, CNN))
    assert code == 0, err[-3000:]
    return _run_dir(root)


# ---- tests ---------------------------------------------------------------------------------
@pytest.mark.slow  # three runs: about 40 s of CPU
def test_sigterm_during_training_saves_records_and_resumes_exactly(tmp_path, reference):
    """SIGTERM from outside in the second epoch (where `last.ckpt`'s every-100-steps trigger
    never fired): the run saves at the next step, exits 143 and resumes to the same end."""
    root = tmp_path / "run"
    slow = [
        "+callbacks.slow._target_=tests.test_interrupt.SlowSteps",
        "+callbacks.slow.epoch=1",
        "+callbacks.slow.seconds=0.3",
    ]
    proc = _start(root, [*CNN, *slow])
    deadline = time.monotonic() + 240
    # last.ckpt is written at each epoch's end: once it holds epoch 0 (step 4), the run is in
    # its second epoch.
    while _step(next(iter((root / "outputs").glob("*/*/checkpoints/last.ckpt")), Path("-"))) < 4:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach its second epoch"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    code, err = _wait(proc)
    run = _run_dir(root)
    _assert_interrupted(run, code, err, 143, "SIGTERM")
    assert "during training" in err
    assert 4 < _step(run / "checkpoints" / "last.ckpt") < 8
    _resume(run, tmp_path / "elsewhere")
    _assert_same_run(reference, run)


@pytest.mark.slow  # three runs with the reference's: about 30 s of CPU
def test_sigint_during_validation_resumes_with_that_validation(tmp_path, reference):
    """Ctrl-C at the second validation batch of epoch 0: the run stops there (exit 130), and the
    resume validates epoch 0 again in full, so best.ckpt and the curve are the uninterrupted
    run's."""
    root = tmp_path / "run"
    marker = tmp_path / "sent"
    hook = [
        "+callbacks.signal_at._target_=tests.test_interrupt.SignalAt",
        "+callbacks.signal_at.epoch=0",
        "+callbacks.signal_at.batch=1",
        "+callbacks.signal_at.signum=SIGINT",
        f"+callbacks.signal_at.marker={marker}",
    ]
    code, err = _wait(_start(root, [*CNN, *hook]))
    run = _run_dir(root)
    assert marker.exists()
    _assert_interrupted(run, code, err, 130, "SIGINT")
    assert "validation of epoch 0" in err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # the end of epoch 0's training
    assert len(ckpt["callbacks"]["RunReport"]["history"]) == 0  # its validation not yet done
    _resume(run, tmp_path / "elsewhere")
    _assert_same_run(reference, run)


def test_diverged_run_fails_with_one_line(tmp_path):
    """A validation loss that is not finite (the training losses are) ends the run `failed`
    with exit 1 and one line naming the metric, before a checkpoint of it is saved."""
    root = tmp_path / "run"
    hook = [
        "+callbacks.blowup._target_=tests.test_interrupt.InfiniteValidation",
        "+callbacks.blowup.epoch=1",
    ]
    code, err = _wait(_start(root, [*CNN, *hook]))
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "val/loss=nan" in line and "after the validation of epoch 1" in line
    run = _run_dir(root)
    info = _strict_json(run / "run_info.json")
    assert info["status"] == "failed" and info["error"].startswith("NonFiniteLossError")
    assert not (run / "metrics.json").exists()
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 4  # epoch 0's, not the diverged epoch's


def test_nan_training_loss_fails_with_one_line(tmp_path):
    """`model.optimizer.lr=1e6`: the training loss becomes NaN in the first epoch."""
    root = tmp_path / "run"
    code, err = _wait(_start(root, [*CNN, "model.optimizer.lr=1e6"]))
    assert code == 1, err[-3000:]
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "the training loss is nan" in line and "start the run again" in line
    run = _run_dir(root)
    assert _strict_json(run / "run_info.json")["status"] == "failed"
    for path in run.glob("**/*.json"):
        _strict_json(path)


def test_metrics_json_is_strict(tmp_path):
    from tunelab.utils.io import atomic_write_json

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"val/loss": math.inf, "test/loss": math.nan, "n": [1.0, -math.inf]})
    assert _strict_json(path) == {"val/loss": None, "test/loss": None, "n": [1.0, None]}


def test_signals_outside_the_trainer_count_as_interruptions(tmp_path):
    """SIGTERM before training starts (no checkpoint yet) raises RunInterrupted (exit 143), and
    the hint says to start again rather than to resume."""
    from tunelab.interrupt import RunInterrupted, as_interruption, resume_hint, sigterm_raises

    with pytest.raises(RunInterrupted) as caught, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert caught.value.code == 143
    assert resume_hint(caught.value, tmp_path, "train") is None
    assert "start the run again" in str(caught.value)
    # Lightning's Ctrl-C handling ends in sys.exit(1) while handling the KeyboardInterrupt.
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as err:
        assert as_interruption(err).code == 130
