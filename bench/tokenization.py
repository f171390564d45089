"""Per-item tokenization (a naive ``Dataset.__getitem__``) against TextDataModule's batched path.

All sides start from the tokenizer's name and tokenize the same IMDB-length reviews once, to
at most 512 tokens:

- ``per-item``: one ``tokenizer(text, truncation=True, max_length=512, padding="max_length")``
  call per item, as a map-style dataset does in ``__getitem__``, over every item once. It gets
  the texts in memory for free (no file reading is charged to it);
- ``cold``: ``TextDataModule(source="files").setup()`` with an empty cache folder: reading the
  Parquet file into Arrow, the 80/10/10 split, fingerprints, ``Dataset.map(batched=True)`` and
  writing the tokenized cache;
- ``warm``: the same on a fresh data module over the filled cache (every split a cache hit).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from bench.common import MINILM, Result, Samples, Target, alternate, log, profile_python
from bench.imdb_like import Reviews, imdb_like
from tunelab.data.text_datamodule import TextDataModule
from tunelab.models.pretrained import resolve_pretrained

NAME = "tokenization"
MAX_LENGTH = 512


class PerItemDataset(Dataset):
    """The naive dataset: tokenizes its item on every ``__getitem__``."""

    def __init__(
        self, texts: list[str], labels: list[int], tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.texts = texts
        self.labels = labels
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        enc = self.tokenizer(
            self.texts[i], truncation=True, max_length=MAX_LENGTH, padding="max_length"
        )
        return {**enc, "labels": self.labels[i]}


def per_item(reviews: Reviews) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM), use_fast=True)
    ds = PerItemDataset(reviews.texts, reviews.labels, tokenizer)
    for i in range(len(ds)):
        ds[i]


def datamodule_setup(parquet: Path, cache_dir: Path) -> TextDataModule:
    """A fresh data module's ``setup()`` on ``parquet`` with its cache in ``cache_dir``."""
    dm = TextDataModule(
        tokenizer=MINILM,
        source="files",
        path=str(parquet),
        max_length=MAX_LENGTH,
        data_dir=str(cache_dir / "data"),
        cache_dir=str(cache_dir),
    )
    dm.setup("fit")
    return dm


class BatchedRuns:
    """Cold runs each fill a fresh cache folder; warm runs read the latest one."""

    def __init__(self, parquet: Path, root: Path) -> None:
        self.parquet = parquet
        self.root = root
        self.count = 0
        self.cache: Path | None = None
        self.train_lengths: list[int] = []

    def cold(self) -> None:
        if self.cache is not None:
            shutil.rmtree(self.cache)
        self.count += 1
        self.cache = self.root / f"cache{self.count}"
        dm = datamodule_setup(self.parquet, self.cache)
        if any(dm.cache_hits.values()):
            raise RuntimeError(f"a cold run found a cache in {self.cache}: {dm.cache_hits}")
        self.train_lengths = dm.train_lengths

    def warm(self) -> None:
        if self.cache is None:
            raise RuntimeError("a warm run needs a cold run first")
        dm = datamodule_setup(self.parquet, self.cache)
        if not all(dm.cache_hits.values()):
            raise RuntimeError(f"a warm run missed the cache in {self.cache}: {dm.cache_hits}")


def run(quick: bool, out_dir: Path) -> list[Result]:
    import datasets

    datasets.disable_progress_bars()  # display only; tqdm costs microseconds per 1,000 rows
    n, repeats = (2_000, 2) if quick else (25_000, 3)
    reviews = imdb_like(n)
    log(NAME, reviews.describe())
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-tok-") as tmp:
        root = Path(tmp)
        # Warm-up on a small set: imports, the Parquet builder, tokenizer code paths.
        small = Reviews(reviews.texts[:500], reviews.labels[:500])
        small_runs = BatchedRuns(small.write_parquet(root / "small" / "reviews.parquet"), root)
        per_item(small)
        small_runs.cold()
        small_runs.warm()
        runs = BatchedRuns(reviews.write_parquet(root / "full" / "reviews.parquet"), root / "full")
        samples = alternate(
            {"per-item": lambda: per_item(reviews), "cold": runs.cold, "warm": runs.warm},
            repeats=repeats,
            warmup=0,
            label=NAME,
        )
        lengths = runs.train_lengths
        results = _results(reviews, samples, lengths)
        if not all(r.met for r in results) and not quick:
            path = out_dir / f"profile_{NAME}.txt"
            path.write_text(
                "\n".join(
                    [
                        profile_python(
                            lambda: per_item(Reviews(reviews.texts[:2000], reviews.labels[:2000])),
                            "per-item tokenizer calls, first 2,000 texts",
                        ),
                        profile_python(runs.cold, "TextDataModule.setup(), cold cache"),
                        profile_python(runs.warm, "TextDataModule.setup(), warm cache"),
                    ]
                )
            )
            log(NAME, f"target missed: profile written to {path}")
    return results


def _results(reviews: Reviews, samples: Samples, lengths: list[int]) -> list[Result]:
    wall = {k: v["wall"] for k, v in samples.items()}
    mean_tokens = sum(lengths) / len(lengths)
    truncated = sum(n_tok >= MAX_LENGTH for n_tok in lengths) / len(lengths)
    data = (
        f"{reviews.describe()}; {mean_tokens:.0f} tokens mean after truncation, "
        f"{truncated:.0%} truncated at {MAX_LENGTH}"
    )
    return [
        Result(
            NAME,
            "per-item tokenizer calls",
            "TextDataModule.setup(), cold cache",
            wall["per-item"],
            wall["cold"],
            Target(">=", 20),
            f"{data}; per-item: padding='max_length', texts already in memory, no file read; "
            "cold: Parquet → Arrow, 80/10/10 split, fingerprints, map(batched=True), cache write",
        ),
        Result(
            NAME,
            "per-item tokenizer calls",
            "TextDataModule.setup(), warm cache",
            wall["per-item"],
            wall["warm"],
            Target(">=", 20),
            "warm: a fresh data module over a cold run's cache, every split a cache hit",
        ),
    ]
