"""Raw labeled text sources, read into `datasets.Dataset` objects without tokenizing.

Every reader returns the columns ``text`` (str) and ``label`` (int in ``[0, num_classes)``),
plus ``id`` (str) where the source has one. Sources: the VADER ground truth (Hutto & Gilbert,
ICWSM 2014, MIT; in the sdist of ``vaderSentiment==3.3.2``), the offline default; the original
IMDB distribution (``aclImdb/``); CSV, JSON Lines and Parquet files; the Hugging Face Hub.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, Value

log = logging.getLogger(__name__)

VADER_SDIST_ENV = "TUNELAB_VADER_SDIST"
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_DIRNAME = "vader_hutto_icwsm2014"
VADER_DOMAINS = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "products": "amazonReviewSnippets_GroundTruth.txt",
    "editorials": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
_VADER_FILES = {*VADER_DOMAINS.values(), "_README_.txt"}
_VADER_INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
_TABLE_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_SPLIT_STEMS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


# The classes of the binary sentiment sources (the embedded corpora, aclImdb): label 0, 1.
SENTIMENT_NAMES = ("negative", "positive")


def _features(with_id: bool) -> datasets.Features:
    columns = {"text": Value("string"), "label": Value("int64")}
    if with_id:
        columns["id"] = Value("string")
    return datasets.Features(columns)


# --- VADER ground-truth corpus -------------------------------------------------------------


def ensure_vader_corpus(data_dir: Path) -> Path:
    """Put the VADER ground-truth files under ``data_dir/vader_hutto_icwsm2014/`` once.

    Fetches the sdist of ``vaderSentiment==3.3.2`` with ``pip download`` (or takes the
    tarball named by the ``TUNELAB_VADER_SDIST`` environment variable), and keeps the four
    ``*_GroundTruth.txt`` files and ``_README_.txt``. Files are staged in a temporary folder
    inside ``data_dir`` and renamed into place, so an interrupted run never leaves a half
    corpus behind. Does nothing, and needs no network, when the files are already there.

    Args:
        data_dir: Folder that holds tunelab's data (created if missing).

    Returns:
        The corpus folder.

    Raises:
        FileNotFoundError: ``TUNELAB_VADER_SDIST`` names a file that does not exist.
        RuntimeError: ``pip download`` failed, or the sdist lacks the corpus.
    """
    data_dir = Path(data_dir)
    target = data_dir / VADER_DIRNAME
    if _vader_complete(target):
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    # A unique staging name: a folder left by a killed run can never collide with this one.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".{VADER_DIRNAME}.tmp-") as tmp:
        staging = Path(tmp) / VADER_DIRNAME
        _extract_vader(_vader_sdist(Path(tmp) / "download"), staging)
        if target.exists():  # incomplete (files deleted by hand): move it aside, then replace
            os.replace(target, Path(tmp) / "stale")
        try:
            os.replace(staging, target)
        except OSError:
            if not _vader_complete(target):  # not a concurrent run that finished first
                raise
    log.info("VADER ground-truth corpus ready in %s", target)
    return target


def _vader_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in VADER_DOMAINS.values())


def _vader_sdist(download_dir: Path) -> Path:
    env_path = os.environ.get(VADER_SDIST_ENV)
    if env_path:
        if not Path(env_path).is_file():
            raise FileNotFoundError(
                f"{VADER_SDIST_ENV}={env_path} does not exist. Point it at the sdist "
                f"vaderSentiment-3.3.2.tar.gz, or unset it to let pip download the file."
            )
        return Path(env_path)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["--disable-pip-version-check", VADER_REQUIREMENT, "-d", str(download_dir)]
    log.info("Downloading the VADER corpus: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    files = sorted(download_dir.glob("*")) if download_dir.is_dir() else []
    if result.returncode != 0 or len(files) != 1:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit code {result.returncode}):\n"
            f"{(result.stderr or result.stdout)[-2000:]}\n"
            f"Get the source distribution by hand, e.g. on a machine with network run\n"
            f"  pip download --no-deps --no-binary :all: {VADER_REQUIREMENT}\n"
            f"(or take vaderSentiment-3.3.2.tar.gz from https://pypi.org/project/vaderSentiment/"
            f"3.3.2/#files), copy it here and set {VADER_SDIST_ENV}=/path/to/that/file."
        )
    return files[0]


def _extract_vader(sdist: Path, staging: Path) -> None:
    # Members are written by base name, never extracted by their own path (no path traversal).
    staging.mkdir(parents=True)
    fix = f"Check that {sdist} is the sdist of {VADER_REQUIREMENT} (not a wheel)."
    try:
        with tarfile.open(sdist) as outer:
            inner_member = next(
                (m for m in outer.getmembers() if m.name.endswith(_VADER_INNER_TAR)), None
            )
            if inner_member is None:
                raise RuntimeError(f"{sdist} has no {_VADER_INNER_TAR}. {fix}")
            inner_file = outer.extractfile(inner_member)
            with tarfile.open(fileobj=inner_file, mode="r:*") as inner:
                for member in inner.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and name in _VADER_FILES:
                        (staging / name).write_bytes(inner.extractfile(member).read())
    except tarfile.TarError as err:
        raise RuntimeError(f"Cannot unpack {sdist}: {err}. {fix}") from err
    if not _vader_complete(staging):
        missing = sorted(_VADER_FILES - {p.name for p in staging.iterdir()})
        raise RuntimeError(f"{sdist} lacks {missing} in {_VADER_INNER_TAR}. {fix}")


def load_vader_domain(domain: str, data_dir: Path) -> Dataset:
    """Load one domain of the VADER ground truth as a binary sentiment dataset.

    Each line is ``id<TAB>mean rating in [-4, 4]<TAB>text``. The label is 1 for a positive
    mean rating and 0 for a negative one; snippets rated exactly 0 have no polarity and are
    dropped.

    Args:
        domain: One of ``movies``, ``products``, ``editorials``, ``tweets``.
        data_dir: Folder that holds tunelab's data; the corpus is fetched there if missing.

    Returns:
        A dataset with columns ``text``, ``label`` and ``id``, in file order.

    Raises:
        ValueError: Unknown domain, or a malformed line (named by file and line number).
    """
    if domain not in VADER_DOMAINS:
        raise ValueError(f"Unknown VADER domain {domain!r}; choose one of {sorted(VADER_DOMAINS)}.")
    path = ensure_vader_corpus(Path(data_dir)) / VADER_DOMAINS[domain]
    texts, labels, ids = [], [], []
    dropped = 0
    # Split on "\n" only: str.splitlines() would also break on characters inside the text.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t", 2)  # the text itself may contain tabs
        try:
            score = float(fields[1])
        except (IndexError, ValueError):
            score = float("nan")
        if len(fields) != 3 or not -4.0 <= score <= 4.0:
            raise ValueError(
                f"{path}, line {number}: expected `id<TAB>score in [-4, 4]<TAB>text`, got "
                f"{line[:80]!r}. Delete {path.parent} to fetch the corpus again."
            )
        if score == 0:
            dropped += 1
            continue
        ids.append(fields[0])
        labels.append(int(score > 0))
        texts.append(fields[2])
    log.info("VADER %s: %d snippets, dropped %d rated exactly 0", domain, len(texts), dropped)
    return Dataset.from_dict({"text": texts, "label": labels, "id": ids}, features=_features(True))


# --- Decoding -----------------------------------------------------------------------------

DECODE_ERRORS = ("strict", "replace")


def decode_utf8(raw: bytes, source: object, errors: str = "strict") -> tuple[str, int]:
    """Decode UTF-8 bytes; name the first bad line, or replace bad bytes and count them.

    Args:
        raw: the file's bytes.
        source: what to call the file in messages (its path).
        errors: ``strict`` (a ``ValueError`` at the first undecodable byte) or ``replace``
            (each undecodable sequence becomes U+FFFD; config key ``data.decode_errors``).

    Returns:
        The text and the number of replaced byte sequences.
    """
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError as err:
        if errors != "replace":
            line = raw.count(b"\n", 0, err.start) + 1
            raise ValueError(
                f"{source}, line {line}: not UTF-8 text (byte {raw[err.start : err.start + 1]!r} at "
                f"offset {err.start}); re-save the file as UTF-8, or set "
                f"data.decode_errors=replace to replace undecodable bytes with U+FFFD"
            ) from None
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def _utf8_table(file: Path, errors: str, scratch: Path) -> Path:
    """``file`` if it is UTF-8; with ``errors=replace``, a decoded UTF-8 copy of it."""
    raw = file.read_bytes()
    text, replaced = decode_utf8(raw, file, errors)
    if not replaced:
        return file
    lines = [n for n, line in enumerate(text.split("\n"), start=1) if "\ufffd" in line]
    log.warning(
        "%s: replaced %d undecodable byte sequence(s) with U+FFFD on %d line(s), first on line "
        "%d (data.decode_errors=replace)",
        file,
        replaced,
        len(lines),
        lines[0] if lines else 0,
    )
    # Named by content, so the datasets cache keeps working across runs.
    target = scratch / "decoded" / f"{hashlib.sha256(raw).hexdigest()[:16]}-{file.name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return target


# --- IMDB (aclImdb) -----------------------------------------------------------------------


def read_aclimdb(path: Path, decode_errors: str = "strict") -> dict[str, Dataset]:
    """Read the original IMDB review distribution (Maas et al., 2011).

    Args:
        path: The ``aclImdb`` folder or its parent. ``unsup/`` is ignored.
        decode_errors: ``strict`` or ``replace``, for files that are not UTF-8 (see
            :func:`decode_utf8`).

    Returns:
        ``{"train": ..., "test": ...}`` with columns ``text``, ``label`` (neg=0, pos=1) and
        ``id`` (the file path relative to ``aclImdb``), sorted by ``id``. Text is kept as is.

    Raises:
        FileNotFoundError: A ``{train,test}/{pos,neg}`` folder is missing.
        ValueError: Such a folder has no ``*.txt`` files, or a file is not UTF-8.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"IMDB folder {path} does not exist; check data.path.")
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    splits = {}
    replaced = files_replaced = 0
    for split in ("train", "test"):
        columns: dict[str, list] = {"text": [], "label": [], "id": []}
        for label, polarity in enumerate(("neg", "pos")):  # "neg" < "pos": rows sorted by id
            folder = root / split / polarity
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"IMDB folder {folder} is missing. Point the path at the unpacked aclImdb/ "
                    f"folder (or its parent) with train/ and test/, each with pos/ and neg/."
                )
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise ValueError(f"IMDB folder {folder} has no *.txt reviews; re-unpack it.")
            for file in files:
                text, n = decode_utf8(file.read_bytes(), file, decode_errors)
                replaced += n
                files_replaced += bool(n)
                columns["text"].append(text)
                columns["label"].append(label)
                columns["id"].append(file.relative_to(root).as_posix())
        splits[split] = Dataset.from_dict(columns, features=_features(True))
    if replaced:
        log.warning(
            "%s: replaced %d undecodable byte sequence(s) with U+FFFD in %d file(s) "
            "(data.decode_errors=replace)",
            root,
            replaced,
            files_replaced,
        )
    return splits


