"""Prediction: ``tunelab-predict ckpt_path=PATH (text="..." | input=PATH)`` and :func:`predict`.

Prints one JSON line per input: ``{"input", "label", "label_name", "probabilities"}``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from tunelab.checkpoint import load_checkpoint, model_from_checkpoint, stored_configs
from tunelab.cli import run_cli, run_task
from tunelab.config import config_dir
from tunelab.data.image_datamodule import ImageDataModule
from tunelab.data.images import read_predict_inputs
from tunelab.data.text_datamodule import TextDataModule
from tunelab.models.metrics import predicted_labels
from tunelab.safety import checkpoint_trust
from tunelab.validation import validate_config


class Predictor:
    """A checkpoint's model and preprocessing, ready to classify new inputs.

    Args:
        ckpt_path: a checkpoint written by ``tunelab-train``.
        device: where to run (``cpu``, ``cuda``).
        batch_size: inputs per forward pass.
        trust_checkpoint, allowed_targets: as :func:`tunelab.checkpoint.load_checkpoint` (read
            weights-only, stored configs checked against the allow-list, unless trusted).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str = "cpu",
        batch_size: int = 64,
        *,
        trust_checkpoint: bool = False,
        allowed_targets: Sequence[str] = (),
    ) -> None:
        trust = {"trust_checkpoint": trust_checkpoint, "allowed_targets": allowed_targets}
        ckpt = load_checkpoint(ckpt_path, **trust)  # checked before the data module is built
        _, data_cfg = stored_configs(ckpt)
        self.device = torch.device(device)
        self.model = model_from_checkpoint(ckpt, ckpt_path, compile=False, **trust)
        self.model = self.model.to(self.device)
        self.data = instantiate(data_cfg, _convert_="partial")
        self.batch_size = batch_size
        n = self.model.num_classes
        self.label_names = list(self.data.label_names or [str(i) for i in range(n)])

    @torch.inference_mode()
    def _probs(self, batch: Any) -> np.ndarray:
        if isinstance(batch, dict):
            batch = {k: v.to(self.device) for k, v in batch.items()}
        else:
            batch = batch.to(self.device)
        return self.model(batch).float().softmax(-1).cpu().numpy()

    def _rows(self, names: Sequence[str], probs: np.ndarray) -> Iterator[dict[str, Any]]:
        # binary: class 1 from the checkpoint's decision threshold on (0.5 unless chosen)
        threshold = getattr(self.model, "decision_threshold", 0.5)
        labels = predicted_labels(torch.from_numpy(probs), threshold).tolist()
        for name, p, label in zip(names, probs, labels, strict=True):
            yield {
                "input": name,
                "label": label,
                "label_name": self.label_names[label],
                "probabilities": {
                    n: round(float(v), 6) for n, v in zip(self.label_names, p, strict=True)
                },
            }

    def texts(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify texts, batched, each batch padded only to its longest text."""
        if not isinstance(self.data, TextDataModule):
            raise ValueError(
                "this checkpoint is an image model: pass images (input=PATH), not text"
            )
        out: list[dict[str, Any]] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            out.extend(self._rows(chunk, self._probs(self.data.encode(chunk))))
        return out

    def images(self, path: str | Path) -> list[dict[str, Any]]:
        """Classify an image file, a folder of images, or the images in an ``.npz``."""
        if not isinstance(self.data, ImageDataModule):
            raise ValueError("this checkpoint is a text model: pass text=... or a .txt file")
        names, x = read_predict_inputs(Path(path), self.data.image_size, self.data.in_channels)
        out: list[dict[str, Any]] = []
        for i in range(0, len(x), self.batch_size):
            batch = self.data.preprocess(torch.from_numpy(x[i : i + self.batch_size]))
            out.extend(self._rows(names[i : i + self.batch_size], self._probs(batch)))
        return out


def read_text_lines(path: Path) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{path} holds no text (one text per line expected)")
    return texts


def predict(
    ckpt_path: str | Path,
    texts: Sequence[str] | None = None,
    images: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    trust_checkpoint: bool = False,
) -> list[dict[str, Any]]:
    """Classify new texts or images with a trained checkpoint.

    Args:
        ckpt_path: a checkpoint from a tunelab run (``checkpoints/best.ckpt``).
        texts: texts to classify (text models).
        images: an image file, a folder of images or an ``.npz`` (image models).
        device: ``cpu`` or ``cuda``.
        batch_size: inputs per forward pass.
        trust_checkpoint: load a checkpoint that holds more than tensors and plain data, or
            whose stored config builds other classes (this can run code: only for a trusted
            file).

    Returns:
        One dict per input: ``input``, ``label``, ``label_name``, ``probabilities``.
    """
    if (texts is None) == (images is None):
        raise ValueError("pass exactly one of texts= or images=")
    predictor = Predictor(
        ckpt_path, device=device, batch_size=batch_size, trust_checkpoint=trust_checkpoint
    )
    return predictor.texts(list(texts)) if texts is not None else predictor.images(images)


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """The CLI's work: read the inputs named in ``cfg`` and return the predictions."""
    validate_config(cfg)  # exactly one of text/input, files exist, batch_size > 0, ...
    device = "cuda" if cfg.accelerator.accelerator in ("gpu", "cuda") else "cpu"
    predictor = Predictor(
        cfg.ckpt_path, device=device, batch_size=cfg.batch_size, **checkpoint_trust(cfg)
    )
    if cfg.get("text") is not None:
        return predictor.texts([str(cfg.text)])
    path = Path(cfg.input)
    if isinstance(predictor.data, TextDataModule):
        return predictor.texts(read_text_lines(path))
    return predictor.images(path)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    for row in run_task(run, cfg):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def quote_free_text(args: list[str]) -> list[str]:
    """Quote the values of ``text=`` and ``input=`` for Hydra's override parser.

    After the shell has removed the user's quotes, ``text=This movie is great!`` reaches us bare,
    and Hydra's grammar rejects characters such as ``!``, ``,`` or ``:`` there. These two keys
    take free text, so their values are passed through as one quoted string.
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key in ("text", "input")
            and not (value[:1] in "'\"" and value[:1] == value[-1:] and len(value) > 1)
        ):
            # Hydra unescapes backslashes only before a quote or the closing quote.
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
            value = "'" + value.replace("'", "\\'") + "'"
            arg = f"{key}={value}"
        out.append(arg)
    return out


def _main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:])
    _hydra_main()


def main() -> None:
    run_cli(_main)


if __name__ == "__main__":
    main()
