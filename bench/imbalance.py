"""``python -m bench.imbalance``: remedies for an imbalanced training split, measured on a balanced
test split.

The embedded movie-review corpus (``experiment=bert_embedded``, all-MiniLM-L6-v2) is made
imbalanced with ``data.imbalance_ratio=0.1``: the training split keeps one positive snippet in
ten; validation and test stay as they are (about half positive). Three trainings, each through
the real command line (``python -m tunelab.train``), one at a time, with the same seed and
schedule, and one threshold choice:

- plain training;
- ``model.class_weights=balanced`` (loss weights ``n / (k * count_c)``);
- ``data.sampler=balanced`` (classes drawn equally often, with replacement);
- ``model.decision_threshold=auto``: what ``tunelab-train`` does with it after training, applied
  to the plain run's best checkpoint (a validation pass, ``ClassifierModule.choose_threshold``,
  the threshold written into a copy of the checkpoint), then tested with ``tunelab-eval``. A
  training of its own would repeat the plain one bit for bit (same seed, data and schedule on
  CPU; the threshold changes nothing before the end), so it is not run again.

The table gives macro-F1, positive-class F1 and PR-AUC (average precision) on the test split,
read from each run's ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from bench.common import REPO, log, machine_info  # noqa: E402

NAME = "imbalance"
VARIANTS = {
    "plain": [],
    "decision_threshold=auto": None,  # the plain run's checkpoint, threshold chosen on val
    "class_weights=balanced": ["model.class_weights=balanced"],
    "sampler=balanced": ["data.sampler=balanced"],
}


def train_args(epochs: int, ratio: float, quick: bool) -> list[str]:
    """The overrides every variant shares."""
    args = [
        "experiment=bert_embedded",
        f"data.imbalance_ratio={ratio}",
        f"trainer.max_epochs={epochs}",
        "data.max_length=64",  # the snippets are short: 64 tokens cover nearly all
        "data.batch_size=32",
        "logger=csv",
        "name=imbalance",
    ]
    if quick:
        args += ["data.max_train_samples=256", "data.max_eval_samples=128"]
    return args


def _run(name: str, overrides: list[str], run_dir: Path, module: str = "tunelab.train") -> float:
    """Run one variant into ``run_dir`` (a finished run there is reused); its wall seconds."""
    if (run_dir / "metrics.json").is_file():
        log(NAME, f"reusing {run_dir}")
        record = json.loads((run_dir / "run_info.json").read_text())
        return float(record.get("bench_seconds", 0.0))
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.unfinished-{time.time():.0f}"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    log(NAME, f"{name}: {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed; see {run_dir.parent / run_dir.name}.log")
    seconds = time.perf_counter() - t0
    record = json.loads((run_dir / "run_info.json").read_text())
    record["bench_seconds"] = seconds
    (run_dir / "run_info.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return seconds


def auto_threshold_checkpoint(plain_dir: Path, out: Path) -> Path:
    """A copy of the plain run's best checkpoint holding the validation-F1-best threshold, chosen
    as ``tunelab-train model.decision_threshold=auto`` chooses it (see ``train._choose_threshold``).
    """
    import shutil

    import lightning as L
    from hydra.utils import instantiate

    from tunelab.checkpoint import (
        load_checkpoint,
        model_from_checkpoint,
        store_decision_threshold,
        stored_configs,
    )

    target = out / "auto.ckpt"
    if target.is_file():
        return target
    best = plain_dir / "checkpoints" / "best.ckpt"
    ckpt = load_checkpoint(best)
    model = model_from_checkpoint(ckpt, best, compile=False)
    datamodule = instantiate(stored_configs(ckpt)[1], _convert_="partial")
    L.seed_everything(42)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.validate(model, datamodule=datamodule, verbose=False)
    threshold, f1 = model.choose_threshold()
    log(NAME, f"decision threshold {threshold:.4f} (validation F1 {f1:.4f})")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(best, out / "auto.tmp")
    store_decision_threshold(out / "auto.tmp", threshold)
    (out / "auto.tmp").rename(target)
    return target


def run(epochs: int, ratio: float, runs: Path, quick: bool, only: list[str]) -> list[dict]:
    """Every variant's test metrics: ``{variant, macro_f1, f1_pos, pr_auc, roc_auc, acc, ...}``."""
    rows = []
    for name, extra in VARIANTS.items():
        if only and name not in only:
            continue
        run_dir = runs / name.replace("=", "-")
        if extra is None:  # the threshold on the plain run's checkpoint, tested by tunelab-eval
            t0 = time.perf_counter()
            ckpt = auto_threshold_checkpoint(runs / "plain", runs / "auto_ckpt")
            seconds = time.perf_counter() - t0
            seconds += _run(name, [f"ckpt_path={ckpt}", "logger=none"], run_dir, "tunelab.evaluate")
        else:
            seconds = _run(name, [*train_args(epochs, ratio, quick), *extra], run_dir)
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append(
            {
                "variant": name,
                "macro_f1": m["test/f1_macro"],
                "f1_pos": m["test/f1_1"],
                "recall_pos": m["test/recall_1"],
                "pr_auc": m["test/pr_auc"],
                "roc_auc": m["test/roc_auc"],
                "acc": m["test/acc"],
                "threshold": m.get("decision_threshold", 0.5),
                "seconds": seconds,
                "run": str(run_dir),
            }
        )
    return rows


