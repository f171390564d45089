"""Tests for tunelab.data.text_sources: every reader on files the tests write, plus the real
VADER corpus (from the sdist named by TUNELAB_VADER_SDIST when present, else pip download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from tunelab.data import text_sources
from tunelab.data.text_sources import (
    VADER_DIRNAME,
    ensure_vader_corpus,
    load_hub_text,
    load_vader_domain,
    read_aclimdb,
    read_table_files,
)

LOCAL_SDIST = Path("/tmp/vader/vaderSentiment-3.3.2.tar.gz")


# --- aclImdb ---------------------------------------------------------------------------------


def _write_imdb(root: Path) -> None:
    reviews = {
        "train/pos": {"1_9.txt": "Great film.<br /><br />Loved it.", "0_10.txt": "Superb\tcast."},
        "train/neg": {"3_1.txt": "Dull.", "2_2.txt": "Bad — très mauvais."},
        "test/pos": {"5_8.txt": "Fine."},
        "test/neg": {"4_3.txt": "Meh."},
        "train/unsup": {"9_0.txt": "Unlabeled."},
    }
    for folder, files in reviews.items():
        (root / folder).mkdir(parents=True)
        for name, text in files.items():
            (root / folder / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("parent", [True, False])
def test_read_aclimdb(tmp_path: Path, parent: bool) -> None:
    _write_imdb(tmp_path / "aclImdb")
    splits = read_aclimdb(tmp_path if parent else tmp_path / "aclImdb")
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert train.column_names == ["text", "label", "id"]
    assert train["id"] == [
        "train/neg/2_2.txt",
        "train/neg/3_1.txt",
        "train/pos/0_10.txt",
        "train/pos/1_9.txt",
    ]
    assert train["label"] == [0, 0, 1, 1]
    assert train["text"][0] == "Bad — très mauvais."
    assert train["text"][3] == "Great film.<br /><br />Loved it."  # kept as is
    assert splits["test"]["label"] == [0, 1]


def test_read_aclimdb_missing_and_empty_folder(tmp_path: Path) -> None:
    _write_imdb(tmp_path / "aclImdb")
    for file in (tmp_path / "aclImdb/test/pos").iterdir():
        file.unlink()
    with pytest.raises(ValueError, match="test/pos"):
        read_aclimdb(tmp_path)
    (tmp_path / "aclImdb/test/pos").rmdir()
    with pytest.raises(FileNotFoundError, match="test/pos"):
        read_aclimdb(tmp_path)


# --- tables ----------------------------------------------------------------------------------

ROWS = {
    "train": [("good movie", "positive"), ("awful", "negative"), ("so-so", "neutral")],
    "val": [("nice", "positive"), ("bad", "negative")],
    "test": [("great", "positive"), ("boring", "negative")],
}


def _frame(split: str) -> pd.DataFrame:
    rows = ROWS[split]
    return pd.DataFrame({"review": [r[0] for r in rows], "sentiment": [r[1] for r in rows]})


def _write(frame: pd.DataFrame, file: Path) -> None:
    if file.suffix == ".csv":
        frame.to_csv(file, index=False)
    elif file.suffix == ".parquet":
        frame.to_parquet(file, index=False)
    else:
        frame.to_json(file, orient="records", lines=True, force_ascii=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_read_table_folder_string_labels(tmp_path: Path, suffix: str) -> None:
    for split in ROWS:
        _write(_frame(split), tmp_path / f"{split}{suffix}")
    (tmp_path / "notes.txt").write_text("ignored")
    splits, names = read_table_files(
        tmp_path, "review", "sentiment", cache_dir=str(tmp_path / "cache")
    )
    assert names == ["negative", "neutral", "positive"]  # derived: sorted unique over splits
    assert set(splits) == {"train", "validation", "test"}
    train = splits["train"]
    assert train.column_names == ["text", "label"]
    assert train["text"] == ["good movie", "awful", "so-so"]  # file order
    assert train["label"] == [2, 0, 1]
    assert splits["validation"]["label"] == [2, 0]
    assert train.features["label"].dtype == "int64"


def test_read_table_single_file_given_names_and_id(tmp_path: Path) -> None:
    file = tmp_path / "reviews.json"
    records = [{"id": 7, "body": "fine", "y": "pos"}, {"id": 8, "body": "bad", "y": "neg"}]
    file.write_text("\n".join(json.dumps(r) for r in records))
    splits, names = read_table_files(
        file, "body", "y", label_names=["neg", "pos"], cache_dir=str(tmp_path / "cache")
    )
    assert names == ["neg", "pos"]
    assert list(splits) == ["train"]
    assert splits["train"].column_names == ["text", "label", "id"]
    assert splits["train"]["id"] == ["7", "8"]
    assert splits["train"]["label"] == [1, 0]


def test_read_table_int_labels(tmp_path: Path) -> None:
    file = tmp_path / "data.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 2, 1]}).to_csv(file, index=False)
    splits, names = read_table_files(file, cache_dir=str(tmp_path / "cache"))
    assert names is None
    assert splits["train"]["label"] == [0, 2, 1]
    with pytest.raises(ValueError, match=r"row 2: label 2 is not an integer \[0, 2\)"):
        read_table_files(file, label_names=["a", "b"], cache_dir=str(tmp_path / "cache"))


def test_read_table_empty_cells(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    (tmp_path / "a.csv").write_text("text,label\na,pos\nb,\nc,neg\n")
    with pytest.raises(ValueError, match=r"a.csv, row 2: the label is empty"):
        read_table_files(tmp_path / "a.csv", cache_dir=cache)
    (tmp_path / "b.csv").write_text("text,label\na,1\nb,\n")  # ints with a gap read as float
    with pytest.raises(ValueError, match="float64"):
        read_table_files(tmp_path / "b.csv", cache_dir=cache)
    (tmp_path / "c.csv").write_text("text,label\na,1\n,0\n")
    with pytest.raises(ValueError, match=r"c.csv, row 2: the text is empty"):
        read_table_files(tmp_path / "c.csv", cache_dir=cache)


def test_read_table_missing_column_names_file_and_key(tmp_path: Path) -> None:
    file = tmp_path / "train.csv"
    _write(_frame("train"), file)
    with pytest.raises(ValueError) as info:
        read_table_files(file, "text", "sentiment", cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert str(file) in message and "'text'" in message
    assert "review" in message and "data.text_column" in message


def test_read_table_unknown_label_names_row(tmp_path: Path) -> None:
    file = tmp_path / "train.parquet"
    _write(_frame("train"), file)
    with pytest.raises(ValueError) as info:
        read_table_files(
            file, "review", "sentiment", ["negative", "positive"], str(tmp_path / "cache")
        )
    message = str(info.value)
    assert str(file) in message and "row 3" in message and "'neutral'" in message
    assert "['negative', 'positive']" in message


def test_read_table_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table_files(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train"):
        read_table_files(tmp_path / "empty")
    (tmp_path / "data.tsv").write_text("a\tb\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_table_files(tmp_path / "data.tsv")


# --- Hub -------------------------------------------------------------------------------------


def test_load_hub_text_offline_error_is_clear(tmp_path: Path) -> None:
    # HF_DATASETS_OFFLINE is read when `datasets` is imported, hence a fresh interpreter.
    code = (
        "from tunelab.data.text_sources import load_hub_text\n"
        f"load_hub_text('stanfordnlp/imdb', cache_dir={str(tmp_path)!r})\n"
    )
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    src = str(Path(text_sources.__file__).parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ConnectionError: Cannot load Hub dataset 'stanfordnlp/imdb'" in result.stderr
    assert "data.path" in result.stderr
    assert callable(load_hub_text)


# --- VADER -----------------------------------------------------------------------------------


@pytest.fixture
def vader_sdist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the local sdist copy when there is one; otherwise the code runs pip download."""
    if LOCAL_SDIST.is_file():
        monkeypatch.setenv(text_sources.VADER_SDIST_ENV, str(LOCAL_SDIST))


def test_load_vader_movies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vader_sdist_env: None
) -> None:
    movies = load_vader_domain("movies", tmp_path)
    assert movies.column_names == ["text", "label", "id"]
    assert len(movies) == 10_605 - 37
    positives = sum(movies["label"])
    assert positives == 5_242 and 0.45 < positives / len(movies) < 0.55
    assert movies["id"][0] == "1" and movies["text"][0].startswith("The Rock is destined")
    assert not any(t.endswith("\r") for t in movies["text"])
    assert sorted(p.name for p in (tmp_path / VADER_DIRNAME).iterdir()) == sorted(
        text_sources._VADER_FILES
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was fetched a second time")

    monkeypatch.setattr(text_sources.subprocess, "run", no_download)
    monkeypatch.setattr(text_sources, "_extract_vader", no_download)
    assert len(load_vader_domain("tweets", tmp_path)) == 4_200 - 4
    with pytest.raises(ValueError, match="editorials"):
        load_vader_domain("books", tmp_path)


def test_ensure_vader_survives_partial_leftovers(tmp_path: Path, vader_sdist_env: None) -> None:
    # What a killed run or a careless hand could leave: a staging folder and a partial corpus.
    stale = tmp_path / f".{VADER_DIRNAME}.tmp-killed" / VADER_DIRNAME
    stale.mkdir(parents=True)
    (stale / "movieReviewSnippets_GroundTruth.txt").write_text("1\t2.0\thalf")
    partial = tmp_path / VADER_DIRNAME
    partial.mkdir()
    (partial / "tweets_GroundTruth.txt").write_text("1\t2.0\tonly one file")
    folder = ensure_vader_corpus(tmp_path)
    assert folder == partial
    assert len(load_vader_domain("products", tmp_path)) == 3_708 - 98
    assert (folder / "tweets_GroundTruth.txt").stat().st_size > 1000


def test_vader_pip_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(text_sources.VADER_SDIST_ENV, raising=False)
    monkeypatch.setattr(
        text_sources.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution"
        ),
    )
    with pytest.raises(RuntimeError, match="TUNELAB_VADER_SDIST") as info:
        ensure_vader_corpus(tmp_path)
    assert "No matching distribution" in str(info.value)
    assert not (tmp_path / VADER_DIRNAME).exists()
    assert list(tmp_path.iterdir()) == []  # staging cleaned up
    monkeypatch.setenv(text_sources.VADER_SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match="missing.tar.gz"):
        ensure_vader_corpus(tmp_path)


