"""A run directory belongs to one run: claimed atomically, locked while it runs, never reused.

A run claims its directory by creating ``.tunelab.lock`` in it with ``O_CREAT | O_EXCL`` (the
owner's pid, host, process start time and command), and removes the lock when it ends, also on
failure. A second process on the same directory is refused while the lock is held. A lock left
behind by a process that died (SIGKILL, a crashed node) is recognised: on the same host, a pid that
is not running (or runs another process now) is stale and the next run takes the lock over; on
another host tunelab cannot tell, so it refuses and names the file to delete.

A directory that holds anything else (a previous run's ``run_info.json``, ``checkpoints/``, its
Hydra record) is refused unless the run continues in it (``resume=`` of that run, a SLURM
requeue). The entry point claims the directory named by ``hydra.run.dir=`` before Hydra writes
its ``.hydra/`` record and log file there (:func:`claim_cli_run_dir`), so a refusal changes no
byte of the directory; :func:`claimed_run_dir` claims it again inside the run (a no-op when the
entry point already did) for runs whose directory is known only there (multirun jobs, configs
that set ``hydra.run.dir``, runs started from Python).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".tunelab.lock"
# What a run leaves in its directory; inside a run Hydra has already written .hydra/ and the log.
RUN_MARKERS = ("run_info.json", "metrics.json", "checkpoints")
# Command-line flags with which Hydra prints something and runs no job.
_NO_JOB_FLAGS = (
    "--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
    "--shell-completion", "-sc",
)  # fmt: skip


class RunDirError(ValueError):
    """A run directory that this run may not use; the message names it and the fix."""


@dataclass
class RunDirClaim:
    """This process's claim on a run directory (the lock it created)."""

    run_dir: Path
    lock: Path
    owner: dict
    # Said once logging is set up (the entry point claims before Hydra configures it).
    notes: list[str] = field(default_factory=list)


_HELD: dict[Path, RunDirClaim] = {}


# ---- the entry point, before Hydra ------------------------------------------------------------
def check_cli_name(args: list[str]) -> None:
    """Refuse a ``name=`` override that is not a single folder name (it names the run directory
    ``outputs/<name>/<time>``: ``name=../../x`` would put the run outside the outputs folder)."""
    for value in _override_values(args, "name"):
        if "${" not in value:  # an interpolation is checked by the resolver, once resolved
            check_name(value)


