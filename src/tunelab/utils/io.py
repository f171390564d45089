"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path`` under a unique hidden name: ``(fd, name)``.

    Created with mode 0666 less the umask, as ``open`` creates files, so the renamed file has the
    mode the user expects (0644 under umask 022: colleagues on a shared cluster can read runs).
    ``tempfile.mkstemp`` would make it 0600 whatever the umask.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way to read it is to set it (for an instant, process-wide).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(root: str | Path) -> None:
    """Give ``root`` and every file and folder under it the mode ``open``/``mkdir`` would give.

    That is 0666 (files) or 0777 (folders) less the umask. For a folder written by a library
    that creates some files 0600 whatever the umask (``safetensors`` writes ``model.safetensors``
    so), before it is renamed into a run directory. Links are left alone.
    """
    mask = current_umask()
    root = Path(root)
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the mode ``open`` would give it (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """:func:`atomic_write_text` of a CSV file: ``header``, then one line per row."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of strict JSON: NaN and infinities (a diverged metric) are
    written as ``null``, since ``NaN``/``Infinity`` are not JSON and most parsers refuse them."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
