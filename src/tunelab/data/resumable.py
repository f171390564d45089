"""Training loaders that resume mid-epoch in exactly the order an uninterrupted run would use.

The order of an epoch is a pure function of ``(seed, epoch)``, so no sampler state beyond two
integers is needed. The loader implements Lightning's ``state_dict``/``load_state_dict`` loader
protocol (Lightning saves it in every checkpoint): the state is the epoch and the number of
batches the training loop has *processed*, read from the trainer rather than counted at the
loader, because Lightning fetches one batch ahead of the step it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class EpochSampler(DistributedSampler):
    """Shuffled (or length-grouped) indices whose order depends only on ``(seed, epoch)``.

    Under DDP each of ``num_replicas`` processes takes every ``num_replicas``-th index of the
    epoch's order, starting at its ``rank`` (the order is padded by repeating its start to a
    multiple of ``num_replicas``, as ``DistributedSampler`` does), so the ranks' ``k``-th batches
    together are the ``k``-th global batch of a single process with ``num_replicas`` times the
    batch size. Being a ``DistributedSampler``, Lightning uses it as it is instead of wrapping it.

    Args:
        num_samples: size of the dataset.
        seed: base seed; epoch ``e`` uses a generator seeded with ``seed`` and ``e``.
        shuffle: shuffle (else the natural order).
        lengths: with ``batch_size``, group examples of similar length into the same batches
            (``transformers``' megabatch scheme), for less padding.
        batch_size: batch size, for length grouping (the global batch under DDP).
        num_replicas: number of data-parallel processes.
        rank: this process's rank among them.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it would ask torch.distributed
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = batch_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """Drop the first ``n`` indices of the next iteration only (mid-epoch resume)."""
        self._skip = n

    def indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.lengths is not None:
            return list(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=g).tolist()
        return list(range(self.num_samples))

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's share of epoch ``epoch``'s order."""
        order = self.indices(epoch)
        if self.num_replicas == 1:
            return order
        padded = len(self) * self.num_replicas
        order += order[: padded - len(order)]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter(self.rank_indices(self.epoch)[skip:])

    def __len__(self) -> int:
        # The full epoch, also when skipping: Lightning counts the resumed batches itself.
        return -(-self.num_samples // self.num_replicas)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning checkpoints and restores.

    Args:
        dataset: the dataset.
        sampler: its :class:`EpochSampler`.
        progress: returns ``(processed, total)``: batches of the current epoch the training loop
            has processed, and how many the epoch has.
        **kwargs: the other ``DataLoader`` arguments.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: EpochSampler,
        progress: Callable[[], tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            # Lightning swapped the sampler (`trainer.overfit_batches` uses a sequential one):
            # the order no longer depends on the epoch, and there is no position to keep.
            return {}
        done, total = self.progress() if self.progress is not None else (0, len(self))
        if done >= total:  # a checkpoint at the end of an epoch resumes at the next one
            return {"epoch": sampler.epoch + 1, "batches": 0}
        return {"epoch": sampler.epoch, "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, EpochSampler):
            return
        sampler.set_epoch(int(state["epoch"]))
        sampler.skip_next(int(state["batches"]) * int(self.batch_size or 1))


def replicas(datamodule: Any) -> dict[str, int]:
    """``num_replicas`` and ``rank`` for an :class:`EpochSampler` from the attached trainer."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return {"num_replicas": 1, "rank": 0}
    return {"num_replicas": int(trainer.world_size), "rank": int(trainer.global_rank)}


def run_seed() -> int:
    """The run's seed: the one ``lightning.seed_everything`` set, else torch's initial seed."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else int(torch.initial_seed() % 2**31)


def loop_progress(datamodule: Any) -> Callable[[], tuple[int, int]]:
    """``(processed, total)`` batches of the trainer's current training epoch."""

    def progress() -> tuple[int, int]:
        trainer = getattr(datamodule, "trainer", None)
        if trainer is None:
            return 0, 1
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return done, int(trainer.num_training_batches)

    return progress
