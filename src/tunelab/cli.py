"""How the console scripts end when something goes wrong.

A mistake the user can fix (a bad config value, a missing or malformed file, a checkpoint that
does not fit) ends with one message on stderr, ``error: ...``, and exit code 2. A fault of the
run (non-finite loss, out of memory, disk full) ends the same way, with exit code 1 and what to
change. Anything else is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` or
``TUNELAB_DEBUG=1`` shows the traceback of every error.

Hydra catches the exceptions of the task function and prints them itself, so the entry points
route the work through :func:`run_task` inside ``@hydra.main`` and wrap ``main`` (which runs
code before Hydra, e.g. ``resume=``) in :func:`run_cli`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from tunelab.callbacks import NonFiniteLossError
from tunelab.interrupt import RunInterrupted
from tunelab.utils.run_record import process_rank
from tunelab.validation import ConfigError, validate_config

T = TypeVar("T")

USER_ERROR = 2  # exit codes
RUN_FAULT = 1

_PACKAGE_DIR = Path(__file__).resolve().parent
# Raised by tunelab itself (``raise ValueError("data.path=... does not exist; ...")``): user errors.
_USER_TYPES = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    ConnectionError,
)


class RunFault(RuntimeError):
    """A fault that tunelab describes itself: one line, exit code 1 (e.g. every trial of a
    sweep failed)."""


def debug_enabled() -> bool:
    """``HYDRA_FULL_ERROR=1`` or ``TUNELAB_DEBUG=1``: show tracebacks."""
    return any(
        os.environ.get(k, "") not in ("", "0") for k in ("HYDRA_FULL_ERROR", "TUNELAB_DEBUG")
    )


def run_cli(main: Callable[[], T]) -> T:
    """Run a console script's ``main`` body; a user error or run fault exits with one message."""
    try:
        check_arguments(sys.argv[1:])
        return main()
    except KeyboardInterrupt:  # Ctrl-C before or after the run (a run reports its own)
        sys.stdout.flush()
        sys.stderr.write("interrupted by SIGINT (Ctrl-C)\n")
        sys.exit(130)
    except Exception as err:
        _exit_if_known(err, None)
        raise


def check_arguments(args: list[str]) -> None:
    """Refuse command-line arguments that are not UTF-8 (Python keeps such bytes as lone
    surrogates, which the tokenizer, YAML and JSON cannot take), naming the argument."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            key = arg.split("=", 1)[0] + "=" if "=" in arg else "argument"
            bad = arg[err.start : err.end].encode("utf-8", "surrogateescape")
            at = err.start - (len(key) if "=" in arg else 0)
            raise ValueError(
                f"the command-line {key} holds bytes that are not UTF-8 ({bad!r} at character "
                f"{at}); give it in UTF-8 (convert it, e.g. with iconv -t UTF-8, or use "
                "a UTF-8 terminal or locale such as LANG=C.UTF-8)"
            ) from None


def report_and_exit(err: BaseException) -> None:
    """Report ``err`` in one line and exit, where it is known (else return; the caller raises).

    For code that runs under Hydra but outside the task function (a resolver of
    ``hydra.run.dir``, a sweeper), where Hydra would print its own traceback first.
    """
    _exit_if_known(err, None)


def run_task(work: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run an entry point's work inside ``@hydra.main`` (Hydra would print its own report).

    In a multirun (sweep) errors are left to Hydra and the sweeper, which decide whether the
    other jobs go on.
    """
    try:
        return work(cfg)
    except RunInterrupted as err:  # a SystemExit with code 128 + signal: one line, no traceback
        if process_rank() == 0:
            sys.stdout.flush()
            sys.stderr.write(f"{err}\n")
            sys.stderr.flush()
        raise
    except Exception as err:
        if not _multirun():
            _exit_if_known(err, cfg)
        raise


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra app
        return False


def _exit_if_known(err: BaseException, cfg: DictConfig | None) -> None:
    if debug_enabled():
        return
    described = describe(err, cfg)
    if described is None:
        return  # a bug: let the traceback show
    message, code = described
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def describe(err: BaseException, cfg: DictConfig | None = None) -> tuple[str, int] | None:
    """The message and exit code for an error a user can act on; None for a bug."""
    err = _unwrap(err)
    if isinstance(err, ConfigError):
        return str(err), USER_ERROR
    if isinstance(err, (NonFiniteLossError, RunFault)):
        return str(err), RUN_FAULT
    if _is_out_of_memory(err):
        return _out_of_memory_message(err, cfg), RUN_FAULT
    os_error = _os_error_behind(err)
    if os_error is not None and (described := _os_error_message(os_error, err, cfg)) is not None:
        return described
    if isinstance(err, (MissingMandatoryValue, InterpolationResolutionError)):
        if cfg is not None:  # the config could not even be resolved: list all its problems
            try:
                validate_config(cfg)
            except ConfigError as problems:
                return str(problems), USER_ERROR
            except Exception:
                pass
        return _omegaconf_message(err), USER_ERROR
    if _is_lightning_misconfiguration(err):
        return str(err), USER_ERROR
    if isinstance(err, _USER_TYPES) and _raised_by_tunelab(err):
        return str(err), USER_ERROR
    return None


