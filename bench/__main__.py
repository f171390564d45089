"""``python -m bench [NAME ...] [--quick] [--out DIR]``: run the CPU benchmarks, write the tables.

``python -m bench --practitioner --movie-ckpt CKPT`` runs the practitioner benchmarks instead (model
quality rather than speed; ``bench.transfer``: adapting a movie model to product reviews;
``bench.imbalance``: remedies for an imbalanced training split), or as well when NAMEs are given.
``--imbalance`` runs ``bench.imbalance`` alone. ``--peft`` runs ``bench.peft`` alone (full
fine-tuning vs LoRA vs a frozen encoder); ``--practitioner`` includes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Offline, as `make bench` runs it; set before transformers and datasets are imported.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from bench.common import REPO, Result, log, machine_info, write_csv, write_markdown  # noqa: E402

Runner = Callable[[bool, Path], list[Result]]


def _runners() -> dict[str, Runner]:
    # Imported here so that `--help` is instant.
    from bench import lightning_vs_raw, padding, tokenization

    return {
        lightning_vs_raw.NAME: lightning_vs_raw.run,
        tokenization.NAME: tokenization.run,
        padding.NAME: padding.run,
    }


NAMES = ("lightning_vs_raw", "tokenization", "padding")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmarks", nargs="*", metavar="NAME", help=f"any of {', '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out", help="output folder (bench/out)"
    )
    parser.add_argument(
        "--practitioner",
        action="store_true",
        help="run bench.transfer (accuracy after adapting a movie model with k product labels; "
        "about 30 min on 2 cores)",
    )
    parser.add_argument(
        "--movie-ckpt", type=Path, help="for --practitioner: a bert_embedded checkpoint (movies)"
    )
    parser.add_argument(
        "--imbalance",
        action="store_true",
        help="run bench.imbalance (macro-F1 / PR-AUC of 4 remedies for a 1:10 training split; "
        "about 55 min on 2 shared cores); --practitioner includes it",
    )
    parser.add_argument(
        "--peft",
        action="store_true",
        help="run bench.peft (full fine-tuning vs LoRA vs frozen encoder on the movie snippets: "
        "accuracy, trainable parameters, peak memory, samples/s; about 50 min on 2 cores); "
        "--practitioner includes it",
    )
    args = parser.parse_args(argv)
    if args.practitioner and args.movie_ckpt is None:
        parser.error("--practitioner needs --movie-ckpt (tunelab-train experiment=bert_embedded)")
    if args.peft or args.practitioner:
        from bench import peft

        peft.main(["--out", str(args.out), *(["--quick"] if args.quick else [])])
        if not args.practitioner and not args.imbalance and not args.benchmarks:
            return 0
    if args.imbalance or args.practitioner:
        from bench import imbalance

        imbalance.main(["--out", str(args.out), *(["--quick"] if args.quick else [])])
        if not args.practitioner and not args.benchmarks:
            return 0
    if args.practitioner:
        from bench import transfer

        quick = ["--quick", "--k", "16", "--epochs", "16:1"] if args.quick else []
        transfer.main(["--movie-ckpt", str(args.movie_ckpt), "--out", str(args.out), *quick])
        if not args.benchmarks:
            return 0
    unknown = sorted(set(args.benchmarks) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    names = args.benchmarks or list(NAMES)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("profile_*.txt"):
        stale.unlink()

    info = machine_info()
    runners = _runners()
    results: list[Result] = []
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        results += runners[name](args.quick, args.out)
        log(name, f"done in {time.perf_counter() - t0:.0f} s")
    total = time.perf_counter() - start
    # Other jobs on the machine skew every ratio (2 OpenMP threads stall when a core is taken).
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    write_csv(results, args.out / "results.csv")
    write_markdown(results, info, command, args.out / "results.md", total)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
