"""The local SLURM cluster from harness.sh behaves like a real one for what tunelab needs:
batch jobs run, 1-CPU jobs run side by side, requeue reruns a job, signals reach the
batch script."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the fixture's type; conftest is not importable as a package module
    from tests.slurm.conftest import SlurmCluster

pytestmark = pytest.mark.slurm


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -u\n" + body)
    path.chmod(0o755)
    return path


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_sbatch_wrap_writes_file(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    jobid = slurm_cluster.sbatch(
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/slurm-%j.out",
        "--wrap",
        f"echo hello > {out}",
    )
    slurm_cluster.wait_until(
        lambda: _read(out), timeout=60, what=f"{out} from job {jobid}", jobid=jobid
    )
    assert slurm_cluster.wait_finished(jobid) in ("COMPLETED", "PURGED")
    assert out.read_text() == "hello\n"


def test_two_one_cpu_jobs_run_concurrently(slurm_two_cpus: SlurmCluster, tmp_path: Path) -> None:
    slurm_cluster = slurm_two_cpus  # two 1-CPU jobs at once: skipped on a 1-CPU node
    script = _script(
        tmp_path / "sleep.sh",
        'echo "start $(date +%s.%N)" > "$1"\nsleep 5\necho "end $(date +%s.%N)" >> "$1"\n',
    )
    stamps = [tmp_path / "a.txt", tmp_path / "b.txt"]
    jobs = [
        slurm_cluster.sbatch(
            "--cpus-per-task=1",
            "--ntasks=1",
            f"--output={tmp_path}/slurm-%j.out",
            str(script),
            str(stamp),
        )
        for stamp in stamps
    ]

    both_running = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        proc = slurm_cluster.run(
            "squeue", "-h", "-t", "all", "-j", ",".join(jobs), "-o", "%i %T", check=False
        )
        states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        if [states.get(j) for j in jobs] == ["RUNNING", "RUNNING"]:
            both_running = True
        if all("end" in _read(s) for s in stamps):
            break
        time.sleep(0.25)
    else:
        raise AssertionError("jobs did not finish in 60s\n" + slurm_cluster.diagnostics())

    (start_a, end_a), (start_b, end_b) = (
        [float(line.split()[1]) for line in s.read_text().splitlines()] for s in stamps
    )
    assert both_running, "squeue never showed both jobs RUNNING at once"
    assert start_a < end_b and start_b < end_a, "the two jobs' run times do not overlap"


def test_scontrol_requeue_reruns_running_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    counter, runs = tmp_path / "count", tmp_path / "runs"
    script = _script(
        tmp_path / "requeue.sh",
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))\n"
        f"echo $n > {counter}\n"
        f'echo "run=$n restart=${{SLURM_RESTART_COUNT:-0}}" >> {runs}\n'
        "sleep 300 &\nwait $!\n",
    )
    jobid = slurm_cluster.sbatch(f"--output={tmp_path}/slurm-%j.out", str(script))
    try:
        slurm_cluster.wait_until(
            lambda: _read(counter).strip() == "1" and slurm_cluster.job_state(jobid) == "RUNNING",
            what="first run",
            jobid=jobid,
        )
        slurm_cluster.run("scontrol", "requeue", jobid)
        # A requeued job waits AuthInfo cred_expire (harness: 10 s) before it is eligible.
        slurm_cluster.wait_until(
            lambda: _read(counter).strip() == "2", timeout=90, what="second run", jobid=jobid
        )
        slurm_cluster.wait_until(
            lambda: slurm_cluster.job_state(jobid) == "RUNNING", what="RUNNING again", jobid=jobid
        )
        assert _read(runs).splitlines() == ["run=1 restart=0", "run=2 restart=1"]
        assert slurm_cluster.job_info(jobid).get("Restarts") == "1"
    finally:
        slurm_cluster.run("scancel", jobid, check=False)
    assert slurm_cluster.wait_finished(jobid) in ("CANCELLED", "PURGED")
    assert _read(counter).strip() == "2"


def test_scancel_signal_usr1_reaches_batch_script(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    marker = tmp_path / "signal.txt"
    script = _script(
        tmp_path / "trap.sh",
        f"trap 'echo got USR1 >> {marker}; exit 0' USR1\n"
        f"echo started > {marker}\n"
        # bash runs traps only between commands: wait on a background sleep.
        "sleep 300 &\nwait $!\n"
        f"echo no signal >> {marker}\n",
    )
    jobid = slurm_cluster.sbatch(f"--output={tmp_path}/slurm-%j.out", str(script))
    try:
        slurm_cluster.wait_until(
            lambda: (
                _read(marker).startswith("started") and slurm_cluster.job_state(jobid) == "RUNNING"
            ),
            what="job start",
            jobid=jobid,
        )
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", jobid)
        slurm_cluster.wait_until(
            lambda: "got USR1" in _read(marker), timeout=30, what="USR1 trap", jobid=jobid
        )
        assert slurm_cluster.wait_finished(jobid) in ("COMPLETED", "PURGED")
    finally:
        slurm_cluster.run("scancel", jobid, check=False)
    assert _read(marker) == "started\ngot USR1\n"


def test_background_processes_die_with_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A process the batch script leaves behind is killed when the job ends, as on a
    cgroup cluster (needs ProctrackType=proctrack/pgid; proctrack/linuxproc leaks it)."""
    pidfile = tmp_path / "orphan.pid"
    script = _script(tmp_path / "orphan.sh", f"sleep 300 &\necho $! > {pidfile}\n")
    jobid = slurm_cluster.sbatch(f"--output={tmp_path}/slurm-%j.out", str(script))
    slurm_cluster.wait_until(lambda: _read(pidfile).strip(), what="orphan pid", jobid=jobid)
    slurm_cluster.wait_finished(jobid)
    pid = int(_read(pidfile))

    def gone() -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return True
        return b"sleep" not in cmdline  # pid reused by something else

    slurm_cluster.wait_until(gone, timeout=30, what=f"orphan sleep (pid {pid}) to be killed")
