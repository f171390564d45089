"""Imbalanced data: class weights, the balanced sampler, decision thresholds, imbalanced and capped
training splits, and the metrics that mean something under imbalance."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import NEG, POS, compose_cfg, tiny_text_overrides
from tunelab.checkpoint import load_checkpoint, store_decision_threshold
from tunelab.data.image_datamodule import ImageDataModule
from tunelab.data.resumable import ResumableDataLoader
from tunelab.data.sampling import (
    BalancedEpochSampler,
    balanced_class_weights,
    stratified_first_k,
    train_subset,
)
from tunelab.data.text_datamodule import TextDataModule
from tunelab.evaluate import evaluate
from tunelab.models.image_classifier import ImageClassifier
from tunelab.models.metrics import imbalance_metrics
from tunelab.models.threshold import best_f1_threshold
from tunelab.predict import predict
from tunelab.train import train
from tunelab.validation import ConfigError, validate_config


def _linear_classifier(**kw) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(nn.Linear(3, 2), num_classes=2, optimizer=torch.optim.SGD, **kw)


# ---- class weights ------------------------------------------------------------------------------
def test_class_weights_change_the_loss_as_computed_by_hand():
    x = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [-1.0, 1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    plain = _linear_classifier()
    weighted = _linear_classifier(class_weights=[1.0, 3.0])
    logits = plain.net(x).detach()
    nll = -logits.log_softmax(-1)[torch.arange(3), y]  # per-example cross-entropy
    w = torch.tensor([1.0, 3.0])[y]
    by_hand = (w * nll).sum() / w.sum()  # PyTorch's weighted mean
    assert plain._step((x, y), "train").item() == pytest.approx(nll.mean().item(), rel=1e-6)
    assert weighted._step((x, y), "train").item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert by_hand.item() != pytest.approx(nll.mean().item(), rel=1e-3)
    # validation and test losses stay unweighted, comparable across runs
    assert weighted._step((x, y), "val").item() == pytest.approx(nll.mean().item(), rel=1e-6)


def test_balanced_weights_come_from_the_training_labels(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 45 + [1] * 15)
    x = rng.integers(0, 256, (60, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    dm = ImageDataModule(
        source="npz",
        path=str(tmp_path / "d.npz"),
        num_classes=2,
        image_size=4,
        mean=[0.5],
        std=[0.5],
        val_size=12,
        batch_size=16,
    )
    model = ImageClassifier(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 2)),
        num_classes=2,
        optimizer=torch.optim.SGD,
        class_weights="balanced",
    )
    model.optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.1)
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=dm)
    counts = dm.class_counts()
    assert sum(counts) == 48 and counts == np.bincount(dm.splits["train"].labels).tolist()
    n, k = 48, 2
    expected = [n / (k * counts[0]), n / (k * counts[1])]
    assert model.class_weight.tolist() == pytest.approx(expected)
    assert balanced_class_weights([30, 10]) == pytest.approx([40 / 60, 40 / 20])
    with pytest.raises(ValueError, match="class_weights=balanced.*no training examples"):
        balanced_class_weights([5, 0])


# ---- the balanced sampler -----------------------------------------------------------------------
def test_balanced_sampler_is_uniform_over_classes_deterministic_and_resumable():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    sampler = BalancedEpochSampler(labels, seed=3)
    drawn = Counter()
    for epoch in range(20):
        drawn.update(labels[i] for i in sampler.indices(epoch))
    total = sum(drawn.values())
    assert total == 20 * len(labels)
    for c in range(3):
        assert abs(drawn[c] / total - 1 / 3) < 0.02, drawn
    # a function of (seed, epoch) only
    again = BalancedEpochSampler(labels, seed=3)
    assert again.indices(5) == sampler.indices(5)
    assert sampler.indices(5) != sampler.indices(6)
    assert BalancedEpochSampler(labels, seed=4).indices(5) != sampler.indices(5)
    # resumable: a loader restored at batch 7 of epoch 2 yields the rest of that epoch
    data = torch.arange(len(labels))
    full = ResumableDataLoader(data, sampler=BalancedEpochSampler(labels, 3), batch_size=10)
    full.sampler.set_epoch(2)
    whole = torch.cat(list(full)).tolist()
    resumed = ResumableDataLoader(data, sampler=BalancedEpochSampler(labels, 3), batch_size=10)
    resumed.load_state_dict({"epoch": 2, "batches": 7})
    assert torch.cat(list(resumed)).tolist() == whole[70:]


def test_text_loader_uses_the_balanced_sampler(tiny_bert_dir, sentiment_csv, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the loader's run seed: fixed draws
    dm = _text_dm(tiny_bert_dir, sentiment_csv, imbalance_ratio=0.2, sampler="balanced")
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedEpochSampler)
    labels = torch.cat([b["labels"] for b in loader]).tolist()
    counts = dm.class_counts()
    assert counts[1] < counts[0] / 3  # the split is imbalanced ...
    assert 0.3 < sum(labels) / len(labels) < 0.7  # ... the batches are not


# ---- decision threshold -------------------------------------------------------------------------
def test_threshold_maximises_validation_f1():
    # positives score 0.30-0.45 and 0.8-0.9: at 0.5 three of five are missed
    scores = torch.tensor([0.05, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.8, 0.9])
    labels = torch.tensor([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    threshold, f1 = best_f1_threshold(scores, labels)
    # predicting positive from 0.3 on: TP 5, FP 1 -> F1 = 10 / 11; halfway below 0.3 is 0.275
    assert threshold == pytest.approx(0.275)
    assert f1 == pytest.approx(10 / 11)
    for t in torch.linspace(0, 1, 101):  # no other threshold does better
        pred = (scores >= t).long()
        tp = int(((pred == 1) & (labels == 1)).sum())
        other = 2 * tp / (int(pred.sum()) + int(labels.sum()))
        assert other <= f1 + 1e-6
    with pytest.raises(ValueError, match="decision_threshold=auto needs validation examples"):
        best_f1_threshold(scores, torch.zeros(10, dtype=torch.long))


def test_imbalance_metrics_by_hand():
    probs1 = torch.tensor([0.9, 0.6, 0.4, 0.2, 0.7])
    labels = torch.tensor([1, 0, 1, 0, 1])
    probs = torch.stack([1 - probs1, probs1], dim=1)
    m = imbalance_metrics(probs, labels, threshold=0.5)
    # predicted [1, 1, 0, 0, 1]: class 1 P 2/3 R 2/3; class 0 P 1/2 R 1/2
    assert m["precision_1"].item() == pytest.approx(2 / 3)
    assert m["recall_0"].item() == pytest.approx(1 / 2)
    assert m["f1_macro"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["roc_auc"].item() == pytest.approx(5 / 6)  # 5 of 6 (pos, neg) pairs ordered
    assert m["pr_auc"].item() == pytest.approx((1 + 1 + 3 / 4) / 3)
    low = imbalance_metrics(probs, labels, threshold=0.3)  # predicted [1, 1, 1, 0, 1]
    assert low["recall_1"].item() == 1.0 and low["precision_0"].item() == 1.0


# ---- imbalanced and capped training splits ------------------------------------------------------
def _text_dm(tiny_bert_dir: Path, csv: Path, **kw) -> TextDataModule:
    return TextDataModule(
        tokenizer=str(tiny_bert_dir),
        source="files",
        path=str(csv),
        text_column="review",
        label_column="sentiment",
        max_length=32,
        data_dir=str(csv.parent),
        cache_dir=str(csv.parent / "cache"),
        **kw,
    )


def test_imbalance_ratio_keeps_the_expected_counts_and_leaves_val_test(
    tiny_bert_dir, sentiment_csv
):
    base = _text_dm(tiny_bert_dir, sentiment_csv)
    base.setup()
    dm = _text_dm(tiny_bert_dir, sentiment_csv, imbalance_ratio=0.1)
    dm.setup()
    before, after = base.class_counts(), dm.class_counts()
    assert after == [before[0], round(0.1 * before[1])]
    raw, sub = base.raw_splits["train"], dm.raw_splits["train"]
    assert set(sub["text"]) <= set(raw["text"])
    negatives = [t for t, y in zip(raw["text"], raw["label"], strict=True) if y == 0]
    assert [t for t, y in zip(sub["text"], sub["label"], strict=True) if y == 0] == negatives
    for split in ("val", "test"):
        assert dm.raw_splits[split]["text"] == base.raw_splits[split]["text"]
        assert dm.raw_splits[split]["label"] == base.raw_splits[split]["label"]
    again = _text_dm(tiny_bert_dir, sentiment_csv, imbalance_ratio=0.1)
    again.setup()
    assert again.raw_splits["train"]["text"] == sub["text"]  # deterministic with the seed
    other = _text_dm(tiny_bert_dir, sentiment_csv, imbalance_ratio=0.1, split_seed=7)
    other.setup()
    assert other.raw_splits["train"]["text"] != sub["text"]


def test_imbalance_ratio_on_image_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the loader's run seed: fixed draws
    y = np.array([0, 1] * 50)
    x = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    kw = dict(source="npz", path=str(tmp_path / "d.npz"), num_classes=2, image_size=1)
    kw |= dict(mean=[0.5], std=[0.5], val_size=20)
    base = ImageDataModule(**kw)
    dm = ImageDataModule(**kw, imbalance_ratio=0.25, sampler="balanced", batch_size=10)
    base.setup()
    dm.setup()
    before = base.class_counts()
    assert dm.class_counts() == [before[0], round(0.25 * before[1])]
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedEpochSampler)
    drawn = torch.cat([y for _, y in loader]).tolist()
    assert len(drawn) == sum(dm.class_counts()) and 0.3 < sum(drawn) / len(drawn) < 0.7
    for split in ("val", "test"):
        assert torch.equal(dm.splits[split].images, base.splits[split].images)


def test_max_train_samples_is_a_seeded_stratified_subset():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    keep = stratified_first_k(labels, 10, seed=0)
    assert len(set(keep.tolist())) == 10
    assert np.bincount(labels[keep]).tolist() == [7, 2, 1]
    assert keep.tolist() == stratified_first_k(labels, 10, seed=0).tolist()
    assert keep.tolist() != stratified_first_k(labels, 10, seed=1).tolist()
    assert keep.tolist() != list(range(10))  # not simply the first ten
    # after an imbalance, the cap applies to what is left
    both = train_subset(np.array([0, 1] * 50), seed=0, imbalance_ratio=0.2, max_train_samples=30)
    assert np.bincount(np.array([0, 1] * 50)[both]).tolist() == [25, 5]
    assert train_subset(labels, seed=0) is None


# ---- config checks ------------------------------------------------------------------------------
def test_config_errors_name_the_key(tmp_path):
    cases = {
        "model.class_weights=[1,2,3]": "model.class_weights",
        "model.decision_threshold=auto": "model.decision_threshold",  # 10 classes
        "data.imbalance_ratio=0.1": "data.imbalance_ratio",  # 10 classes
        "data.sampler=balance": "data.sampler",
    }
    for override, key in cases.items():
        cfg = compose_cfg("train", ["experiment=cnn_fashion_mnist", override], tmp_path)
        with pytest.raises(ConfigError) as err:
            validate_config(cfg)
        assert key in str(err.value), (override, err.value)
    cfg = compose_cfg("train", ["experiment=bert_embedded", "data.imbalance_ratio=1.5"], tmp_path)
    with pytest.raises(ConfigError, match=r"data.imbalance_ratio=1.5 must be in \(0, 1\]"):
        validate_config(cfg)
    ok = ["model.class_weights=balanced", "data.sampler=balanced"]
    validate_config(compose_cfg("train", ["experiment=cnn_fashion_mnist", *ok], tmp_path))


# ---- a tiny real run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auto_run(tiny_bert_dir, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("imbalanced")
    overrides = [
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "trainer.max_epochs=2",
        "data.imbalance_ratio=0.3",
        "model.class_weights=balanced",
        "model.decision_threshold=auto",
    ]
    metrics = train(compose_cfg("train", overrides, out))
    return out, metrics


def test_metrics_json_has_per_class_and_ranking_metrics(auto_run):
    out, metrics = auto_run
    saved = json.loads((out / "metrics.json").read_text())
    for stage in ("val", "test"):
        for name in ("acc", "f1", "precision", "recall", "f1_macro", "pr_auc", "roc_auc"):
            assert f"{stage}/{name}" in saved, name
        for c in (NEG, POS):  # per-class metrics are named by the data's classes
            for name in ("precision", "recall", "f1"):
                assert 0 <= saved[f"{stage}/{name}_{c}"] <= 1
        assert saved[f"{stage}/f1_macro"] == pytest.approx(
            (saved[f"{stage}/f1_{NEG}"] + saved[f"{stage}/f1_{POS}"]) / 2, abs=1e-6
        )
        # the binary metrics and the per-class ones use the same (chosen) threshold
        assert saved[f"{stage}/f1"] == pytest.approx(saved[f"{stage}/f1_{POS}"], abs=1e-6)
        assert saved[f"{stage}/recall"] == pytest.approx(saved[f"{stage}/recall_{POS}"], abs=1e-6)
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])


def test_threshold_is_stored_and_used_by_eval_and_predict(auto_run, tmp_path):
    out, metrics = auto_run
    saved = json.loads((out / "metrics.json").read_text())
    threshold = saved["decision_threshold"]
    assert 0 < threshold < 1
    best = out / "checkpoints" / "best.ckpt"
    assert load_checkpoint(best)["tunelab"]["decision_threshold"] == threshold
    exported = json.loads((out / "hf_model" / "config.json").read_text())
    assert exported["decision_threshold"] == pytest.approx(threshold)
    info = json.loads((out / "run_info.json").read_text())
    assert info["decision_threshold"] == threshold

    evaluate(compose_cfg("eval", [f"ckpt_path={best}", "logger=none"], tmp_path / "eval"))
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["decision_threshold"] == threshold
    for name in ("test/acc", "test/f1", "test/f1_macro"):
        assert evaluated[name] == pytest.approx(metrics[name], abs=1e-6)

    # predict applies whatever threshold the checkpoint holds: move it and the labels follow
    texts = ["a superb film", "a tedious movie cast", "the ending was awful", "charming story"]
    moved = tmp_path / "moved.ckpt"
    shutil.copy(best, moved)
    for t in (0.02, threshold, 0.98):
        store_decision_threshold(moved, t)
        rows = predict(moved, texts=texts)
        for row in rows:
            p1 = row["probabilities"][POS]
            if abs(p1 - t) > 1e-5:
                assert row["label"] == int(p1 >= t), (t, row)
    evaluate(compose_cfg("eval", [f"ckpt_path={moved}", "logger=none"], tmp_path / "eval98"))
    high = json.loads((tmp_path / "eval98" / "metrics.json").read_text())
    assert high["decision_threshold"] == 0.98
    assert high["test/recall"] <= evaluated["test/recall"] or threshold > 0.98


def test_unweighted_loss_matches_functional_cross_entropy():
    model = _linear_classifier(class_weights=None)
    assert model.class_weight is None
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    assert model._step((x, y), "train").item() == pytest.approx(
        F.cross_entropy(model.net(x), y).item(), rel=1e-6
    )
