"""Config checks that run before anything heavy starts, reporting every problem at once.

The schema is the code itself: each node with a ``_target_`` is checked against the typed
signature of what it builds (unknown keys, wrong types, missing values), so configs and classes
cannot drift apart. Value rules that signatures cannot express follow: positive batch sizes, at
least two classes, a ``max_length`` the model has positions for, ``torch.compile`` and bf16 only
where this machine can run them. Every problem names its key and the fix, and
:func:`validate_config` raises one :class:`ConfigError` listing them all.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import math
import os
import re
import shutil
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class ConfigError(ValueError):
    """One or more config problems; the message lists each with its key and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{len(problems)} config problems:\n{lines}")

    def __reduce__(self):  # rebuild from the problems, e.g. in a submitit/sweep job's result
        return (type(self), (self.problems,))


def validate_config(
    cfg: DictConfig, model: DictConfig | None = None, data: DictConfig | None = None
) -> None:
    """Check a composed tunelab config; raise one :class:`ConfigError` naming every problem.

    Args:
        cfg: the config of ``tunelab-train``, ``tunelab-eval`` or ``tunelab-predict``.
        model: the model config to check in place of ``cfg.model`` (``tunelab-eval`` passes the
            one stored in the checkpoint).
        data: the data config to check in place of ``cfg.data`` (for ``tunelab-eval``: the
            checkpoint's, with the command line's ``+data.KEY=VALUE`` merged in).

    Raises:
        ConfigError: the config has problems; ``.problems`` lists them.
    """
    if model is not None or data is not None:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            if model is not None:
                cfg.model = model
                if "compile" in cfg.model and "accelerator" in cfg:
                    cfg.model.compile = cfg.accelerator.get("compile", False)
            if data is not None:
                cfg.data = data
    checker = _Checker(cfg)
    checker.check_values()
    for path, node in _targets(cfg, ""):
        checker.check_signature(path, node)
    for rule in (_data_rules, _model_rules, _imbalance_rules, _trainer_rules, _callback_rules):
        rule(checker)
    _logger_rules(checker)
    _entry_rules(checker)
    if checker.problems:
        raise ConfigError(checker.problems)


# --- reading the config --------------------------------------------------------------------

_ABSENT = object()


def _show(value: Any) -> str:
    """A value as it would be written on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if value == "" or any(c in value for c in " ,[]{}:=") else value
    return repr(value) if isinstance(value, float) else str(value)


def _short(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def _targets(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    """Every ``_target_`` node of ``node`` with its dotted path."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            if not path and key == "hydra":
                continue  # Hydra's own settings, when a composed config still has them
            child = node._get_node(key)
            if child is None or OmegaConf.is_missing(node, key) or child._is_interpolation():
                continue
            yield from _targets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if child is not None and not child._is_interpolation():
                yield from _targets(child, f"{path}[{i}]")


_EXAMPLES = {
    "ckpt_path": "outputs/<experiment>/<run>/checkpoints/best.ckpt",
    "data.path": "PATH",
    "data.num_classes": "N",
}


