"""``python -m bench.transfer``: adapting a movie-review model to product reviews with k labels.

Accuracy on the test split of the product-review snippets (``data=products``, 361 sentences)
for k = 0, 100, 500 and all 2,888 labeled product training sentences, starting from

- (a) the movie model: a ``bert_embedded`` checkpoint trained on the movie snippets, adapted
  with ``tunelab-train init_from=CKPT data=products data.max_train_samples=k`` (k = 0: the
  checkpoint as it is, measured with ``tunelab-eval eval_domains=[products]``);
- (b) the base encoder (all-MiniLM-L6-v2) with a new head, trained the same way (k = 0: the
  untrained, seeded head, ``train=false``: a chance-level baseline).

Every run goes through the real command lines, one at a time. Both starts get the same
schedule per k (``--epochs``; more epochs for small k so that k = 100 gets enough steps to
move), the same seed and the same first k examples of the seeded shuffle. No product
validation labels are used: per-epoch validation is off and the last epoch's weights are
tested (``trainer.limit_val_batches=0 callbacks.model_checkpoint.monitor=null``), as a
practitioner with k labels and no validation set would.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from bench.common import REPO, log, machine_info  # noqa: E402

NAME = "transfer"
PRODUCTS_TRAIN = 2888


def _run(cmd: list[str], run_dir: Path, done: str = "metrics.json") -> float:
    """Run a tunelab command line into ``run_dir``; return its wall time in seconds.

    A run that already finished there (``done`` written, e.g. by an interrupted benchmark
    started with the same ``--runs``) is reused; an unfinished one is moved aside.
    """
    if (run_dir / done).is_file():
        record = json.loads((run_dir / "run_info.json").read_text())
        log(NAME, f"reusing {run_dir}")
        return _seconds(record["start_time"], record["end_time"])
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.unfinished-{time.time():.0f}"))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    full = [sys.executable, "-m", *cmd, f"hydra.run.dir={run_dir}"]
    log(NAME, " ".join(full[2:]))
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as out:
        result = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed; see {run_dir.parent / run_dir.name}.log")
    return time.perf_counter() - t0


def _seconds(start: str, end: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def _train_args(k: int | None, epochs: int, init_from: Path | None, quick: bool) -> list[str]:
    args = [
        "tunelab.train",
        "experiment=bert_embedded",
        "data=products",
        f"trainer.max_epochs={epochs}",
        "++trainer.limit_val_batches=0",  # no product validation labels: test the last epoch
        "callbacks.model_checkpoint.monitor=null",
        "logger=csv",
        "name=transfer",
    ]
    if k is not None:
        args.append(f"data.max_train_samples={k}")
    if init_from is not None:
        args.append(f"init_from={init_from}")
    if quick:
        args.append("data.max_eval_samples=32")
    return args


def run(
    movie_ckpt: Path,
    ks: list[int | None],
    epochs: dict[int, int],
    out: Path,
    quick: bool,
    runs: Path | None = None,
):
    """All runs of the table; returns rows ``{start, k, epochs, steps, acc, f1, seconds}``."""
    runs = runs or out / "transfer_runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    # k = 0: the movie model as it is, through the domain report.
    eval_dir = runs / "movie_k0"
    eval_args = ["tunelab.evaluate", f"ckpt_path={movie_ckpt}", "eval_domains=[movies,products]"]
    if quick:
        eval_args.append("+data.max_eval_samples=32")
    seconds = _run(eval_args, eval_dir, done="domain_report.csv")
    with open(eval_dir / "domain_report.csv", newline="") as f:
        report = {r["domain"]: r for r in csv.DictReader(f)}
    rows.append(_row("movie model", 0, 0, 0, report["products"], seconds, "test/"))
    rows[-1]["movies_acc"] = float(report["movies"]["acc"])
    # k = 0 from the base encoder: the seeded, untrained head.
    base_dir = runs / "base_k0"
    seconds = _run([*_train_args(None, 1, None, quick), "train=false"], base_dir)
    rows.append(_row("base encoder", 0, 0, 0, _metrics(base_dir), seconds))
    for k in ks:
        n = k or PRODUCTS_TRAIN
        e = epochs[k or 0]
        for start, init in (("movie model", movie_ckpt), ("base encoder", None)):
            run_dir = runs / f"{'movie' if init else 'base'}_k{n}"
            seconds = _run(_train_args(k, e, init, quick), run_dir)
            steps = _steps(run_dir)
            rows.append(_row(start, n, e, steps, _metrics(run_dir), seconds))
    return rows, runs


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def _steps(run_dir: Path) -> int:
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"])


def _row(start, k, epochs, steps, metrics, seconds, prefix="test/") -> dict:
    def get(name: str) -> float:
        value = metrics.get(f"test/{name}", metrics.get(name))
        return float(value)

    return {
        "start": start,
        "k": k,
        "epochs": epochs,
        "steps": steps,
        "acc": get("acc"),
        "f1": get("f1"),
        "seconds": round(seconds, 1),
    }


def write(
    rows: list[dict], runs: Path, movie_ckpt: Path, command: str, out: Path, info: dict
) -> Path:
    """Write ``transfer.csv`` and ``transfer.md`` into ``out``."""
    with open(out / "transfer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ks = sorted({r["k"] for r in rows})
    acc = {(r["start"], r["k"]): r for r in rows}
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Cross-domain transfer: movie reviews -> product reviews",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Movie model: `{movie_ckpt}`",
        f"Runs: `{runs}`",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Accuracy (F1 of the positive class) on the product reviews' test split (361 sentences, "
        "64.3% positive).",
        "",
        "| start | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for start in ("movie model", "base encoder"):
        cells = []
        for k in ks:
            r = acc.get((start, k))
            cells.append(f"{r['acc']:.3f} ({r['f1']:.3f})" if r else "—")
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| start | k | epochs | optimizer steps | acc | F1 | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['start']} | {r['k']} | {r['epochs']} | {r['steps']} | {r['acc']:.4f} | "
            f"{r['f1']:.4f} | {r['seconds']:.0f} s |"
        )
    movie0 = acc.get(("movie model", 0))
    if movie0 and "movies_acc" in movie0:
        lines += [
            "",
            f"The movie model on its own test split: acc {movie0['movies_acc']:.4f}; on products "
            f"{movie0['acc']:.4f} (drop {movie0['movies_acc'] - movie0['acc']:+.4f}).",
        ]
    path = out / "transfer.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__)
    parser.add_argument(
        "--movie-ckpt",
        type=Path,
        required=True,
        help="a bert_embedded checkpoint trained on movies (tunelab-train experiment=bert_embedded)",
    )
    parser.add_argument(
        "--k",
        default="100,500,all",
        help="numbers of labeled product examples to adapt with (comma-separated; 'all')",
    )
    parser.add_argument(
        "--epochs",
        default="100:10,500:2,all:1",
        help="epochs per k (k:epochs,...; k absent from the list: 'all' entry)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny eval splits: a smoke test")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument(
        "--runs",
        type=Path,
        help="folder of the runs (default: a new OUT/transfer_runs/<time>); finished runs in it "
        "are reused, so an interrupted benchmark continues where it stopped",
    )
    args = parser.parse_args(argv)
    ks = [None if k == "all" else int(k) for k in args.k.split(",")]
    epochs = {}
    for part in args.epochs.split(","):
        k, e = part.split(":")
        epochs[0 if k == "all" else int(k)] = int(e)
    for k in ks:
        epochs.setdefault(k or 0, epochs.get(0, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.transfer", *(argv if argv is not None else sys.argv[1:])])
    info = machine_info()  # the load average at the start
    rows, runs = run(args.movie_ckpt.resolve(), ks, epochs, args.out, args.quick, args.runs)
    path = write(rows, runs, args.movie_ckpt.resolve(), command, args.out, info)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
