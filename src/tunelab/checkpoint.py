"""What a tunelab checkpoint holds beyond Lightning's, and how to rebuild a model from it.

Each checkpoint carries the resolved ``model`` and ``data`` configs under ``"tunelab"``, so
``tunelab-eval`` and ``tunelab-predict`` rebuild the exact model and preprocessing from the
checkpoint alone; binary classifiers add their ``decision_threshold`` there.

Checkpoints are data, not code (see :mod:`tunelab.safety`): they are read weights-only, and
their stored configs are checked against an allow-list of targets before anything is built;
``trust_checkpoint=True`` lifts both checks for a file whose source is trusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tunelab.safety import UntrustedCheckpointError, check_stored_config, torch_load

KEY = "tunelab"


class ConfigInCheckpoint(L.Callback):
    """Stores the resolved model and data configs in every checkpoint."""

    def __init__(self, model_cfg: DictConfig, data_cfg: DictConfig) -> None:
        self.payload = {
            "model": OmegaConf.to_container(model_cfg, resolve=True),
            "data": OmegaConf.to_container(data_cfg, resolve=True),
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = dict(self.payload)  # a copy: the module adds its own entries


def load_checkpoint(
    path: str | Path,
    require_config: bool = True,
    mmap: bool = False,
    *,
    trust_checkpoint: bool = False,
    allowed_targets: Iterable[str] = (),
) -> dict[str, Any]:
    """Load a tunelab checkpoint on the CPU, safely, with errors that say what is wrong.

    The file is read weights-only (tensors and plain data) and the configs stored in it are
    checked against the allow-list of targets (:mod:`tunelab.safety`) before anything is built.

    Args:
        path: the checkpoint file.
        require_config: also require the model and data configs tunelab stores (any Lightning
            checkpoint with a ``state_dict`` passes otherwise).
        mmap: map the tensors instead of reading them (for looking at shapes only).
        trust_checkpoint: unpickle anything and build any stored target: only for a file
            whose source is trusted (config key ``trust_checkpoint``).
        allowed_targets: further ``_target_`` prefixes or names the stored configs may build
            (config key ``allowed_targets``).

    Raises:
        FileNotFoundError: no file at ``path``.
        UntrustedCheckpointError: (a ValueError) the file holds more than plain data, or its
            stored config names a target outside the allow-list.
        ValueError: the file is empty, truncated, not a PyTorch checkpoint, or not a
            Lightning / tunelab checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(str(p) for p in path.glob("**/*.ckpt"))[:3]
        hint = f" such as {', '.join(inside)}" if inside else ""
        raise ValueError(f"ckpt_path={path} is a folder; pass a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (check ckpt_path)")
    fix = "use another checkpoint, e.g. checkpoints/best.ckpt or checkpoints/last.ckpt of the run"
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): its save was cut short; {fix}")
    with open(path, "rb") as f:
        head = f.read(4)
    trust = bool(trust_checkpoint)
    try:
        try:
            ckpt = torch_load(path, trust_checkpoint=trust, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            ckpt = torch_load(path, trust_checkpoint=trust)  # legacy format
    except UntrustedCheckpointError:
        raise
    except Exception as err:  # torch raises many types for corrupt files
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if "Weights only load failed" in reason:  # torch's advice to unpickle anyway: not here
            reason = "not a file torch.save wrote"
        if head == b"PK\x03\x04":  # torch.save writes a zip archive
            raise ValueError(
                f"checkpoint {path} is truncated or corrupt ({size} bytes; {reason}); the copy "
                f"or the save that wrote it was probably cut short; {fix}"
            ) from err
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (it starts with {head!r}; {reason}); pass a "
            "checkpoint written by tunelab-train, e.g. checkpoints/best.ckpt of a run directory"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict'); pass a "
            "checkpoint from a tunelab run directory (checkpoints/best.ckpt or last.ckpt)"
        )
    if require_config and KEY not in ckpt:
        raise ValueError(
            f"checkpoint {path} was not written by tunelab-train (no '{KEY}' entry with the "
            "model and data configs); pass a checkpoint from a tunelab run directory"
        )
    if KEY in ckpt:  # before anything reads, merges or builds the stored configs
        check_stored_config(
            ckpt[KEY], path, allowed_targets=allowed_targets, trust_checkpoint=trust, prefix=KEY
        )
    return ckpt


def stored_configs(ckpt: dict[str, Any]) -> tuple[DictConfig, DictConfig]:
    """The model and data configs saved in a checkpoint."""
    return OmegaConf.create(ckpt[KEY]["model"]), OmegaConf.create(ckpt[KEY]["data"])