class _Checker:
    """Collects problems, at most one per key (the first found, usually the most basic)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        self.flagged: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        if key not in self.flagged:
            self.flagged.add(key)
            self.problems.append(message)

    def get(self, path: str) -> Any:
        """The resolved value at ``path`` as plain Python; ``_ABSENT`` if unset or broken."""
        if path in self.flagged:
            return _ABSENT
        try:
            value = OmegaConf.select(self.cfg, path, default=_ABSENT, throw_on_missing=True)
        except OmegaConfBaseException:
            return _ABSENT  # reported by check_values
        if isinstance(value, (DictConfig, ListConfig)):
            try:
                value = OmegaConf.to_container(value, resolve=True)
            except OmegaConfBaseException:
                return _ABSENT
        return value

    def has(self, path: str) -> bool:
        return self.get(path) is not _ABSENT

    # ---- every value resolves and is set ---------------------------------------------------
    def check_values(self) -> None:
        for key in self.cfg:
            if key != "hydra":
                self._check_node(self.cfg, key, str(key))

    def _check_node(self, parent: DictConfig | ListConfig, key: Any, path: str) -> None:
        try:
            value = parent[key]
        except MissingMandatoryValue:
            example = _EXAMPLES.get(path, "VALUE")
            self.problem(path, f"{path} is required (it is ???): set it, e.g. {path}={example}")
            return
        except OmegaConfBaseException as err:
            raw = parent._get_node(key)._value()
            reason = str(err).splitlines()[0]
            ref = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
            if (ref and ref.group(1) in self.flagged) or "Missing mandatory value" in reason:
                return  # follows from a problem reported at the key it refers to
            self.problem(path, f"{path}={raw} cannot be resolved ({reason}); fix the value")
            return
        if isinstance(value, DictConfig):
            for k in value:
                self._check_node(value, k, f"{path}.{k}")
        elif isinstance(value, ListConfig):
            for i in range(len(value)):
                self._check_node(value, i, f"{path}[{i}]")

    # ---- signatures ------------------------------------------------------------------------
    def check_signature(self, path: str, node: DictConfig) -> None:
        """Unknown keys, wrong types and missing arguments of one ``_target_`` node."""
        target = node._get_node("_target_")._value()
        try:
            fn = get_method(target) if isinstance(target, str) else target
        except Exception as err:  # hydra raises ImportError or its own errors
            reason = str(err).splitlines()[0]
            self.problem(
                f"{path}._target_",
                f"{path}._target_={target} cannot be imported ({reason}); check the name, or "
                "install the package that provides it",
            )
            return
        try:
            params = dict(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            return
        hints = _type_hints(fn, params)
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        for key in node:
            key = str(key)
            key_path = f"{path}.{key}"
            if key.startswith("_") or key_path in self.flagged:
                continue
            if key not in named:
                if not takes_kwargs:
                    close = difflib.get_close_matches(key, list(named), n=1)
                    hint = f"did you mean {path}.{close[0]}? " if close else ""
                    self.problem(
                        key_path,
                        f"{key_path} is not a setting of {_short(target)}: {hint}remove it "
                        f"(valid keys: {', '.join(named)})",
                    )
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and "_target_" in child:
                continue  # built into an object; checked as a node of its own
            value = self.get(key_path)
            if value is _ABSENT or (value is None and _FROM_DATA.fullmatch(str(child._value()))):
                continue  # null data.num_classes / label_names: filled in once the data is read
            want = hints.get(key, inspect.Parameter.empty)
            if not _type_ok(value, want):
                self.problem(
                    key_path,
                    f"{key_path}={_show(value)} has the wrong type: {_short(target)} expects "
                    f"{_type_name(want)}; set {key_path} to a value of that type",
                )
        if node.get("_partial_", False) or "_args_" in node:
            return  # the code supplies the remaining arguments
        for name, p in named.items():
            if p.default is p.empty and name not in node:
                self.problem(
                    f"{path}.{name}",
                    f"{path}.{name} is missing: {_short(target)} needs it; add {path}.{name}=VALUE",
                )


# Model keys that follow data keys the data module may fill in from the data itself.
_FROM_DATA = re.compile(r"\$\{data\.(num_classes|label_names)\}")


def _type_hints(fn: Any, params: dict[str, inspect.Parameter]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # unresolvable forward references: use what the signature has
        return {
            k: p.annotation
            for k, p in params.items()
            if p.annotation is not p.empty and not isinstance(p.annotation, str)
        }


def _type_ok(value: Any, annotation: Any) -> bool:
    """A conservative check of a plain config value against a parameter annotation.

    Only builtin scalar types, containers and literals are checked; any other class is accepted,
    so an unusual signature can never block a run that would work.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
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
    if annotation in (dict, typing.Mapping) or origin in (dict, typing.Mapping):
        return isinstance(value, dict)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_type_ok(v, a) for v, a in zip(value, args, strict=True))
        )
    if annotation in (list, tuple) or origin in (list, tuple) or _is_sequence(origin):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(v, inner) for v in value)
    return True


def _is_sequence(origin: Any) -> bool:
    import collections.abc as abc

    return origin in (abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)


def _flatten(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _flatten(arg)]
    return [annotation]


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) or origin is typing.Literal:
        choices, kinds = [], []
        for arg in _flatten(annotation):
            if typing.get_origin(arg) is typing.Literal:
                choices += [_show(a) for a in typing.get_args(arg)]
            else:
                kinds.append(_type_name(arg))
        if choices:
            kinds.insert(0, "one of " + ", ".join(dict.fromkeys(choices)))
        return " or ".join(kinds)
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


