"""Cross-domain data configs, the domain report of ``tunelab-eval`` and ``init_from``."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import (
    NEG,
    POS,
    compose_cfg,
    sentiment_rows,
    shared_data_dir,
    tiny_text_overrides,
)
from tunelab.data.text_sources import VADER_DIRNAME, VADER_DOMAINS, ensure_vader_corpus
from tunelab.evaluate import evaluate
from tunelab.train import train
from tunelab.validation import ConfigError

# Sizes after dropping the snippets rated exactly 0, and the seeded 80/10/10 split.
DOMAIN_SIZES = {
    "products": {"all": 3610, "positive": 2128, "train": 2888, "val": 361, "test": 361},
    "editorials": {"all": 4946, "positive": 2204, "train": 3956, "val": 495, "test": 495},
    "tweets": {"all": 4196, "positive": 2897, "train": 3356, "val": 420, "test": 420},
}


@pytest.fixture(scope="module")
def vader_corpus() -> Path:
    """The real corpus, fetched from PyPI (the vaderSentiment sdist) if this machine lacks it."""
    folder = shared_data_dir() / VADER_DIRNAME
    if not all((folder / f).is_file() for f in VADER_DOMAINS.values()):
        try:
            ensure_vader_corpus(shared_data_dir())
        except Exception as err:  # no registry reachable: nothing to test against
            pytest.skip(f"VADER corpus could not be fetched: {err}")
    return folder


# --- the domain data configs on the real corpus ----------------------------------------------


@pytest.mark.usefixtures("vader_corpus")
@pytest.mark.parametrize("domain", sorted(DOMAIN_SIZES))
def test_domain_config_reads_real_corpus(domain: str, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "train",
        ["experiment=bert_embedded", f"data={domain}", f"data.cache_dir={tmp_path / 'cache'}"],
        tmp_path / "run",
    )
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    dm.setup()
    expected = DOMAIN_SIZES[domain]
    sizes = {name: len(ds) for name, ds in dm.raw_splits.items()}
    assert sizes == {k: expected[k] for k in ("train", "val", "test")}
    labels = [label for ds in dm.raw_splits.values() for label in ds["label"]]
    assert len(labels) == expected["all"] and sum(labels) == expected["positive"]
    assert dm.label_names == ["negative", "positive"] and dm.num_classes == 2
    assert dm.max_length == 128 and dm.split_seed == 1234  # the movies scheme
    # The splits are disjoint pieces of the corpus.
    ids = [i for ds in dm.raw_splits.values() for i in ds["id"]]
    assert len(set(ids)) == len(ids)


# --- a tiny checkpoint and a second tiny domain ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_bert_dir, sentiment_csv, tmp_path_factory) -> Path:
    """Tiny BERT trained for 8 epochs (120 steps) on the fixture corpus (test acc > 0.8)."""
    out = tmp_path_factory.mktemp("source-run")
    cfg = compose_cfg(
        "train",
        [*tiny_text_overrides(tiny_bert_dir, sentiment_csv), "trainer.max_epochs=8"],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def other_domain(tmp_path_factory) -> Path:
    """A second corpus in the fixture's columns: other words, a quarter of the labels flipped."""
    folder = tmp_path_factory.mktemp("other-domain")
    rng = random.Random(7)
    for split, n, seed in (("train", 100, 3), ("test", 80, 4)):
        rows = []
        for text, label in sentiment_rows(n, seed):
            text = text.replace("film", "blender").replace("movie", "charger")
            if rng.random() < 0.25:
                label = NEG if label == POS else POS
            rows.append((text, label))
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["review", "sentiment"])
            w.writerows(rows)
    return folder


