"""Run files get the modes the user's umask gives (0644 and 0755 under umask 022).

A real ``tunelab-train`` run (tiny LoRA text model: checkpoints, both Hugging Face exports,
reports, logs, Hydra's own files) under two umasks; every file and folder of its run directory
is checked. Files written through a temporary file (``tempfile.mkstemp``) used to be 0600:
colleagues on a shared cluster could not read a run.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import shared_data_dir, tiny_text_overrides

BIN = Path(sys.executable).parent


def _modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of every file and folder under ``root`` (root too)."""
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            modes[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_run_files_follow_the_umask(umask, tiny_bert_dir, sentiment_csv, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        str(BIN / "tunelab-train"),
        *tiny_text_overrides(tiny_bert_dir, sentiment_csv),
        "model.peft=lora",  # hf_model/ (merged) and hf_adapter/ (peft) both exported
        "logger=csv",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "TUNELAB_ROOT": str(tmp_path), "TUNELAB_DATA_DIR": str(shared_data_dir())}
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),  # the child's umask only
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    modes = _modes(run_dir)
    for must in (
        "metrics.json",
        "run_info.json",
        "checkpoints/best.ckpt",
        "hf_model/model.safetensors",
        "hf_adapter/adapter_model.safetensors",
        "confusion_matrix.png",
    ):
        assert must in modes, sorted(modes)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    wrong = {
        path: oct(mode)
        for path, mode in modes.items()
        if mode != (dir_mode if (run_dir / path).is_dir() else file_mode)
    }
    assert not wrong, f"expected files {oct(file_mode)}, folders {oct(dir_mode)}: {wrong}"
