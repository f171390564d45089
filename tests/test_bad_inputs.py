"""Bad inputs and faults of issue 17 through the real console scripts (``.venv/bin/tunelab-*``).

Each case runs one command on files it writes and checks: the exit code (2: the user's to fix,
1: a fault), one ``error: ...`` line on stderr that names the cause (file, key or resource) and
the fix, no traceback, and that every file that existed before is unchanged, byte for byte
(unless the case says which files the command may rewrite: a damaged cache it recovers). All
commands run at once on a small pool, as in tests/test_errors.py, whose helpers they share.

Read-only folders and a full disk are real: a read-only bind mount and a 1 MB tmpfs where the
tests run as root (there ``chmod`` does not stop writes), ``chmod 0555`` otherwise; a
file-size limit (``RLIMIT_FSIZE``, which needs no privilege) fails the checkpoint write with
``EFBIG`` through the same torch path as a full disk does (``RuntimeError: unexpected pos``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import sentiment_rows
from tests.test_errors import TINY_CNN, digest, env_for, run_dirs, tiny_cnn, write_npz

BIN = Path(sys.executable).parent
SCRIPTS = {e: BIN / f"tunelab-{e}" for e in ("train", "eval", "predict", "reproduce")}
pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in SCRIPTS.values()), reason="tunelab console scripts not installed"
)
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
# A CNN whose checkpoint (~6 MB with its optimizer state) does not fit the 1 MB limits below.
BIG_CNN = ["model.net.hidden_size=2048", "model.net.channels=[16]"]
LIMIT = 1 << 20


def cli(
    entry: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    fsize: int | None = None,
) -> subprocess.CompletedProcess:
    """Run ``tunelab-<entry> args`` in ``cwd`` (optionally under a file-size limit)."""
    cmd = [str(SCRIPTS[entry]), *args]
    if fsize is not None:  # exec the script under RLIMIT_FSIZE (preexec_fn is unsafe in threads)
        setlimit = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        cmd = [sys.executable, "-c", setlimit, *cmd]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        cmd, cwd=cwd, env=env or env_for(cwd), capture_output=True, timeout=600, check=False
    )


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 69-byte PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


# --- shared inputs -----------------------------------------------------------------------------
@dataclass
class Inputs:
    cnn_run: Path  # a finished tiny CNN run
    npz: Path
    text: list[str]  # overrides of a tiny BERT run on a small CSV
    mounts: list[Path] = field(default_factory=list)  # read-only / tmpfs mounts to undo

    @property
    def ckpt(self) -> Path:
        return self.cnn_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def inputs(request, tmp_path_factory, tiny_bert_dir) -> Inputs:
    root = tmp_path_factory.mktemp("bad-inputs")
    npz = write_npz(root / "images.npz")
    proc = cli("train", tiny_cnn(npz), root / "cnn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(root / "cnn")
    csv = root / "reviews.csv"
    csv.write_text(
        "review,sentiment\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(64)),
        encoding="utf-8",
    )
    text = [
        "experiment=bert_embedded",
        "model=bert_hf",
        f"model.net.pretrained={tiny_bert_dir}",
        "data=text_files",
        f"data.path={csv}",
        "data.text_column=review",
        "data.label_column=sentiment",
        "data.max_length=32",
        "data.batch_size=16",
        "+trainer.max_steps=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "logger=none",
    ]
    inp = Inputs(run, npz, text)
    request.addfinalizer(lambda: [_umount(m) for m in reversed(inp.mounts)])
    return inp


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _read_only(inp: Inputs, folder: Path) -> Path:
    """Make ``folder`` read-only for the command: a read-only bind mount as root, else chmod."""
    folder.mkdir(parents=True, exist_ok=True)
    if not ROOT:
        folder.chmod(0o555)
        return folder
    for cmd in (["mount", "--bind", folder, folder], ["mount", "-o", "remount,bind,ro", folder]):
        if subprocess.run([str(c) for c in cmd], capture_output=True).returncode:
            pytest.skip("root without the right to mount a read-only folder")
        if cmd[1] == "--bind":
            inp.mounts.append(folder)
    return folder


def _small_disk(inp: Inputs, folder: Path) -> Path:
    """A 1 MB tmpfs at ``folder`` (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={LIMIT}", "tmpfs", str(folder)]
    if subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    inp.mounts.append(folder)
    return folder


# --- the cases ---------------------------------------------------------------------------------
Args = Callable[[Inputs, Path], list[str]]


@dataclass
class Case:
    """One bad input. ``outcome``: ``none``: no new run directory; ``failed``: one, recorded
    failed, with no checkpoint and no metrics; ``kept``: the run ``tmp/existing`` is unchanged
    and nothing was made beside it; ``done``: the command succeeded (a recovered fault)."""

    id: str
    entry: str
    args: Args
    expect: tuple[str, ...]
    code: int = 2
    outcome: str = "none"
    may_change: tuple[str, ...] = ()  # files the command may rewrite (a damaged cache)
    warns: tuple[str, ...] = ()  # what the log must say, for a recovered fault
    fsize: int | None = None
    needs_root: bool = False


def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    np.savez(tmp / "bad.npz", **arrays)
    return tmp / "bad.npz"


def _images(n: int = 96) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def _labels(n: int = 96) -> np.ndarray:
    return np.arange(n) % 3


def _nan_pixel(tmp: Path) -> Path:
    x = _images().astype(np.float32) / 255.0
    x[5, 2, 3] = np.nan
    return _npz(tmp, x_train=x, y_train=_labels())


def _object_images(tmp: Path, key: str = "x_train") -> Path:
    x = np.empty(96, dtype=object)
    x[:] = list(_images())
    return _npz(tmp, **{key: x, "y_train": _labels()})


def _bomb_folder(tmp: Path) -> Path:
    from PIL import Image

    root = tmp / "images"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 60 * c + i, np.uint8)).save(root / name / f"{i}.png")
    bomb_png(root / "dog" / "huge.png")
    return root