# --- value rules -----------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(
    ck: _Checker, path: str, low: int, fix: str, none_ok: bool = False, why: str = ""
) -> None:
    v = ck.get(path)
    if v is _ABSENT or (v is None and none_ok):
        return
    if not _is_int(v) or v < low:
        must = f"must be an integer >= {low}" if low != 1 else "must be a positive integer"
        ck.problem(path, f"{path}={_show(v)} {why or must}; {fix}")


def _fraction_or_count(ck: _Checker, path: str) -> None:
    v = ck.get(path)
    if v is _ABSENT or (path == "data.test_size" and v == "all"):  # all: evaluate every row
        return
    ok = (isinstance(v, float) and 0.0 < v < 1.0) or (_is_int(v) and v > 0)
    if not ok:
        ck.problem(
            path,
            f"{path}={_show(v)} must be a fraction in (0, 1) or a positive count of examples; "
            f"set e.g. {path}=0.1",
        )


_PATH_SOURCES = {
    "folder": "a folder with one subfolder of images per class",
    "npz": "an .npz file with x_train/y_train (or x/y)",
    "files": "a CSV / JSON Lines / Parquet file, or a folder with train.*, validation.*, test.*",
    "aclimdb": "the unpacked aclImdb/ folder (or its parent)",
    "fashion_mnist": "the folder of Fashion-MNIST's idx files",
}


def _data_rules(ck: _Checker) -> None:
    if not ck.has("data._target_"):
        return
    _int_at_least(ck, "data.batch_size", 1, "set data.batch_size to a positive integer, e.g. 32")
    _int_at_least(
        ck, "data.eval_batch_size", 1, "set it to a positive integer, or null", none_ok=True
    )
    _int_at_least(
        ck,
        "data.num_classes",
        2,
        "set data.num_classes to the number of classes in the data, or null to take it from "
        "the data",
        why="is too few: a classifier needs at least 2 classes",
        none_ok=True,
    )
    for key in ("data.max_train_samples", "data.max_eval_samples"):
        _int_at_least(ck, key, 1, f"set {key} to a positive integer, or null for all", True)
    _int_at_least(ck, "data.num_workers", 0, "set data.num_workers=0 (no worker processes)")
    _int_at_least(ck, "data.pad_to_multiple_of", 1, "set it to e.g. 8, or null", none_ok=True)
    for key in ("data.val_size", "data.test_size"):
        _fraction_or_count(ck, key)
    val, test = ck.get("data.val_size"), ck.get("data.test_size")
    if isinstance(val, float) and isinstance(test, float) and val + test >= 1.0:
        ck.problem(
            "data.val_size",
            f"data.val_size={val} and data.test_size={test} leave nothing to train on; "
            "make their sum less than 1 (e.g. 0.1 each)",
        )

    num_classes, names = ck.get("data.num_classes"), ck.get("data.label_names")
    if isinstance(names, list) and _is_int(num_classes) and len(names) != num_classes:
        ck.problem(
            "data.label_names",
            f"data.label_names has {len(names)} names {names} but data.num_classes="
            f"{num_classes}; give one name per class (or data.label_names=null)",
        )

    source, path = ck.get("data.source"), ck.get("data.path")
    if source in _PATH_SOURCES and source != "fashion_mnist" and path is None:
        ck.problem(
            "data.path",
            f"data.source={source} needs data.path: set it to {_PATH_SOURCES[source]}",
        )
    if source in _PATH_SOURCES and isinstance(path, str) and not Path(path).exists():
        extra = (
            " (install Debian's dataset-fashion-mnist package: `make install` does it)"
            if source == "fashion_mnist"
            else ""
        )
        ck.problem(
            "data.path",
            f"data.path={path} does not exist; point data.path at {_PATH_SOURCES[source]}{extra}",
        )
    if source == "hub" and not ck.get("data.hub_name"):
        ck.problem("data.hub_name", "data.source=hub needs data.hub_name (e.g. stanfordnlp/imdb)")
    decode = ck.get("data.decode_errors")
    if decode is not _ABSENT and decode not in ("strict", "replace"):
        ck.problem(
            "data.decode_errors",
            f"data.decode_errors={_show(decode)} must be strict (stop at undecodable text) or "
            "replace (replace undecodable bytes with U+FFFD and count them)",
        )
    _image_rules(ck)
    _max_length_rule(ck)


