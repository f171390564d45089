"""Run directories: the CLI's layout, and a run directory is never reused, shared or escaped.

Through the real console script (``.venv/bin/tunelab-train``) on a tiny CNN: a finished run is
never overwritten (``hydra.run.dir=`` of it, a refused ``resume=``), two processes on one
directory cannot both run, ``name=`` stays inside the outputs folder, a stale lock is taken over
and the temporary files of an unfinished save are removed when the run is resumed. Every refusal
is one ``error:`` line with exit code 2, no traceback, and every file of the run it names is
byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import FASHION_MNIST, compose_cfg, shared_data_dir
from tunelab import config
from tunelab.resume import resume_overrides
from tunelab.utils import run_dir as rd
from tunelab.validation import ConfigError

TRAIN = str(Path(sys.executable).parent / "tunelab-train")


def _npz(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(n) % 3)
    return path


def tiny_cnn(npz: Path) -> list[str]:
    """A CNN on 8x8 grayscale images in 3 classes (from a .npz the test writes)."""
    return [
        "data=image_folder",
        "data.source=npz",
        f"data.path={npz}",
        "data.num_classes=3",
        "data.image_size=8",
        "data.in_channels=1",
        "data.mean=[0.5]",
        "data.std=[0.25]",
        "data.val_size=16",
        "data.batch_size=16",
        "model.net.channels=[4]",
        "model.net.hidden_size=8",
        "trainer.max_epochs=1",
        "logger=none",
    ]


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TUNELAB_DEBUG")}
    env.update(
        TUNELAB_ROOT=str(root),
        TUNELAB_DATA_DIR=str(shared_data_dir()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _start(args: list[str], root: Path) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [TRAIN, *args],
        cwd=root,
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(args: list[str], root: Path) -> subprocess.CompletedProcess:
    proc = _start(args, root)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def digest(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``, with the sha256 of each file."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def refused(proc: subprocess.CompletedProcess, *expect: str) -> str:
    """Assert a refusal: exit 2, no traceback, one ``error:`` line holding ``expect``."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished tiny run (its directory) and the overrides that made it."""
    root = tmp_path_factory.mktemp("finished")
    args = tiny_cnn(_npz(root / "images.npz", 96))
    proc = _cli([*args, f"hydra.run.dir={root / 'run'}"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = root / "run"
    assert json.loads((run / "run_info.json").read_text())["status"] == "completed"
    assert not (run / rd.LOCK_NAME).exists()  # released at the end
    return run, args


# ---- the layout -------------------------------------------------------------------------------
def test_new_run_dir_never_reuses(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_RUN_DIRS", {})
    first = config.new_run_dir(str(tmp_path / "exp"))
    monkeypatch.setattr(config, "_RUN_DIRS", {})  # as a second process would
    second = config.new_run_dir(str(tmp_path / "exp"))
    assert first != second
    assert os.path.isdir(first) and os.path.isdir(second)
    # Within one process Hydra may resolve the run dir again: same answer.
    assert config.new_run_dir(str(tmp_path / "exp")) == second
    named = config.new_run_dir(str(tmp_path / "outputs"), "exp", "multirun")
    assert Path(named).parent == tmp_path / "outputs" / "exp" / "multirun"


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
        assert not (run / rd.LOCK_NAME).exists()
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["test/acc"] <= 1.0
        info = json.loads((run / "run_info.json").read_text())
        assert info["status"] == "completed"
        assert info["overrides"] == cmd[3:]
        assert info["command"][1:] == cmd[3:]


# ---- never overwritten ------------------------------------------------------------------------
def test_finished_run_dir_is_refused(finished, tmp_path):
    run, args = finished
    before = digest(run)
    proc = _cli([*args, f"hydra.run.dir={run}", "seed=3"], tmp_path)
    refused(proc, f"run directory {run} holds a previous run", "run_info.json", f"resume={run}")
    assert digest(run) == before  # .hydra/ and train.log too: refused before Hydra wrote


def test_non_empty_folder_is_refused(finished, tmp_path):
    _, args = finished
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("my notes\n")
    proc = _cli([*args, f"hydra.run.dir={folder}"], tmp_path)
    refused(proc, f"run directory {folder} is not empty", "todo.txt", "hydra.run.dir")
    assert digest(folder) == {"todo.txt": hashlib.sha256(b"my notes\n").hexdigest()}


@pytest.mark.parametrize(
    "override", ["data.batch_size=0", "model=bert_hf"], ids=["rejected_value", "group"]
)
def test_refused_resume_changes_nothing(finished, tmp_path, override):
    run, _ = finished
    before = digest(run)
    proc = _cli([f"resume={run}", override], tmp_path)
    cause = "data.batch_size=0" if "batch" in override else "keeps the run's config groups"
    refused(proc, cause)
    assert digest(run) == before  # no failed status, no .hydra/resume-*, no log lines


def test_damaged_run_record_refuses_resume(finished, tmp_path):
    run = shutil.copytree(finished[0], tmp_path / "run")
    (run / "run_info.json").write_text('{"status": "completed", ')
    before = digest(run)
    with pytest.raises(ValueError, match=f"{run / 'run_info.json'} is not valid JSON"):
        resume_overrides([f"resume={run}"])  # before Hydra, as tunelab-train calls it
    assert digest(run) == before


def test_failed_run_releases_its_lock(finished, tmp_path):
    from tunelab.train import train

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        train(compose_cfg("train", [*finished[1], "data.batch_size=0"], run))
    assert json.loads((run / "run_info.json").read_text())["status"] == "failed"
    assert not (run / rd.LOCK_NAME).exists()


def test_run_started_from_python_is_refused_a_used_directory(finished, tmp_path):
    """The claim inside ``train``: for directories only Hydra knows (multirun jobs, configs
    that set hydra.run.dir) and runs started from Python."""
    from tunelab.train import train

    run = shutil.copytree(finished[0], tmp_path / "run")
    before = digest(run)
    cfg = compose_cfg("train", finished[1], run)
    with pytest.raises(rd.RunDirError, match="holds a previous run"):
        train(cfg)
    assert digest(run) == before


# ---- never shared -----------------------------------------------------------------------------
def test_two_processes_on_one_run_dir(tmp_path):
    """Started at once: exactly one runs; the other is refused, naming the lock and its pid."""
    args = tiny_cnn(_npz(tmp_path / "images.npz", 2048))  # a run of some seconds
    run = tmp_path / "run"
    procs = [_start([*args, f"hydra.run.dir={run}", f"seed={s}"], tmp_path) for s in (1, 2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (winner, _, _), (loser, out, err) = sorted(results, key=lambda r: r[0].returncode)
    line = refused(subprocess.CompletedProcess(loser.args, 2, out, err), "in use by another run")
    assert f"pid {winner.pid}" in line and str(run / rd.LOCK_NAME) in line
    # The survivor's files are its own: its seed in Hydra's record and in run_info.json.
    seed = next(a for a in winner.args if a.startswith("seed="))
    assert seed in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed" and f"seed={info['seed']}" == seed
    assert "test/acc" in json.loads((run / "metrics.json").read_text())
    assert not (run / rd.LOCK_NAME).exists()


def test_lock_from_another_host_is_refused(finished, tmp_path):
    run = shutil.copytree(finished[0], tmp_path / "run")
    lock = run / rd.LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "node-17", "start_time": "yesterday"}))
    before = digest(run)
    line = refused(_cli([f"resume={run}"], tmp_path), "pid 1 on host node-17", str(lock))
    assert "delete" in line
    assert digest(run) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_takes_over_a_stale_lock_and_removes_unfinished_saves(finished, tmp_path):
    run = shutil.copytree(finished[0], tmp_path / "run")
    pid = _dead_pid()
    lock = {"pid": pid, "host": socket.gethostname(), "start_time": "earlier"}
    (run / rd.LOCK_NAME).write_text(json.dumps(lock))
    partial = run / "checkpoints" / f".last.ckpt.{pid}.tmp"  # a save killed by SIGKILL
    partial.write_bytes(os.urandom(4096))
    proc = _cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"took over the stale lock {run / rd.LOCK_NAME}: pid {pid}" in log
    assert f"removed {partial}" in log
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert not (run / rd.LOCK_NAME).exists()
    assert json.loads((run / "run_info.json").read_text())["status"] == "completed"


def test_claim_decides_on_the_owner(tmp_path, monkeypatch):
    """The lock's owner: alive on this host (refused), gone (taken over), reused pid (taken
    over), unreadable (refused); this process's own claim is re-entrant."""
    host = socket.gethostname()

    def claim(owner: dict | str, continuing: bool = True) -> rd.RunDirClaim:
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        text = owner if isinstance(owner, str) else json.dumps(owner)
        (run / rd.LOCK_NAME).write_text(text)
        return rd.claim_run_dir(run, continuing=continuing)

    with pytest.raises(rd.RunDirError, match=f"pid {os.getppid()} on this host"):
        claim({"pid": os.getppid(), "host": host})
    with pytest.raises(rd.RunDirError, match="cannot be read"):
        claim("")
    with pytest.raises(rd.RunDirError, match="on host node-17 .*delete"):
        claim({"pid": os.getpid(), "host": "node-17"})  # cannot be checked from here
    taken = claim({"pid": _dead_pid(), "host": host})
    assert "is not running" in taken.notes[0]
    assert json.loads(taken.lock.read_text())["pid"] == os.getpid()
    assert rd.claim_run_dir(taken.run_dir, continuing=False) is taken  # re-entrant
    reused = claim({"pid": os.getppid(), "host": host, "process_start": "0"})
    assert "another process now" in reused.notes[0]
    for held in (taken, reused):
        rd.release_run_dir(held.run_dir)
        assert not held.lock.exists()


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    """A requeued job may land on another node: its earlier run's lock is its own."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = {"pid": 4242, "host": "node-3", "slurm_job": "77"}
    for run, restart in ((tmp_path / "same", 1), (tmp_path / "earlier", 0)):
        run.mkdir()
        (run / rd.LOCK_NAME).write_text(json.dumps({**lock, "slurm_restart": restart}))
    with pytest.raises(rd.RunDirError, match="on host node-3"):
        rd.claim_run_dir(tmp_path / "same", continuing=True)
    claim = rd.claim_run_dir(tmp_path / "earlier", continuing=True)
    assert "SLURM job 77 was requeued" in claim.notes[0]
    assert json.loads(claim.lock.read_text())["slurm_restart"] == 1
    rd.release_run_dir(claim.run_dir)


# ---- never escaped ----------------------------------------------------------------------------
def test_name_cannot_leave_the_outputs_folder(tmp_path):
    root = tmp_path / "work"
    refused(_cli(["logger=none", "name=../../x"], root), "name='../../x'", "name=my_experiment")
    assert list(tmp_path.rglob("*")) == [root]  # no directory made, inside or outside


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "team/x", "..", "a\\b", ""])
def test_name_is_one_folder_name(tmp_path, name):
    with pytest.raises(rd.RunDirError, match=re.escape(f"name={name!r}")):
        rd.check_cli_name(["seed=1", f"name={name}"])
    # Where the run directory is made (a name from a config file, a run started from Python).
    with pytest.raises(rd.RunDirError, match="is not a folder name"):
        config.new_run_dir(str(tmp_path / "outputs"), name)
    assert list(tmp_path.iterdir()) == []
    rd.check_cli_name(["name=my_experiment", "name=${oc.env:USER}"])  # fine; resolved later
