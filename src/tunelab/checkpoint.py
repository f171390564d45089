"""What a tunelab checkpoint holds beyond Lightning's, and how to rebuild a model from it.

Each checkpoint carries the resolved ``model`` and ``data`` configs under ``"tunelab"``, so
``tunelab-eval`` and ``tunelab-predict`` rebuild the exact model and preprocessing from the
checkpoint alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

KEY = "tunelab"


class ConfigInCheckpoint(L.Callback):
    """Stores the resolved model and data configs in every checkpoint."""

    def __init__(self, model_cfg: DictConfig, data_cfg: DictConfig) -> None:
        self.payload = {
            "model": OmegaConf.to_container(model_cfg, resolve=True),
            "data": OmegaConf.to_container(data_cfg, resolve=True),
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = self.payload


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a tunelab checkpoint on the CPU, with errors that say what is wrong.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint, or not one written by tunelab.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (check ckpt_path)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise ValueError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(err).__name__}: "
            f"{err}); use another checkpoint, e.g. checkpoints/best.ckpt or last.ckpt"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or KEY not in ckpt:
        raise ValueError(
            f"checkpoint {path} was not written by tunelab-train (no 'state_dict' and "
            f"'{KEY}' entries); pass a checkpoint from a tunelab run directory"
        )
    return ckpt


def stored_configs(ckpt: dict[str, Any]) -> tuple[DictConfig, DictConfig]:
    """The model and data configs saved in a checkpoint."""
    return OmegaConf.create(ckpt[KEY]["model"]), OmegaConf.create(ckpt[KEY]["data"])


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], source: str | Path) -> None:
    """Load a checkpoint's weights, naming the first mismatching keys if the architecture differs."""
    state = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in checkpoint: {missing[:5]}")
        if unexpected:
            parts.append(f"not in model: {unexpected[:5]}")
        if shapes:
            parts.append(f"shape differs: {shapes[:5]}")
        raise ValueError(
            f"checkpoint {source} does not match the model built from its config ("
            + "; ".join(parts)
            + ")"
        )
    model.load_state_dict(state)


def model_from_checkpoint(
    ckpt: dict[str, Any], source: str | Path, **model_overrides: Any
) -> L.LightningModule:
    """Rebuild the LightningModule a checkpoint was trained with, weights loaded, in eval mode."""
    model_cfg, _ = stored_configs(ckpt)
    if "load_weights" in model_cfg.get("net", {}):
        # The checkpoint holds every weight: build the architecture only, no pretrained download.
        model_cfg.net.load_weights = False
    model_cfg = OmegaConf.merge(model_cfg, model_overrides)
    model = instantiate(model_cfg, _convert_="partial")
    load_weights(model, ckpt, source)
    return model.eval()
