"""ImageDataModule sources, split and preprocessing, on files the tests write."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.data.idx import read_idx
from tunelab.data.image_datamodule import ImageDataModule


def _write_idx(path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    with gzip.open(tmp_path / "a.gz") as f:
        raw = f.read()
    (tmp_path / "b").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b")


def _folder(tmp_path, classes=("cat", "dog", "eel"), per_class=6, size=(20, 12)):
    root = tmp_path / "imgs"
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.full((*size[::-1], 3), 40 * c + i, dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def test_folder_source_resizes_splits_and_labels(tmp_path):
    root = _folder(tmp_path)
    dm = ImageDataModule(
        source="folder",
        path=str(root),
        num_classes=3,
        image_size=16,
        in_channels=3,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        val_size=3,
    )
    dm.setup()
    assert dm.label_names == ["cat", "dog", "eel"]
    # no test/ folder: a tenth of the 18 images is held out for testing, then 3 validate
    assert len(dm.splits["test"]) == 1 and "test" in dm.held_out
    assert len(dm.splits["train"]) == 14 and len(dm.splits["val"]) == 3
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16)
    assert set(y.tolist()) <= {0, 1, 2}


def test_num_classes_mismatch_names_the_key(tmp_path):
    root = _folder(tmp_path)
    dm = ImageDataModule(
        source="folder",
        path=str(root),
        num_classes=2,
        image_size=16,
        in_channels=3,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        val_size=3,
    )
    with pytest.raises(ValueError, match="num_classes"):
        dm.setup()


def test_npz_source_and_normalization(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, 50)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    dm = ImageDataModule(
        source="npz",
        path=str(tmp_path / "d.npz"),
        num_classes=4,
        image_size=8,
        in_channels=1,
        mean=[0.5],
        std=[0.25],
        val_size=0.2,
        max_train_samples=30,
    )
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    batch = dm.splits["test"].__getitems__([0, 1])
    out = dm.preprocess(batch[0])
    expected = (torch.from_numpy(x[:2, None]).float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, expected)


def test_split_is_fixed_by_split_seed(tmp_path):
    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1).repeat(4, 1).reshape(40, 2, 2)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    kw = dict(
        source="npz",
        path=str(tmp_path / "d.npz"),
        num_classes=2,
        image_size=2,
        in_channels=1,
        mean=[0.5],
        std=[0.5],
        val_size=10,
    )
    a, b, c = ImageDataModule(**kw), ImageDataModule(**kw), ImageDataModule(**kw, split_seed=7)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.splits["val"].images, b.splits["val"].images)
    assert not torch.equal(a.splits["val"].images, c.splits["val"].images)


def test_augmentation_keeps_shape_and_only_applies_in_training(tmp_path):
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    dm = ImageDataModule(
        source="npz",
        path="unused",
        num_classes=2,
        image_size=16,
        in_channels=3,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        augment=True,
    )
    torch.manual_seed(0)
    assert dm.preprocess(x, train=True).shape == (8, 3, 16, 16)
    assert torch.equal(dm.preprocess(x, train=False), dm.preprocess(x, train=False))