def _existing(inp: Inputs, tmp: Path, damage: str, content: str) -> Path:
    run = shutil.copytree(inp.cnn_run, tmp / "existing")
    (run / damage).write_text(content)
    return run


def _cached_texts(inp: Inputs, tmp: Path) -> list[str]:
    """The tiny BERT run's overrides with a tokenization cache that a run filled and then
    was cut short (every cache file truncated)."""
    args = [*inp.text, f"data.cache_dir={tmp / 'cache'}"]
    first = cli("train", args, tmp / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted((tmp / "cache" / "tokenized").glob("*.arrow"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:300])
    shutil.rmtree(tmp / "first")
    return args


def _jsonl(tmp: Path, bad_line: str) -> Path:
    rows = [json.dumps({"review": t, "sentiment": y}) for t, y in sentiment_rows(24)]
    path = tmp / "train.jsonl"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*rows[:4], bad_line, *rows[4:]]) + "\n", encoding="utf-8")
    return path


def _text(inp: Inputs, **data: object) -> list[str]:
    return [*inp.text, *[f"data.{k}={v}" for k, v in data.items()]]


def _cnn(tmp: Path, npz: Path, *extra: str) -> list[str]:
    return [*tiny_cnn(npz), *extra]


HALF_JSON = '{"status": "comp'
SWEEP = ["-m", "hparams_search=cnn_optuna", "hydra.sweeper.n_trials=2"]

