"""Checkpoints are data, not code: a malicious checkpoint creates nothing through any entry point.

Two payloads are crafted from one real tiny training run per session:

* ``pickle``: the run's own checkpoint dict plus an object whose ``__reduce__`` writes a marker
  file when unpickled (``torch.load(weights_only=False)`` runs it);
* ``target``: a checkpoint that is safe to unpickle, whose stored model config has a nested
  ``_target_: pathlib.Path.write_text`` writing the marker when Hydra builds the model.

Each goes through the five entry points that read a user-supplied checkpoint, as the real console
scripts (``.venv/bin/tunelab-*``): ``tunelab-eval ckpt_path=``, ``tunelab-predict ckpt_path=``,
``tunelab-train resume=RUN_DIR``, ``init_from=`` and ``ckpt_path=``. All CLI runs start at once
(a thread pool) so the file stays within about a minute and a half on two cores.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import compose_cfg, shared_data_dir
from tunelab.checkpoint import load_checkpoint, model_from_checkpoint
from tunelab.safety import UntrustedCheckpointError, check_stored_config, checkpoint_trust
from tunelab.utils.checkpoint_io import AtomicCheckpointIO

# A tiny CNN on 8x8 grayscale images in 3 classes (an .npz written here): trains in seconds.
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
    "extras.print_config=false",
]
ENTRIES = ("eval", "predict", "resume", "init_from", "ckpt_path")
PAYLOADS = ("pickle", "target")
BIN = Path(sys.executable).parent  # the venv's console scripts


class WritesMarker:
    """Unpickling this runs code: it writes ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def target_payload(marker: Path) -> dict:
    """A stored-config node that Hydra turns into ``Path(marker).write_text('pwned')``."""
    return {
        "_target_": "pathlib.Path.write_text",
        "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
        "data": "pwned",
    }


def craft(base: dict, kind: str, marker: Path, path: Path) -> Path:
    """Save ``base`` (a real tunelab checkpoint dict) with a payload that writes ``marker``."""
    ckpt = copy.deepcopy(base)
    if kind == "pickle":
        ckpt["callbacks"]["Extra"] = WritesMarker(marker)
    elif kind == "target":
        ckpt["tunelab"]["model"]["scheduler"] = target_payload(marker)  # passes validation
    elif kind == "harmless":  # a type outside the allow-list that runs nothing
        ckpt["callbacks"]["Extra"] = {"saved_on": datetime.date(2026, 12, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def cli_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TUNELAB_DEBUG")}
    env.update(
        TUNELAB_ROOT=str(root),
        TUNELAB_DATA_DIR=str(shared_data_dir()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def run(script: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN / script), *args],
        cwd=root,
        env=cli_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class Base:
    run: Path  # a finished run directory with .hydra/config.yaml and checkpoints/
    npz: Path
    images: Path  # images to predict
    ckpt: dict  # its best.ckpt, loaded weights-only


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    """One real tiny training run (in-process) whose checkpoints every case builds on."""
    from tunelab.train import train

    root = tmp_path_factory.mktemp("security")
    rng = np.random.default_rng(3)
    npz = root / "shapes.npz"
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (96, 8, 8), dtype=np.uint8),
        y_train=np.arange(96) % 3,
    )
    images = root / "new_images.npz"
    np.savez(images, x=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8))
    out = root / "run"
    cfg = compose_cfg("train", [*TINY_CNN, f"data.path={npz}"], out)
    train(cfg)
    # What Hydra records for a CLI run, so that resume= finds this a run directory.
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    return Base(out, npz, images, best)


def entry_args(base: Base, entry: str, ckpt: Path, root: Path) -> tuple[str, list[str]]:
    """The console script and arguments that make ``entry`` read ``ckpt``."""
    if entry == "eval":
        return "tunelab-eval", [f"ckpt_path={ckpt}", "logger=none"]
    if entry == "predict":
        return "tunelab-predict", [f"ckpt_path={ckpt}", f"input={base.images}"]
    train = [*TINY_CNN, f"data.path={base.npz}"]
    if entry == "resume":  # a shared run folder whose last.ckpt is the crafted one
        run_dir = root / "shared_run"
        shutil.copytree(base.run / ".hydra", run_dir / ".hydra")
        (run_dir / "checkpoints").mkdir()
        shutil.copy(ckpt, run_dir / "checkpoints" / "last.ckpt")
        return "tunelab-train", [f"resume={run_dir}"]
    return "tunelab-train", [*train, f"{entry}={ckpt}"]