# --- Tables and the Hub ---------------------------------------------------------------------


def read_table_files(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    cache_dir: str | None = None,
    decode_errors: str = "strict",
    num_classes: int | None = None,
) -> tuple[dict[str, Dataset], list[str] | None]:
    """Read CSV, JSON Lines (``.jsonl``/``.json``) or Parquet files with the `datasets` loaders.

    Args:
        path: One file (read as the ``train`` split), or a folder with files named
            ``train.*``, ``validation.*`` (or ``val.*``) and ``test.*``.
        text_column: Column holding the text (config key ``data.text_column``).
        label_column: Column holding the label (``data.label_column``): integers, or
            strings mapped to their index in ``label_names``.
        label_names: Class names in label order (``data.label_names``). When None and the
            labels are strings, the sorted unique labels of all splits are used.
        cache_dir: Cache folder for `datasets.load_dataset` (its default when None).
        decode_errors: ``strict`` or ``replace``, for CSV and JSON files that are not UTF-8
            (see :func:`decode_utf8`).
        num_classes: With integer labels and no ``label_names``, labels must lie in
            ``[0, num_classes)`` (``data.num_classes``).

    Returns:
        The splits (columns ``text``, ``label``, plus ``id`` if the files have one) and the
        label names used (None for integer labels given without names).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder has no split files.
        ValueError: Unsupported file type, an empty or malformed file, text that is not UTF-8,
            a missing column, or a bad label (named by file and line or row).
    """
    path = Path(path)
    if path.is_file():
        files = {"train": path}
    elif path.is_dir():
        files = {}
        for file in sorted(path.iterdir()):
            split = _SPLIT_STEMS.get(file.name.split(".")[0])
            if split is None or file.suffix.lower() not in _TABLE_BUILDERS:
                continue
            if split in files:
                raise ValueError(
                    f"{path} has two {split} files: {files[split]} and {file}; keep one."
                )
            files[split] = file
        if not files:
            raise FileNotFoundError(
                f"{path} has no train.*, validation.* (or val.*) or test.* file with a suffix in "
                f"{sorted(_TABLE_BUILDERS)}."
            )
        if "train" not in files:
            raise FileNotFoundError(
                f"{path} has {', '.join(str(f.name) for f in files.values())} but no train.* "
                "file; add one (the training split is required)."
            )
    else:
        raise FileNotFoundError(f"Data path {path} does not exist; check data.path.")
    scratch = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "tunelab"
    raw = {}
    for split, file in files.items():
        builder = _TABLE_BUILDERS.get(file.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{file}: unsupported file type; use one of {sorted(_TABLE_BUILDERS)}."
            )
        if file.stat().st_size == 0:
            raise ValueError(f"{file} is empty (0 bytes); fill it or remove it.")
        readable = file if builder == "parquet" else _utf8_table(file, decode_errors, scratch)
        try:
            ds = datasets.load_dataset(
                builder, data_files=str(readable), split="train", cache_dir=cache_dir
            )
        except Exception as err:  # datasets wraps pandas / pyarrow errors of many types
            _raise_if_cache_unwritable(err, cache_dir)
            raise ValueError(_unreadable(file, readable, builder, err)) from err
        if len(ds) == 0:
            raise ValueError(f"{file} has no rows (a header only?); add data or remove it.")
        raw[split] = (str(file), ds)
    return _standardize(raw, text_column, label_column, label_names, num_classes)


