"""What tunelab trusts in a checkpoint someone else made: data, never code.

A ``.ckpt`` is a pickle, and unpickling can call any function; the configs stored in it (under
``"tunelab"``) are instantiated by Hydra, which calls whatever ``_target_`` names. So:

* every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain Python data
  only, plus the types in :data:`SAFE_GLOBALS` (none: tunelab stores its extra state as plain
  dicts, lists, numbers and strings);
* every ``_target_`` of a stored config must be on an allow-list before anything is built:
  classes under :data:`ALLOWED_TARGETS`, functions under :data:`ALLOWED_FUNCTIONS`, whatever the
  ``allowed_targets`` config key names, and the targets the run's own model/data config names;
  a stored config may hold no ``${...}`` interpolation (saved resolved; resolvers can act).

``trust_checkpoint=true`` lifts both checks, for a checkpoint whose source the user trusts.
"""

from __future__ import annotations

import inspect
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

# The types beside tensors and plain data that tunelab's own checkpoints hold. Empty on purpose:
# tunelab stores plain types (checked by tests/test_security.py on real runs); add a type here
# only if a checkpoint cannot hold it as plain data.
SAFE_GLOBALS: tuple[Any, ...] = ()

# Dotted prefixes (ending in ".") or exact names whose classes a stored config may instantiate.
# Functions pass only from ALLOWED_FUNCTIONS: tunelab has functions that write files or fetch
# data (utils.io.atomic_write_bytes, data.text_sources.ensure_vader_corpus), and a library
# function can do anything.
ALLOWED_TARGETS: tuple[str, ...] = (
    "tunelab.",
    "torch.optim.",  # optimizers and torch.optim.lr_scheduler
    "transformers.",
    "peft.",
    "lightning.",
)
ALLOWED_FUNCTIONS: tuple[str, ...] = ("tunelab.models.schedules.",)  # the schedule factories
_FIX = "trust_checkpoint=true"


class UntrustedCheckpointError(ValueError):
    """A checkpoint needs more than plain data to load, or names code outside the allow-list."""


def torch_load(
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    map_location: Any = "cpu",
    mmap: bool = False,
) -> Any:
    """``torch.load`` weights-only (tensors, plain data and :data:`SAFE_GLOBALS`).

    Args:
        path: the checkpoint file.
        trust_checkpoint: unpickle anything (``weights_only=False``): only for a trusted file.
        map_location: as ``torch.load``.
        mmap: as ``torch.load``.

    Raises:
        UntrustedCheckpointError: the file holds other objects (naming the first one); other
            errors of ``torch.load`` (corrupt or truncated files) pass through.
    """
    if trust_checkpoint:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        what = _refused_object(str(err), _is_zip(path))
        if what is None:
            raise  # a damaged pickle, not a refused object: the caller reports it as corrupt
        raise UntrustedCheckpointError(
            f"checkpoint {path} holds {what}, not only tensors and plain data; loading it could "
            f"run code. Pass {_FIX} only if you trust where the file comes from"
        ) from None


def _refused_object(message: str, torch_format: bool) -> str | None:
    """What the weights-only unpickler refused, from torch's message; None if it refused none.

    An unsupported opcode counts only in a file in ``torch.save``'s format: elsewhere it means
    the file is no checkpoint at all (a raw pickle, an ``.npy``), which the caller reports.
    """
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return f"pickled code or objects ({found.group(1)})"
    if torch_format and re.search(r"Unsupported operand|Unsupported class", message):
        return "pickled code or objects"
    return None