@dataclass
class Case:
    ckpt: Path
    marker: Path
    proc: subprocess.CompletedProcess | None = None


@pytest.fixture(scope="session")
def cli_runs(base: Base, tmp_path_factory) -> dict[tuple[str, str], Case]:
    """Every CLI run of this file, started together: (payload, entry) -> Case."""
    root = tmp_path_factory.mktemp("cli")
    cases: dict[tuple[str, str], Case] = {}
    jobs = []
    for kind in PAYLOADS:
        for entry in ENTRIES:
            where = root / f"{kind}-{entry}"
            marker = where / "marker.txt"  # the payload writes here: it must never appear
            ckpt = craft(base.ckpt, kind, marker, where / "shared" / "model.ckpt")
            script, args = entry_args(base, entry, ckpt, where)
            if entry == "resume":  # the message names the run's own copy
                ckpt = where / "shared_run" / "checkpoints" / "last.ckpt"
            cases[kind, entry] = Case(ckpt, marker)
            jobs.append(((kind, entry), script, args, where / "work"))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(run, script, args, cwd) for key, script, args, cwd in jobs}
        for key, future in futures.items():
            cases[key].proc = future.result()
    return cases


def test_payloads_are_live(base: Base, tmp_path):
    """Without tunelab's checks both payloads do write their marker (the tests below mean it)."""
    pickled = craft(base.ckpt, "pickle", tmp_path / "a.txt", tmp_path / "a.ckpt")
    torch.load(pickled, weights_only=False)
    assert (tmp_path / "a.txt").read_text() == "pwned"
    targeted = craft(base.ckpt, "target", tmp_path / "b.txt", tmp_path / "b.ckpt")
    stored = torch.load(targeted, weights_only=True)["tunelab"]["model"]["scheduler"]
    instantiate(stored)
    assert (tmp_path / "b.txt").read_text() == "pwned"


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_malicious_checkpoint_is_refused(cli_runs, kind: str, entry: str):
    case = cli_runs[kind, entry]
    proc = case.proc
    assert not case.marker.exists(), f"the {kind} payload ran through {entry}"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]  # the last word, nothing after it
    assert str(case.ckpt) in errors[0]
    assert "trust_checkpoint=true" in errors[0]
    if kind == "pickle":
        assert "exec" in errors[0]
    else:
        assert "tunelab.model.scheduler._target_" in errors[0]
        assert "pathlib.Path.write_text" in errors[0]
        assert "allowed_targets=" in errors[0]


def test_genuine_checkpoint_loads_weights_only(base: Base, tmp_path):
    """tunelab's own checkpoints hold tensors and plain data only: best.ckpt and last.ckpt load
    with ``weights_only=True``, and eval and predict (their real configs) run on the safe path."""
    from tunelab.evaluate import evaluate
    from tunelab.predict import run as predict_run

    for name in ("best.ckpt", "last.ckpt"):
        torch.load(base.run / "checkpoints" / name, weights_only=True)
    best = base.run / "checkpoints" / "best.ckpt"
    metrics = evaluate(compose_cfg("eval", [f"ckpt_path={best}", "logger=none"], tmp_path / "e"))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    rows = predict_run(
        compose_cfg("predict", [f"ckpt_path={best}", f"input={base.images}"], tmp_path)
    )
    assert [r["input"] for r in rows] == [f"{base.images}[{i}]" for i in range(4)]


