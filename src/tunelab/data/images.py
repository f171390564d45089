"""Reading images from the sources tunelab supports, as uint8 arrays (N, C, H, W).

Kept apart from the data module so that ``tunelab-predict`` can read new images with exactly the
same decoding and resizing as training did.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tunelab.data.idx import read_idx

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def pil_to_array(img: Image.Image, image_size: int, in_channels: int) -> np.ndarray:
    """Convert a PIL image to a (C, H, W) uint8 array of the configured size and channels."""
    img = img.convert("L" if in_channels == 1 else "RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_file(path: Path, image_size: int, in_channels: int) -> np.ndarray:
    """Read one image file; an unreadable file raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as img:
            return pil_to_array(img, image_size, in_channels)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}. Remove or replace the file.") from err


def read_fashion_mnist(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read Fashion-MNIST's idx files from ``root`` into ``{"train": (x, y), "test": (x, y)}``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {root}. Install the Debian package "
            "'dataset-fashion-mnist' (`make install` does it) or set data.path to a folder "
            "holding the {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] files."
        )
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pair = []
        for kind in ("images-idx3", "labels-idx1"):
            candidates = [root / f"{prefix}-{kind}-ubyte.gz", root / f"{prefix}-{kind}-ubyte"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"missing {candidates[0]} (or its uncompressed twin)")
            pair.append(read_idx(found))
        images, labels = pair
        if len(images) != len(labels):
            raise ValueError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        out[split] = (images[:, None].copy(), labels.astype(np.int64))
    return out


def _read_class_folders(
    root: Path, image_size: int, in_channels: int, class_names: list[str], required: bool
):
    images, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            what = "is missing" if not (root / name).is_dir() else "has no image files"
            if required:
                raise ValueError(
                    f"class folder {root / name} {what} ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                    "add images of that class, or remove it from data.label_names"
                )
            log.warning("class folder %s %s: that class has no examples here", root / name, what)
        for f in files:
            images.append(read_image_file(f, image_size, in_channels))
            labels.append(label)
    if not images:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def read_image_folder(
    root: Path, image_size: int, in_channels: int, label_names: list[str] | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read an image folder: one subfolder per class, optionally under ``train/`` and ``test/``.

    Returns the splits found and the class names (subfolder names, sorted, unless given).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (set data.path)")
    split_roots = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if not split_roots:
        split_roots = {"train": root}
    names = label_names or sorted(p.name for p in split_roots["train"].iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"{split_roots['train']} has no class subfolders (one per class expected)")
    out = {
        split: _read_class_folders(r, image_size, in_channels, names, required=split == "train")
        for split, r in split_roots.items()
    }
    return out, list(names)


def read_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``x_train``/``y_train`` (and ``x_test``/``y_test``), or ``x``/``y``, from an ``.npz``.

    Images are (N, H, W) or (N, H, W, C) or (N, C, H, W) uint8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path} (set data.path)")
    with _open_npz(path) as z:
        keys = set(z.files)
        pairs = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
        if "x" in keys and "y" in keys:
            pairs = {"train": ("x", "y")}
        out = {}
        for split, (xk, yk) in pairs.items():
            if xk in keys and yk in keys:
                out[split] = (to_nchw(z[xk], path), z[yk].astype(np.int64))
    if "train" not in out:
        raise ValueError(
            f"{path}: expected arrays 'x_train' and 'y_train' (optionally 'x_test', 'y_test') "
            f"or 'x' and 'y'; found {sorted(keys)}"
        )
    return out


def _open_npz(path: Path) -> Any:
    """``np.load`` of an ``.npz``, with an error that names the file when it is not one."""
    try:
        z = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is not a readable .npz file ({type(err).__name__}: {err}); write it with "
            "numpy.savez(path, x_train=..., y_train=...)"
        ) from err
    if not hasattr(z, "files"):  # np.save wrote a single array
        raise ValueError(f"{path} holds a single array, not an .npz archive; use numpy.savez")
    return z


def to_nchw(x: np.ndarray, where: object) -> np.ndarray:
    """Bring an image batch to (N, C, H, W) uint8."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"{where}: images must be (N, H, W[, C]), got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(x * 255.0 if x.max() <= 1.0 else x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def read_hub_images(
    name: str,
    image_column: str,
    label_column: str,
    image_size: int,
    in_channels: int,
    cache_dir: str | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str] | None]:
    """Load an image classification dataset from the Hugging Face hub (e.g. ``cifar10``)."""
    import datasets

    ds = datasets.load_dataset(name, cache_dir=cache_dir)
    out = {}
    label_names = None
    for split in ds:
        d = ds[split]
        for col in (image_column, label_column):
            if col not in d.column_names:
                raise ValueError(
                    f"hub dataset {name!r} split {split!r} has no column {col!r} "
                    f"(columns: {d.column_names}); set data.image_column / data.label_column"
                )
        feature = d.features[label_column]
        label_names = getattr(feature, "names", None) or label_names
        images = np.stack([pil_to_array(im, image_size, in_channels) for im in d[image_column]])
        out[split] = (images, np.asarray(d[label_column], dtype=np.int64))
    return out, label_names


def read_predict_inputs(
    path: Path, image_size: int, in_channels: int
) -> tuple[list[str], np.ndarray]:
    """Images to classify: one image file, a folder of them (sorted), or an ``.npz``.

    Returns a name per image (its path, or ``file.npz[i]``) and the (N, C, H, W) uint8 array.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.suffix == ".npz":
        with _open_npz(path) as z:
            key = next((k for k in ("x", "x_test", "images") if k in z.files), None)
            if key is None:
                raise ValueError(
                    f"{path}: expected an array 'x', 'x_test' or 'images'; found {z.files}"
                )
            x = to_nchw(z[key], path)
        return [f"{path}[{i}]" for i in range(len(x))], x
    files = (
        sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        raise ValueError(f"no image files under {path}")
    return [str(f) for f in files], np.stack(
        [read_image_file(f, image_size, in_channels) for f in files]
    )
