"""The custom CNN image classifier network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CustomCNN(nn.Module):
    """Conv blocks (3×3 conv, pad 1, [BatchNorm], ReLU, 2×2 max-pool) then an MLP classifier.

    The defaults are the seed design: conv in→32, conv 32→64, fc → 128 → classes.

    Args:
        num_classes: output classes.
        in_channels: image channels (1 grayscale, 3 RGB).
        image_size: height and width of the (square) input; the flatten size follows from it.
        channels: output channels of each conv block; one 2×2 pool per block.
        hidden_size: width of the hidden fully connected layer.
        dropout: dropout before the last layer.
        batch_norm: BatchNorm after each convolution.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        side = image_size
        for _ in channels:
            side //= 2
        if side < 1:
            raise ValueError(
                f"model.net.image_size={image_size} is too small for {len(channels)} 2×2 pools "
                f"(model.net.channels={list(channels)}); use fewer conv blocks or larger images"
            )
        blocks: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            blocks.append(nn.Conv2d(prev, width, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(width))
            blocks += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * side * side, hidden_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
