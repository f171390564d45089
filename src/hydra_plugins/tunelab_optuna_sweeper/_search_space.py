"""Hydra sweep overrides -> Optuna distributions, and sampled values -> Hydra overrides.

| override                         | distribution                                  |
| -------------------------------- | --------------------------------------------- |
| ``interval(a, b)``               | ``FloatDistribution(a, b)``                   |
| ``tag(log, interval(a, b))``     | ``FloatDistribution(a, b, log=True)``         |
| ``tag(int, interval(a, b))``     | ``IntDistribution(a, b)`` (``log`` may join)  |
| ``range(a, b[, step])``          | Int/Float with a step, ``b`` excluded as in   |
|                                  | Python and Hydra's basic sweeper              |
| ``choice(x, y)``, ``x,y``,       | ``CategoricalDistribution``                   |
| ``shuffle(...)``                 |                                               |
| ``x`` (no sweep), ``~key``       | passed to every trial unchanged               |

Intervals are closed: Hydra parses their bounds as floats, so an integer interval needs the
``int`` tag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_PRIMITIVES = (str, int, float, bool, type(None))
_PARSER = OverridesParser.create()


@dataclass
class SearchSpace:
    """What each trial samples, and the overrides every trial gets as they are."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # (key, choice) pairs whose choice is already override text: a list or dict choice, which
    # Optuna stores as that text.
    verbatim: set[tuple[str, str]] = field(default_factory=set)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """``key=value`` overrides for sampled ``params``, then the fixed ones."""
        sampled = [
            f"{k}={v if (k, v) in self.verbatim else format_value(v)}" for k, v in params.items()
        ]
        return sampled + self.fixed


def parse_search_space(overrides: Sequence[str]) -> SearchSpace:
    """Parse overrides (``key=choice(1,2)``, ...); a later one for the same key wins.

    Raises:
        ValueError: naming the override that has no Optuna equivalent.
    """
    parsed = _PARSER.parse_overrides(list(overrides))
    by_key: dict[str, Override] = {}
    for o in parsed:
        by_key.pop(o.get_key_element(), None)  # keep the order of the last occurrence
        by_key[o.get_key_element()] = o
    space = SearchSpace()
    for key, o in by_key.items():
        if not o.is_sweep_override():
            space.fixed.append(o.input_line or f"{key}={o.get_value_element_as_str()}")
            continue
        try:
            space.distributions[key] = _distribution(key, o, space.verbatim)
        except ValueError as err:
            raise ValueError(f"search space: `{o.input_line}`: {err}") from None
    return space


def _distribution(key: str, o: Override, verbatim: set[tuple[str, str]]) -> BaseDistribution:
    value = o.value()
    tags = set(getattr(value, "tags", ()) or ())
    if o.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        unknown = tags - {"log", "int"}
        if unknown:
            raise ValueError(f"unknown tag(s) {sorted(unknown)}; interval takes `log` and `int`")
        low, high = value.start, value.end
        if "int" in tags:
            if low != int(low) or high != int(high):
                raise ValueError("`int` interval bounds must be whole numbers")
            return IntDistribution(int(low), int(high), log="log" in tags)
        return FloatDistribution(float(low), float(high), log="log" in tags)
    if tags:
        raise ValueError(f"tags {sorted(tags)} apply to interval(...) only")
    if o.is_range_sweep() and not value.shuffle:
        assert isinstance(value, RangeSweep)
        values = list(o.sweep_iterator())
        if not values:
            raise ValueError("the range is empty")
        step = abs(value.step)
        low, high = min(values), max(values)
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return IntDistribution(int(low), int(high), step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))
    # choice(...), a,b,c, shuffle(...): categorical, in the order written (shuffling means
    # nothing to a sampler, and every process must build the same distribution). Optuna stores
    # plain values; a list or dict choice is kept as its override text.
    if isinstance(value, RangeSweep):
        elements = list(dataclasses.replace(value, shuffle=False).range())
    else:
        assert isinstance(value, ChoiceSweep)
        elements = list(value.list)
    choices = []
    for x in elements:
        if not isinstance(x, _PRIMITIVES):
            x = str(Transformer.encode(x))
            verbatim.add((key, x))
        choices.append(x)
    if len(set(map(repr, choices))) != len(choices):
        raise ValueError("the choices repeat a value")
    return CategoricalDistribution(choices)


def format_value(value: Any) -> str:
    """A value as Hydra override text: ``null``, ``true``, ``1e-05``, ``abc``, ``'a,b'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _parses_as(value, value) else quote(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a Hydra override value")


def quote(text: str) -> str:
    """``text`` as a single-quoted Hydra string (quotes and backslashes escaped as needed)."""
    return QuotedString(text=text, quote=Quote.single).with_quotes()


def _parses_as(text: str, expected: str) -> bool:
    try:
        o = _PARSER.parse_override(f"k={text}")
    except Exception:
        return False
    return not o.is_sweep_override() and o.value() == expected and isinstance(o.value(), str)