def _image_rules(ck: _Checker) -> None:
    channels = ck.get("data.in_channels")
    if channels is not _ABSENT and channels not in (1, 3):
        ck.problem(
            "data.in_channels",
            f"data.in_channels={_show(channels)} must be 1 (grayscale) or 3 (RGB)",
        )
    _int_at_least(ck, "data.image_size", 1, "set data.image_size to the image side in pixels")
    for key in ("data.mean", "data.std"):
        v = ck.get(key)
        if isinstance(v, list) and channels in (1, 3) and len(v) != channels:
            ck.problem(
                key,
                f"{key} has {len(v)} values but data.in_channels={channels}; give one per channel",
            )
    std = ck.get("data.std")
    if isinstance(std, list) and any(_is_number(s) and s <= 0 for s in std):
        ck.problem("data.std", f"data.std={std} must be > 0 (it divides the pixel values)")


def _max_length_rule(ck: _Checker) -> None:
    max_length = ck.get("data.max_length")
    if max_length is _ABSENT:
        return
    if not _is_int(max_length) or max_length < 1:
        ck.problem(
            "data.max_length",
            f"data.max_length={_show(max_length)} must be a positive number of tokens; "
            "set e.g. data.max_length=128",
        )
        return
    pretrained = ck.get("model.net.pretrained")
    if not isinstance(pretrained, str):
        return
    overrides = ck.get("model.net.config_overrides")
    limit = _position_limit(ck, pretrained, overrides if isinstance(overrides, dict) else {})
    if limit is not None and max_length > limit:
        ck.problem(
            "data.max_length",
            f"data.max_length={max_length} is more than the {limit} positions of "
            f"model.net.pretrained={pretrained} (max_position_embeddings); "
            f"set data.max_length={limit} or less",
        )


def _position_limit(ck: _Checker, pretrained: str, overrides: dict) -> int | None:
    """``max_position_embeddings`` of a pretrained model whose config is here (no download)."""
    from tunelab.models.pretrained import resolve_pretrained

    try:
        path = resolve_pretrained(pretrained)
    except FileNotFoundError as err:
        ck.problem("model.net.pretrained", f"model.net.pretrained: {err}")
        return None
    local = Path(path).expanduser()
    if pretrained.startswith(("/", "./", "../", "~")) and not (local / "config.json").is_file():
        what = "does not exist" if not local.exists() else "has no config.json"
        ck.problem(
            "model.net.pretrained",
            f"model.net.pretrained={pretrained} {what}; point it at a saved model folder, a "
            "Hugging Face hub name or pkg://PACKAGE/FOLDER",
        )
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError:  # not in the cache: instantiating downloads it, unless downloads are off
        offline = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _env_on(k)]
        if offline and not local.exists():
            ck.problem(
                "model.net.pretrained",
                f"model.net.pretrained={pretrained} is not in the Hugging Face cache and "
                f"{offline[0]}=1 forbids downloading it; download it once with network access "
                "(unset the variable), or point model.net.pretrained at a local model folder",
            )
        return None
    except Exception:  # e.g. a model type this transformers does not know: let it explain
        return None
    limit = overrides.get("max_position_embeddings", getattr(config, "max_position_embeddings", 0))
    return limit if _is_int(limit) and limit > 0 else None


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _model_rules(ck: _Checker) -> None:
    if not ck.has("model._target_"):
        return
    lr = ck.get("model.optimizer.lr")
    if lr is not _ABSENT and not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        ck.problem(
            "model.optimizer.lr",
            f"model.optimizer.lr={_show(lr)} must be a positive number; set e.g. "
            "model.optimizer.lr=1e-4 (BERT) or 2e-3 (CNN)",
        )
    wd = ck.get("model.optimizer.weight_decay")
    if wd is not _ABSENT and not (_is_number(wd) and wd >= 0):
        ck.problem(
            "model.optimizer.weight_decay",
            f"model.optimizer.weight_decay={_show(wd)} must be >= 0; set e.g. 0.01 (0 for none)",
        )
    warmup = ck.get("model.scheduler.warmup_ratio")
    if warmup is not _ABSENT and not (_is_number(warmup) and 0 <= warmup < 1):
        ck.problem(
            "model.scheduler.warmup_ratio",
            f"model.scheduler.warmup_ratio={_show(warmup)} must be in [0, 1): the fraction of "
            "the steps spent warming up",
        )
    for key in ("model.net.dropout", "model.net.head_dropout"):
        p = ck.get(key)
        if p is not _ABSENT and not (_is_number(p) and 0 <= p < 1):
            ck.problem(key, f"{key}={_show(p)} must be a probability in [0, 1)")
    for key in ("model.net.hidden_size", "model.net.head_hidden_size"):
        _int_at_least(ck, key, 1, f"set {key} to a positive width, e.g. 128")
    channels = ck.get("model.net.channels")
    if channels is not _ABSENT and not (
        isinstance(channels, list) and channels and all(_is_int(c) and c > 0 for c in channels)
    ):
        ck.problem(
            "model.net.channels",
            f"model.net.channels={channels} must be a non-empty list of positive widths, "
            "e.g. model.net.channels=[32,64]",
        )
    pooling = ck.get("model.net.pooling")
    if pooling is not _ABSENT and pooling not in ("pooler", "cls", "mean"):
        ck.problem(
            "model.net.pooling", f"model.net.pooling={_show(pooling)}: use pooler, cls or mean"
        )
    _int_at_least(ck, "model.net.freeze_layers", -1, "use 0 (none), N (the first N), -1 (all)")
    _peft_rules(ck)
    data_classes = ck.get("data.num_classes")
    for key in ("model.num_classes", "model.net.num_classes"):
        v = ck.get(key)
        if _is_int(data_classes) and _is_int(v) and v != data_classes:
            ck.problem(
                key,
                f"{key}={v} but data.num_classes={data_classes}; the data config owns the "
                f"number of classes: drop the {key} override and set data.num_classes",
            )
    mode = ck.get("model.compile_mode")
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if mode is not _ABSENT and mode not in modes:
        ck.problem(
            "model.compile_mode",
            f"model.compile_mode={_show(mode)} must be one of {', '.join(modes)} "
            "(set accelerator.compile_mode)",
        )
    if ck.get("model.compile") is True:
        key = "accelerator.compile" if ck.get("accelerator.compile") is True else "model.compile"
        device = _device(ck)
        reason = compile_problem(device) if device else None
        if reason:
            ck.problem(key, f"{key}=true but {reason}; set {key}=false (or accelerator=cpu)")


