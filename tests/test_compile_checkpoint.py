"""A network compiled in place keeps its state-dict keys: compiled and eager checkpoints swap."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunelab.models.cnn import CustomCNN
from tunelab.models.image_classifier import ImageClassifier

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="torch.compile on CPU needs a C compiler",
)


def classifier(seed: int, compile: bool) -> ImageClassifier:
    torch.manual_seed(seed)
    net = CustomCNN(num_classes=10, in_channels=1, image_size=28, channels=(8, 16), hidden_size=32)
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    module = ImageClassifier(net, num_classes=10, optimizer=optimizer, compile=compile)
    module.configure_model()  # Lightning calls this hook; it compiles the network in place
    return module


def save_and_load(module: ImageClassifier, path: Path) -> dict[str, torch.Tensor]:
    torch.save({"state_dict": module.state_dict()}, path)
    return torch.load(path, weights_only=True)["state_dict"]


def test_compiled_and_eager_checkpoints_are_interchangeable(tmp_path):
    torch._dynamo.reset()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 7, 9])

    compiled = classifier(seed=0, compile=True)
    loss = F.cross_entropy(compiled(x), y)
    loss.backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert all(p.grad is not None for p in compiled.net.parameters())

    # Compiled → eager.
    compiled_state = save_and_load(compiled, tmp_path / "compiled.ckpt")
    assert not [k for k in compiled_state if "_orig_mod." in k]
    eager = classifier(seed=1, compile=False)
    assert compiled_state.keys() == eager.state_dict().keys()
    eager.load_state_dict(compiled_state, strict=True)
    torch.testing.assert_close(eager(x), compiled(x), atol=1e-5, rtol=1e-5)

    # Eager → compiled: the already-compiled module must run with the loaded weights.
    other = classifier(seed=2, compile=False)
    eager_state = save_and_load(other, tmp_path / "eager.ckpt")
    compiled.load_state_dict(eager_state, strict=True)
    expected = other(x)
    assert not torch.allclose(expected, eager(x)), "the two initialisations should differ"
    torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
