"""``tunelab-predict input=FILE``: CSV / JSON Lines / Parquet in, ``predictions.csv`` out.

One tiny real text model is trained per session on a fixture CSV unlike the defaults: the label
column comes first and holds ``meh``/``rave`` (names inferred from the data, none configured), the text column is ``review``, an extra column
and string ids with leading zeros ride along, and it has an odd number of rows (203), one text
with a quoted comma and a line break, one in French.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import POS, compose_cfg, sentiment_rows
from tunelab.data.text_inputs import BLOCK_ROWS, iter_table_texts
from tunelab.predict import OutputExistsError, Predictor, predict
from tunelab.train import train

N_ROWS = 203
LABELS = ["meh", "rave"]
PREDICT = Path(sys.executable).parent / "tunelab-predict"


def review_rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    rows = []
    for i, (text, label) in enumerate(sentiment_rows(n, seed)):
        if i == 5:
            text = 'a "superb", moving film,\nsaid the second line'
        elif i == 9:
            text = "un film charmant — très réussi, 5/5"
        rave = label == POS
        rows.append(
            {
                "verdict": "rave" if rave else "meh",
                "review_id": f"r{i:05d}",
                "stars": str(5 if rave else 2),
                "review": text,
            }
        )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_predictions(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="session")
def reviews(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    rows = review_rows(N_ROWS)
    return write_csv(tmp_path_factory.mktemp("reviews") / "reviews.csv", rows), rows


@pytest.fixture(scope="session")
def ckpt(tiny_bert_dir, reviews, tmp_path_factory) -> Path:
    csv_path, _ = reviews
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(
        "train",
        [
            "experiment=bert_embedded",
            "model=bert_hf",
            f"model.net.pretrained={tiny_bert_dir}",
            "model.optimizer.lr=3e-3",
            "data=text_files",
            f"data.path={csv_path}",
            "data.text_column=review",
            "data.label_column=verdict",
            "data.num_classes=2",  # the names are left to the data
            "data.max_length=32",
            "data.batch_size=16",
            "trainer.max_epochs=2",
            "logger=none",
        ],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt)


@pytest.fixture(scope="module")
def expected(ckpt, reviews) -> list[dict]:
    """The Python API on the texts themselves: what every file input must reproduce."""
    _, rows = reviews
    return predict(ckpt, texts=[r["review"] for r in rows])


def assert_matches(found: list[dict[str, str]], expected: list[dict], ids: list[str]) -> None:
    assert len(found) == len(expected) == len(ids)
    assert [r[next(iter(r))] for r in found] == ids  # the first column, in input order
    for row, want in zip(found, expected, strict=True):
        assert row["label"] == want["label_name"]
        for name in LABELS:
            assert float(row[name]) == pytest.approx(want["probabilities"][name], abs=1e-5)


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TUNELAB_DEBUG")}
    return subprocess.run(
        [str(PREDICT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_csv_through_the_cli_gives_one_row_per_input_row(ckpt, reviews, expected, tmp_path):
    csv_path, rows = reviews
    proc = cli([f"ckpt_path={ckpt}", f"input={csv_path}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # the default output: predictions.csv in the current directory; one summary line on stdout
    out = tmp_path / "predictions.csv"
    assert proc.stdout.splitlines() == [
        f"{N_ROWS} predictions for {csv_path} written to {out.name}"
    ]
    header, found = read_predictions(out)
    assert header == ["row", "label", *LABELS]  # the label names are the checkpoint's
    # 203 rows, not 204: the header is no text; probabilities as for the review texts, so
    # neither the label column nor the raw line was classified
    assert_matches(found, expected, [str(i) for i in range(N_ROWS)])
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temporary left
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_jsonl_and_parquet_read_their_text_column(predictor, reviews, expected, tmp_path):
    _, rows = reviews
    ids = [r["review_id"] for r in rows]
    jsonl = tmp_path / "reviews.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for r in rows:  # another text column name, chosen at predict time
            f.write(
                json.dumps({"verdict": r["verdict"], "body": r["review"], "id": r["review_id"]})
            )
            f.write("\n\n" if r["review_id"] == "r00010" else "\n")  # a blank line is no row
    result = predictor.file(jsonl, tmp_path / "j.csv", text_column="body", id_column="id")
    assert result.rows == N_ROWS
    header, found = read_predictions(tmp_path / "j.csv")
    assert header == ["id", "label", *LABELS]
    assert_matches(found, expected, ids)

    parquet = tmp_path / "reviews.parquet"
    # small row groups: the reader crosses their boundaries
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=50)
    predictor.file(parquet, tmp_path / "p.csv", id_column="review_id")
    _, found = read_predictions(tmp_path / "p.csv")
    assert_matches(found, expected, ids)


def test_txt_with_output_writes_line_indices(predictor, tmp_path):
    txt = tmp_path / "reviews.txt"
    txt.write_text("a wonderful film\n\nan awful script\n", encoding="utf-8")
    predictor.file(txt, tmp_path / "t.csv")
    _, found = read_predictions(tmp_path / "t.csv")
    assert [r["row"] for r in found] == ["0", "2"]  # 0-based line numbers, blank line skipped


def test_empty_text_is_refused_and_leaves_no_file(predictor, reviews, tmp_path):
    _, rows = reviews
    bad = [dict(r) for r in rows]
    bad[150]["review"] = ""
    path = write_csv(tmp_path / "bad.csv", bad)
    with pytest.raises(ValueError, match=r"bad\.csv, row 150 \(0-based\): the text is empty"):
        predictor.file(path, tmp_path / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_cli_errors_are_one_line_and_keep_existing_output(ckpt, reviews, tmp_path):
    csv_path, rows = reviews
    # missing text column: exit 2, one line naming the file, the column and the columns it has
    proc = cli([f"ckpt_path={ckpt}", f"input={csv_path}", "text_column=body"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {csv_path} has no column 'body' (its columns: verdict, review_id, stars, "
        "review); pass text_column=NAME with one of them"
    ]
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "mine.csv"
    existing.write_text("precious\n")
    args = [f"ckpt_path={ckpt}", f"input={csv_path}", f"output={existing}"]
    proc = cli(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: output={existing} exists; pass overwrite=true to replace it, or output=PATH"
    ]
    assert existing.read_text() == "precious\n"

    proc = cli([*args, "overwrite=true", "id_column=review_id"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, found = read_predictions(existing)
    assert [r["review_id"] for r in found] == [r["review_id"] for r in rows]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


def test_existing_output_refused_in_python(predictor, reviews, tmp_path):
    csv_path, _ = reviews
    out = tmp_path / "p.csv"
    out.write_text("x\n")
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        predictor.file(csv_path, out)
    assert predictor.file(csv_path, out, overwrite=True).rows == N_ROWS


def test_readers_yield_bounded_blocks(tmp_path):
    """Every reader hands over a block of rows at a time, however long the file (fast tier)."""
    n = 3 * BLOCK_ROWS + 5
    rows = [{"id": f"x{i}", "text": f"review number {i}"} for i in range(n)]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("t.csv", "t.jsonl", "t.parquet"):
        blocks = list(iter_table_texts(tmp_path / name, "text", "id"))
        assert len(blocks) > 1 and max(len(texts) for _, texts in blocks) <= BLOCK_ROWS, name
        assert [i for ids, _ in blocks for i in ids] == [r["id"] for r in rows], name
        assert [t for _, texts in blocks for t in texts] == [r["text"] for r in rows], name


MEMORY_SCRIPT = r"""
import json, resource, sys
from tunelab.predict import Predictor

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