def _peft_rules(ck: _Checker) -> None:
    """``model.lora`` (read with ``model.peft=lora``) and ``model.layerwise_lr_decay``."""
    decay = ck.get("model.layerwise_lr_decay")
    if decay is not _ABSENT and not (_is_number(decay) and 0 < decay <= 1):
        ck.problem(
            "model.layerwise_lr_decay",
            f"model.layerwise_lr_decay={_show(decay)} must be in (0, 1]; 1.0 turns it off, "
            "e.g. 0.9 gives each layer down from the top 0.9x the lr of the one above",
        )
    lora = ck.get("model.lora")
    if ck.get("model.peft") != "lora" or not isinstance(lora, dict):
        return
    from tunelab.models.peft import LORA_DEFAULTS

    valid = [*LORA_DEFAULTS, "modules_to_save"]
    for key in lora:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean model.lora.{close[0]}? " if close else ""
            ck.problem(
                f"model.lora.{key}",
                f"model.lora.{key} is not a LoRA setting: {hint}remove it "
                f"(valid keys: {', '.join(valid)})",
            )
    _int_at_least(ck, "model.lora.r", 1, "set the LoRA rank model.lora.r, e.g. 8")
    alpha = ck.get("model.lora.alpha")
    if alpha is not _ABSENT and not (_is_number(alpha) and alpha > 0):
        ck.problem(
            "model.lora.alpha",
            f"model.lora.alpha={_show(alpha)} must be a positive number, e.g. 16 (2 x r)",
        )
    p = ck.get("model.lora.dropout")
    if p is not _ABSENT and not (_is_number(p) and 0 <= p < 1):
        ck.problem("model.lora.dropout", f"model.lora.dropout={_show(p)} must be in [0, 1)")
    targets = ck.get("model.lora.target_modules")
    if targets is not _ABSENT and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        ck.problem(
            "model.lora.target_modules",
            f"model.lora.target_modules={_show(targets)} must be a non-empty list of module "
            "names, e.g. [query,key,value,dense] (every linear layer of BERT)",
        )