def state_mismatch(own: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The first differences between a model's state dict and a checkpoint's (empty: they fit)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing in checkpoint: {missing[:5]}")
    if unexpected:
        parts.append(f"not in model: {unexpected[:5]}")
    if shapes:
        parts.append(f"shape differs: {shapes[:5]}")
    return parts


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], source: str | Path) -> None:
    """Load a checkpoint's weights, naming the first mismatching keys if the architecture differs."""
    parts = state_mismatch(model.state_dict(), ckpt["state_dict"])
    if parts:
        raise ValueError(
            f"checkpoint {source} does not match the model built from its config ("
            + "; ".join(parts)
            + "); the checkpoint was edited or written by another tunelab version"
        )
    model.load_state_dict(ckpt["state_dict"])


def check_checkpoint_fits(
    path: str | Path,
    model_cfg: DictConfig,
    key: str = "ckpt_path",
    *,
    trust_checkpoint: bool = False,
    allowed_targets: Iterable[str] = (),
) -> None:
    """Check, before training starts, that ``ckpt_path`` can be loaded into the configured model.

    The checkpoint is memory-mapped and the model is built on the meta device (no weights are
    read or allocated), so the check costs little even for large models.

    Args:
        path: the checkpoint file.
        model_cfg: the model config of this run.
        key: the config key that named the checkpoint (``ckpt_path`` or ``init_from``), for
            the message.
        trust_checkpoint, allowed_targets: as :func:`load_checkpoint`.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_checkpoint`; or the architectures differ
            (the first differing keys and config values are named).
    """
    ckpt = load_checkpoint(
        path,
        require_config=False,
        mmap=True,
        trust_checkpoint=trust_checkpoint,
        allowed_targets=allowed_targets,
    )
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    if "load_weights" in cfg.get("net", {}):
        cfg.net.load_weights = False
    if "compile" in cfg:
        cfg.compile = False
    try:
        with torch.device("meta"):
            model = instantiate(cfg, _convert_="partial")
    except Exception:  # a model that cannot be built on the meta device: Lightning will check
        return
    parts = state_mismatch(model.state_dict(), ckpt["state_dict"])
    if not parts:
        return
    differs = ""
    if KEY in ckpt:
        then = _flatten(ckpt[KEY]["model"], "model")
        now = _flatten(OmegaConf.to_container(cfg), "model")
        keys = [
            k for k in now if k in then and then[k] != now[k] and not k.endswith("load_weights")
        ]
        keys = [k for k in keys if k.split(".")[-1] not in ("lr", "weight_decay", "compile")]
        if keys:
            differs = (
                " Config values that differ: "
                + "; ".join(f"{k}: checkpoint {then[k]!r}, now {now[k]!r}" for k in keys[:5])
                + "."
            )
    raise ValueError(
        f"{key}={path} does not fit the model of this config ("
        + "; ".join(parts)
        + ")."
        + differs
        + f" Train with the model config the checkpoint was made with, or drop {key} to start"
        " fresh"
    )


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def model_from_checkpoint(
    ckpt: dict[str, Any],
    source: str | Path,
    *,
    trust_checkpoint: bool = False,
    allowed_targets: Iterable[str] = (),
    **model_overrides: Any,
) -> L.LightningModule:
    """Rebuild the LightningModule a checkpoint was trained with, weights loaded, in eval mode.

    The stored model config is checked against the allow-list of targets first (as
    :func:`load_checkpoint` does), also for a ``ckpt`` dict that did not come from it.
    """
    check_stored_config(
        ckpt[KEY]["model"],
        source,
        allowed_targets=allowed_targets,
        trust_checkpoint=trust_checkpoint,
        prefix=f"{KEY}.model",
    )
    model_cfg, _ = stored_configs(ckpt)
    if "load_weights" in model_cfg.get("net", {}):
        # The checkpoint holds every weight: build the architecture only, no pretrained download.
        model_cfg.net.load_weights = False
    model_cfg = OmegaConf.merge(model_cfg, model_overrides)
    model = instantiate(model_cfg, _convert_="partial")
    load_weights(model, ckpt, source)
    model.on_load_checkpoint(ckpt)  # what the module keeps beside its weights (e.g. a threshold)
    return model.eval()


def store_decision_threshold(
    path: str | Path, threshold: float, *, trust_checkpoint: bool = False
) -> None:
    """Record the decision threshold chosen after training in an existing checkpoint file.

    The file is rewritten atomically (a temporary file renamed over it). It is read
    weights-only like any other (``trust_checkpoint`` as :func:`load_checkpoint`).
    """
    from tunelab.utils.checkpoint_io import AtomicCheckpointIO

    ckpt = torch_load(path, trust_checkpoint=trust_checkpoint)
    ckpt.setdefault(KEY, {})["decision_threshold"] = float(threshold)
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