def _os_error_behind(err: BaseException) -> OSError | None:
    """``err`` itself if it is an ``OSError``; else the one behind a failed interpolation (e.g.
    the run directory ``hydra.run.dir`` names cannot be made) or behind torch's failed write of a
    checkpoint (``RuntimeError: ... unexpected pos``: torch drops the errno; Python keeps the
    ``OSError`` of the file's ``write`` as the context)."""
    if isinstance(err, OSError):
        return err
    torch_write = isinstance(err, RuntimeError) and any(
        text in str(err) for text in ("unexpected pos", "PytorchStreamWriter failed")
    )
    if not (torch_write or isinstance(err, InterpolationResolutionError)):
        return None
    seen: set[int] = set()
    inner: BaseException | None = err
    while inner is not None and id(inner) not in seen:
        if isinstance(inner, OSError) and inner.errno is not None:
            return inner
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    return None


def _os_error_message(
    err: OSError, raised: BaseException, cfg: DictConfig | None = None
) -> tuple[str, int] | None:
    """What a full disk, a read-only folder or a missing permission means, and what to do."""
    saving = " while saving a checkpoint" if isinstance(raised, RuntimeError) else ""
    run = "RUN_DIR"
    if cfg is not None and cfg.get("task_name") == "train":
        with contextlib.suppress(Exception):  # an interpolation that does not resolve here
            run = str(OmegaConf.select(cfg, "paths.output_dir", default=None) or run)
    where = f" writing {err.filename}" if err.filename else saving
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = "no space left on the device" if err.errno != errno.EFBIG else "file too large"
        return (
            f"{what}{where} ({err.strerror or err}). Checkpoints and "
            "outputs are written to a temporary name and renamed, so those saved before are "
            "intact. Free some space (or point TUNELAB_ROOT / paths.root_dir at a larger disk) "
            f"and continue with resume={run}"
        ), RUN_FAULT
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        name = err.filename or "a file" + saving
        need = "write" if err.errno == errno.EROFS else "read or write"
        return (
            f"cannot {need} {name}: {err.strerror or err}. Give tunelab folders it can write: "
            "TUNELAB_ROOT or paths.root_dir for runs, hydra.run.dir for one run, data.cache_dir "
            "for the data caches (or fix the permissions)"
        ), USER_ERROR
    return None


def _unwrap(err: BaseException) -> BaseException:
    """The error behind Hydra's ``InstantiationException`` (raised in a ``_target_``)."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _raised_by_tunelab(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is tunelab's own code."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(_PACKAGE_DIR)
    except ValueError:
        return False
    return True


def _is_lightning_misconfiguration(err: BaseException) -> bool:
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:
        return False
    return isinstance(err, MisconfigurationException)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    # The CPU allocator reports a failed allocation as a plain RuntimeError.
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _out_of_memory_message(err: BaseException, cfg: DictConfig | None) -> str:
    context: dict[str, Any] = getattr(err, "tunelab_context", None) or {}
    stage = context.get("stage")
    key, size = context.get("batch_size_key"), context.get("batch_size")
    if key is None and cfg is not None:
        key, size = _batch_size_key(cfg)
    where = f" while {stage}" if stage else ""
    if context.get("step") is not None and stage == "training":
        where += f" (step {context['step']}, batch {context.get('batch_idx')})"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = f"out of memory{where}: {type(err).__name__}: {first[:300]}. "
    if key and isinstance(size, int) and size > 1:
        message += f"The batch size is {key}={size}: try {key}={max(1, size // 2)}"
    else:
        message += f"Lower the batch size ({key or 'data.batch_size'})"
    message += (
        "; with a smaller training batch, trainer.accumulate_grad_batches=2 keeps the effective "
        "batch size. For text, a shorter data.max_length helps too; on a GPU, "
        "accelerator.precision=bf16-mixed halves the activations."
    )
    if isinstance(err, MemoryError) or "can't allocate memory" in str(err):
        message += " If the data itself does not fit, cap it with data.max_train_samples."
    return message


def _batch_size_key(cfg: DictConfig) -> tuple[str | None, Any]:
    task = cfg.get("task_name")
    if task == "predict":
        return "batch_size", cfg.get("batch_size")
    data = cfg.get("data") or {}
    if task == "eval":
        return "+data.eval_batch_size", data.get("eval_batch_size")
    return "data.batch_size", data.get("batch_size")


def _omegaconf_message(err: BaseException) -> str:
    first = str(err).splitlines()[0]
    missing = re.search(r"Missing mandatory value: ([\w.\[\]]+)", first)
    if missing:
        key = missing.group(1)
        return f"{key} is required (it is ???): set it, e.g. {key}=VALUE"
    key = getattr(err, "full_key", None)
    return f"{key}: {first}; fix {key}" if key else first
