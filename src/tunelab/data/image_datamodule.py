"""The image classification data module: sources, split, uint8 tensors, on-device preprocessing."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tunelab.data import images as readers
from tunelab.data.labels import describe_data, settle_labels
from tunelab.data.resumable import (
    ResumableDataLoader,
    loop_progress,
    replicas,
    run_seed,
)
from tunelab.data.sampling import SAMPLERS, class_counts, train_sampler, train_subset

log = logging.getLogger(__name__)

SOURCES = ("fashion_mnist", "folder", "npz", "hub")


class TensorBatchDataset(Dataset):
    """Images and labels held as tensors; ``__getitems__`` gathers a whole batch in one index.

    The DataLoader calls ``__getitems__`` with the sampler's indices for a batch, so a batch costs
    one tensor gather instead of ``batch_size`` Python calls plus a collate.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


class IndexBatchDataset(Dataset):
    """Yields only the indices of a batch, for data kept on the device (``on_device``): the
    loader then moves a few bytes a step, and the gather happens on the GPU."""

    def __init__(self, split: str, size: int) -> None:
        self.split = split
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return {"split": self.split, "index": torch.as_tensor(indices, dtype=torch.long)}


def _keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class ImageDataModule(L.LightningDataModule):
    """Image classification data: read once into uint8 tensors, normalized on the device.

    Args:
        source: ``fashion_mnist`` (idx files, the embedded default), ``folder`` (one subfolder
            per class, optionally under ``train/`` and ``test/``), ``npz`` or ``hub``.
        path: folder or file for the source; for ``fashion_mnist`` the idx folder.
        num_classes: number of classes, checked against the data; None: as many as it has.
        label_names: class names, index = label; None: the class folders' names (folder), the
            hub's ``ClassLabel`` names, or the ids as text.
        image_size: images are resized (folder, hub) or checked (idx, npz) to this size.
        in_channels: 1 (grayscale) or 3 (RGB).
        mean: per-channel mean of the [0, 1] pixel values, for normalization.
        std: per-channel standard deviation, for normalization.
        val_size: validation examples taken from the training split (int, or a fraction).
        test_size: test examples held out from the training split (int, or a fraction of it)
            when the source has no test split, so the set that picks the best checkpoint never
            reports the test score; ``"all"``: every image is a test example (evaluating a
            checkpoint on new data).
        split_seed: seed of the train/validation split; fixed so that runs share one split.
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and predict (default: ``batch_size``).
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
        pin_memory: pin host memory for faster copies to a GPU.
        augment: random horizontal flip and 4-pixel padded random crop on training batches.
        max_train_samples: cap on training examples: the first ``k`` of a shuffle with
            ``split_seed``, stratified by class (quick runs, few-label experiments).
        max_eval_samples: cap on validation and test examples, for quick runs.
        imbalance_ratio: binary data only: keep this share of class 1 in the training split,
            chosen with ``split_seed`` (validation and test untouched).
        sampler: training order: ``random`` (shuffled) or ``balanced`` (classes drawn equally
            often, with replacement; see :mod:`tunelab.data.sampling`).
        hub_name: dataset name on the Hugging Face hub for ``source=hub``.
        image_column: image column of the hub dataset.
        label_column: label column of the hub dataset.
        cache_dir: cache folder of the hub download.
        on_device: keep each split on the training device (moved there once, on first use)
            and gather batches there: no per-step host-to-device copy of images, for data sets
            that fit in device memory (Fashion-MNIST 47 MB, CIFAR-10 184 MB as uint8).
    """

    def __init__(
        self,
        source: str = "fashion_mnist",
        path: str | None = None,
        num_classes: int | None = 10,
        label_names: Sequence[str] | None = None,
        image_size: int = 28,
        in_channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        val_size: int | float = 5000,
        test_size: int | float | str = 0.1,
        split_seed: int = 1234,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = False,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        imbalance_ratio: float | None = None,
        sampler: str = "random",
        hub_name: str | None = None,
        image_column: str = "img",
        label_column: str = "label",
        cache_dir: str | None = None,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} is not one of {SOURCES}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"data.mean and data.std need {in_channels} values (data.in_channels), "
                f"got {len(mean)} and {len(std)}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"data.sampler={sampler!r} is not one of {SAMPLERS}")
        if source != "hub" and hub_name is not None:
            raise ValueError(
                f"data.hub_name={hub_name} is not read by data.source={source}; to use it, "
                "choose data=cifar10 (data.source=hub), or drop data.hub_name"
            )
        if not (test_size == "all" or isinstance(test_size, int | float)):
            raise ValueError(
                f"data.test_size={test_size!r}: use a fraction, a count, or 'all' (every image "
                "is a test example)"
            )
        if imbalance_ratio is not None and num_classes not in (None, 2):
            raise ValueError(
                f"data.imbalance_ratio={imbalance_ratio} needs binary data (data.num_classes=2, "
                f"not {num_classes}); drop it"
            )
        self.imbalance_ratio = imbalance_ratio
        self.sampler = sampler
        self.source = source
        self.path = path
        self.num_classes = num_classes
        self.label_names = list(label_names) if label_names else None
        self.image_size = image_size
        self.in_channels = in_channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = augment
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.hub_name = hub_name
        self.image_column = image_column
        self.label_column = label_column
        self.cache_dir = cache_dir
        self.on_device = on_device
        self._resident: dict[tuple[str, torch.device], TensorBatchDataset] = {}
        self.splits: dict[str, TensorBatchDataset] = {}
        self.fingerprint: str | None = None
        # How each split that the source lacks was made (for the run record).
        self.held_out: dict[str, str] = {}

    # ---- reading ---------------------------------------------------------------------------
    def _read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.source == "fashion_mnist":
            return readers.read_fashion_mnist(
                Path(self.path or "/usr/share/datasets/fashion-mnist")
            )
        if self.path is None and self.source in ("folder", "npz"):
            raise ValueError(f"data.source={self.source} needs data.path (a folder or .npz file)")
        if self.source == "folder":
            splits, names = readers.read_image_folder(
                Path(self.path), self.image_size, self.in_channels, self.label_names
            )
            self.label_names = names
            return splits
        if self.source == "npz":
            return readers.read_npz(Path(self.path))
        if not self.hub_name:
            raise ValueError("data.source=hub needs data.hub_name (e.g. cifar10)")
        splits, names = readers.read_hub_images(
            self.hub_name,
            self.image_column,
            self.label_column,
            self.image_size,
            self.in_channels,
            self.cache_dir,
        )
        self.label_names = names or self.label_names
        return splits

    def _where(self, split: str) -> str:
        what = self.hub_name if self.source == "hub" else self.path or self.source
        return f"{what} ({split} split)"

    def _check(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{self._where(split)}: images are {tuple(x.shape[1:])} (C, H, W) but the config "
                f"says {expected}; set data.in_channels / data.image_size to match"
            )
        if len(x) != len(y):
            raise ValueError(
                f"{self._where(split)}: {len(x)} images but {len(y)} labels; they must pair up"
            )
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
            first = int(np.flatnonzero((y < 0) | (y >= self.num_classes))[0])
            raise ValueError(
                f"{self._where(split)}: labels span [{y.min()}, {y.max()}] (first bad: index "
                f"{first}, label {y[first]}) but data.num_classes={self.num_classes}; labels must "
                "lie in [0, num_classes)"
            )
        if split == "train" and len(np.unique(y)) < 2:
            raise ValueError(
                f"{self._where(split)} has one class only ({len(y)} examples): a classifier "
                "needs examples of at least two classes; check the data"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = self._read()
        top = max(int(y.max()) if len(y) else 0 for _, y in raw.values())
        found = self.label_names if self.source in ("folder", "hub") else None
        self.label_names, self.num_classes = settle_labels(
            found, self.label_names, self.num_classes, top, str(self.path or self.source)
        )
        if self.imbalance_ratio is not None and self.num_classes != 2:
            raise ValueError(
                f"data.imbalance_ratio={self.imbalance_ratio} needs binary data, but the data "
                f"has {self.num_classes} classes; drop it"
            )
        for split, (x, y) in raw.items():
            self._check(split, x, y)
        parts = self._make_splits(raw)
        h = hashlib.sha256()
        for name, (xs, ys) in parts.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(xs).tobytes())
            h.update(np.ascontiguousarray(ys).tobytes())
        self.fingerprint = h.hexdigest()[:16]
        self.splits = {
            name: TensorBatchDataset(
                torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(ys)
            )
            for name, (xs, ys) in parts.items()
        }
        log.info("image data (%s): %s", self.source, {k: len(v) for k, v in self.splits.items()})

    def _make_splits(
        self, raw: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Train, validation and test; those the source lacks are held out from its training
        split with ``split_seed`` (test first, then validation), never the one from the other."""
        if self.test_size == "all":
            x = np.concatenate([raw[k][0] for k in ("train", "val", "test") if k in raw])
            y = np.concatenate([raw[k][1] for k in ("train", "val", "test") if k in raw])
            return {"test": _cap((x, y), self.max_eval_samples)}
        train = raw["train"]
        self.held_out = {}
        held: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, size in (("test", self.test_size), ("val", self.val_size)):
            if split in raw:
                continue
            n = int(size * len(train[1])) if isinstance(size, float) else int(size)
            if not 0 < n < len(train[1]):
                raise ValueError(
                    f"data.{split}_size={size} leaves no data for train or {split} "
                    f"({len(train[1])} examples)"
                )
            # Validation keeps the generator it always had (the same split as before test
            # splits were held out); the test split gets its own stream.
            seed = self.split_seed if split == "val" else [self.split_seed, 1]
            perm = np.random.default_rng(seed).permutation(len(train[1]))
            held[split] = (train[0][perm[:n]], train[1][perm[:n]])
            train = (train[0][perm[n:]], train[1][perm[n:]])
            self.held_out[split] = (
                f"held out from the training data (data.{split}_size={size}, "
                f"data.split_seed={self.split_seed})"
            )
        return {
            "train": self._train_subset(train),
            "val": _cap(raw.get("val", held.get("val")), self.max_eval_samples),
            "test": _cap(raw.get("test", held.get("test")), self.max_eval_samples),
        }

    def _train_subset(self, pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keep = train_subset(pair[1], self.split_seed, self.imbalance_ratio, self.max_train_samples)
        return pair if keep is None else (pair[0][keep], pair[1][keep])

    def class_counts(self) -> list[int]:
        """Examples per class in the training split (after subsetting), for class weights."""
        return class_counts(self.splits["train"].labels, self.num_classes)

    def describe(self) -> dict[str, Any]:
        """What the run's record keeps of the data (after :meth:`setup`)."""
        return describe_data(self)

    # ---- loaders ---------------------------------------------------------------------------
    def _dataset(self, split: str) -> Dataset:
        if self.on_device:
            return IndexBatchDataset(split, len(self.splits[split]))
        return self.splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=_keep_batch,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        return ResumableDataLoader(
            self._dataset("train"),
            sampler=train_sampler(self.sampler, train.labels, seed=run_seed(), **replicas(self)),
            progress=loop_progress(self),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=_keep_batch,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ---- preprocessing on the device -------------------------------------------------------
    def preprocess(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 (N, C, H, W) → normalized float, with augmentation when ``train``."""
        x = images.float().div_(255.0)
        if train and self.augment:
            x = _random_flip_crop(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def on_device_split(self, split: str, device: torch.device) -> TensorBatchDataset:
        """Split ``split`` held on ``device`` (copied there on first use)."""
        key = (split, device)
        if key not in self._resident:
            data = self.splits[split]
            self._resident[key] = TensorBatchDataset(data.images.to(device), data.labels.to(device))
        return self._resident[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict):  # on_device: indices only; gather on the device
            index = batch["index"]
            batch = self.on_device_split(batch["split"], index.device).__getitems__(index)
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(x, train=training), y


def _cap(pair: tuple[np.ndarray, np.ndarray], n: int | None) -> tuple[np.ndarray, np.ndarray]:
    return pair if n is None else (pair[0][:n], pair[1][:n])


def _random_flip_crop(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and padded random crop, batched, on whatever device ``x`` is."""
    n, _, h, w = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]
