"""IMDB-length reviews built from real movie-review sentences (no package ships IMDB itself).

Each text joins snippets of one polarity from the embedded Rotten Tomatoes corpus until it
reaches a word count drawn from a lognormal with median 175 words and sigma 0.74, clipped to
[20, 1000]: mean about 230 words and about 13% longer than 512 BERT tokens, as in IMDB
(Maas et al., 2011: mean 230 words, median 174).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import DATA_DIR
from tunelab.data.text_sources import load_vader_domain

MEDIAN_WORDS = 175
SIGMA = 0.74
MIN_WORDS, MAX_WORDS = 20, 1000


@dataclass(frozen=True)
class Reviews:
    texts: list[str]
    labels: list[int]

    def describe(self) -> str:
        words = [len(t.split()) for t in self.texts]
        return (
            f"{len(self.texts):,} texts, words mean {statistics.fmean(words):.0f} / "
            f"median {statistics.median(words):.0f}"
        )

    def write_parquet(self, path: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": self.texts, "label": self.labels}), path)
        return path


def imdb_like(n: int, seed: int = 0, data_dir: Path = DATA_DIR) -> Reviews:
    """``n`` deterministic IMDB-length reviews with binary labels (the snippets' polarity)."""
    corpus = load_vader_domain("movies", data_dir)
    pools: dict[int, list[str]] = {0: [], 1: []}
    for text, label in zip(corpus["text"], corpus["label"], strict=True):
        pools[label].append(text.strip())
    rng = np.random.default_rng(seed)
    lengths = np.clip(
        np.rint(rng.lognormal(np.log(MEDIAN_WORDS), SIGMA, size=n)), MIN_WORDS, MAX_WORDS
    ).astype(int)
    labels = rng.integers(0, 2, size=n).tolist()
    # Walk each pool in a shuffled order, reshuffling when it wraps: every snippet is used
    # about equally often and consecutive reviews do not repeat each other.
    order = {k: rng.permutation(len(pool)) for k, pool in pools.items()}
    cursor = dict.fromkeys(pools, 0)
    texts = []
    for target, label in zip(lengths, labels, strict=True):
        parts: list[str] = []
        words = 0
        while words < target:
            if cursor[label] == len(order[label]):
                order[label] = rng.permutation(len(pools[label]))
                cursor[label] = 0
            snippet = pools[label][order[label][cursor[label]]]
            n_words = len(snippet.split())
            if parts and words + n_words - target > target - words:
                break  # stopping short is closer to the drawn length than overshooting
            cursor[label] += 1
            parts.append(snippet)
            words += n_words
        texts.append(" ".join(parts))
    return Reviews(texts, labels)