def _imbalance_rules(ck: _Checker) -> None:
    """``data.imbalance_ratio``, ``data.sampler``, ``model.class_weights`` and
    ``model.decision_threshold``."""
    n = ck.get("data.num_classes")
    binary_fix = "binary data only (data.num_classes=2)"
    ratio = ck.get("data.imbalance_ratio")
    if ratio is not _ABSENT and ratio is not None:
        if not (_is_number(ratio) and 0 < ratio <= 1):
            ck.problem(
                "data.imbalance_ratio",
                f"data.imbalance_ratio={_show(ratio)} must be in (0, 1]: the share of class 1 "
                "kept in the training split, e.g. 0.1 (null: all)",
            )
        elif _is_int(n) and n != 2:
            ck.problem(
                "data.imbalance_ratio",
                f"data.imbalance_ratio is for {binary_fix}, but data.num_classes={n}; drop it",
            )
    sampler = ck.get("data.sampler")
    if sampler is not _ABSENT and sampler not in ("random", "balanced"):
        ck.problem(
            "data.sampler",
            f"data.sampler={_show(sampler)} must be random (shuffled) or balanced (classes "
            "drawn equally often)",
        )
    weights = ck.get("model.class_weights")
    if weights is not _ABSENT and weights is not None and weights != "balanced":
        ok = isinstance(weights, list) and all(_is_number(w) and w >= 0 for w in weights)
        if not ok or not any(weights) or (_is_int(n) and len(weights) != n):
            count = f"{n} " if _is_int(n) else ""
            ck.problem(
                "model.class_weights",
                f"model.class_weights={_show(weights)} must be null, balanced, or a list of "
                f"{count}non-negative weights, one per class (e.g. model.class_weights=[1,9])",
            )
    t = ck.get("model.decision_threshold")
    if t is not _ABSENT and t != "auto" and not (_is_number(t) and 0 < t < 1):
        ck.problem(
            "model.decision_threshold",
            f"model.decision_threshold={_show(t)} must be a probability in (0, 1) (0.5: the "
            "most probable class) or auto (the validation-F1-best threshold)",
        )
    elif t is not _ABSENT and t != 0.5 and _is_int(n) and n != 2:
        ck.problem(
            "model.decision_threshold",
            f"model.decision_threshold={_show(t)} is for {binary_fix}, but data.num_classes="
            f"{n}; drop it (the most probable class is predicted)",
        )