def _is_zip(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    except OSError:
        return False


def check_stored_config(
    config: Any,
    source: str | Path,
    *,
    allowed_targets: Iterable[str] = (),
    trust_checkpoint: bool = False,
    prefix: str = "",
) -> None:
    """Refuse a stored config that would run code outside the allow-list when built.

    Checks the whole config, recursively, before anything is built: every ``_target_`` must be
    allowed (:func:`target_allowed`) and no string may hold a ``${...}`` interpolation.

    Args:
        config: the stored config (plain dicts and lists, as in a checkpoint).
        source: the file it comes from, for the message.
        allowed_targets: extra prefixes or names (config key ``allowed_targets``).
        trust_checkpoint: skip the check.
        prefix: the key path of ``config`` itself, for the message.

    Raises:
        UntrustedCheckpointError: naming the key path, the target and the fix.
    """
    if trust_checkpoint:
        return
    extra = tuple(str(a) for a in allowed_targets or ())
    for path, value in _entries(config, prefix):
        if path.rsplit(".", 1)[-1] == "_target_":
            if not isinstance(value, str) or "${" in value or not target_allowed(value, extra):
                raise UntrustedCheckpointError(
                    f"checkpoint {source}: its stored config sets {path}={value!r}, which "
                    "tunelab does not build from a checkpoint (allowed: classes of tunelab, "
                    "torch.optim, transformers, peft and lightning). If you trust the file, "
                    f"allow it with allowed_targets=[{value}] or pass {_FIX}"
                )
        elif isinstance(value, str) and "${" in value:
            raise UntrustedCheckpointError(
                f"checkpoint {source}: its stored config sets {path}={value!r}, an interpolation "
                "(stored configs are saved resolved, and resolvers can act on the machine). "
                f"Pass {_FIX} only if you trust where the file comes from"
            )


def target_allowed(target: str, extra: Iterable[str] = ()) -> bool:
    """Whether a stored config may instantiate ``target``.

    ``extra`` entries (the user's ``allowed_targets``) pass as named: a prefix ending in "." or
    an exact dotted name. Of the defaults, :data:`ALLOWED_FUNCTIONS` pass, and of
    :data:`ALLOWED_TARGETS` only classes.
    """
    if any(_matches(target, a) for a in (*extra, *ALLOWED_FUNCTIONS)):
        return True
    if not any(_matches(target, a) for a in ALLOWED_TARGETS):
        return False
    from hydra._internal.utils import _locate  # imports only modules under the allowed prefixes

    try:
        obj = _locate(target)
    except Exception:  # not importable: nothing to run
        return False
    return inspect.isclass(obj)


def _matches(target: str, allowed: str) -> bool:
    return target.startswith(allowed) if allowed.endswith(".") else target == allowed


def _entries(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of every leaf, and of every ``_target_`` whatever its value."""
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                yield sub, v
            else:
                yield from _entries(v, sub)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _entries(v, f"{path}[{i}]")
    else:
        yield path, node


def checkpoint_trust(cfg: Any) -> dict[str, Any]:
    """The ``trust_checkpoint`` and ``allowed_targets`` keys of an entry point's config, checked,
    as keyword arguments for the loaders (:func:`tunelab.checkpoint.load_checkpoint`, ...).

    The targets that the config's own ``model`` and ``data`` name are allowed too: this run
    builds them anyway (e.g. a custom network resumed from its own checkpoint).
    """
    trust = cfg.get("trust_checkpoint")
    if trust is None:  # a config recorded before the key existed
        trust = False
    if not isinstance(trust, bool):
        raise ValueError(
            f"trust_checkpoint={trust!r} must be true or false (true only for a checkpoint "
            "whose source you trust)"
        )
    allowed = cfg.get("allowed_targets") or []
    if isinstance(allowed, str) or not all(isinstance(a, str) and a for a in allowed):
        raise ValueError(
            f"allowed_targets={allowed!r} must be a list of target prefixes or names, e.g. "
            "allowed_targets=[mypkg.models.]"
        )
    own = [
        str(value)
        for key in ("model", "data")
        for path, value in _entries(_plain(cfg.get(key)), key)
        if path.endswith("._target_") and isinstance(value, str) and "${" not in value
    ]
    return {"trust_checkpoint": trust, "allowed_targets": [*map(str, allowed), *own]}


def _plain(node: Any) -> Any:
    """A config node as plain containers, unresolved (``${...}`` stays text, nothing runs)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node
