"""Reading images from the sources tunelab supports, as uint8 arrays (N, C, H, W).

Kept apart from the data module so that ``tunelab-predict`` can read new images with exactly the
same decoding and resizing as training did.
"""

from __future__ import annotations

import logging
import warnings
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
    """Read one image file; an unreadable file raises ``ValueError`` naming it.

    An image of more than Pillow's ``Image.MAX_IMAGE_PIXELS`` pixels (89.5 million) is read
    with a warning naming it; one of more than twice that is refused: such a file is most often
    a decompression bomb (a small file that decodes to gigabytes), and tunelab shrinks every
    image to ``data.image_size`` anyway.
    """
    try:
        with warnings.catch_warnings():
            # Pillow's own warning does not name the file: ours below does.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                pixels = img.size[0] * img.size[1]
                if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                    log.warning(
                        "image %s is %dx%d (%d pixels, more than Pillow's limit of %d): reading "
                        "it takes much memory; downscale it",
                        path, *img.size, pixels, Image.MAX_IMAGE_PIXELS,
                    )  # fmt: skip
                return pil_to_array(img, image_size, in_channels)
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"cannot read image {path}: {err} Downscale it (tunelab resizes every image to "
            "data.image_size anyway) or remove it."
        ) from None
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

    Images are (N, H, W) or (N, H, W, C) or (N, C, H, W), as :func:`to_nchw` takes them. Labels
    are class indices, one per image: shape (N,) (or (N, 1)), integers, or floats that are whole
    numbers. Fractional labels are refused (as the CSV reader refuses float labels), and so are
    2-D labels (one-hot rows: ``y.argmax(1)``) and object arrays (which would need unpickling).
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
                x = to_nchw(_array(z, xk, path), f"{path} ({xk!r})")
                out[split] = (x, _labels(_array(z, yk, path), f"{path} ({yk!r})"))
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


def _array(z: Any, key: str, path: Path) -> np.ndarray:
    """One array of an open ``.npz``; an object array or a damaged member names the key."""
    try:
        return z[key]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise ValueError(f"{path}: array {key!r} cannot be read ({err})") from None
        raise ValueError(
            f"{path}: array {key!r} is an object array (dtype=object), which tunelab does not "
            "load (unpickling can run code); save numeric arrays of one shape, e.g. "
            f"numpy.savez(path, {key}=numpy.stack(items))"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path}: array {key!r} is damaged ({type(err).__name__}: {err}); write the file again"
        ) from None


def _first(bad: np.ndarray) -> int:
    """The index of the first image (or label) flagged in ``bad`` (one row per item)."""
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(1))[0])


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices (int64, shape (N,)) from an ``.npz`` label array, or a ``ValueError``."""
    if y.ndim == 2 and y.shape[1] == 1:  # (N, 1), as Keras' CIFAR-10 has them
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{where}: labels have shape {y.shape}; they must be one class index per image, "
            "shape (N,) (for one-hot rows save y.argmax(1))"
        )
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise ValueError(
            f"{where}: labels have dtype {y.dtype}; they must be integer class indices"
        )
    finite = np.isfinite(y)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{where}: label {i} is {y[i].item()}; labels must be integer class indices"
        )
    whole = y == np.round(y)
    if not whole.all():
        i = int(np.flatnonzero(~whole)[0])
        raise ValueError(
            f"{where}: label {i} is {y[i].item()!r}, not a whole number; labels must be integer class "
            f"indices ({int((~whole).sum())} of {len(y)} are fractional). Fix the labels; "
            "tunelab does not round them"
        )
    return y.astype(np.int64)


def to_nchw(x: np.ndarray, where: object) -> np.ndarray:
    """Bring an image batch to (N, C, H, W) uint8.

    Integer images must lie in [0, 255]. Float images in [0, 1] are scaled by 255, those in
    [0, 255] taken as they are; NaN or infinite pixels, and negative values (images that are
    normalized already), are refused with the index of the first such image.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"{where}: images must be (N, H, W[, C]), got shape {x.shape}")
    if x.dtype.kind not in "uifb":
        raise ValueError(
            f"{where}: images have dtype {x.dtype}; they must be numbers (uint8 0..255, or "
            "floats in [0, 1])"
        )
    if x.dtype == np.uint8 or not x.size:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            i = _first(~finite)
            raise ValueError(
                f"{where}: image {i} has {int((~finite[i]).sum())} NaN or infinite pixel(s) "
                f"({int((~finite).reshape(len(x), -1).any(1).sum())} image(s) in all); fix or "
                "drop those images"
            )
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        i = _first((x < 0) | (x > 255))
        raise ValueError(
            f"{where}: pixel values span [{low}, {high}] (first outside [0, 255]: image {i}); "
            "give uint8 images in 0..255 or float images in [0, 1], not normalized ones"
        )
    if x.dtype.kind == "f" and high <= 1.0:
        x = x * 255.0
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


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
    Image files are resized to ``image_size``; the images of an ``.npz`` must have the model's
    shape, ``(in_channels, image_size, image_size)``.
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
            x = to_nchw(_array(z, key, path), f"{path} ({key!r})")
        expected = (in_channels, image_size, image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{path} ({key!r}): images are {tuple(x.shape[1:])} (C, H, W) but the "
                f"checkpoint's model takes {expected}; resize them to {image_size}x{image_size} "
                f"with {in_channels} channel(s) (or pass image files, which are resized)"
            )
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
