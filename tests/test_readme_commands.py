"""Every ``tunelab-*`` command that README.md shows runs, through the real console scripts.

The commands are read from the README's code blocks at test time, so a command added to the
README is tested without anyone writing a test for it. Each runs as shown, with a step limit
added (a few training and evaluation batches, two sweep trials), on the real embedded data;
its placeholders (``<run>``, ``DIR``, ``reviews.csv``, ``shoe.png``, ...) are replaced by real
runs and files made here, unlike the defaults (a header and an extra column, label names no
config knows, odd image sizes). A command must exit 0, except an error example the README
prints the error of, which must fail with exactly that one-line-per-problem error.

Commands that need what this machine may lack (a GPU, the Hugging Face hub, a SLURM cluster)
skip with the reason; the tests of those paths (tests/slurm, the gpu marker) cover them.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, needs_fashion_mnist, sentiment_rows, shared_data_dir

BIN = Path(sys.executable).parent
# Added to the environment of each command when it runs (a cluster started by tests/slurm
# exports its SLURM_CONF after this module is imported).
ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "CI": "1",
    "TUNELAB_DATA_DIR": str(shared_data_dir()),
}
LIMITS = [
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "++trainer.num_sanity_val_steps=0",
]
# Encoders that only the hub has (the embedded one is minilm).
HUB = re.compile(r"experiment=(bert_imdb|cnn_cifar10)|encoder=(distilbert|bert_base|roberta)")


def readme_commands() -> list[tuple[list[str], bool]]:
    """``(argv, shown failing)`` of each ``tunelab-*`` line in README.md's code blocks; a line
    shown after ``$ `` with ``error:`` output below it is an error example."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.S | re.M):
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            line = line.strip()
            prompt = line.startswith("$ ")
            line = line.removeprefix("$ ")
            if line.startswith("tunelab-"):
                shown_failing = prompt and any(x.startswith("error:") for x in lines[i + 1 : i + 3])
                out.append((shlex.split(line, comments=True), shown_failing))
    return out


COMMANDS = readme_commands()


def _needs(argv: list[str]) -> str | None:
    """Why a command cannot run on this machine, or None."""
    line = " ".join(argv)
    if "accelerator=gpu" in line or "slurm_gpu" in line:
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA GPU"
    if HUB.search(line) and os.environ.get("HF_HUB_OFFLINE", "1") != "0":
        return "needs the Hugging Face hub (offline here)"
    if "hydra/launcher=slurm" in line and not _slurm_up():
        return "needs a running SLURM cluster (tests/slurm starts a local one for the launcher)"
    return None


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    argv = [str(BIN / argv[0]), *argv[1:]]
    env = {**os.environ, **ENV}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def _train(cwd: Path, *overrides: str) -> Path:
    proc = _run(["tunelab-train", *overrides, *LIMITS, f"paths.root_dir={cwd}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"run directory: (\S+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return Path(match.group(1))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The runs and files the README's placeholders stand for."""
    root = tmp_path_factory.mktemp("readme")
    made: dict[str, Path] = {
        "cnn": _train(root, "trainer.max_epochs=1"),
        "text": _train(root, "experiment=bert_embedded", "trainer.max_epochs=1"),
    }
    folder = root / "DIR"  # five classes of odd-sized RGB images, no test/ split
    rng = np.random.default_rng(0)
    for c in range(5):
        (folder / f"kind_{c}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 50, (45, 37, 3)) + 40 * c
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"kind_{c}" / f"{i}.png")
    made["DIR"] = folder
    made["images.npz"] = root / "images.npz"  # (N, H, W, C) uint8, ten classes
    x = rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8)
    np.savez(made["images.npz"], x=x, y=np.arange(100) % 10)
    made["reviews.csv"] = root / "reviews.csv"
    with open(made["reviews.csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["review", "stars", "sentiment"])
        for text, label in sentiment_rows(203, seed=5):
            w.writerow([text, 5 if label == "rave" else 1, f"thumbs {label}"])
    made["reviews.txt"] = root / "reviews.txt"
    made["reviews.txt"].write_text("A gripping, moving film.\n\nDull and far too long.\n")
    made["shoe.png"] = root / "shoe.png"
    Image.fromarray(rng.integers(0, 255, (31, 29), dtype=np.uint8)).save(made["shoe.png"])
    made["root"] = root
    return made


def _substitute(argv: list[str], world: dict[str, Path], cwd: Path) -> list[str]:
    """The command with its placeholders replaced by the runs and files of ``world``."""
    text_input = any(a.startswith("text=") or a.endswith((".txt", ".csv")) for a in argv)
    resumes = any(a.startswith("resume=") for a in argv)
    cnn = world["cnn"]
    if resumes or argv[0] == "tunelab-reproduce":  # they write into the run: a copy each
        cnn = cwd / "copied-run"
        shutil.copytree(world["cnn"], cnn)
    text = world["text"]
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        value = value if sep else arg
        value = value.replace("outputs/bert_embedded/<run>", str(text))
        value = value.replace("outputs/cnn_fashion_mnist/<run>", str(cnn))
        value = value.replace("outputs/<...>/<run>", str(cnn))
        value = value.replace("outputs/<...>", str(cnn))
        if value == "...":
            value = str(cnn / "checkpoints" / "best.ckpt")
        if value == ".../best.ckpt":
            value = str((text if text_input else cnn) / "checkpoints" / "best.ckpt")
        if value in world:
            value = str(world[value])
        value = value.replace("/shared/", f"{cwd}/shared/")
        out.append(f"{key}={value}" if sep else value)
    return out


def _with_limits(argv: list[str], cwd: Path) -> list[str]:
    tool, args = argv[0], argv[1:]
    if tool == "tunelab-train" and "--cfg" not in args:
        extra = [*LIMITS, f"paths.root_dir={cwd}"]
        if not any(a.startswith("trainer.max_epochs=") for a in args):
            extra.append("++trainer.max_epochs=1")
        if "hydra/launcher=slurm" in args:  # jobs sized to the local test cluster's one node
            extra += ["hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
        if any(a.startswith("hparams_search=") for a in args):  # two trials of a sweep
            args = [a for a in args if not a.startswith("hydra.sweeper.n_trials=")]
            extra.append("hydra.sweeper.n_trials=2")
        return [tool, *args, *extra]
    if tool == "tunelab-eval":
        return [tool, *args, "++trainer.limit_test_batches=1", f"paths.root_dir={cwd}"]
    return argv


@needs_fashion_mnist
@pytest.mark.parametrize(
    "argv, shown_failing", COMMANDS, ids=[" ".join(c)[:80] for c, _ in COMMANDS]
)
def test_readme_command(argv, shown_failing, world, tmp_path):
    why = _needs(argv)
    if why:
        pytest.skip(why)
    command = _with_limits(_substitute(argv, world, tmp_path), tmp_path)
    proc = _run(command, tmp_path)
    if shown_failing:  # the README's error example: the errors it shows, one line each
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
        return
    assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr
