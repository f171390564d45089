"""Helpers shared by the tests: compose the real configs, small real data, overrides."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tunelab.config import config_dir

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """Compose a real tunelab config as the CLI would, writing into ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[
                f"paths.root_dir={out_dir}",
                f"paths.output_dir={out_dir}",
                f"paths.data_dir={shared_data_dir()}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the run dir is given above; resolving hydra.run.dir would make another
    return cfg


def shared_data_dir() -> Path:
    """Data shared by all tests (the embedded corpus is fetched once per machine)."""
    return Path(os.environ.get("TUNELAB_TEST_DATA_DIR", REPO / "data"))


POSITIVE = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "great"]
NEGATIVE = ["dreadful", "boring", "awful", "tedious", "clumsy", "terrible", "bad"]
NOUNS = ["film", "movie", "story", "script", "cast", "performance", "ending"]


# The fixture corpus's label names: names no config knows (not the movie corpus's
# negative/positive), in the order the data module infers them (sorted: pan = 0, rave = 1).
NEG, POS = "pan", "rave"


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short labeled review sentences whose words carry the label (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        adj = rng.choice(POSITIVE if positive else NEGATIVE)
        extra = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(0, 12)))
        rows.append((f"a {adj} {rng.choice(NOUNS)} {extra}".strip(), POS if positive else NEG))
    return rows


def tiny_text_overrides(
    tiny_bert_dir: Path, sentiment_csv: Path, model: str = "bert_hf"
) -> list[str]:
    """Overrides for a fast real text run: tiny BERT, fixture CSV, small batches."""
    return [
        "experiment=bert_embedded",
        f"model={model}",
        f"model.net.pretrained={tiny_bert_dir}",
        "model.optimizer.lr=3e-3",
        "data=text_files",
        f"data.path={sentiment_csv}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.max_length=32",
        "data.batch_size=16",
        "logger=none",
    ]
