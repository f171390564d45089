"""Every experiment runs end to end under debug=fast_dev_run.

Experiments whose data or model come from the Hugging Face hub (no network here) run with the
same config but local stand-ins: an .npz of CIFAR-10's shape, the fixture CSV, a tiny BERT.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import FASHION_MNIST, compose_cfg
from tunelab.config import config_dir
from tunelab.train import train

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def _stand_ins(name: str, tmp_path, tiny_bert_dir, sentiment_csv) -> list[str]:
    if name == "cnn_cifar10":
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp_path / "cifar.npz", x_train=x, y_train=rng.integers(0, 10, 64))
        return [
            "data.source=npz",
            "data.hub_name=null",
            f"data.path={tmp_path / 'cifar.npz'}",
            "data.val_size=16",
        ]
    if name.startswith("bert"):
        return [
            f"model.net.pretrained={tiny_bert_dir}",
            "data.source=files",
            "data.hub_name=null",
            f"data.path={sentiment_csv}",
            "data.text_column=review",
            "data.label_column=sentiment",
            "data.label_names=null",  # the fixture's own names, read from it
            "data.num_classes=null",
            "data.max_length=128",  # the tiny BERT has 128 positions (bert_imdb asks for 512)
        ]
    return []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run(name, tmp_path, tiny_bert_dir, sentiment_csv):
    if name == "cnn_fashion_mnist" and not FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed")
    overrides = [
        f"experiment={name}",
        "debug=fast_dev_run",
        *_stand_ins(name, tmp_path, tiny_bert_dir, sentiment_csv),
    ]
    cfg = compose_cfg("train", overrides, tmp_path / "run")
    assert cfg.name == name
    metrics = train(cfg)
    assert {"test/acc", "test/f1", "val/acc"} <= set(metrics)
    assert (tmp_path / "run" / "metrics.json").is_file()
