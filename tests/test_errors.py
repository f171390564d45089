"""Bad input and faults: one clear message, a non-zero exit code, nothing lost.

The battery runs the real console scripts (``python -m tunelab.train|evaluate|predict``) on bad
configs, bad data files, bad checkpoints, bad prediction inputs and bad resumes, all at once on
a process pool, and checks each: the exit code, a message naming the key or file, no traceback,
and what the output directory holds afterwards. Runtime faults (a diverging run, out of memory,
a full disk) and the debugging switches follow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tests.helpers import (
    FASHION_MNIST,
    REPO,
    compose_cfg,
    shared_data_dir,
    tiny_text_overrides,
)
from tunelab.checkpoint import load_checkpoint
from tunelab.cli import describe
from tunelab.validation import ConfigError, validate_config

# A tiny CNN on 8x8 grayscale images in 3 classes: trains in a second or two.
TINY_CNN = [
    "data=image_folder",
    "data.source=npz",
    "data.num_classes=3",
    "data.image_size=8",
    "data.in_channels=1",
    "data.mean=[0.5]",
    "data.std=[0.25]",
    "data.val_size=16",
    "data.batch_size=16",
    "model.net.channels=[4]",
    "model.net.hidden_size=8",
    "trainer.max_epochs=1",
    "logger=none",
]
ENTRY = {"train": "tunelab.train", "eval": "tunelab.evaluate", "predict": "tunelab.predict"}


def write_npz(path: Path, n: int = 96, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(n) % classes)
    return path


def tiny_cnn(npz: Path) -> list[str]:
    return [*TINY_CNN, f"data.path={npz}"]


def env_for(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TUNELAB_DEBUG")}
    env.update(
        TUNELAB_ROOT=str(root),
        TUNELAB_DATA_DIR=str(shared_data_dir()),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.update(extra)
    return env


def run_cli(entry: str, args: list[str], root: Path, env: dict[str, str] | None = None):
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", ENTRY[entry], *args],
        cwd=root,
        env=env or env_for(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root/outputs`` (eval runs included)."""
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir())


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- shared inputs ---------------------------------------------------------------------------