def test_vader_bad_line_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / VADER_DIRNAME
    folder.mkdir()
    for name in text_sources.VADER_DOMAINS.values():
        (folder / name).write_bytes(b"1\t1.5\tok\ttab inside\r\n2\t-0.5\tbad\r\n3\t0\tneutral")
    tweets = load_vader_domain("tweets", tmp_path)
    assert tweets["text"] == ["ok\ttab inside", "bad"]
    assert tweets["label"] == [1, 0]
    (folder / "tweets_GroundTruth.txt").write_bytes(b"1\t1.5\tok\r\n2\tnot-a-score\tx\r\n")
    with pytest.raises(ValueError, match=r"tweets_GroundTruth.txt, line 2"):
        load_vader_domain("tweets", tmp_path)


def test_read_table_classlabel_names(tmp_path: Path) -> None:
    # Parquet written by `datasets` keeps a ClassLabel feature, as Hub datasets have.
    features = Features({"sentence": Value("string"), "y": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"sentence": ["a", "b"], "y": [1, 0]}, features=features).to_parquet(
        tmp_path / "train.parquet"
    )
    cache = str(tmp_path / "cache")
    splits, names = read_table_files(tmp_path, "sentence", "y", cache_dir=cache)
    assert names == ["neg", "pos"] and splits["train"]["label"] == [1, 0]
    splits, names = read_table_files(tmp_path, "sentence", "y", ["pos", "neg"], cache)
    assert names == ["pos", "neg"] and splits["train"]["label"] == [0, 1]  # matched by name