def check_name(name: str) -> None:
    """Raise :class:`RunDirError` unless ``name`` is one folder name."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise RunDirError(
            f"name={name!r} is not a folder name: it names the run directory "
            "outputs/<name>/<time> and must stay inside the outputs folder; use a single name "
            "without '/', '\\' or '..', e.g. name=my_experiment (to write elsewhere, set "
            "paths.log_dir)"
        )


def claim_cli_run_dir(args: list[str]) -> RunDirClaim | None:
    """Claim the directory a single run's ``hydra.run.dir=`` override names, before Hydra writes.

    Returns None where there is nothing to claim here: no such override (the default directory
    is made fresh), a multirun, a Hydra flag that runs no job, a launched child process of a
    distributed run (its rank 0 holds the claim), or a value Hydra must resolve first.
    """
    from tunelab.config import rank_suffix

    values = _override_values(args, "hydra.run.dir")
    if not values or rank_suffix() or _multirun(args) or any(_is_flag(a) for a in args):
        return None
    value = values[-1]
    if "${" in value:
        return None  # claimed inside the run, once Hydra has resolved it
    run_dir = Path(value).expanduser()
    return claim_run_dir(run_dir, continuing=_continues(args, run_dir), before_hydra=True)


@contextlib.contextmanager
def claimed_cli_run_dir(args: list[str]) -> Iterator[RunDirClaim | None]:
    """Check ``name=`` and claim the ``hydra.run.dir=`` of ``args`` for the block (the whole
    Hydra app), releasing the claim when the block ends, however it ends."""
    check_cli_name(args)
    claim = claim_cli_run_dir(args)
    try:
        yield claim
    finally:
        if claim is not None:
            release_run_dir(claim.run_dir)


def _override_values(args: list[str], key: str) -> list[str]:
    values = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+") == key:
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values.append(value)
    return values


def _multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args) or any(
        v.upper() == "MULTIRUN" for v in _override_values(args, "hydra.mode")
    )


def _is_flag(arg: str) -> bool:
    return arg in _NO_JOB_FLAGS or arg.split("=", 1)[0] in ("--cfg", "--info")


def _continues(args: list[str], run_dir: Path) -> bool:
    """``resume=`` (which names this directory: :func:`tunelab.resume.resume_overrides`), or a
    SLURM requeue of the run in it."""
    from tunelab.slurm import requeued_checkpoint

    resumes = [v for v in _override_values(args, "resume") if v not in ("", "null")]
    return bool(resumes) or requeued_checkpoint(run_dir) is not None


# ---- inside the run ---------------------------------------------------------------------------
@contextlib.contextmanager
def claimed_run_dir(run_dir: Path, continuing: bool) -> Iterator[RunDirClaim | None]:
    """Hold the claim on ``run_dir`` for the block (taking it if the entry point did not), and
    when the run continues in it, remove the temporary files of saves that did not finish."""
    from tunelab.utils.run_record import process_rank

    if process_rank() != 0:  # rank 0 claims the directory for the whole run
        yield None
        return
    key = Path(run_dir).resolve()
    ours = key not in _HELD
    claim = claim_run_dir(run_dir, continuing=continuing) if ours else _HELD[key]
    for note in claim.notes:
        log.warning(note)
    claim.notes.clear()
    if continuing:
        for path in remove_unfinished_saves(run_dir):
            log.info("removed %s, left by a save that did not finish", path)
    try:
        yield claim
    finally:
        if ours:
            release_run_dir(run_dir)


def remove_unfinished_saves(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that did not finish (``.<name>.<pid|random>.tmp``,
    see :mod:`tunelab.utils.checkpoint_io` and :mod:`tunelab.utils.io`) in ``run_dir`` and its
    ``checkpoints/``. Call it only while holding the claim: then no other run is writing them."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for path in sorted(folder.glob(".*.tmp")):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---- the claim and the lock -------------------------------------------------------------------
def claim_run_dir(run_dir: Path, continuing: bool, before_hydra: bool = False) -> RunDirClaim:
    """Claim ``run_dir`` for this process (created if missing); idempotent within a process.

    Args:
        run_dir: the run directory.
        continuing: the run continues in this directory (``resume=``, a requeue), so a previous
            run in it is expected.
        before_hydra: called before Hydra wrote anything there, so any entry but the lock means
            a previous launch; inside a run only a previous run's own files count.

    Raises:
        RunDirError: the directory is in use, locked from another host, or holds another run.
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        return _HELD[key]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (PermissionError, FileExistsError, NotADirectoryError) as err:
        raise RunDirError(
            f"run directory {run_dir} cannot be created ({err.strerror or err}); choose a "
            "writable folder (hydra.run.dir, paths.log_dir or TUNELAB_ROOT)"
        ) from None
    lock = run_dir / LOCK_NAME
    with _guard(run_dir):  # one claimer at a time decides, so a stale lock is taken over once
        notes = []
        try:
            owner: dict | None = _read_lock(lock)
        except FileNotFoundError:
            owner = None
        stale = None if owner is None else _stale_reason(owner)
        if owner is not None and stale is None:
            raise RunDirError(_in_use_message(run_dir, lock, owner))
        if not continuing:
            _refuse_previous_run(run_dir, before_hydra)
        if stale is not None:
            lock.unlink(missing_ok=True)
            notes.append(f"took over the stale lock {lock}: {stale}")
        me = _owner()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # created since we looked (no guard on this file system)
            raise RunDirError(_in_use_message(run_dir, lock, _read_lock_quietly(lock))) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.write("\n")
    claim = RunDirClaim(run_dir, lock, me, notes)
    _HELD[key] = claim
    return claim


