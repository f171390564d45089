"""Pytest fixture for a real single-node SLURM cluster (see ``harness.sh``).

``slurm_cluster`` (session scope) starts the cluster with ``harness.sh start`` unless it
is already up, exports ``SLURM_CONF`` into ``os.environ`` (so ``sbatch``/``squeue`` and
submitit find it), yields a :class:`SlurmCluster`, and stops the cluster at the end only
if this session started it.

It skips (or fails, when ``TUNELAB_REQUIRE_SLURM`` is set to a non-empty value) when
the cluster cannot be had: not root, slurm missing and no ``apt-get``, or the harness
fails.  ``TUNELAB_SKIP_SLURM=1`` skips without trying.  The state dir is
``$TUNELAB_SLURM_DIR`` (default ``/tmp/tunelab-slurm``).

``slurm_two_cpus`` is the cluster for tests whose jobs need two CPUs at once (a 2-task DDP job,
two jobs that must overlap): it skips in the same way where the node has one CPU. The harness
gives the node the CPUs ``nproc`` counts, i.e. those this process may run on
(``os.sched_getaffinity``: ``taskset -c 0`` or a 1-CPU container leave one), so a 2-task job
there would wait forever for a second CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

HARNESS = Path(__file__).resolve().with_name("harness.sh")
T = TypeVar("T")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class SlurmCluster:
    """Handle on the running test cluster."""

    conf: Path
    state_dir: Path
    started_here: bool

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a slurm client command (``sbatch``, ``squeue``, ...) against this cluster."""
        proc = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        return out.split(";")[0]

    def job_state(self, jobid: str) -> str | None:
        """State from ``squeue -j`` (e.g. PENDING, RUNNING, COMPLETED); None once purged."""
        proc = self.run("squeue", "-h", "-t", "all", "-j", jobid, "-o", "%T", check=False)
        if proc.returncode != 0:  # "Invalid job id specified": purged after MinJobAge
            return None
        return proc.stdout.strip() or None

    def job_info(self, jobid: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts, ExitCode, ...)."""
        proc = self.run("scontrol", "show", "job", "-o", jobid, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout)) if proc.returncode == 0 else {}

    def diagnostics(self, jobid: str | None = None) -> str:
        parts = [self.run("squeue", "-t", "all", check=False).stdout]
        parts.append(self.run("sinfo", check=False).stdout)
        if jobid:
            parts.append(self.run("scontrol", "show", "job", jobid, check=False).stdout)
        for name in ("slurmctld.log", "slurmd.log"):
            log = self.state_dir / "log" / name
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- tail of {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_until(
        self,
        fn: Callable[[], T],
        timeout: float = 60,
        interval: float = 0.2,
        what: str = "condition",
        jobid: str | None = None,
    ) -> T:
        """Poll ``fn`` until it returns something truthy; fail with diagnostics otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n{self.diagnostics(jobid)}"
                )
            time.sleep(interval)

    def wait_finished(self, jobid: str, timeout: float = 60) -> str:
        """Wait until the job has left the queue; return its final state."""
        done = (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
        )

        def final() -> str | None:
            state = self.job_state(jobid)
            if state is None:
                return "PURGED"
            return state if state.split()[0] in done else None

        return self.wait_until(final, timeout, what=f"job {jobid} to finish", jobid=jobid)


def _harness(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(HARNESS), cmd], capture_output=True, text=True, timeout=timeout
    )


def _unavailable(reason: str) -> None:
    if _truthy("TUNELAB_REQUIRE_SLURM"):
        pytest.fail(f"SLURM cluster required (TUNELAB_REQUIRE_SLURM) but {reason}", pytrace=False)
    pytest.skip(f"no SLURM cluster: {reason}")


def _slurm_installed() -> bool:
    return (
        all(
            Path(p).exists()
            for p in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
        )
        and shutil.which("sbatch") is not None
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if _truthy("TUNELAB_SKIP_SLURM") and not _truthy("TUNELAB_REQUIRE_SLURM"):
        pytest.skip("TUNELAB_SKIP_SLURM is set")
    state_dir = Path(os.environ.get("TUNELAB_SLURM_DIR") or "/tmp/tunelab-slurm")
    conf = state_dir / "slurm.conf"

    already_up = _slurm_installed() and _harness("status", 30).returncode == 0
    if not already_up:
        if os.geteuid() != 0:
            _unavailable("not running as root (harness.sh must start slurmctld/slurmd as root)")
        if not _slurm_installed() and shutil.which("apt-get") is None:
            _unavailable("slurm-wlm/munge not installed and apt-get not available")
        try:
            proc = _harness("start", 900)
        except subprocess.TimeoutExpired:
            _unavailable("harness.sh start timed out")
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            _unavailable(f"harness.sh start failed ({proc.returncode}):\n{tail}")
        match = re.search(r"^export SLURM_CONF=(\S+)\s*$", proc.stdout, re.MULTILINE)
        if match:
            conf = Path(match.group(1))

    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(conf=conf, state_dir=state_dir, started_here=not already_up)
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if not already_up:
            _harness("stop", 120)


def node_cpus(cluster: SlurmCluster) -> int:
    """CPUs of the test cluster's node, as slurmctld knows them (``CPUs=`` in slurm.conf)."""
    out = cluster.run("sinfo", "-h", "-N", "-o", "%c").stdout.split()
    return int(out[0]) if out else 0


@pytest.fixture
def slurm_two_cpus(slurm_cluster: SlurmCluster) -> SlurmCluster:
    cpus = node_cpus(slurm_cluster)
    if cpus < 2:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        reason = (
            f"the SLURM node has {cpus} CPU (harness.sh gives it the CPUs this process may use: "
            f"{usable} of os.cpu_count()={os.cpu_count()}), so a job of 2 tasks or 2 overlapping "
            "jobs cannot start; run on 2 or more CPUs"
        )
        if _truthy("TUNELAB_REQUIRE_SLURM"):
            pytest.fail(f"TUNELAB_REQUIRE_SLURM is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return slurm_cluster