def _device(ck: _Checker) -> str | None:
    """``cuda`` or ``cpu``: where the run will execute (None: a GPU is asked for but absent)."""
    import torch

    accel = ck.get("trainer.accelerator")
    if accel is _ABSENT:
        accel = ck.get("accelerator.accelerator")
    if accel in ("gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() else None
    if accel == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def compile_problem(device: str) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None if it can."""
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows"
    if device == "cpu":
        # What inductor runs for CPU kernels (torch._inductor.config.cpp.cxx).
        cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(cxx) is None:
            return (
                f"torch.compile on the CPU needs a C++ compiler and {cxx} is not on PATH "
                "(install one, e.g. `apt-get install g++`, or point CXX at one)"
            )
    elif importlib.util.find_spec("triton") is None:
        return "torch.compile on a GPU needs triton, which is not installed"
    return None


def bf16_problem() -> str | None:
    """Why bf16 cannot run on this machine's CUDA GPU, or None if it can."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch
        supported = torch.cuda.is_bf16_supported()
    if supported:
        return None
    return f"the GPU ({torch.cuda.get_device_name(0)}) has no bf16 support"


def _trainer_rules(ck: _Checker) -> None:
    accel = ck.get("accelerator.accelerator")
    if accel in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            build = " (this torch is a CPU build)" if torch.version.cuda is None else ""
            ck.problem(
                "accelerator.accelerator",
                f"accelerator.accelerator={accel} but torch sees no CUDA GPU{build}; use "
                "accelerator=cpu, or accelerator=auto to use a GPU only where there is one",
            )
    if not ck.has("trainer._target_"):
        return
    precision = ck.get("trainer.precision")
    key = (
        "accelerator.precision"
        if ck.get("accelerator.precision") == precision
        else "trainer.precision"
    )
    if isinstance(precision, str) and precision.startswith("bf16") and _device(ck) == "cuda":
        reason = bf16_problem()
        if reason:
            ck.problem(key, f"{key}={precision} but {reason}; set {key}=16-mixed or {key}=32-true")
    if str(precision) in ("16-mixed", "16") and _device(ck) == "cpu":
        ck.problem(
            key,
            f"{key}={precision} needs a GPU: on the CPU use {key}=bf16-mixed or {key}=32-true",
        )
    epochs = ck.get("trainer.max_epochs")
    if (
        epochs is not _ABSENT
        and epochs is not None
        and not (_is_int(epochs) and (epochs >= 1 or epochs == -1))
    ):
        ck.problem(
            "trainer.max_epochs",
            f"trainer.max_epochs={_show(epochs)} must be >= 1 (or -1 for no limit)",
        )
    steps = ck.get("trainer.max_steps")
    if steps is not _ABSENT and not (_is_int(steps) and (steps >= 1 or steps == -1)):
        ck.problem(
            "trainer.max_steps", f"trainer.max_steps={_show(steps)} must be >= 1 (or -1: no limit)"
        )
    _int_at_least(ck, "trainer.accumulate_grad_batches", 1, "set it to 1 for no accumulation")
    _int_at_least(ck, "trainer.check_val_every_n_epoch", 1, "set it to 1", none_ok=True)
    _int_at_least(ck, "trainer.log_every_n_steps", 1, "set it to e.g. 50")
    clip = ck.get("trainer.gradient_clip_val")
    if clip is not _ABSENT and clip is not None and not (_is_number(clip) and clip >= 0):
        ck.problem(
            "trainer.gradient_clip_val",
            f"trainer.gradient_clip_val={_show(clip)} must be >= 0 (or null: no clipping)",
        )
    for stage in ("train", "val", "test"):
        key = f"trainer.limit_{stage}_batches"
        v = ck.get(key)
        if v is _ABSENT or v is None:
            continue
        if not ((_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)):
            ck.problem(
                key,
                f"{key}={_show(v)} must be a number of batches (integer >= 0) or a fraction "
                "in [0, 1]",
            )


def _callback_rules(ck: _Checker) -> None:
    callbacks = ck.cfg.get("callbacks") if isinstance(ck.cfg, DictConfig) else None
    if not isinstance(callbacks, DictConfig):
        return
    monitors = _logged_metrics(ck)
    for name in callbacks:
        path = f"callbacks.{name}"
        if not str(ck.get(f"{path}._target_")).endswith("ModelCheckpoint"):
            continue
        _int_at_least(ck, f"{path}.every_n_train_steps", 0, "set it to e.g. 100", none_ok=True)
        _int_at_least(ck, f"{path}.save_top_k", -1, "use 1 (best only), k, or -1 (all)")
        mode = ck.get(f"{path}.mode")
        if mode is not _ABSENT and mode not in ("min", "max"):
            ck.problem(f"{path}.mode", f"{path}.mode={_show(mode)} must be min or max")
        monitor = ck.get(f"{path}.monitor")
        if monitors and isinstance(monitor, str) and monitor not in monitors:
            close = difflib.get_close_matches(monitor, sorted(monitors), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            ck.problem(
                f"{path}.monitor",
                f"{path}.monitor={monitor} is not a metric the model logs: {hint}"
                f"choose one of {', '.join(sorted(monitors))}",
            )


# The packages an experiment logger needs (any one of them), by the logger's class name.
_LOGGER_PACKAGES = {
    "TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "MLFlowLogger": ("mlflow",),
    "WandbLogger": ("wandb",),
}


def _logger_rules(ck: _Checker) -> None:
    """Each logger's package is installed (they are the optional ``tunelab[loggers]``)."""
    loggers = ck.cfg.get("logger") if isinstance(ck.cfg, DictConfig) else None
    if not isinstance(loggers, DictConfig):
        return
    for name in loggers:
        target = ck.get(f"logger.{name}._target_")
        packages = _LOGGER_PACKAGES.get(_short(target)) if isinstance(target, str) else None
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            ck.problem(
                f"logger.{name}",
                f"logger.{name} ({_short(target)}) needs {' or '.join(packages)}, which is not "
                "installed: pip install 'tunelab[loggers]' (or use another logger, e.g. logger=csv)",
            )


def _logged_metrics(ck: _Checker) -> set[str]:
    """The metric names tunelab's classifiers log (empty for other models)."""
    target = ck.get("model._target_")
    if not isinstance(target, str):
        return set()
    try:
        from tunelab.models.classifier import ClassifierModule
        from tunelab.models.metrics import build_metrics, imbalance_metric_names

        if not issubclass(get_method(target), ClassifierModule):
            return set()
    except Exception:
        return set()
    n, labels = ck.get("data.num_classes"), ck.get("data.label_names")
    if not _is_int(n) or n < 2:  # classes taken from the data: known once it is read
        return set()
    labels = list(labels) if isinstance(labels, ListConfig) and len(labels) == n else None
    names = {"train/loss", "train/loss_step", "train/loss_epoch", "val/loss"}
    for stage in ("train", "val"):
        names |= set(build_metrics(n, f"{stage}/").keys())
    return names | {f"val/{name}" for name in imbalance_metric_names(n, labels)}


def _entry_rules(ck: _Checker) -> None:
    """The keys of the entry point itself: ``ckpt_path``, and predict's inputs."""
    task = ck.get("task_name")
    ckpt = ck.get("ckpt_path")
    if isinstance(ckpt, str) and not Path(ckpt).is_file():
        where = "is a folder" if Path(ckpt).is_dir() else "does not exist"
        ck.problem(
            "ckpt_path",
            f"ckpt_path={ckpt} {where}; pass a checkpoint file, e.g. "
            "outputs/<experiment>/<run>/checkpoints/best.ckpt",
        )
    elif ckpt is not _ABSENT and ckpt is not None and not isinstance(ckpt, str):
        ck.problem("ckpt_path", f"ckpt_path={_show(ckpt)} must be the path of a checkpoint file")
    _init_from_rules(ck, ckpt)
    _eval_domain_rules(ck)
    seed = ck.get("seed")  # lightning.seed_everything takes 0 .. 2**32 - 1 (None: a random one)
    if seed is not _ABSENT and seed is not None and not (_is_int(seed) and 0 <= seed < 2**32):
        ck.problem("seed", f"seed={_show(seed)} must be an integer in [0, 2**32), e.g. seed=42")
    if task != "predict":
        return
    text, source = ck.get("text"), ck.get("input")
    if (text is None) == (source is None):
        ck.problem(
            "input",
            'give exactly one of text="..." (a text to classify) or input=PATH (an image, a '
            "folder of images, an .npz, or a text file with one text per line)",
        )
    elif source is not None and not Path(str(source)).exists():
        ck.problem("input", f"input={source} does not exist; pass an existing file or folder")
    _int_at_least(ck, "batch_size", 1, "set batch_size to a positive integer, e.g. 64")


def _init_from_rules(ck: _Checker, ckpt: Any) -> None:
    """``init_from``: an existing checkpoint file, not given together with ``ckpt_path``."""
    init = ck.get("init_from")
    if init is _ABSENT or init is None:
        return
    if not isinstance(init, str):
        ck.problem("init_from", f"init_from={_show(init)} must be the path of a checkpoint file")
    elif not Path(init).is_file():
        where = "is a folder" if Path(init).is_dir() else "does not exist"
        ck.problem(
            "init_from",
            f"init_from={init} {where}; pass a checkpoint file, e.g. "
            "outputs/<experiment>/<run>/checkpoints/best.ckpt",
        )
    elif isinstance(ckpt, str) and not ck.get("resume"):  # resume sets ckpt_path itself
        ck.problem(
            "init_from",
            f"init_from={init} and ckpt_path={ckpt} are both set: ckpt_path continues a run "
            "(weights, optimizer, schedule, step count), init_from starts a new run from the "
            "weights only; keep one of them",
        )


def _eval_domain_rules(ck: _Checker) -> None:
    """``eval_domains`` of ``tunelab-eval``: data config names or existing data files."""
    domains = ck.get("eval_domains")
    if domains is _ABSENT or domains is None:
        return
    if not isinstance(domains, list) or not domains:
        ck.problem(
            "eval_domains",
            f"eval_domains={_show(domains)} must be a non-empty list, e.g. "
            "eval_domains=[movies,products,editorials,tweets]",
        )
        return
    from tunelab.domains import domain_problem

    for entry in domains:
        problem = domain_problem(entry)
        if problem:
            ck.problem("eval_domains", problem)
            return