CASES = [
    # ---- the disk, and folders that cannot be written -----------------------------------
    Case("disk_full_checkpoint", "train",
         lambda i, t: _cnn(t, i.npz, *BIG_CNN, f"hydra.run.dir={_small_disk(i, t / 'disk') / 'run'}"),
         ("no space left on the device while saving a checkpoint", "resume="), code=1,
         outcome="failed", needs_root=True),
    Case("file_size_limit_checkpoint", "train", lambda i, t: _cnn(t, i.npz, *BIG_CNN),
         ("file too large while saving a checkpoint", "resume="), code=1, outcome="failed",
         fsize=LIMIT),
    Case("read_only_outputs_root", "train",
         lambda i, t: _cnn(t, i.npz, f"paths.root_dir={_read_only(i, t / 'ro')}"),
         ("cannot ", "ro/outputs", "paths.root_dir")),
    Case("read_only_run_dir", "train",
         lambda i, t: _cnn(t, i.npz, f"hydra.run.dir={_read_only(i, t / 'ro') / 'run'}"),
         ("cannot ", "ro/run", "hydra.run.dir")),
    Case("read_only_cache", "train",
         lambda i, t: _text(i, cache_dir=_read_only(i, t / "cache")),
         ("cannot write the data cache", "cache/hf", "data.cache_dir"), outcome="failed"),
    Case("corrupt_tokenization_cache", "train", _cached_texts, (), code=0, outcome="done",
         may_change=("cache/",), warns=("tokenization cache", "is unreadable", "tokenizing again")),
    # ---- images -------------------------------------------------------------------------
    Case("image_folder_decompression_bomb", "train",
         lambda i, t: [*TINY_CNN[:1], "data.num_classes=2", "data.image_size=8",
                       "data.in_channels=1", "data.mean=[0.5]", "data.std=[0.25]",
                       "data.val_size=2", "logger=none", f"data.path={_bomb_folder(t)}"],
         ("dog/huge.png", "decompression bomb", "Downscale it"), outcome="failed"),
    Case("predict_decompression_bomb", "predict",
         lambda i, t: [f"ckpt_path={i.ckpt}", f"input={bomb_png(t / 'huge.png')}"],
         ("huge.png", "decompression bomb")),
    Case("npz_2d_labels", "train",
         lambda i, t: _cnn(t, _npz(t, x_train=_images(), y_train=np.eye(3)[_labels()])),
         ("bad.npz ('y_train'): labels have shape (96, 3)", "y.argmax(1)"), outcome="failed"),
    Case("npz_object_array", "train", lambda i, t: _cnn(t, _object_images(t)),
         ("bad.npz: array 'x_train' is an object array", "numeric arrays"), outcome="failed"),
    Case("npz_nan_pixel", "train", lambda i, t: _cnn(t, _nan_pixel(t)),
         ("bad.npz ('x_train'): image 5 has 1 NaN or infinite pixel",), outcome="failed"),
    Case("npz_fractional_labels", "train",
         lambda i, t: _cnn(t, _npz(t, x_train=_images(), y_train=_labels() + 0.5)),
         ("bad.npz ('y_train'): label 0 is 0.5, not a whole number", "does not round"),
         outcome="failed"),
    Case("predict_npz_wrong_shape", "predict",
         lambda i, t: [f"ckpt_path={i.ckpt}",
                       f"input={_npz(t, x=np.zeros((4, 16, 16), np.uint8))}"],
         ("bad.npz ('x'): images are (1, 16, 16)", "takes (1, 8, 8)", "resize")),
    Case("predict_npz_object_array", "predict",
         lambda i, t: [f"ckpt_path={i.ckpt}", f"input={_object_images(t, 'x')}"],
         ("bad.npz: array 'x' is an object array",)),
    # ---- damaged run records ----------------------------------------------------------
    Case("resume_corrupt_config_yaml", "train",
         lambda i, t: [f"resume={_existing(i, t, '.hydra/config.yaml', 'data: [unclosed')}"],
         ("existing/.hydra/config.yaml cannot be read", "ckpt_path="), outcome="kept"),
    Case("resume_corrupt_run_info", "train",
         lambda i, t: [f"resume={_existing(i, t, 'run_info.json', HALF_JSON)}"],
         ("existing/run_info.json is not valid JSON", "ckpt_path="), outcome="kept"),
    Case("reproduce_corrupt_config_yaml", "reproduce",
         lambda i, t: [str(_existing(i, t, ".hydra/config.yaml", "data: [unclosed"))],
         ("existing/.hydra/config.yaml cannot be read", "damaged"), outcome="kept"),
    Case("reproduce_corrupt_run_info", "reproduce",
         lambda i, t: [str(_existing(i, t, "run_info.json", "[1, 2"))],
         ("existing/run_info.json is not valid JSON", "damaged"), outcome="kept"),
    # ---- the command line -------------------------------------------------------------
    Case("non_utf8_text", "predict",
         lambda i, t: [f"ckpt_path={i.ckpt}", os.fsdecode(b"text=caf\xe9 \xff")],
         ("text= holds bytes that are not UTF-8", "b'\\xe9' at character 3", "UTF-8")),
    Case("seed_not_a_number", "train", lambda i, t: _cnn(t, i.npz, "seed=abc"),
         ("seed=abc must be an integer",), outcome="failed"),
    Case("jsonl_line_not_an_object", "train",
         lambda i, t: _text(i, path=_jsonl(t, "[1, 2]")),
         ("train.jsonl, line 5: a JSON array, not an object",), outcome="failed"),
    Case("jsonl_label_of_another_kind", "train",
         lambda i, t: _text(i, path=_jsonl(t, '{"review": "a film", "sentiment": 1}')),
         ("train.jsonl, row 5: label 1 is a number", "same kind"), outcome="failed"),
    Case("sweep_every_trial_failed", "train",
         lambda i, t: [*SWEEP, *tiny_cnn(t / "missing.npz")],
         ("all 2 trial(s) of this sweep failed, all with: data.path=", "missing.npz does not "
          "exist", "run_info.json under"), code=1, outcome="sweep"),
]  # fmt: skip