def release_run_dir(run_dir: Path) -> None:
    """Remove this process's lock on ``run_dir`` (nothing if it holds none)."""
    claim = _HELD.pop(Path(run_dir).resolve(), None)
    if claim is None or claim.owner["pid"] != os.getpid():  # not in a forked worker
        return
    with contextlib.suppress(FileNotFoundError):
        if _read_lock(claim.lock) == claim.owner:  # still ours
            claim.lock.unlink()


@atexit.register
def _release_all() -> None:
    # A run that ends by sys.exit or an uncaught error still lets go of its directories.
    for run_dir in list(_HELD):
        release_run_dir(run_dir)


@contextlib.contextmanager
def _guard(run_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the directory itself while a claim is decided; where the file
    system has no such locks (some network file systems), O_EXCL alone decides."""
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _owner() -> dict:
    pid = os.getpid()
    owner = {
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": _process_start(pid),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }
    job = _slurm_job()
    if job is not None:
        owner["slurm_job"], owner["slurm_restart"] = job
    return owner


def _slurm_job() -> tuple[str, int] | None:
    """This SLURM job's id and restart count (a requeued job keeps its id), if in a job."""
    from tunelab.slurm import in_slurm_job, slurm_job_id

    if not in_slurm_job():
        return None
    return slurm_job_id(), int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid from the owner), where readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _read_lock(lock: Path) -> dict:
    """The lock's owner; ``{}`` if unreadable. Raises FileNotFoundError if there is none."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _read_lock_quietly(lock: Path) -> dict:
    try:
        return _read_lock(lock)
    except FileNotFoundError:
        return {}


def _stale_reason(owner: dict) -> str | None:
    """Why the lock's owner is known to be gone, or None if it may still run."""
    pid, host = owner.get("pid"), owner.get("host")
    job, restart = _slurm_job(), owner.get("slurm_restart")
    requeued = job is not None and owner.get("slurm_job") == job[0]
    if requeued and isinstance(restart, int) and job[1] > restart:
        # SLURM requeued this job: its earlier run is gone, whichever node it ran on.
        return f"SLURM job {job[0]} was requeued (restart {job[1]}; the lock is from {restart})"
    if not isinstance(pid, int) or host != socket.gethostname():
        return None  # unreadable, or another host: tunelab cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} on this host is not running"
    except PermissionError:
        pass  # runs, as another user
    recorded = owner.get("process_start")
    if recorded is not None and _process_start(pid) not in (None, recorded):
        return f"pid {pid} on this host is another process now"
    return None


def _in_use_message(run_dir: Path, lock: Path, owner: dict) -> str:
    pid, host, since = owner.get("pid"), owner.get("host"), owner.get("start_time")
    if not owner:
        return (
            f"run directory {run_dir} is locked ({lock} exists but cannot be read): another run "
            f"may be starting in it. Choose another directory; if no run uses it, delete {lock}"
        )
    if host != socket.gethostname():
        return (
            f"run directory {run_dir} is in use by pid {pid} on host {host} since {since} "
            f"(lock {lock}); tunelab cannot check a process on another host. Choose another "
            f"directory; if that run has ended, delete {lock} and start again"
        )
    return (
        f"run directory {run_dir} is in use by another run (pid {pid} on this host, since "
        f"{since}; lock {lock}). Wait for it to end, or choose another directory"
    )


def _refuse_previous_run(run_dir: Path, before_hydra: bool) -> None:
    entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    markers = [m for m in RUN_MARKERS if m in entries]
    if before_hydra and ".hydra" in entries:
        markers.append(".hydra")
    if markers:
        raise RunDirError(
            f"run directory {run_dir} holds a previous run ({', '.join(markers)}); a run "
            f"directory is never reused. Continue that run with resume={run_dir}, or leave out "
            "hydra.run.dir to get a new directory"
        )
    if before_hydra and entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunDirError(
            f"run directory {run_dir} is not empty (holds {shown}); a run writes into a new or "
            "empty directory: choose another hydra.run.dir, or leave it out to get a new one"
        )
