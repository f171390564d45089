"""Epoch time of MiniLM fine-tuning: dynamic padding + length grouping against padding to 512.

Both sides train one ``HFSequenceClassifier`` (all-MiniLM-L6-v2, fp32, AdamW as in
``conf/model/bert_hf.yaml``) with batches of 16 from the same IMDB-length reviews:

- ``dynamic``: the batches of ``TextDataModule.train_dataloader()`` with its defaults
  (``group_by_length=True``, ``pad_to_multiple_of=8``): one epoch, every batch timed once;
- ``padded``: the same reviews in shuffled order, each batch padded to 512 tokens. Every batch
  has the same shape, so a few steps are timed and their median is scaled to the epoch.

A step is forward, cross-entropy, backward and the optimizer step; the two sides' steps
alternate. Batches are built before timing (collation costs milliseconds against seconds).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from bench.common import MINILM, Result, Target, fmt_seconds, log, profile_ops
from bench.imdb_like import Reviews, imdb_like
from tunelab.data.text_datamodule import TextDataModule
from tunelab.models.pretrained import resolve_pretrained
from tunelab.models.text_nets import HFSequenceClassifier

NAME = "padding"
MAX_LENGTH = 512
BATCH_SIZE = 16
Batch = dict[str, torch.Tensor]


def dynamic_batches(reviews: Reviews, held_out: Reviews, root: Path) -> list[Batch]:
    """One epoch of TextDataModule's training batches over exactly ``reviews``.

    ``held_out`` fills small validation and test files, so that the data module keeps every
    one of ``reviews`` in its training split.
    """
    folder = root / "reviews"
    reviews.write_parquet(folder / "train.parquet")
    half = len(held_out.texts) // 2
    Reviews(held_out.texts[:half], held_out.labels[:half]).write_parquet(
        folder / "validation.parquet"
    )
    Reviews(held_out.texts[half:], held_out.labels[half:]).write_parquet(folder / "test.parquet")
    dm = TextDataModule(
        tokenizer=MINILM,
        source="files",
        path=str(folder),
        max_length=MAX_LENGTH,
        batch_size=BATCH_SIZE,
        data_dir=str(root / "data"),
        cache_dir=str(root / "cache"),
    )
    dm.setup("fit")
    if len(dm.splits["train"]) != len(reviews.texts):
        raise RuntimeError(f"train split has {len(dm.splits['train'])} of {len(reviews.texts)}")
    return list(dm.train_dataloader())


def padded_batches(reviews: Reviews, seed: int = 0) -> list[Batch]:
    """The seed approach: shuffled order, every sequence padded to ``MAX_LENGTH``."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM), use_fast=True)
    order = torch.randperm(len(reviews.texts), generator=torch.Generator().manual_seed(seed))
    batches = []
    for start in range(0, len(order), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE].tolist()
        enc = tokenizer(
            [reviews.texts[i] for i in idx],
            truncation=True,
            max_length=MAX_LENGTH,
            padding="max_length",
            return_tensors="pt",
        )
        batches.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([reviews.labels[i] for i in idx]),
            }
        )
    return batches


class Trainer:
    """Forward, loss, backward, AdamW: one training step, timed."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = HFSequenceClassifier(MINILM, num_classes=2).train()
        # conf/model/bert_hf.yaml's optimizer.
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=1e-4, weight_decay=0.01, fused=True
        )

    def step(self, batch: Batch) -> float:
        t0 = time.perf_counter()
        logits = self.net(batch["input_ids"], batch["attention_mask"])
        loss = F.cross_entropy(logits, batch["labels"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return time.perf_counter() - t0


def run(quick: bool, out_dir: Path) -> list[Result]:
    n_texts, padded_steps = (16, 1) if quick else (256, 4)
    everything = imdb_like(n_texts + 2 * BATCH_SIZE, seed=1)
    reviews = Reviews(everything.texts[:n_texts], everything.labels[:n_texts])
    held_out = Reviews(everything.texts[n_texts:], everything.labels[n_texts:])
    log(NAME, reviews.describe())
    torch.manual_seed(0)  # the length-grouped sampler's order
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-pad-") as tmp:
        dynamic = dynamic_batches(reviews, held_out, Path(tmp))
    padded = padded_batches(reviews)
    trainer = Trainer()

    log(NAME, "warm-up: one step of each")
    trainer.step(padded[0])
    trainer.step(dynamic[0])
    # Alternate: every dynamic batch once, a padded step after every k-th of them.
    every = max(1, len(dynamic) // padded_steps)
    dynamic_s: list[float] = []
    padded_s: list[float] = []
    for i, batch in enumerate(dynamic):
        dynamic_s.append(trainer.step(batch))
        if i % every == every - 1 and len(padded_s) < padded_steps:
            padded_s.append(trainer.step(padded[(len(padded_s) + 1) % len(padded)]))
            log(NAME, f"step {i + 1}/{len(dynamic)}: padded {fmt_seconds(padded_s[-1])}")
    while len(padded_s) < padded_steps:
        padded_s.append(trainer.step(padded[(len(padded_s) + 1) % len(padded)]))

    n_batches = len(dynamic)
    dynamic_epoch = sum(dynamic_s)
    padded_epoch = [s * len(padded) for s in padded_s]  # one estimate per timed step
    widths = [b["input_ids"].shape[1] for b in dynamic]
    real = sum(int(b["attention_mask"].sum()) for b in dynamic)
    padded_tokens = sum(b["input_ids"].numel() for b in dynamic)
    full_epoch = statistics.median(padded_epoch) / n_texts * 25_000
    result = Result(
        NAME,
        "dynamic padding + length grouping (TextDataModule)",
        f"every batch padded to {MAX_LENGTH}",
        [dynamic_epoch],
        padded_epoch,
        Target("<=", 0.5),
        f"epoch of {n_texts} IMDB-length reviews, batch {BATCH_SIZE}, MiniLM fp32, fused AdamW; "
        f"A: all {n_batches} batches timed once (widths {min(widths)}–{max(widths)}, mean "
        f"{statistics.fmean(widths):.0f}; {real / padded_tokens:.0%} of positions are real "
        f"tokens, {real / (n_texts * MAX_LENGTH):.0%} of a {MAX_LENGTH}-padded epoch's); "
        f"B: median of {len(padded_s)} steps × {len(padded)} batches; a 25,000-review epoch "
        f"padded to {MAX_LENGTH} ≈ {full_epoch / 3600:.1f} h here",
        unit="s/epoch",
    )
    if not result.met and not quick:  # quick sizes say nothing about the target
        path = out_dir / f"profile_{NAME}.txt"
        by_width = sorted(dynamic, key=lambda b: b["input_ids"].shape[1])
        median_batch = by_width[n_batches // 2]
        width = median_batch["input_ids"].shape[1]
        path.write_text(
            profile_ops(lambda: trainer.step(padded[0]), f"one step padded to {MAX_LENGTH}")
            + "\n"
            + profile_ops(lambda: trainer.step(median_batch), f"one dynamic step, width {width}")
        )
        log(NAME, f"target missed: profile written to {path}")
    return [result]
