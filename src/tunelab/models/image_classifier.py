"""LightningModule for image classification."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.models.classifier import ClassifierModule


class ImageClassifier(ClassifierModule):
    """Wraps any image network (e.g. :class:`~tunelab.models.cnn.CustomCNN`).

    Batches are ``(images, labels)`` with images already normalized by the data module.
    """

    def split_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, (tuple, list)):
            return batch[0], batch[1] if len(batch) > 1 else None
        return batch, None