def _raise_if_cache_unwritable(err: BaseException, cache_dir: str | None) -> None:
    """The `datasets` cache could not be written (read-only, no permission, disk full): say so,
    rather than blame the file's format."""
    inner: BaseException | None = err
    for _ in range(20):
        if inner is None:
            return
        if isinstance(inner, OSError) and inner.errno in (errno.ENOSPC, errno.EDQUOT):
            raise inner  # a fault of the machine: tunelab.cli names it (exit 1)
        if isinstance(inner, OSError) and inner.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = cache_dir or "the datasets cache (HF_DATASETS_CACHE)"
            raise ValueError(
                f"cannot write the data cache {where}: {inner.strerror} ({inner.filename}); set "
                "data.cache_dir to a folder tunelab can write"
            ) from None
        inner = inner.__cause__ or inner.__context__


def _unreadable(file: Path, readable: Path, builder: str, err: BaseException) -> str:
    """Why a table file could not be read, with the line of the first bad JSON record."""
    root = err
    for _ in range(20):  # the innermost error of the chain says what is wrong
        inner = root.__cause__ or root.__context__
        if inner is None:
            break
        root = inner
    reason = (
        f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"
    )
    kind = {"csv": "CSV", "json": "JSON Lines", "parquet": "Parquet"}[builder]
    if builder == "json":
        with open(readable, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as bad:
                    return (
                        f"{file}, line {number}: not valid JSON ({bad.msg}, column {bad.colno}); "
                        "a JSON Lines file holds one JSON object per line. Fix the line."
                    )
                if not isinstance(record, dict):
                    return (
                        f"{file}, line {number}: a JSON {_json_kind(record)}, not an object; a "
                        "JSON Lines file holds one JSON object per line. Fix the line."
                    )
    return f"{file} cannot be read as {kind} ({reason}); check the file's format."


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _mixed_labels(source: str, label_column: str, values: list) -> str | None:
    """A message naming the first row whose label is of another kind than the first label's
    (JSON Lines with ``"label": 1`` on one line and ``"label": "positive"`` on another)."""
    first = next(((row, v) for row, v in enumerate(values, 1) if v is not None), None)
    if first is None:
        return None
    for row, value in enumerate(values, start=1):
        if value is not None and _json_kind(value) != _json_kind(first[1]):
            return (
                f"{source}, row {row}: label {value!r} is a {_json_kind(value)}, but row "
                f"{first[0]}'s is a {_json_kind(first[1])} ({first[1]!r}); give every "
                f"{label_column!r} label the same kind (all names, or all class indices)."
            )
    return None


def load_hub_text(
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    cache_dir: str | None = None,
    num_classes: int | None = None,
) -> tuple[dict[str, Dataset], list[str] | None]:
    """Load a text-classification dataset from the Hugging Face Hub (e.g. ``stanfordnlp/imdb``).

    Keeps the ``train``, ``validation`` and ``test`` splits (``unsup`` and others are dropped);
    label names come from a ``ClassLabel`` label column when there is one.

    Args:
        name: Hub dataset name.
        text_column: Column holding the text (``data.text_column``).
        label_column: Column holding the label (``data.label_column``).
        cache_dir: Cache folder for `datasets.load_dataset`.
        num_classes: Integer labels must lie in ``[0, num_classes)``.

    Returns:
        The splits and the label names, as for `read_table_files`.

    Raises:
        ConnectionError: The Hub cannot be reached and the dataset is not cached.
        ValueError: No ``train`` split, a missing column or a bad label.
    """
    try:
        loaded = datasets.load_dataset(name, cache_dir=cache_dir)
    except ConnectionError as err:
        raise ConnectionError(
            f"Cannot load Hub dataset {name!r}: {err}. Check the name and the network (or that "
            f"it is in the cache {cache_dir or 'default'} when HF_DATASETS_OFFLINE=1), or "
            f"download the files and read them with a local data.path instead."
        ) from err
    if "train" not in loaded:
        raise ValueError(f"Hub dataset {name!r} has no train split (found {list(loaded)}).")
    raw = {
        split: (f"Hub dataset {name!r}, split {split}", loaded[split])
        for split in ("train", "validation", "test")
        if split in loaded
    }
    return _standardize(raw, text_column, label_column, None, num_classes)


def _standardize(
    raw: dict[str, tuple[str, Dataset]],
    text_column: str,
    label_column: str,
    label_names: list[str] | None,
    num_classes: int | None = None,
) -> tuple[dict[str, Dataset], list[str] | None]:
    """Rename columns to ``text``/``label`` (+ ``id``) and turn labels into class indices."""
    if text_column == label_column:
        raise ValueError(f"data.text_column and data.label_column are both {text_column!r}.")
    values: dict[str, list] = {}
    class_names: dict[str, list[str] | None] = {}
    for split, (source, ds) in raw.items():
        for what, column in (("text", text_column), ("label", label_column)):
            if column not in ds.column_names:
                raise ValueError(
                    f"{source}: no {what} column {column!r}; found {ds.column_names}. "
                    f"Set data.{what}_column to the column that holds the {what}."
                )
        feature = ds.features[label_column]
        dtype = getattr(feature, "dtype", "")
        if not isinstance(feature, ClassLabel) and not dtype.startswith(
            ("int", "uint", "string", "large_string")
        ):
            mixed = _mixed_labels(source, label_column, ds[label_column])
            if mixed:
                raise ValueError(mixed)
            raise ValueError(
                f"{source}: label column {label_column!r} has type {dtype or feature}; labels must "
                f"be integers or strings (float labels often mean empty cells)."
            )
        # As one Arrow column: iterating `ds[label_column]` goes row by row (~50 µs a row).
        values[split] = ds.with_format("arrow")[label_column].to_pylist()
        class_names[split] = feature.names if isinstance(feature, ClassLabel) else None
    if label_names is None:
        label_names = next((names for names in class_names.values() if names), None)
    if label_names is None and any(isinstance(v, str) for vs in values.values() for v in vs):
        label_names = sorted({v for vs in values.values() for v in vs if isinstance(v, str)})
    out = {}
    for split, (source, ds) in raw.items():
        names = class_names[split]
        if names is not None and names != label_names:  # match ClassLabel values by name
            values[split] = [None if v is None else names[v] for v in values[split]]
        labels = _label_ids(values[split], label_names, source, num_classes)
        if ds.data.column(text_column).null_count:
            row = ds.data.column(text_column).to_pylist().index(None) + 1
            raise ValueError(f"{source}, row {row}: the text is empty; fill it or drop the row.")
        with_id = "id" in ds.column_names and "id" not in (text_column, label_column)
        ds = ds.select_columns([text_column, label_column] + (["id"] if with_id else []))
        ds = ds.rename_columns({text_column: "text", label_column: "__raw_label__"})
        ds = ds.remove_columns("__raw_label__").add_column("label", labels, feature=Value("int64"))
        ds = ds.select_columns(["text", "label"] + (["id"] if with_id else []))
        out[split] = ds.cast(_features(with_id))
    return out, label_names


def _label_ids(
    values: list, label_names: list[str] | None, source: str, num_classes: int | None = None
) -> list[int]:
    """Map labels to class indices, naming the first bad row (counted from 1, no header)."""
    index = {name: i for i, name in enumerate(label_names or [])}
    ids = []
    for row, value in enumerate(values, start=1):
        if isinstance(value, str) and value in index:
            ids.append(index[value])
        elif isinstance(value, int) and value >= 0 and (label_names is None or value < len(index)):
            if label_names is None and num_classes is not None and value >= num_classes:
                raise ValueError(
                    f"{source}, row {row}: label {value} is outside [0, {num_classes}) "
                    f"(data.num_classes={num_classes}). Fix the row, or set data.num_classes."
                )
            ids.append(value)
        elif isinstance(value, str):
            raise ValueError(
                f"{source}, row {row}: label {value!r} is not one of the label names "
                f"{label_names}. Add it to data.label_names or fix the row."
            )
        elif value is None:
            raise ValueError(f"{source}, row {row}: the label is empty; fill it or drop the row.")
        else:
            limit = f"[0, {len(index)})" if label_names is not None else ">= 0"
            raise ValueError(
                f"{source}, row {row}: label {value!r} is not an integer {limit}. "
                f"Fix the row, or set data.label_names to match the labels."
            )
    return ids
