"""The custom CNN network."""

from __future__ import annotations

import pytest
import torch

from tunelab.models.cnn import CustomCNN


@pytest.mark.parametrize(
    ("in_channels", "image_size", "channels"),
    [(3, 32, (32, 64)), (1, 28, (32, 64)), (3, 64, (16, 32, 64)), (1, 7, (8,)), (3, 31, (32, 64))],
)
def test_output_shape(in_channels, image_size, channels):
    net = CustomCNN(
        num_classes=5, in_channels=in_channels, image_size=image_size, channels=channels
    )
    out = net(torch.randn(4, in_channels, image_size, image_size))
    assert out.shape == (4, 5)


def test_seed_architecture_by_default():
    net = CustomCNN(num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (64 * 8 * 8, 128),
        (128, 10),
    ]


def test_batch_norm_option():
    net = CustomCNN(num_classes=3, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 2


def test_too_small_image_is_a_config_error():
    with pytest.raises(ValueError, match="model.net.image_size"):
        CustomCNN(num_classes=2, image_size=3, channels=(8, 8))
