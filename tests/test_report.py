"""What a run shows and leaves behind: console output, learning curves, confusion matrix, errors.

The CNN runs through the real console script (a subprocess whose stdout is a pipe, as in CI);
the text model runs in process on the tiny BERT.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from PIL import Image

from tests.helpers import (
    NEG,
    POS,
    compose_cfg,
    needs_fashion_mnist,
    shared_data_dir,
    tiny_text_overrides,
)
from tunelab.console import EpochLines, progress_bar
from tunelab.report import learning_curves
from tunelab.train import train

CNN = [
    "experiment=cnn_fashion_mnist",
    "trainer.max_epochs=2",
    "data.max_train_samples=512",
    "data.max_eval_samples=200",
    "data.batch_size=64",
]


def _cli(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TUNELAB_ROOT": str(root),
        "TUNELAB_DATA_DIR": str(shared_data_dir()),
        "CI": "1",
        "COLUMNS": "120",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.train", *overrides],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _epoch_rows(run: Path, key: str, epochs: int = 2) -> list[float]:
    """``key`` per training epoch from the CSV logger's file (after them come the final
    validation and test of the best checkpoint)."""
    rows = _read_csv(run / "csv" / "metrics.csv")
    return [float(r[key]) for r in rows if r.get(key)][:epochs]


def _history(run: Path) -> list[dict[str, float]]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("RunReport")]
    return state["history"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("cli")
    proc = _cli(root, *CNN)
    (run,) = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    return run, proc.stdout


# ---- console -----------------------------------------------------------------------------------


@needs_fashion_mnist
def test_console_shows_config_tree_epoch_lines_and_final_table(cli_run):
    run, out = cli_run
    # the config tree, first the groups a reader looks for
    tree = (run / "config_tree.log").read_text()
    assert tree.index("data") < tree.index("model") < tree.index("trainer")
    assert "_target_: tunelab.models.image_classifier" in tree
    assert "_target_: tunelab.models.image_classifier" in out
    # not a terminal: one plain line per epoch, with the epoch's own metrics
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    val_acc = _epoch_rows(run, "val/acc")
    for line, acc in zip(lines, val_acc, strict=True):
        assert f"val/acc {acc:.4f}" in line
    train_acc = _epoch_rows(run, "train/acc")
    assert f"train/acc {train_acc[1]:.4f}" in lines[1]  # this epoch's, not the one before
    assert "\r" not in out  # no redrawn bar in a log
    # the final table: one row per metric, a column per stage, then the run directory
    metrics = json.loads((run / "metrics.json").read_text())
    table = out[out.index("final metrics") :]
    (acc_row,) = [ln for ln in table.splitlines() if ln.strip("│┃ ").startswith("acc ")]
    assert f"{metrics['val/acc']:.4f}" in acc_row and f"{metrics['test/acc']:.4f}" in acc_row
    assert "f1_0" not in table  # per-class scores stay in metrics.json
    assert f"run directory: {run}" in out


@needs_fashion_mnist
@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script (a pty)")
def test_a_terminal_gets_the_rich_progress_bar(tmp_path):
    cmd = [sys.executable, "-m", "tunelab.train", *CNN, "trainer.max_epochs=1"]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TUNELAB_ROOT=str(tmp_path), TUNELAB_DATA_DIR=str(shared_data_dir()))
    log = tmp_path / "terminal.log"
    subprocess.run(
        ["script", "-qec", shlex.join(cmd), str(log)],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=600,
    )
    out = log.read_text(encoding="utf-8", errors="replace")
    assert "━" in out and "Epoch 0/0" in out  # rich's bar (it counts epochs from 0)
    assert "\nepoch 1/1 " not in out.replace("\r", "\n")  # not the plain lines
    assert "final metrics" in out


def test_unknown_progress_bar_style_is_a_config_error(tmp_path):
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.train", "callbacks.progress_bar.style=fancy"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: callbacks.progress_bar.style=fancy" in proc.stderr
    assert "auto, rich, tqdm, plain" in proc.stderr
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


def test_progress_bar_follows_the_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar("auto"), RichProgressBar)
    monkeypatch.setenv("CI", "true")
    assert isinstance(progress_bar("auto"), EpochLines)
    assert isinstance(progress_bar("rich"), RichProgressBar)
    with pytest.raises(ValueError, match=r"callbacks\.progress_bar\.style='fancy'"):
        progress_bar("fancy")


@needs_fashion_mnist
def test_print_config_false_prints_no_tree(tmp_path):
    cfg = compose_cfg(
        "train", [*CNN, "trainer.max_epochs=1", "extras.print_config=false"], tmp_path
    )
    train(cfg)
    assert not (tmp_path / "config_tree.log").exists()
    assert (tmp_path / "learning_curves.png").is_file()


# ---- plots -------------------------------------------------------------------------------------


@needs_fashion_mnist
def test_learning_curves_plot_the_logged_metrics(cli_run):
    run, _ = cli_run
    image = Image.open(run / "learning_curves.png")
    assert image.format == "PNG" and image.width > 600
    history = _history(run)  # kept in the checkpoint: a resumed run plots its whole past
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    for key in ("train/loss", "val/loss", "train/acc", "val/acc"):
        logged = "train/loss_epoch" if key == "train/loss" else key  # logged per step and epoch
        assert [r[key] for r in history] == pytest.approx(_epoch_rows(run, logged), abs=1e-6)
    fig = learning_curves(history, "acc")
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("loss", "acc")
    lines = {ln.get_label(): list(ln.get_ydata()) for ax in fig.axes for ln in ax.lines}
    assert set(lines) == {"train/loss", "val/loss", "train/acc", "val/acc"}
    assert lines["val/acc"] == pytest.approx(_epoch_rows(run, "val/acc"), abs=1e-6)


@needs_fashion_mnist
def test_confusion_matrix_counts_the_test_predictions(cli_run):
    run, _ = cli_run
    image = Image.open(run / "confusion_matrix.png")
    assert image.format == "PNG" and image.height > 400
    rows = _read_csv(run / "confusion_matrix.csv")
    names = [r["true \\ predicted"] for r in rows]
    assert names[:2] == ["T-shirt/top", "Trouser"] and len(names) == 10
    counts = torch.tensor([[int(r[n]) for n in names] for r in rows])
    assert int(counts.sum()) == 200  # data.max_eval_samples
    metrics = json.loads((run / "metrics.json").read_text())
    assert float(counts.diag().sum()) / 200 == pytest.approx(metrics["test/acc"], abs=1e-6)
    # each row's recall is the per-class recall the metrics report
    recall_3 = float(counts[3, 3]) / max(int(counts[3].sum()), 1)
    assert recall_3 == pytest.approx(metrics["test/recall_Dress"], abs=1e-4)  # class 3
    assert not (run / "errors.csv").exists()  # image models: the matrix says it


@needs_fashion_mnist
def test_resumed_run_plots_its_whole_history(tmp_path):
    _cli(tmp_path, *CNN, "trainer.max_epochs=1", "extras.print_config=false")
    (run,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    first = _history(run)
    _cli(tmp_path, f"resume={run}", "trainer.max_epochs=2")
    history = _history(run)
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert history[:1] == first
    fig = learning_curves(history, "acc")
    assert all(len(ln.get_xdata()) == 2 for ax in fig.axes for ln in ax.lines)


# ---- text models: the most confident errors -----------------------------------------------------


def test_errors_csv_lists_the_most_confident_mistakes(tiny_bert_dir, sentiment_csv, tmp_path):
    overrides = [
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "trainer.max_epochs=1",
        "model.optimizer.lr=1e-4",  # a weak model makes mistakes to list
        "callbacks.run_report.top_errors=5",
    ]
    train(compose_cfg("train", overrides, tmp_path))
    rows = _read_csv(tmp_path / "errors.csv")
    matrix = _read_csv(tmp_path / "confusion_matrix.csv")
    wrong = sum(int(r[n]) for r in matrix for n in (NEG, POS) if n != r["true \\ predicted"])
    assert len(rows) == min(5, wrong) and wrong > 0
    test_texts = [r[0] for r in _test_split(sentiment_csv)]
    confidences = [float(r["confidence"]) for r in rows]
    assert confidences == sorted(confidences, reverse=True)
    for r in rows:
        assert r["label"] != r["predicted"]
        # two classes, threshold 0.5: the wrong class had at least half the probability
        assert float(r["confidence"]) >= 0.5
        assert float(r["p_label"]) == pytest.approx(1 - float(r["confidence"]), abs=2e-4)
        assert test_texts[int(r["index"])] == r["text"]
        assert _test_split(sentiment_csv)[int(r["index"])][1] == r["label"]


def _test_split(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "test.csv", newline="", encoding="utf-8") as f:
        return [(r["review"], r["sentiment"]) for r in csv.DictReader(f)]
