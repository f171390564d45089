"""Full fine-tuning vs LoRA vs a frozen encoder on the embedded movie-review corpus (CPU).

``python -m bench.peft [--quick] [--out DIR]`` trains all-MiniLM-L6-v2 (``experiment=bert_embedded``)
three times with ``tunelab-train``, each in its own process, with the same data and schedule:

- ``full``: every weight trains (the experiment's default, lr 1e-4);
- ``lora``: ``model.peft=lora`` (rank 8, alpha 16, adapters on every linear layer of the
  encoder: query, key, value and the dense layers), head trained in full, lr 1e-3;
- ``frozen``: ``model.net.freeze_layers=-1``: the whole encoder frozen, only the classification
  head trains, lr 1e-3.

For each it reports the trainable and total parameters (from the run's ``run_info.json``), the
peak resident memory of the training process (``ru_maxrss`` from ``os.wait4`` on that process:
the whole process, Python, torch and data included), training throughput (samples over the
summed time of the training steps, forward + backward + optimizer, validation excluded; timed by
a callback) and the test accuracy of the best checkpoint (``metrics.json``). Writes
``bench/out/peft.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from bench.common import REPO, log, machine_info

NAME = "peft"

COMMON = [
    "experiment=bert_embedded",
    "trainer.max_epochs=1",
    "data.max_length=64",  # the snippets are short: 64 tokens truncate almost none
    "data.batch_size=32",
    "+callbacks.step_timer._target_=bench.peft.StepTimer",
]
QUICK = [
    "data.max_train_samples=256",
    "data.max_eval_samples=128",
]
VARIANTS: dict[str, list[str]] = {
    "lora": ["model.peft=lora", "model.optimizer.lr=1e-3"],
    "full": [],
    "frozen": ["model.net.freeze_layers=-1", "model.optimizer.lr=1e-3"],
}


class StepTimer(L.Callback):
    """Sums the wall time of the training steps and counts their samples.

    Writes ``step_timer.json`` (``seconds``, ``samples``, ``steps``) into the run directory at
    the end of training.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.samples = 0
        self.steps = 0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.samples += int(batch["labels"].shape[0])
        self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "step_timer.json"
            path.write_text(
                json.dumps({"seconds": self.seconds, "samples": self.samples, "steps": self.steps})
            )


def run_variant(
    name: str, overrides: list[str], run_dir: Path, threads: int | None = None
) -> dict[str, Any]:
    """Train one variant in a child process; its figures, read from the files the run wrote."""
    cmd = [sys.executable, "-m", "tunelab.train", *overrides, f"hydra.run.dir={run_dir}"]
    log(NAME, f"{name}: {' '.join(cmd[2:])}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} failed; see {run_dir.with_suffix('.log')}")
    info = json.loads((run_dir / "run_info.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timer = json.loads((run_dir / "step_timer.json").read_text())
    return {
        "variant": name,
        "overrides": " ".join(overrides[len(COMMON) :]) or "(defaults)",
        "trainable": info["parameters"]["trainable"],
        "total": info["parameters"]["total"],
        "trainable_percent": info["parameters"]["trainable_percent"],
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "samples_per_s": timer["samples"] / timer["seconds"],
        "train_seconds": timer["seconds"],
        "wall_seconds": wall,
        "test_acc": metrics["test/acc"],
        "val_acc": metrics["val/acc"],
        "run_dir": str(run_dir),
    }


def table(rows: list[dict[str, Any]]) -> str:
    full = next((r for r in rows if r["variant"] == "full"), None)
    lines = [
        "| variant | trainable params | % of total | peak RSS | train samples/s | "
        "test acc | Δ acc vs full | val acc | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = f"{100 * (r['test_acc'] - full['test_acc']):+.1f} pt" if full else "—"
        lines.append(
            f"| {r['variant']} | {r['trainable']:,} | {r['trainable_percent']:.3g}% | "
            f"{r['peak_rss_mib']:,.0f} MiB | {r['samples_per_s']:.1f} | {r['test_acc']:.4f} | "
            f"{delta} | {r['val_acc']:.4f} | {r['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peft", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 samples, 1 epoch: a smoke test")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the training processes (1 on a busy shared machine)",
    )
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), metavar="VARIANT")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "peft_runs" / time.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True)
    info = machine_info()
    if args.threads:
        info["threads per training process"] = str(args.threads)
    command = " ".join(["python -m bench.peft", *(argv if argv is not None else sys.argv[1:])])
    rows: list[dict[str, Any]] = []
    for name in args.variants:
        overrides = COMMON + (QUICK if args.quick else []) + VARIANTS[name]
        rows.append(run_variant(name, overrides, runs / name, args.threads))
        log(NAME, json.dumps(rows[-1]))
        info["load average after the last run (1/5/15 min)"] = " / ".join(
            f"{x:.2f}" for x in os.getloadavg()
        )
        write_report(rows, info, command, args.quick, args.out)  # after each: partial results
    print((args.out / "peft.md").read_text())
    return 0


def write_report(
    rows: list[dict[str, Any]], info: dict[str, str], command: str, quick: bool, out: Path
) -> None:
    text = "\n".join(
        [
            "# Parameter-efficient fine-tuning: full vs LoRA vs frozen encoder",
            "",
            f"Command: `{command}`. Common overrides: `{' '.join(COMMON[:4])}`"
            + (f" `{' '.join(QUICK)}`" if quick else "")
            + ". Peak RSS: `ru_maxrss` of each training process (`os.wait4`); samples/s: "
            "training steps only (forward, backward, optimizer).",
            "",
            table(rows),
            "",
            "| machine | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in info.items()),
            "",
        ]
    )
    (out / "peft.md").write_text(text)
    (out / "peft.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