def test_trust_checkpoint_loads_an_extra_type(base: Base, tmp_path):
    """A checkpoint with a harmless type outside the allow-list is refused by default and loads
    with trust_checkpoint=true: eval's config, the Python API, and Lightning's reads."""
    from tunelab.evaluate import evaluate
    from tunelab.predict import predict  # the submodule shadows the lazy tunelab.predict

    ckpt = craft(base.ckpt, "harmless", tmp_path / "unused", tmp_path / "harmless.ckpt")
    with pytest.raises(UntrustedCheckpointError, match=r"datetime\.date.*trust_checkpoint=true"):
        load_checkpoint(ckpt)
    args = [f"ckpt_path={ckpt}", "logger=none"]
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint"):
        evaluate(compose_cfg("eval", args, tmp_path / "refused"))
    trusted = evaluate(compose_cfg("eval", [*args, "trust_checkpoint=true"], tmp_path / "eval"))
    assert "test/acc" in trusted
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint"):
        predict(ckpt, images=base.images)
    assert len(predict(ckpt, images=base.images, trust_checkpoint=True)) == 4
    with pytest.raises(UntrustedCheckpointError):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    loaded = AtomicCheckpointIO(trust_checkpoint=True).load_checkpoint(ckpt)
    assert loaded["callbacks"]["Extra"]["saved_on"] == datetime.date(2026, 12, 1)


def test_lightning_reads_are_weights_only(base: Base, tmp_path):
    """The CheckpointIO behind trainer.fit/validate/test(ckpt_path=) refuses the pickle payload;
    Lightning builds nothing from a stored config, so the target payload stays inert there."""
    io = AtomicCheckpointIO()
    marker = tmp_path / "pickle.txt"
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        io.load_checkpoint(craft(base.ckpt, "pickle", marker, tmp_path / "pickle.ckpt"))
    assert not marker.exists()
    io.load_checkpoint(craft(base.ckpt, "target", marker, tmp_path / "target.ckpt"))
    assert not marker.exists()
    assert io.load_checkpoint(base.run / "checkpoints" / "last.ckpt")["global_step"] > 0


def test_allow_list(base: Base, tmp_path):
    """Classes of the allowed libraries pass, their functions do not; allowed_targets extends
    the list; interpolations are refused; model_from_checkpoint checks dicts given to it too."""
    ok = {"opt": {"_target_": "torch.optim.AdamW"}, "net": {"_target_": "transformers.BertModel"}}
    check_stored_config(ok, "x.ckpt")
    for bad, key in (
        ({"a": [{"_target_": "transformers.pipeline"}]}, r"a\[0\]\._target_"),
        ({"m": {"_target_": "tunelab.utils.io.atomic_write_bytes"}}, r"m\._target_"),
        ({"m": {"_target_": "os.system"}}, r"m\._target_='os\.system'"),
        ({"d": {"path": "${tunelab.new_run_dir:/tmp/x}"}}, r"d\.path"),
    ):
        with pytest.raises(UntrustedCheckpointError, match=key):
            check_stored_config(bad, "x.ckpt")
    check_stored_config({"m": {"_target_": "mypkg.Net"}}, "x.ckpt", allowed_targets=["mypkg."])
    check_stored_config({"m": {"_target_": "os.system"}}, "x.ckpt", trust_checkpoint=True)
    # The targets this run's own model/data config names are allowed (it builds them anyway).
    own = OmegaConf.create({"model": {"net": {"_target_": "mypkg.Net"}}, "trust_checkpoint": False})
    allowed = checkpoint_trust(own)["allowed_targets"]
    check_stored_config({"m": {"_target_": "mypkg.Net"}}, "x.ckpt", allowed_targets=allowed)
    with pytest.raises(ValueError, match="trust_checkpoint='yes' must be true or false"):
        checkpoint_trust(OmegaConf.create({"trust_checkpoint": "yes"}))
    ckpt = copy.deepcopy(base.ckpt)
    ckpt["tunelab"]["model"]["scheduler"] = target_payload(tmp_path / "m.txt")
    with pytest.raises(UntrustedCheckpointError, match="scheduler"):
        model_from_checkpoint(ckpt, "crafted.ckpt", compile=False)
    assert not (tmp_path / "m.txt").exists()
    model = model_from_checkpoint(copy.deepcopy(base.ckpt), "best.ckpt", compile=False)
    assert not model.training