@dataclass
class Result:
    tmp: Path
    proc: subprocess.CompletedProcess
    before: dict[str, str]
    folders: set[str]  # the top-level folders of tmp before the command
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def battery(request, inputs, tmp_path_factory) -> dict[str, Future]:
    """Start the selected cases at once; each test waits for its own."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    }
    root = tmp_path_factory.mktemp("battery")
    pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1)
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))

    def launch(case: Case) -> Result:
        tmp = root / case.id
        tmp.mkdir()
        argv = case.args(inputs, tmp)
        before, folders = digest(tmp), {p.name for p in tmp.iterdir()}
        proc = cli(case.entry, argv, tmp, env_for(tmp), fsize=case.fsize)
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        (root / f"{case.id}.log").write_text(f"{argv!r}\n{out}\n{err}", errors="replace")
        return Result(tmp, proc, before, folders, out, err)

    return {c.id: pool.submit(launch, c) for c in CASES if c.id in wanted and _runnable(c)}


def _runnable(case: Case) -> bool:
    return not case.needs_root or ROOT


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, battery):
    if not _runnable(case):
        pytest.skip("needs root (a real full disk is a tmpfs mount)")
    res: Result = battery[case.id].result()
    output = res.stdout + res.stderr
    assert res.proc.returncode == case.code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    reports = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    if case.code == 0:
        assert reports == [], res.stderr[-3000:]
    else:
        assert len(reports) == 1, res.stderr[-3000:]  # one line, naming the cause and the fix
        for text in case.expect:
            assert text in reports[0], f"{text!r} not in {reports[0]!r}"
    for text in case.warns:
        assert text in output, f"{text!r} not logged:\n{output[-3000:]}"
    _check_files(case, res)


def _check_files(case: Case, res: Result) -> None:
    tmp = res.tmp
    after = digest(tmp)
    for name, sha in res.before.items():
        if name.startswith(case.may_change):
            continue
        assert after.get(name) == sha, f"{name} was changed or removed"
    made = {p.name for p in tmp.iterdir()} - res.folders
    runs = run_dirs(tmp)
    small = [p for p in (tmp / "disk").glob("run") if p.is_dir()]
    if case.outcome in ("none", "kept"):
        # No run directory, nor a reproduction beside tmp/existing; logs of the data caches
        # (data/) are the shared data folder's, not the case's.
        assert runs == [] and made <= {"data"}, made
        assert not list((tmp / "existing" / ".hydra").glob("resume-*"))
    elif case.outcome == "failed":
        (run,) = runs or small
        info = json.loads((run / "run_info.json").read_text())
        assert info["status"] == "failed", info["status"]
        assert not (run / "metrics.json").exists()
        ckpts = [p.name for p in (run / "checkpoints").glob("*")] if case.fsize or small else []
        assert not [n for n in ckpts if n.endswith(".tmp")], ckpts  # no half-written file left
        if not (case.fsize or small):
            assert not list(run.rglob("*.ckpt"))
    elif case.outcome == "done":
        from datasets import Dataset

        (run,) = runs
        assert json.loads((run / "run_info.json").read_text())["status"] == "completed"
        for f in (tmp / "cache" / "tokenized").glob("*.arrow"):
            assert len(Dataset.from_file(str(f))) > 0  # re-tokenized: readable again
    elif case.outcome == "sweep":
        (sweep,) = (tmp / "outputs").glob("*/multirun/*")
        assert not list(sweep.rglob("*.ckpt")) and not list(sweep.rglob("metrics.json"))


def test_battery_covers_the_issue():
    assert len(CASES) >= 20
    assert {c.entry for c in CASES} == {"train", "predict", "reproduce"}


# --- in process: what the checks must not refuse, and the cost of a huge line ---------------
def test_npz_values_that_are_fine(tmp_path):
    from tunelab.data.images import read_npz, to_nchw

    x = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    assert to_nchw(x, "x").max() == 255 and to_nchw(x, "x").min() == 0  # [0, 1] is scaled
    assert to_nchw(x * 255, "x").max() == 255  # [0, 255] floats as they are
    assert to_nchw(x.astype(np.int64) * 200, "x").dtype == np.uint8
    path = tmp_path / "ok.npz"
    y = np.array([[0.0], [2.0]])  # (N, 1) whole-number floats, as Keras' CIFAR-10 labels
    np.savez(path, x_train=(x * 255).astype(np.uint8), y_train=y)
    out = read_npz(path)["train"][1]
    assert out.dtype == np.int64 and out.tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"pixel values span \[-1.0, 1.0\]"):
        to_nchw(x * 2 - 1, "normalized.npz")  # normalized already: ×255 would clip half to 0


def test_a_huge_line_is_cut_before_tokenizing(tiny_bert_dir):
    """A 20 MB line costs what its first max_length * 32 characters cost: the same tokens."""
    from tunelab.data.text_datamodule import CHARS_PER_TOKEN, TextDataModule

    dm = TextDataModule(tokenizer=str(tiny_bert_dir), max_length=32)
    line = "a wonderful film " * 1_200_000  # 20 MB
    dm.encode(["warm up"])
    start = time.perf_counter()
    ids = dm.encode([line])["input_ids"]
    took = time.perf_counter() - start
    assert took < 2.0, f"{took:.1f} s for one line"  # uncapped: ~45 s on 2 cores
    full = dm.tokenizer([line[: 32 * CHARS_PER_TOKEN * 4]], truncation=True, max_length=32)
    assert ids[0].tolist() == full["input_ids"][0]  # the cut costs no token
