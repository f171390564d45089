"""Lightning's training step against a hand-written PyTorch loop, on the same CNN and batches.

Three sides train copies of one ``CustomCNN`` (same initial weights) on one pre-built list of
Fashion-MNIST batches, an epoch each, in alternating order:

- ``tunelab``: tunelab's ``ImageClassifier`` under a ``lightning.Trainer`` (CPU, fp32, no
  logger, checkpoints, progress bar or model summary): what users run, with its torchmetrics
  updates and ``self.log`` calls;
- ``minimal``: a LightningModule with only the loss, under the same Trainer: the framework alone;
- ``raw``: the classic loop (zero_grad, forward, cross-entropy, backward, AdamW step).

The step time is the steady state: from the end of step ``skip`` to the end of the last step,
so each interval holds whole iterations (fetching the batch, hooks, logging, the step) and
excludes the first steps of an epoch (fresh optimizer state, first logging calls).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Result, Target, alternate, log, profile_ops, profile_python
from tunelab.data.images import read_fashion_mnist
from tunelab.models.cnn import CustomCNN
from tunelab.models.image_classifier import ImageClassifier

NAME = "lightning_vs_raw"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # conf/data/fashion_mnist.yaml
LR, WEIGHT_DECAY = 2e-3, 1e-4  # conf/model/cnn.yaml
Batch = tuple[torch.Tensor, torch.Tensor]


def make_batches(n_batches: int, batch_size: int) -> tuple[list[Batch], str]:
    """Normalized Fashion-MNIST training images (random ones where the package is missing)."""
    n = n_batches * batch_size
    if FASHION_MNIST.is_dir():
        x, y = read_fashion_mnist(FASHION_MNIST)["train"]
        images = (torch.from_numpy(x[:n]).float() / 255 - MEAN) / STD
        labels = torch.from_numpy(y[:n])
        source = "Fashion-MNIST"
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(n, 1, 28, 28, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        source = "random (Fashion-MNIST not installed)"
    batches = [
        (images[i : i + batch_size].contiguous(), labels[i : i + batch_size].contiguous())
        for i in range(0, n, batch_size)
    ]
    return batches, source


class ReplayBatches:
    """The pre-built batches as a plain iterable with a length (Lightning accepts any iterable)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class MinimalModule(L.LightningModule):
    """Only the loss: what any LightningModule costs before its own extras."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


class StepClock(L.Callback):
    """Times the steps after ``skip``: from the end of step ``skip - 1`` to the end of the last."""

    def __init__(self, skip: int, n_steps: int) -> None:
        self.skip = skip
        self.n_steps = n_steps
        self.t0 = self.t1 = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        step = args[-1]  # batch_idx
        if step == self.skip - 1:
            self.t0 = time.perf_counter()
        elif step == self.n_steps - 1:
            self.t1 = time.perf_counter()

    @property
    def per_step(self) -> float:
        return (self.t1 - self.t0) / (self.n_steps - self.skip)


def lightning_epoch(module: L.LightningModule, batches: list[Batch], skip: int) -> dict[str, float]:
    clock = StepClock(skip, len(batches))
    t0 = time.perf_counter()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=ReplayBatches(batches))
    return {"step": clock.per_step, "epoch": time.perf_counter() - t0}


def raw_epoch(net: nn.Module, batches: list[Batch], skip: int) -> dict[str, float]:
    t_start = time.perf_counter()
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    t0 = t_start
    for i, (x, y) in enumerate(batches):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        if i == skip - 1:
            t0 = time.perf_counter()
    t1 = time.perf_counter()
    return {"step": (t1 - t0) / (len(batches) - skip), "epoch": t1 - t_start}


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
    warnings.filterwarnings("ignore", message=".*val_dataloader.*validation_step.*")


def run(quick: bool, out_dir: Path) -> list[Result]:
    _quiet_lightning()
    n_batches, batch_size, skip = (12, 128, 4) if quick else (36, 128, 4)
    repeats = 2 if quick else 5
    batches, source = make_batches(n_batches, batch_size)
    torch.manual_seed(0)
    # conf/model/cnn.yaml's network for Fashion-MNIST; each side trains its own copy.
    net = CustomCNN(num_classes=10, in_channels=1, image_size=28, dropout=0.25)
    optimizer = functools.partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY)
    tunelab_module = ImageClassifier(copy.deepcopy(net), num_classes=10, optimizer=optimizer)
    minimal_module = MinimalModule(copy.deepcopy(net))
    raw_net = copy.deepcopy(net)
    samples = alternate(
        {
            "tunelab": lambda: lightning_epoch(tunelab_module, batches, skip),
            "minimal": lambda: lightning_epoch(minimal_module, batches, skip),
            "raw": lambda: raw_epoch(raw_net, batches, skip),
        },
        repeats=repeats,
        warmup=1,
        label=NAME,
    )
    steps = {k: v["step"] for k, v in samples.items()}
    epochs = {k: v["epoch"] for k, v in samples.items()}
    setup = (
        f"{n_batches}×({batch_size},1,28,28) {source} batches, {n_batches - skip} steady-state "
        f"steps per epoch (first {skip} excluded), CustomCNN {_n_params(net):,} params, "
        f"AdamW; tunelab's module has no LR scheduler here (the raw loop has none)"
    )
    results = [
        Result(
            NAME,
            "tunelab ImageClassifier + Trainer",
            "raw PyTorch loop",
            steps["tunelab"],
            steps["raw"],
            Target("<=", 1.05),
            f"step time; {setup}",
            unit="s/step",
        ),
        Result(
            NAME,
            "minimal LightningModule + Trainer",
            "raw PyTorch loop",
            steps["minimal"],
            steps["raw"],
            None,
            "step time: Lightning's own overhead (loss only, no metrics or logging)",
            unit="s/step",
        ),
        Result(
            NAME,
            "tunelab ImageClassifier + Trainer",
            "minimal LightningModule + Trainer",
            steps["tunelab"],
            steps["minimal"],
            None,
            "step time: tunelab's torchmetrics updates, self.log calls, parameter groups",
            unit="s/step",
        ),
        Result(
            NAME,
            "tunelab: Trainer() + fit(), whole epoch",
            "raw loop, whole epoch",
            epochs["tunelab"],
            epochs["raw"],
            None,
            f"{n_batches} steps incl. Trainer construction, fit setup and the epoch-end "
            "metric compute (fixed costs, amortized over longer epochs)",
        ),
    ]
    if not results[0].met and not quick:  # quick sizes say nothing about the target
        profile = _profile(tunelab_module, minimal_module, raw_net, batches[:16])
        (out_dir / f"profile_{NAME}.txt").write_text(profile)
        log(NAME, f"target missed: profile written to {out_dir / f'profile_{NAME}.txt'}")
    return results


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _profile(
    tunelab_module: L.LightningModule,
    minimal_module: L.LightningModule,
    raw_net: nn.Module,
    batches: list[Batch],
) -> str:
    """Top ops by self CPU time for each side over one epoch of the same batches."""
    sections = []
    for title, fn in (
        ("tunelab ImageClassifier + Trainer", lambda: lightning_epoch(tunelab_module, batches, 1)),
        ("minimal LightningModule + Trainer", lambda: lightning_epoch(minimal_module, batches, 1)),
        ("raw PyTorch loop", lambda: raw_epoch(raw_net, batches, 1)),
    ):
        sections.append(profile_ops(fn, f"{title}, one epoch of {len(batches)} steps"))
    # The Python side, where framework overhead lives: hooks, self.log, metric updates.
    sections.append(
        profile_python(
            lambda: lightning_epoch(tunelab_module, batches, 1),
            f"tunelab ImageClassifier + Trainer, one epoch of {len(batches)} steps (cProfile)",
            rows=25,
            only=r"tunelab|torchmetrics|logger_connector|core/module.py|random.py|apply_func",
        )
    )
    return "\n".join(sections)
