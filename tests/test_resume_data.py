"""``resume=RUN`` on data that changed since the run: refused, with the run untouched, unless
``resume_allow_data_change=true``, which records both fingerprints."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import sentiment_rows

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CI": "1"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "tunelab-train"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment", "lang"])
        w.writerows((t, y, "en") for t, y in rows)


def _hashes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_resume_refuses_changed_data_unless_allowed(tmp_path, tiny_bert_dir):
    data = tmp_path / "reviews.csv"
    rows = sentiment_rows(157, seed=4)
    _write(data, rows)
    proc = _cli(
        "experiment=bert_embedded",
        "data=text_files",
        f"data.path={data}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.max_length=32",
        f"model.net.pretrained={tiny_bert_dir}",
        "trainer.max_epochs=1",
        "logger=none",
        f"paths.root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in tmp_path.glob("outputs/*/*") if (p / "run_info.json").is_file()]
    recorded = json.loads((run / "run_info.json").read_text())["data"]["fingerprint"]

    _write(data, [(t + " indeed", y) for t, y in rows])  # the same file, other content
    before = _hashes(run)
    proc = _cli(f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and recorded in line and "resume_allow_data_change" in line
    assert _hashes(run) == before  # the refused resume changed nothing in the run

    proc = _cli(
        f"resume={run}", "trainer.max_epochs=2", "resume_allow_data_change=true", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed"
    assert info["resume_data_change"]["recorded"] == recorded
    assert info["resume_data_change"]["now"] == info["data"]["fingerprint"] != recorded
