"""Every YAML in every config group composes, and the objects it describes instantiate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from tests.helpers import sentiment_rows
from tunelab.config import config_dir
from tunelab.train import instantiate_dict, prepare_data

CONF = config_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in _options(g)]


def _fill_required(group: str, option: str, tmp_path: Path, tiny_bert_dir: Path) -> list[str]:
    """Values a config leaves mandatory (``???``), and a local model instead of hub downloads."""
    extra = []
    if (group, option) == ("data", "image_folder"):
        extra = [f"data.path={tmp_path}", "data.num_classes=3"]
    if (group, option) == ("data", "text_files"):  # the classes come from this file's labels
        path = tmp_path / "reviews.csv"
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(40)))
        extra = [f"data.path={path}"]
    if (group, option) == ("experiment", "bert_imdb"):
        extra = [f"model.net.pretrained={tiny_bert_dir}"]
    return extra


def test_every_group_has_configs():
    for group in (
        "model",
        "data",
        "trainer",
        "accelerator",
        "callbacks",
        "logger",
        "paths",
        "experiment",
        "debug",
    ):
        assert _options(group), f"conf/{group}/ has no configs"
    assert {"cpu", "gpu", "auto"} <= set(_options("accelerator"))
    assert {"fast_dev_run", "overfit", "limit"} <= set(_options("debug"))


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_config_composes_and_instantiates(group, option, compose_train, tmp_path, tiny_bert_dir):
    overrides = [f"{group}={option}", *_fill_required(group, option, tmp_path, tiny_bert_dir)]
    text_data = ("movies", "products", "editorials", "tweets", "imdb", "text_files")
    if group in ("data",) and option in text_data:
        overrides += ["model=bert_hf", f"model.net.pretrained={tiny_bert_dir}"]
    if group == "model" and option.startswith("bert"):
        overrides += ["data=movies", f"model.net.pretrained={tiny_bert_dir}"]
    if group == "accelerator" and option == "gpu":
        pytest.importorskip("torch")
        import torch

        if not torch.cuda.is_available():
            cfg = compose_train(*overrides)
            assert cfg.accelerator.precision == "bf16-mixed" and cfg.accelerator.compile
            return
    if group == "encoder":
        # Text models only; the hub encoders cannot be downloaded here: compose them and check
        # that the model and the tokenizer follow, instantiate the offline one.
        cfg = compose_train("experiment=bert_embedded", f"encoder={option}")
        assert cfg.model.net.pretrained == cfg.data.tokenizer
        if option != "minilm":
            return
    if group == "strategy" and option == "fsdp":
        import torch

        if not torch.cuda.is_available():  # Lightning's FSDP needs CUDA; build the strategy only
            cfg = compose_train(*overrides)
            assert type(instantiate(cfg.trainer.strategy)).__name__ == "FSDPStrategy"
            return
    if group == "encoder":
        overrides.insert(0, "experiment=bert_embedded")
    cfg = compose_train(*overrides)
    datamodule = instantiate(cfg.data, _convert_="partial")
    assert isinstance(datamodule, L.LightningDataModule)
    if cfg.data.get("num_classes", 0) is None:  # the classes come from the data, as in train
        prepare_data(datamodule, cfg)
        assert cfg.data.num_classes >= 2 and len(cfg.data.label_names) == cfg.data.num_classes
    assert isinstance(instantiate(cfg.model, _convert_="partial"), L.LightningModule)
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, L.Trainer)


def test_model_interpolates_num_classes_from_data(compose_train):
    cfg = compose_train("data.num_classes=7")
    assert cfg.model.num_classes == 7 and cfg.model.net.num_classes == 7


def test_overrides_reach_the_config(compose_train):
    cfg = compose_train(
        "experiment=cnn_fashion_mnist", "trainer.max_epochs=3", "model.optimizer.lr=1e-3"
    )
    assert cfg.trainer.max_epochs == 3
    assert cfg.model.optimizer.lr == 1e-3
    assert cfg.name == "cnn_fashion_mnist"


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_entry_configs_compose(name, tmp_path):
    from tests.helpers import compose_cfg

    cfg = compose_cfg(name, ["ckpt_path=x.ckpt"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt"


def test_cli_prints_composed_config():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab.train",
            "experiment=cnn_fashion_mnist",
            "trainer.max_epochs=3",
            "model.optimizer.lr=1e-3",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "max_epochs: 3" in out and "lr: 0.001" in out and "CustomCNN" in out