def _eval(tmp_path: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    evaluate(compose_cfg("eval", list(overrides), out))
    return out


def test_domain_report_rows_and_drops(tiny_ckpt, sentiment_csv, other_domain, tmp_path):
    # Listed with the other domain first: the checkpoint's own corpus still leads the report.
    out = _eval(
        tmp_path,
        "report",
        f"ckpt_path={tiny_ckpt}",
        f"eval_domains=['{other_domain}','{sentiment_csv}']",
    )
    with open(out / "domain_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["domain"], r["in_domain"]) for r in rows] == [
        (sentiment_csv.name, "True"),
        (other_domain.name, "False"),
    ]
    assert [int(r["n_test"]) for r in rows] == [301, 80]  # each domain's own test.csv

    # Each row's metrics are what a plain evaluation of that corpus gives.
    own = json.loads((out / "metrics.json").read_text())
    alone = json.loads(
        (
            _eval(tmp_path, "alone", f"ckpt_path={tiny_ckpt}", f"+data.path={other_domain}")
            / "metrics.json"
        ).read_text()
    )
    for row, metrics in zip(rows, (own, alone), strict=True):
        for name in ("acc", "f1", "loss"):
            assert float(row[name]) == pytest.approx(metrics[f"test/{name}"], abs=1e-6)
    # Drops: in-domain minus the domain, for every metric but the loss.
    drop_columns = [c for c in rows[0] if c.endswith("_drop")]
    assert {"acc_drop", "f1_drop"} <= set(drop_columns) and "loss_drop" not in drop_columns
    for row in rows:
        for column in drop_columns:
            metric = column.removesuffix("_drop")
            expected = float(rows[0][metric]) - float(row[metric])
            assert float(row[column]) == pytest.approx(expected, abs=1e-9)
    assert float(rows[0]["acc_drop"]) == 0.0 and float(rows[0]["acc"]) > 0.8
    assert float(rows[1]["acc_drop"]) > 0.05  # a quarter of the other domain's labels flipped

    md = (out / "domain_report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and f"{sentiment_csv.name} (in-domain)" in table[1]
    assert f"{float(rows[1]['acc']):.4f}" in table[2]


def test_eval_domains_errors_name_the_key(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="eval_domains") as err:
        _eval(tmp_path, "bad", f"ckpt_path={tiny_ckpt}", "eval_domains=[movis]")
    assert "movies" in str(err.value)  # the configs it could have meant
    # A data config of another kind (images) cannot be a domain of a text checkpoint.
    with pytest.raises(ValueError, match="eval_domains entry 'fashion_mnist'"):
        _eval(tmp_path, "kind", f"ckpt_path={tiny_ckpt}", "eval_domains=[fashion_mnist]")


# --- init_from ---------------------------------------------------------------------------------


class InitProbe(L.Callback):
    """Records, when training starts, what the run starts from (into a JSON file)."""

    def __init__(self, out: str, compare_to: str) -> None:
        self.out = out
        self.compare_to = compare_to

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reference = torch.load(self.compare_to, map_location="cpu", weights_only=False)
        own = pl_module.state_dict()
        equal = all(torch.equal(own[k].cpu(), v) for k, v in reference["state_dict"].items())
        optimizer = trainer.optimizers[0]
        Path(self.out).write_text(
            json.dumps(
                {
                    "weights_equal": equal and own.keys() == reference["state_dict"].keys(),
                    "global_step": trainer.global_step,
                    "optimizer_state_entries": len(optimizer.state),
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
        )


def _probed_run(tmp_path, name, tiny_bert_dir, corpus, ckpt, *overrides) -> tuple[dict, Path]:
    out = tmp_path / name
    probe = tmp_path / f"{name}.json"
    cfg = compose_cfg(
        "train",
        [
            *tiny_text_overrides(tiny_bert_dir, corpus),
            "+callbacks.probe._target_=tests.test_domains.InitProbe",
            f"+callbacks.probe.out={probe}",
            f"+callbacks.probe.compare_to={ckpt}",
            *overrides,
        ],
        out,
    )
    train(cfg)
    return json.loads(probe.read_text()), out


def test_init_from_loads_weights_only(tiny_ckpt, tiny_bert_dir, other_domain, tmp_path):
    source_step = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert source_step > 0
    started, out = _probed_run(
        tmp_path,
        "adapted",
        tiny_bert_dir,
        other_domain,
        tiny_ckpt,
        f"init_from={tiny_ckpt}",
        "trainer.max_epochs=1",
    )
    assert started["weights_equal"]
    assert started["global_step"] == 0
    assert started["optimizer_state_entries"] == 0  # no AdamW moments carried over
    record = json.loads((out / "run_info.json").read_text())
    assert record["init_from"]["path"] == str(tiny_ckpt.resolve())
    assert record["init_from"]["global_step"] == source_step

    # The probe tells the difference: ckpt_path continues the run (steps, optimizer state) ...
    resumed, _ = _probed_run(
        tmp_path,
        "continued",
        tiny_bert_dir,
        other_domain,
        tiny_ckpt,
        f"ckpt_path={tiny_ckpt}",
        "trainer.max_epochs=3",
    )
    assert resumed["weights_equal"] and resumed["global_step"] == source_step
    assert resumed["optimizer_state_entries"] > 0 and resumed["lr"] != started["lr"]
    # ... and without either, training starts from the pretrained encoder and a new head, with
    # the schedule at the same first learning rate as the init_from run.
    fresh, _ = _probed_run(
        tmp_path, "fresh", tiny_bert_dir, other_domain, tiny_ckpt, "trainer.max_epochs=1"
    )
    assert not fresh["weights_equal"] and fresh["global_step"] == 0
    assert fresh["lr"] == started["lr"]


def test_init_from_errors_name_the_key(tiny_ckpt, tiny_bert_dir, sentiment_csv, tmp_path):
    base = tiny_text_overrides(tiny_bert_dir, sentiment_csv)
    # The MLP head's weights are not in a stock-head checkpoint.
    cfg = compose_cfg(
        "train",
        [*tiny_text_overrides(tiny_bert_dir, sentiment_csv, "bert_mlp"), f"init_from={tiny_ckpt}"],
        tmp_path / "mlp",
    )
    with pytest.raises(ValueError, match=r"^init_from=.*does not fit the model") as err:
        train(cfg)
    assert "drop init_from" in str(err.value)
    cfg = compose_cfg("train", [*base, f"init_from={tmp_path / 'nope.ckpt'}"], tmp_path / "r1")
    with pytest.raises(ConfigError, match="init_from=.*does not exist"):
        train(cfg)
    cfg = compose_cfg(
        "train", [*base, f"init_from={tiny_ckpt}", f"ckpt_path={tiny_ckpt}"], tmp_path / "r2"
    )
    with pytest.raises(ConfigError, match="init_from=.*keep one of them"):
        train(cfg)
