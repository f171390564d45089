"""What a run shows on the console: the config tree, the progress, the final metrics table.

The progress bar follows where the output goes: Lightning's rich bar on an interactive terminal,
and one plain line per epoch when the output is a file, a pipe or a CI log (where a redrawn bar
turns into thousands of lines of carriage returns).
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from tunelab.utils.io import atomic_write_text

# The groups shown first in the config tree, in this order; the rest follow as composed.
TREE_ORDER = ("data", "model", "trainer", "accelerator", "strategy", "callbacks", "logger")

Style = Literal["auto", "rich", "tqdm", "plain"]


def interactive() -> bool:
    """Whether stdout is a terminal a person watches (not a file, a pipe or a CI job)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        return False
    return sys.stdout.isatty()


def progress_bar(style: Style = "auto", refresh_rate: int = 1) -> ProgressBar:
    """The progress bar callback for ``callbacks.progress_bar.style``.

    Args:
        style: ``rich`` (Lightning's ``RichProgressBar``), ``tqdm`` (Lightning's default bar),
            ``plain`` (one line per epoch, see :class:`EpochLines`) or ``auto``: ``rich`` on an
            interactive terminal, ``plain`` otherwise (output redirected, or ``CI`` set).
        refresh_rate: redraw the bar every N batches (``rich`` and ``tqdm``).

    Raises:
        ValueError: an unknown style.
    """
    if style == "auto":
        style = "rich" if interactive() else "plain"
    if style == "rich":
        return RichProgressBar(refresh_rate=refresh_rate, leave=True)
    if style == "tqdm":
        return TQDMProgressBar(refresh_rate=refresh_rate)
    if style == "plain":
        return EpochLines()
    raise ValueError(
        f"callbacks.progress_bar.style={style!r} is not a progress bar style; use auto, rich, "
        "tqdm or plain (or callbacks.progress_bar=null for Lightning's default)"
    )


class EpochCompleted:
    """Callback mixin: :meth:`epoch_completed` once per training epoch, with all its metrics.

    Lightning runs a callback's ``on_train_epoch_end`` before the module's own, where tunelab
    logs the epoch's training metrics (``train/acc``, ...): read there, they are the previous
    epoch's. The epoch is therefore reported at the next epoch's start, at the end of training,
    or (for callbacks with state) when a checkpoint is written after the module's hook.
    """

    _pending: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_epoch(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_epoch(trainer)

    def flush_epoch(self, trainer: L.Trainer) -> None:
        """Report the finished epoch, if one is waiting."""
        epoch, self._pending = self._pending, None
        if epoch is not None:
            self.epoch_completed(trainer, epoch, scalar_metrics(trainer.callback_metrics))

    def epoch_completed(self, trainer: L.Trainer, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{name: float}`` of the one-number entries of Lightning's metric dicts."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "numel") and v.numel() != 1:
            continue
        out[k] = float(v)  # a device sync for tensors: once per epoch
    return out


HEADLINE = ("loss", "acc", "f1")


def headline(metrics: Mapping[str, float], stages: Iterable[str] = ("train", "val")) -> list[str]:
    """The metric names worth one line: loss, accuracy and F1 of each stage, in that order."""
    return [f"{s}/{m}" for s in stages for m in HEADLINE if f"{s}/{m}" in metrics]


class EpochLines(EpochCompleted, ProgressBar):
    """A progress "bar" for logs: one line per training epoch with its headline metrics.

    ``epoch 2/3  step 120  41.2 s  train/loss 0.3120  train/acc 0.8840  val/loss 0.3350 ...``
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._start = time.perf_counter()
        self._seconds = 0.0

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._seconds = time.perf_counter() - self._start

    def epoch_completed(self, trainer: L.Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in headline(metrics))
        print(
            f"epoch {epoch + 1}/{total}  step {trainer.global_step}  {self._seconds:.1f} s  {shown}",
            flush=True,
        )


def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config as a rich tree, one branch per group; also save it as text.

    Values are resolved where they can be (``${data.num_classes}`` shows its number); a
    branch whose interpolations need a running Hydra app is shown as written.
    """
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", style="bold", guide_style="dim")
    keys = [k for k in TREE_ORDER if k in cfg] + [k for k in cfg if k not in TREE_ORDER]
    scalars = {k: cfg[k] for k in keys if not isinstance(cfg.get(k), DictConfig)}
    for key in keys:
        if key in scalars:
            continue
        branch = tree.add(f"[bold]{key}[/bold]")
        branch.add(Syntax(_yaml(cfg[key]), "yaml", theme="ansi_dark", background_color="default"))
    if scalars:
        rest = OmegaConf.create({k: v for k, v in scalars.items()})
        tree.add("[bold]run[/bold]").add(
            Syntax(_yaml(rest), "yaml", theme="ansi_dark", background_color="default")
        )
    Console().print(tree)
    if save_to is not None:
        plain = Console(file=io.StringIO(), width=100, color_system=None)
        plain.print(tree)
        atomic_write_text(save_to, plain.file.getvalue())


def _yaml(node: Any) -> str:
    try:
        return OmegaConf.to_yaml(node, resolve=True)
    except Exception:  # an interpolation of the Hydra app that is not running (tests, notebooks)
        return OmegaConf.to_yaml(node)


_PER_CLASS = re.compile(r"(precision|recall|f1)_(?!macro$)")  # f1_<class>; f1_macro stays


def print_metrics(metrics: Mapping[str, float], out_dir: Path) -> None:
    """The final metrics as one table (a row per metric, a column per stage), then the run
    directory. Per-class scores (``test/f1_Dress``) stay in ``metrics.json``: ten classes would
    bury the summary."""
    from rich.console import Console
    from rich.table import Table

    stages = [s for s in ("train", "val", "test") if any(k.startswith(f"{s}/") for k in metrics)]
    names: list[str] = []
    for k in metrics:
        stage, _, name = k.partition("/")
        if stage in stages and not _PER_CLASS.match(name) and name not in names:
            names.append(name)
    names.sort(key=lambda n: (HEADLINE.index(n) if n in HEADLINE else len(HEADLINE), n))
    table = Table(title="final metrics")
    table.add_column("metric")
    for stage in stages:
        table.add_column(stage, justify="right")
    for name in names:
        cells = [metrics.get(f"{s}/{name}") for s in stages]
        table.add_row(name, *("" if v is None else f"{v:.4f}" for v in cells))
    console = Console()
    console.print(table)
    console.print(f"run directory: {out_dir}", soft_wrap=True)