def train_counts(run_dir: Path) -> str:
    """The training split's class counts, from the run's log."""
    for line in (run_dir.parent / f"{run_dir.name}.log").read_text().splitlines():
        if "text data (" in line:
            return line.split("text data ", 1)[1]
    return "?"


def write(rows: list[dict], command: str, out: Path, ratio: float, epochs: int) -> Path:
    """Write ``imbalance.md`` (and ``imbalance.json``) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "imbalance.json").write_text(json.dumps(rows, indent=2) + "\n")
    info = machine_info()
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    plain = next((r for r in rows if r["variant"] == "plain"), None)
    lines = [
        "# Imbalanced training data: remedies compared on a balanced test split",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Setup: `experiment=bert_embedded` (all-MiniLM-L6-v2), `data.imbalance_ratio={ratio}` "
        f"(training split only), {epochs} epochs, max length 64, batch 32, seed 42.",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Test split: 1,057 snippets (untouched, about half positive). F1 (pos), recall (pos): the "
        "positive class (the one made rare); threshold: on P(positive).",
        "",
        "| variant | macro-F1 | Δ vs plain | F1 (pos) | recall (pos) | PR-AUC | ROC-AUC | acc "
        "| threshold | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = f"{r['macro_f1'] - plain['macro_f1']:+.4f}" if plain else "—"
        lines.append(
            f"| {r['variant']} | {r['macro_f1']:.4f} | {delta} | {r['f1_pos']:.4f} | "
            f"{r['recall_pos']:.4f} | {r['pr_auc']:.4f} | {r['roc_auc']:.4f} | {r['acc']:.4f} | "
            f"{r['threshold']:.3f} | {r['seconds'] / 60:.1f} min |"
        )
    if rows:
        lines += ["", f"Training split: {train_counts(Path(rows[0]['run']))}"]
    path = out / "imbalance.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.imbalance", description=__doc__)
    parser.add_argument("--epochs", type=int, default=1, help="1: the measured table")
    parser.add_argument("--ratio", type=float, default=0.1, help="data.imbalance_ratio")
    parser.add_argument("--quick", action="store_true", help="256 training examples: a smoke test")
    parser.add_argument("--only", nargs="*", default=[], choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument(
        "--runs", type=Path, help="run folder (default: out/imbalance_runs/<time>); reused runs"
    )
    args = parser.parse_args(argv)
    runs = args.runs or args.out / "imbalance_runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    rows = run(args.epochs, args.ratio, runs, args.quick, args.only)
    command = " ".join(["python -m bench.imbalance", *(argv if argv is not None else sys.argv[1:])])
    path = write(rows, command, args.out, args.ratio, args.epochs)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
