"""LightningModule for text classification."""

from __future__ import annotations

import logging
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
        """Write the model and tokenizer in Hugging Face format (``pipeline`` loads the folder)."""
        out_dir = Path(out_dir)
        self.net.model.save_pretrained(out_dir)
        datamodule.tokenizer.save_pretrained(out_dir)
        log.info("exported Hugging Face model to %s", out_dir)
        return out_dir