ckpt, small, large, out = sys.argv[1:]
p = Predictor(ckpt, batch_size=512)
p.texts(["a warm-up text"] * 512)
base = peak_mb()
p.file(small, out + "/pred_small.csv")
after_small = peak_mb()
rows = p.file(large, out + "/pred_large.csv").rows
print(json.dumps({"base": base, "small": after_small, "large": peak_mb(), "rows": rows}))
"""


@pytest.mark.slow  # 167 s measured on 2 cores shared with other runs
def test_100k_rows_stream_in_bounded_memory(ckpt, tmp_path):
    """Peak RSS after 100,000 rows is that after 10,000: neither rows nor results are held.

    Holding the 100,000 result rows as :func:`predict` returns them takes 52 MB (measured).
    """

    def table(n: int, path: Path) -> Path:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["verdict", "review"])
            w.writerows(
                ("meh", f"a {'superb' if i % 3 else 'dull'} film, take {i}") for i in range(n)
            )
        return path

    small, large = table(10_000, tmp_path / "small.csv"), table(100_000, tmp_path / "large.csv")
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(ckpt), str(small), str(large), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    m = json.loads(proc.stdout.splitlines()[-1])
    assert m["rows"] == 100_000
    with open(tmp_path / "pred_large.csv", newline="") as f:
        assert sum(1 for _ in csv.reader(f)) == 100_001
    grew_small, grew_large = m["small"] - m["base"], m["large"] - m["base"]
    # 10x the rows, not 10x the memory: the 90,000 more rows add less than half of what holding
    # their results would (measured: +0 to +16 MB, the allocator's creep; no Python object kept)
    assert grew_large - grew_small < 24, m