@dataclass
class Inputs:
    """What the cases build on: a finished tiny CNN run, the tiny BERT and the fixture CSVs."""

    cnn_run: Path
    npz: Path
    text: list[str]  # overrides for a tiny BERT run on the fixture CSV folder

    @property
    def best(self) -> Path:
        return self.cnn_run / "checkpoints" / "best.ckpt"

    def copy_run(self, dest: Path) -> Path:
        shutil.copytree(self.cnn_run, dest)
        return dest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir, sentiment_csv) -> Inputs:
    root = tmp_path_factory.mktemp("cnn-run")
    npz = write_npz(root / "images.npz")
    proc = run_cli("train", tiny_cnn(npz), root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(root)
    return Inputs(run, npz, tiny_text_overrides(tiny_bert_dir, sentiment_csv))


# --- the battery -----------------------------------------------------------------------------

Args = Callable[[Inputs, Path], list[str]]


@dataclass
class Case:
    """One bad input.

    Whatever the outcome, every file that existed before the command (data, earlier runs) is
    still there, byte for byte (logs may grow). ``outcome`` says what else must hold:
    ``failed``: one new run directory whose run_info.json says failed, with no checkpoint and no
    metrics.json; ``none``: no new run directory (the error came before one was made); ``kept``:
    likewise, for a resume of the case's run ``tmp/existing``; ``resumed_failed``: that run's
    run_info.json records the failed resume; ``new_dir_beside_existing``: ``failed``, in a new
    ``<timestamp>_N`` directory because ``<timestamp>`` was taken; ``unrecorded``: a new run
    directory without run_info.json (see the check).
    """

    id: str
    entry: str
    args: Args
    expect: tuple[str, ...]
    outcome: str = "failed"  # see the docstring
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def _csv(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _rows(*rows: tuple[str, str]) -> str:
    return "review,sentiment\n" + "".join(f"{t},{label}\n" for t, label in rows)


GOOD_ROWS = [(f"a fine film number {i}", "positive" if i % 2 else "negative") for i in range(12)]


def _text_file(name: str, content: Callable[[], str | bytes]) -> Args:
    return lambda inp, tmp: [*inp.text, f"data.path={_csv(tmp, name, content())}"]


def _image_folder(tmp: Path, corrupt: bool) -> Path:
    from PIL import Image

    root = tmp / "images"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 60 * c + i, np.uint8)).save(root / name / f"{i}.png")
    if corrupt:
        (root / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


def _images(tmp: Path, **kw) -> list[str]:
    return [
        "data=image_folder",
        "data.num_classes=2",
        "data.image_size=8",
        "data.in_channels=1",
        "data.mean=[0.5]",
        "data.std=[0.25]",
        "data.val_size=2",
        "logger=none",
        *[f"data.{k}={v}" for k, v in kw.items()],
    ]


def _truncated(src: Path, dest: Path) -> Path:
    data = src.read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _other_architecture(src: Path, dest: Path) -> Path:
    """A checkpoint whose stored config describes a wider network than its weights."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt["tunelab"]["model"]["net"]["channels"] = [6]
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dest)
    return dest


def _existing_run(inp: Inputs, tmp: Path) -> Path:
    return inp.copy_run(tmp / "existing")


def _existing_run_without_last(inp: Inputs, tmp: Path) -> Path:
    run = _existing_run(inp, tmp)
    (run / "checkpoints" / "last.ckpt").unlink()
    return run


def _existing_run_truncated_last(inp: Inputs, tmp: Path) -> Path:
    run = _existing_run(inp, tmp)
    last = run / "checkpoints" / "last.ckpt"
    _truncated(last, last)
    return run


def _future_run_dirs(inp: Inputs, tmp: Path) -> list[str]:
    """Occupy the run directories of the next minutes: the run must make a new one."""
    base = tmp / "outputs" / "cnn_fashion_mnist"
    now = time.time()
    for s in range(240):
        run = base / time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now + s))
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text('{"test/acc": 0.9}\n')
    return ["data.batch_size=0"]


CASES = [
    # ---- config: every problem at once, before anything heavy ----------------------------
    Case("batch_size_zero", "train", lambda i, t: ["data.batch_size=0"],
         ("data.batch_size=0", "positive integer")),
    Case("one_class", "train", lambda i, t: ["data.num_classes=1"],
         ("data.num_classes=1", "at least 2 classes")),
    Case("problems_reported_together", "train",
         lambda i, t: [*tiny_cnn(i.npz), "data.batch_size=0", "model.optimizer.lr=-1", "data.num_workers=two",
                       "trainer.max_epochs=0", "+data.batch_sizee=3",
                       "callbacks.model_checkpoint.monitor=val/accuracy"],
         ("6 config problems", "data.batch_size=0", "model.optimizer.lr=-1 must be a positive",
          "data.num_workers=two has the wrong type: ImageDataModule expects int",
          "trainer.max_epochs=0", "data.batch_sizee is not a setting",
          "did you mean data.batch_size",
          "callbacks.model_checkpoint.monitor=val/accuracy is not a metric",
          "did you mean val/acc")),
    Case("unknown_key_rejected_by_hydra", "train", lambda i, t: ["data.batch_sizee=3"],
         ("data.batch_sizee", "+data.batch_sizee"), outcome="none", code=1),
    Case("unknown_group_option", "train", lambda i, t: ["model=resnet"],
         ("model/resnet",), outcome="none", code=1),
    Case("required_values_missing", "train", lambda i, t: ["data=image_folder"],
         ("data.path is required",), outcome="unrecorded"),
    Case("max_length_beyond_positions", "train", lambda i, t: [*i.text, "data.max_length=1000"],
         ("data.max_length=1000", "128 positions")),
    Case("compile_without_compiler", "train",
         lambda i, t: [*tiny_cnn(i.npz), "accelerator.compile=true"],
         ("accelerator.compile=true", "C++ compiler"), env={"PATH": "/nonexistent", "CXX": ""}),
    Case("gpu_without_cuda", "train", lambda i, t: ["accelerator=gpu"],
         ("accelerator.accelerator=gpu", "accelerator=cpu"),
         skip="a CUDA GPU is present" if torch.cuda.is_available() else None),
    # ---- data: the file, and the line or row --------------------------------------------
    Case("data_path_missing", "train", lambda i, t: [*i.text, f"data.path={t / 'nope.csv'}"],
         ("data.path=", "nope.csv does not exist")),
    Case("empty_csv", "train", _text_file("train.csv", lambda: b""),
         ("train.csv is empty",)),
    Case("missing_text_column", "train",
         _text_file("train.csv", lambda: _rows(*GOOD_ROWS).replace("review,", "comment,", 1)),
         ("train.csv", "no text column 'review'", "data.text_column")),
    Case("label_out_of_range", "train",
         lambda i, t: [*_text_file("train.csv", lambda: _rows(
             *[(x, str(int(y == "positive"))) for x, y in GOOD_ROWS[:5]], ("odd one", "2"),
             *[(x, str(int(y == "positive"))) for x, y in GOOD_ROWS[5:]]))(i, t),
             "data.label_names=null", "data.num_classes=2"],
         ("train.csv, row 6", "label 2 is outside [0, 2)")),
    Case("unknown_label_name", "train",
         lambda i, t: [*_text_file("train.csv", lambda: _rows(*GOOD_ROWS[:2], ("so-so", "neutral"),
                                                 *GOOD_ROWS[2:]))(i, t),
             "data.label_names=[negative,positive]"],
         ("train.csv, row 3", "'neutral' is not one of the label names")),
    Case("non_utf8_text", "train",
         _text_file("train.csv", lambda: _rows(*GOOD_ROWS[:2]).encode()
                    + "caf\xe9 society,positive\n".encode("latin-1")
                    + _rows(*GOOD_ROWS[2:]).split("\n", 1)[1].encode()),
         ("train.csv, line 4", "not UTF-8", "data.decode_errors=replace")),
    Case("bad_json_line", "train",
         _text_file("train.jsonl", lambda: "".join(
             json.dumps({"review": x, "sentiment": y}) + "\n" for x, y in GOOD_ROWS[:2])
             + '{"review": "unterminated, "sentiment": "positive"}\n'
             + "".join(json.dumps({"review": x, "sentiment": y}) + "\n"
                       for x, y in GOOD_ROWS[2:])),
         ("train.jsonl, line 3", "not valid JSON")),
    Case("parquet_without_label_column", "train",
         lambda i, t: [*i.text, f"data.path={_parquet(t)}"],
         ("train.parquet", "no label column 'sentiment'", "data.label_column")),
    Case("one_class_in_train", "train",
         _text_file("train.csv", lambda: _rows(*[(x, "positive") for x, _ in GOOD_ROWS])),
         ("train.csv (train split) has one class only", "'positive'")),
    Case("empty_image_folder", "train",
         lambda i, t: _images(t, path=_mkdir(t / "empty")),
         ("empty has no class subfolders",)),
    Case("corrupt_image", "train",
         lambda i, t: _images(t, path=_image_folder(t, corrupt=True)),
         ("cannot read image", "dog/2.png")),
    Case("aclimdb_missing_folder", "train",
         lambda i, t: [*i.text, "data.source=aclimdb", f"data.path={_aclimdb(t)}"],
         ("IMDB folder", "test/neg is missing")),
    # ---- checkpoints: which and why -------------------------------------------------------
    Case("eval_truncated_checkpoint", "eval",
         lambda i, t: [f"ckpt_path={_truncated(i.best, t / 'half.ckpt')}", "logger=none"],
         ("half.ckpt is truncated or corrupt",)),
    Case("eval_text_file_as_checkpoint", "eval",
         lambda i, t: [f"ckpt_path={_csv(t, 'notes.ckpt', 'my best run')}", "logger=none"],
         ("notes.ckpt is not a PyTorch checkpoint",)),
    Case("eval_other_architecture", "eval",
         lambda i, t: [f"ckpt_path={_other_architecture(i.best, t / 'other.ckpt')}",
                       "logger=none"],
         ("other.ckpt does not match the model", "shape differs", "net.features.0.weight")),
    Case("train_from_other_architecture", "train",
         lambda i, t: [*tiny_cnn(i.npz), f"ckpt_path={i.best}", "model.net.channels=[6]"],
         ("does not fit the model", "model.net.channels: checkpoint [4], now [6]")),
    # a ??? left unset is a config error before anything is recorded, as for train
    Case("eval_without_ckpt_path", "eval", lambda i, t: ["logger=none"],
         ("ckpt_path is required",), outcome="unrecorded"),
    # ---- prediction inputs --------------------------------------------------------------
    Case("predict_missing_input", "predict",
         lambda i, t: [f"ckpt_path={i.best}", f"input={t / 'shoe.png'}"],
         ("shoe.png does not exist",), outcome="none"),
    Case("predict_corrupt_image", "predict",
         lambda i, t: [f"ckpt_path={i.best}",
                       f"input={_csv(t, 'shoe.png', b'GIF89a not really')}"],
         ("cannot read image", "shoe.png"), outcome="none"),
    Case("predict_text_with_image_model", "predict",
         lambda i, t: [f"ckpt_path={i.best}", "text=a lovely film"],
         ("image model",), outcome="none"),
    # ---- resume ---------------------------------------------------------------------------
    Case("resume_not_a_run", "train", lambda i, t: [f"resume={_mkdir(t / 'somewhere')}"],
         ("not a tunelab run directory",), outcome="none"),
    Case("resume_changing_a_group", "train",
         lambda i, t: [f"resume={_existing_run(i, t)}", "model=bert_hf"],
         ("keeps the run's config groups",), outcome="kept"),
    Case("resume_truncated_last_checkpoint", "train",
         lambda i, t: [f"resume={_existing_run_truncated_last(i, t)}"],
         ("last.ckpt is truncated or corrupt",), outcome="resumed_failed"),
    # ---- an existing run directory is never reused ------------------------------------
    Case("existing_run_dirs_untouched", "train", _future_run_dirs,
         ("data.batch_size=0",), outcome="new_dir_beside_existing"),
]  # fmt: skip


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _parquet(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _mkdir(tmp / "pq")
    texts = [x for x, _ in GOOD_ROWS]
    pq.write_table(pa.table({"review": texts, "label": [1] * len(texts)}), folder / "train.parquet")
    return folder / "train.parquet"


def _aclimdb(tmp: Path) -> Path:
    root = tmp / "aclImdb"
    for polarity in ("pos", "neg"):
        _mkdir(root / "train" / polarity)
        (root / "train" / polarity / "0_7.txt").write_text(f"a {polarity} review")
    _mkdir(root / "test" / "pos")
    return root


# Runtime faults and debugging switches, run on the same pool as the battery.
SPECIAL: dict[str, tuple[str, Args, dict[str, str]]] = {
    "nan_loss": (
        "train",
        lambda i, t: [
            *tiny_cnn(i.npz),
            "model.optimizer.lr=1e30",  # diverges for real: NaN from the second step on
            "model.scheduler.warmup_ratio=0.0",
            "callbacks.last_checkpoint.every_n_train_steps=1",
        ],
        {},
    ),
    "out_of_memory": (
        "train",
        lambda i, t: [*tiny_cnn(i.npz), "+callbacks.oom._target_=tests.test_errors.OutOfMemoryAt"],
        {},
    ),
    "internal_bug": (
        "train",
        lambda i, t: [*tiny_cnn(i.npz), "+callbacks.bug._target_=tests.test_errors.BugAt"],
        {},
    ),
    "hydra_full_error": ("train", lambda i, t: ["data.batch_size=0"], {"HYDRA_FULL_ERROR": "1"}),
}


class OutOfMemoryAt(L.Callback):
    """Fails the second training batch as a GPU that ran out of memory would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class BugAt(L.Callback):
    """A programming error in the second training batch (not the user's fault)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            {}["missing"]  # noqa: B018 - the bug


@dataclass
class Result:
    tmp: Path
    proc: subprocess.CompletedProcess
    before: dict[str, str]  # every file under tmp before the command ran

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr


@pytest.fixture(scope="module")
def battery(request, inputs, tmp_path_factory) -> dict[str, Future]:
    """Start every selected command at once; each test waits for its own."""
    wanted = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        if hasattr(item, "callspec") and "case" in item.callspec.params:
            wanted.add(item.callspec.params["case"].id)
        wanted |= {k for k in SPECIAL if item.originalname == f"test_{k}"}
    root = tmp_path_factory.mktemp("battery")
    # One more command than cores: a process waiting on its disk lets another compute.
    pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1)
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))

    def launch(name: str, entry: str, args: Args, env: dict[str, str]) -> Result:
        tmp = _mkdir(root / name)
        argv = args(inputs, tmp)
        before = digest(tmp)
        proc = run_cli(entry, argv, tmp, env_for(tmp, **env))
        (tmp.parent / f"{name}.log").write_text(f"{argv}\n{proc.stdout}\n{proc.stderr}")
        return Result(tmp, proc, before)

    runs = {c.id: (c.entry, c.args, c.env) for c in CASES if not c.skip}
    runs.update(SPECIAL)
    return {k: pool.submit(launch, k, *v) for k, v in runs.items() if k in wanted}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, battery):
    if case.skip:
        pytest.skip(case.skip)
    res: Result = battery[case.id].result()
    proc = res.proc
    assert proc.returncode == case.code, res.output[-3000:]
    assert "Traceback" not in res.output
    for text in case.expect:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr[-3000:]}"
    if case.code == 2:  # tunelab's own report: one message
        reports = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(reports) == 1, proc.stderr[-3000:]
    _check_outcome(case, res)


def _check_outcome(case: Case, res: Result) -> None:
    tmp = res.tmp
    after = digest(tmp)
    changed = {"existing/run_info.json"} if case.outcome == "resumed_failed" else set()
    for name, sha in res.before.items():
        if name in changed:
            continue
        assert name in after, f"{name} was removed"
        if name.endswith(".log"):  # a resume appends to the run's log
            continue
        assert after[name] == sha, f"{name} was modified"
    new_runs = [
        p
        for p in run_dirs(tmp)
        if not any(f.startswith(f"{p.relative_to(tmp)}/") for f in res.before)
    ]
    if case.outcome in ("none", "kept", "resumed_failed"):
        assert new_runs == []
    elif case.outcome == "unrecorded":
        # Resolving the config for run_info.json fails when an interpolation refers to a
        # required (???) value, so no record is written; nothing else is either.
        (run,) = new_runs
        assert not (run / "run_info.json").exists()
        assert not list(run.rglob("*.ckpt")) and not (run / "metrics.json").exists()
    else:
        (run,) = new_runs
        _assert_failed_run(run, case)
    if case.outcome == "resumed_failed":
        info = json.loads((tmp / "existing" / "run_info.json").read_text())
        assert info["status"] == "failed" and "truncated" in info["error"]
        assert len(info["resumes"]) == 1
    if case.outcome == "new_dir_beside_existing":
        assert run.parent == tmp / "outputs" / "cnn_fashion_mnist"
        assert run.name.rsplit("_", 1)[-1].isdigit()  # <timestamp>_N: the timestamp was taken


def _assert_failed_run(run: Path, case: Case) -> None:
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed", info.get("status")
    assert case.expect[0].split("=")[0].split(" ")[0] in info["error"]
    assert not list(run.rglob("*.ckpt")), "a failed run left a checkpoint"
    assert not (run / "metrics.json").exists()


def test_battery_is_big_enough():
    assert len(CASES) >= 25
    assert {c.entry for c in CASES} == {"train", "eval", "predict"}


# --- runtime faults ----------------------------------------------------------------------------


def _single_new_run(res: Result) -> Path:
    (run,) = run_dirs(res.tmp)
    return run


def test_nan_loss(battery):
    """A real diverging run stops at the first NaN loss and keeps the last good checkpoint."""
    import re

    res: Result = battery["nan_loss"].result()
    assert res.proc.returncode == 1, res.output[-3000:]
    assert "Traceback" not in res.output
    found = re.search(
        r"error: the training loss is (nan|inf|-inf) at step (\d+) \(epoch 0, batch (\d+)\)",
        res.proc.stderr,
    )
    assert found, res.proc.stderr[-3000:]
    step, batch = int(found.group(2)), int(found.group(3))
    assert batch == step - 1  # one optimizer step per batch
    assert "model.optimizer.lr" in res.proc.stderr and "resume=" in res.proc.stderr
    run = _single_new_run(res)
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed" and "NonFiniteLossError" in info["error"]
    assert not (run / "metrics.json").exists()
    # last.ckpt is the one written before the NaN step, intact, loadable and finite.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == step - 1 >= 1
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_out_of_memory(battery):
    res: Result = battery["out_of_memory"].result()
    assert res.proc.returncode == 1, res.output[-3000:]
    assert "Traceback" not in res.output
    err = res.proc.stderr
    assert "error: out of memory while training (step 1, batch 1)" in err, err[-3000:]
    assert "data.batch_size=16: try data.batch_size=8" in err
    run = _single_new_run(res)
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "failed" and "OutOfMemoryError" in info["error"]
    assert not (run / "metrics.json").exists()


def test_internal_bug(battery):
    """A bug is not dressed up as a user error: its traceback shows."""
    res: Result = battery["internal_bug"].result()
    assert res.proc.returncode == 1
    assert "Traceback" in res.proc.stderr and "KeyError" in res.proc.stderr
    assert "error: " not in res.proc.stderr
    info = json.loads((_single_new_run(res) / "run_info.json").read_text())
    assert info["status"] == "failed" and "KeyError" in info["error"]


def test_hydra_full_error(battery):
    res: Result = battery["hydra_full_error"].result()
    assert res.proc.returncode == 1
    assert "Traceback" in res.proc.stderr
    assert "ConfigError" in res.proc.stderr and "data.batch_size=0" in res.proc.stderr


def test_tunelab_debug_shows_the_traceback(monkeypatch):
    from tunelab.cli import run_cli as wrap

    def main():
        raise ConfigError(["data.batch_size=0 must be a positive integer"])

    with pytest.raises(SystemExit) as done:
        wrap(main)
    assert done.value.code == 2
    monkeypatch.setenv("TUNELAB_DEBUG", "1")
    with pytest.raises(ConfigError):
        wrap(main)


def _enospc_save(monkeypatch, fail_at: int) -> list[int]:
    """Make the ``fail_at``-th torch.save write half a file, then fail as a full disk does."""
    calls = [0]
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < fail_at:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from tunelab.utils.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()
    _enospc_save(monkeypatch, fail_at=1)
    with pytest.raises(OSError) as info:
        io.save_checkpoint({"global_step": 2}, path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_disk_full_during_a_run(tmp_path, monkeypatch):
    """A real run whose third checkpoint save hits a full disk: the second is kept intact."""
    from tunelab.train import train

    npz = write_npz(tmp_path / "images.npz")
    cfg = compose_cfg(
        "train",
        [*tiny_cnn(npz), "callbacks.last_checkpoint.every_n_train_steps=1"],
        tmp_path / "run",
    )
    calls = _enospc_save(monkeypatch, fail_at=3)
    with pytest.raises(OSError) as info:
        train(cfg)
    assert calls[0] == 3
    message, code = describe(info.value)
    assert code == 1 and "no space left" in message and "resume=" in message
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"]  # no temporary file left
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 2
    run_info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert run_info["status"] == "failed" and "No space left" in run_info["error"]


def test_hf_export_failure_keeps_the_previous_export(tmp_path, tiny_bert_dir, monkeypatch):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from tunelab.models.text_classifier import TextClassifier
    from tunelab.models.text_nets import HFSequenceClassifier

    net = HFSequenceClassifier(str(tiny_bert_dir), num_classes=2, load_weights=False)
    model = TextClassifier(net, num_classes=2, optimizer=torch.optim.AdamW)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    out = tmp_path / "hf_model"
    model.export_pretrained(out, SimpleNamespace(tokenizer=tokenizer))
    before = digest(out)
    assert "config.json" in before

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tokenizer, "save_pretrained", full_disk)
    with pytest.raises(OSError):
        model.export_pretrained(out, SimpleNamespace(tokenizer=tokenizer))
    assert digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf_model"]  # no half export beside it


# --- data checks in process ----------------------------------------------------------------


def test_decode_errors_replace_counts(tmp_path, caplog):
    from tunelab.data.text_sources import read_aclimdb, read_table_files

    csv = tmp_path / "reviews.csv"
    csv.write_bytes(
        b"text,label\n"
        + "caf\xe9 society,1\n".encode("latin-1")
        + b"fine film,0\n"
        + "na\xefve and cr\xe8me,1\n".encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"reviews.csv, line 2: not UTF-8"):
        read_table_files(csv, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("WARNING"):
        splits, _ = read_table_files(
            csv, cache_dir=str(tmp_path / "cache"), decode_errors="replace"
        )
    assert splits["train"]["text"] == [
        "caf\ufffd society",
        "fine film",
        "na\ufffdve and cr\ufffdme",
    ]
    assert "replaced 3 undecodable byte sequence(s) with U+FFFD on 2 line(s), first on line 2" in (
        caplog.text
    )
    assert csv.read_bytes().count(b"\xe9") == 1  # the user's file is left as it was

    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for polarity in ("pos", "neg"):
            (root / split / polarity).mkdir(parents=True)
            (root / split / polarity / "0_1.txt").write_bytes(b"ok review")
    (root / "test" / "pos" / "1_9.txt").write_bytes(b"line one\nbad \xff byte")
    with pytest.raises(ValueError, match=r"1_9.txt, line 2: not UTF-8"):
        read_aclimdb(root)
    caplog.clear()
    with caplog.at_level("WARNING"):
        texts = read_aclimdb(root, decode_errors="replace")["test"]["text"]
    assert "line one\nbad \ufffd byte" in texts
    assert "replaced 1 undecodable byte sequence(s) with U+FFFD in 1 file(s)" in caplog.text


def test_train_test_duplicates_warn_with_counts(tmp_path, tiny_bert_dir, caplog):
    from tunelab.data.text_datamodule import TextDataModule

    train = [(f"distinct review number {i}", i % 2) for i in range(40)]
    test = [*train[:3], *[(f"unseen review {i}", i % 2) for i in range(7)]]
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.csv").write_text(
            "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)
        )
    dm = TextDataModule(
        tokenizer=str(tiny_bert_dir),
        source="files",
        path=str(tmp_path),
        label_names=None,
        max_length=16,
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level("WARNING"):
        dm.setup()  # a warning, not an error
    assert "3 of 10 test texts also appear in the train split" in caplog.text


def test_bf16_on_a_gpu_without_it_is_a_config_error(compose_train, monkeypatch):
    cfg = compose_train("accelerator=gpu", "accelerator.compile=false")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.problems == [
        "accelerator.precision=bf16-mixed but the GPU (Tesla T4) has no bf16 support; set "
        "accelerator.precision=16-mixed or accelerator.precision=32-true"
    ]


def test_offline_hub_model_not_cached_is_a_config_error(compose_train, monkeypatch):
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained("bert-base-uncased", local_files_only=True)
        pytest.skip("bert-base-uncased is in this machine's Hugging Face cache")
    except OSError:
        pass
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        validate_config(compose_train("experiment=bert_imdb"))
    assert info.value.problems[0].startswith(
        "model.net.pretrained=bert-base-uncased is not in the Hugging Face cache and "
        "HF_HUB_OFFLINE=1 forbids downloading it"
    )


def test_every_experiment_validates(compose_train, tiny_bert_dir, tmp_path):
    """No false alarms: the shipped configs pass (hub models and data replaced by local ones)."""
    npz = write_npz(tmp_path / "cifar.npz")
    for name in ("cnn_fashion_mnist", "cnn_cifar10", "bert_embedded", "bert_imdb"):
        extra = []
        if name == "cnn_fashion_mnist" and not FASHION_MNIST.is_dir():
            continue
        if name == "cnn_cifar10":
            extra = ["data.source=npz", f"data.path={npz}"]
        if name.startswith("bert"):
            extra = [f"model.net.pretrained={tiny_bert_dir}", "data.max_length=128"]
        validate_config(compose_train(f"experiment={name}", *extra))


def test_describe_tells_user_errors_from_bugs(tmp_path):
    from hydra.errors import InstantiationException

    from tunelab.checkpoint import load_checkpoint as load

    with pytest.raises(ValueError) as mine:
        load(tmp_path)  # a folder: tunelab's own ValueError
    assert describe(mine.value) == (str(mine.value), 2)
    with pytest.raises(ValueError) as numpys:
        np.zeros(2).reshape(3)  # a ValueError from a library: a bug, keep the traceback
    assert describe(numpys.value) is None
    assert describe(KeyError("x")) is None
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = mine.value
    assert describe(wrapped) == (str(mine.value), 2)


def test_config_error_survives_pickling():
    import pickle

    from tunelab.validation import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError(["data.batch_size=0 must be > 0", "b"])))
    assert err.problems == ["data.batch_size=0 must be > 0", "b"]
    assert str(err).startswith("2 config problems")
