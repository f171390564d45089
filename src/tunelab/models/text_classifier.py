"""LightningModule for text classification."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tunelab.models.classifier import ClassifierModule

log = logging.getLogger(__name__)


class TextClassifier(ClassifierModule):
    """Wraps a text network (:mod:`tunelab.models.text_nets`); batches are tokenized dicts."""

    def split_batch(self, batch: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return inputs, batch.get("labels")

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(**inputs)

    def export_pretrained(self, out_dir: Path, datamodule: Any) -> Path:
        """Write the model and tokenizer in Hugging Face format (``pipeline`` loads the folder).

        The folder is written under a temporary name and renamed into place, so a failed export
        (disk full, killed) never leaves a half model where ``out_dir`` was, nor loses the one
        there before.
        """
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        try:
            self.net.model.save_pretrained(tmp)
            datamodule.tokenizer.save_pretrained(tmp)
            if out_dir.exists():
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
        log.info("exported Hugging Face model to %s", out_dir)
        return out_dir
