"""Config checks that run before anything heavy starts, reporting every problem at once.

The schema is the code itself: each node with a ``_target_`` is checked against the typed
signature of what it builds (unknown keys, wrong types), so configs and classes cannot drift
apart. Value rules that signatures cannot express (positive batch sizes, ...) follow.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """One or more config problems; the message lists each with its key and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} config problem(s):\n{lines}")


def _targets(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            child = node._get_node(key)
            if child is None or OmegaConf.is_missing(node, key):
                continue
            yield from _targets(node[key], f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def _type_ok(value: Any, annotation: Any) -> bool:
    """A shallow check of a config value against a parameter annotation."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if value is None:
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is not None and origin.__module__ == "collections.abc" or origin in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    return True


def check_signatures(cfg: DictConfig) -> list[str]:
    """Unknown keys and wrong types in every ``_target_`` node of ``cfg``."""
    problems: list[str] = []
    for path, node in _targets(cfg, ""):
        target = node["_target_"]
        try:
            fn = get_method(target) if not isinstance(target, type) else target
        except Exception as err:  # hydra raises ImportError or its own errors
            problems.append(f"{path}._target_={target!r} cannot be imported ({err})")
            continue
        try:
            sig = inspect.signature(fn)
            hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
        except (TypeError, ValueError, NameError):
            continue
        params = sig.parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for key in node:
            if str(key).startswith("_"):
                continue
            if key not in params:
                if not takes_kwargs:
                    valid = ", ".join(k for k in params if k not in ("self", "args", "kwargs"))
                    problems.append(f"{path}.{key}: unknown key for {target} (valid: {valid})")
                continue
            if OmegaConf.is_missing(node, key):
                problems.append(f"{path}.{key} is required (???): set it on the command line")
                continue
            value = node._get_node(key)
            if isinstance(value, (DictConfig,)):
                continue
            raw = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value._value()
            if not _type_ok(raw, hints.get(key, inspect.Parameter.empty)):
                want = hints.get(key)
                want_s = getattr(want, "__name__", None) or str(want).replace("typing.", "")
                problems.append(
                    f"{path}.{key}={raw!r} has the wrong type: {target} expects {want_s}"
                )
    return problems
