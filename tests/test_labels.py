"""Label names are the data's, end to end, with no label configuration.

A CSV whose labels are words no config knows trains with ``data=text_files`` alone; the names
reach the run record, the checkpoint, the per-class metrics, the confusion matrix, errors.csv,
``tunelab-predict``, ``load_model`` and the export, which ``transformers.pipeline`` answers
with. An image folder's class folders name its classes the same way, and a folder without a
test split holds out a seeded test split instead of testing on the validation set.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import sentiment_rows

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CI": "1"}
NAMES = ["meh", "swoon", "yawn"]  # sorted; three classes, none of them a default name


def _cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def _only_run(root: Path) -> Path:
    runs = [p for p in root.glob("outputs/*/*") if (p / "run_info.json").is_file()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def three_class_csv(tmp_path_factory) -> Path:
    """One CSV with a header, an extra column and three word labels: 'swoon' for the positive
    words, 'yawn' for the negative ones and 'meh' for sentences without either."""
    path = tmp_path_factory.mktemp("labels") / "reviews.csv"
    rows = []
    for i, (text, label) in enumerate(sentiment_rows(420, seed=3)):
        if i % 3 == 2:
            rows.append((f"id{i}", " ".join(text.split()[2:]) or "a film", "meh"))
        else:
            rows.append((f"id{i}", text, "swoon" if label == "rave" else "yawn"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "review", "verdict"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir, three_class_csv) -> Path:
    root = tmp_path_factory.mktemp("text-run")
    proc = _cli(
        "tunelab-train",
        "experiment=bert_embedded",
        "data=text_files",
        f"data.path={three_class_csv}",
        "data.text_column=review",
        "data.label_column=verdict",
        "data.max_length=32",
        f"model.net.pretrained={tiny_bert_dir}",
        "model.optimizer.lr=3e-3",
        "trainer.max_epochs=2",
        "logger=none",
        f"paths.root_dir={root}",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _only_run(root)


def test_string_labels_train_without_label_configuration(text_run, three_class_csv):
    record = json.loads((text_run / "run_info.json").read_text())
    assert record["data"]["label_names"] == NAMES and record["data"]["num_classes"] == 3
    # 420 rows: 10% test, 10% validation, held out with the split seed and recorded as such
    assert record["data"]["splits"] == {"train": 336, "val": 42, "test": 42}
    assert "held out" in record["data"]["held_out"]["test"]

    metrics = json.loads((text_run / "metrics.json").read_text())
    for name in NAMES:
        assert 0.0 <= metrics[f"test/recall_{name}"] <= 1.0
    assert metrics["test/acc"] > 0.5  # three classes: learned, not guessed

    with open(text_run / "confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == NAMES and [r[0] for r in table[1:]] == NAMES
    with open(text_run / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    assert all(r["label"] in NAMES and r["predicted"] in NAMES for r in errors)

    ckpt = torch.load(text_run / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["tunelab"]["data"]["label_names"] == NAMES
    assert ckpt["tunelab"]["model"]["label_names"] == NAMES


def test_names_reach_predict_load_model_and_the_pipeline(text_run, tmp_path):
    best = text_run / "checkpoints" / "best.ckpt"
    proc = _cli("tunelab-predict", f"ckpt_path={best}", "text=a superb moving film", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["label_name"] in NAMES and set(row["probabilities"]) == set(NAMES)

    import tunelab
    from tunelab.models.text_classifier import TextClassifier

    model = tunelab.load_model(best)
    assert model.label_names == NAMES and not model.training
    same = TextClassifier.load_from_checkpoint(best)
    assert same.label_names == NAMES
    for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    config = json.loads((text_run / "hf_model" / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)}
    assert config["label2id"] == {n: i for i, n in enumerate(NAMES)}
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(text_run / "hf_model"), device="cpu")
    answers = clf(["a superb moving film", "a dreadful tedious script"], top_k=None)
    assert all({a["label"] for a in answer} == set(NAMES) for answer in answers)
    ours = tunelab.predict(best, texts=["a superb moving film"])[0]["probabilities"]
    theirs = {a["label"]: a["score"] for a in answers[0]}
    assert theirs == pytest.approx(ours, abs=1e-4)


def test_eval_on_a_new_file_tests_every_row(text_run, tmp_path):
    new = tmp_path / "more.csv"
    rows = sentiment_rows(150, seed=9)
    with open(new, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["review", "verdict", "source"])
        w.writerows((t, "swoon" if y == "rave" else "yawn", "web") for t, y in rows)
    best = text_run / "checkpoints" / "best.ckpt"
    proc = _cli(
        "tunelab-eval",
        f"ckpt_path={best}",
        f"+data.path={new}",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp_path)
    record = json.loads((run / "run_info.json").read_text())
    assert record["data"]["splits"] == {"test": 150}
    with open(run / "confusion_matrix.csv", newline="") as f:
        table = list(csv.reader(f))
    assert sum(int(v) for r in table[1:] for v in r[1:]) == 150


def test_a_path_the_embedded_source_does_not_read_is_an_error(tmp_path):
    proc = _cli(
        "tunelab-train",
        "experiment=bert_embedded",
        "data.path=/nonexistent/reviews.csv",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert "data.path" in lines[-1] and "data=text_files" in lines[-1]
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*.ckpt"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Class folders with names, no test/ split, 30 images a class of an odd size (20x20 RGB)."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square", "triangle"]):
        (root / name).mkdir(parents=True)
        for i in range(30):
            pixels = rng.integers(0, 60, (20, 20, 3)) + 80 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_names_and_a_held_out_test_split(image_folder, tmp_path):
    proc = _cli(
        "tunelab-train",
        "data=image_folder",
        f"data.path={image_folder}",
        "data.image_size=20",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp_path)
    record = json.loads((run / "run_info.json").read_text())
    assert record["data"]["label_names"] == ["circle", "square", "triangle"]
    # 90 images: 9 held out for testing (never the validation split), 8 of the rest validate
    assert record["data"]["splits"] == {"train": 73, "val": 8, "test": 9}
    assert set(record["data"]["held_out"]) == {"val", "test"}

    from tunelab.data.image_datamodule import ImageDataModule

    dm = ImageDataModule(
        source="folder",
        path=str(image_folder),
        num_classes=None,
        image_size=20,
        in_channels=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        val_size=0.1,
    )
    dm.setup()
    val, test = dm.splits["val"].images, dm.splits["test"].images
    assert not any(torch.equal(v, t) for v in val for t in test)  # disjoint splits

    best = run / "checkpoints" / "best.ckpt"
    proc = _cli(
        "tunelab-predict",
        f"ckpt_path={best}",
        f"input={image_folder / 'square' / '3.png'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(row["probabilities"]) == {"circle", "square", "triangle"}
    assert row["label_name"] == max(row["probabilities"], key=row["probabilities"].get)
    from tunelab.models.image_classifier import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(best)
    assert model.label_names == ["circle", "square", "triangle"] and model.num_classes == 3
