"""Prediction: ``tunelab-predict ckpt_path=PATH (text="..." | input=PATH)`` and :func:`predict`.

A CSV / JSON Lines / Parquet input is read through its text column, streamed in blocks, and
its predictions are written to a CSV file (:meth:`Predictor.file`): one row per input row with
the row id, the label name and each class's probability; stdout gets a one-line summary.
``text=``, a ``.txt`` file (one text per line) and images print one JSON line per input:
``{"input", "label", "label_name", "probabilities"}`` (or go to a CSV file with ``output=``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from tunelab.checkpoint import load_checkpoint, model_from_checkpoint, stored_configs
from tunelab.cli import run_cli, run_task
from tunelab.config import config_dir
from tunelab.data.image_datamodule import ImageDataModule
from tunelab.data.images import read_predict_inputs
from tunelab.data.text_datamodule import TextDataModule
from tunelab.data.text_inputs import is_table, iter_table_texts
from tunelab.models.metrics import predicted_labels
from tunelab.safety import checkpoint_trust
from tunelab.validation import validate_config


class Predictor:
    """A checkpoint's model and preprocessing, ready to classify new inputs.

    Args:
        ckpt_path: a checkpoint written by ``tunelab-train``.
        device: where to run (``cpu``, ``cuda``).
        batch_size: inputs per forward pass.
        trust_checkpoint, allowed_targets: as :func:`tunelab.checkpoint.load_checkpoint` (read
            weights-only, stored configs checked against the allow-list, unless trusted).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str = "cpu",
        batch_size: int = 64,
        *,
        trust_checkpoint: bool = False,
        allowed_targets: Sequence[str] = (),
    ) -> None:
        trust = {"trust_checkpoint": trust_checkpoint, "allowed_targets": allowed_targets}
        ckpt = load_checkpoint(ckpt_path, **trust)  # checked before the data module is built
        _, data_cfg = stored_configs(ckpt)
        self.device = torch.device(device)
        self.model = model_from_checkpoint(ckpt, ckpt_path, compile=False, **trust)
        self.model = self.model.to(self.device)
        self.data = instantiate(data_cfg, _convert_="partial")
        self.batch_size = batch_size
        n = self.model.num_classes
        self.label_names = list(self.data.label_names or [str(i) for i in range(n)])

    @torch.inference_mode()
    def _probs(self, batch: Any) -> np.ndarray:
        if isinstance(batch, dict):
            batch = {k: v.to(self.device) for k, v in batch.items()}
        else:
            batch = batch.to(self.device)
        return self.model(batch).float().softmax(-1).cpu().numpy()

    def _labels(self, probs: np.ndarray) -> list[int]:
        # binary: class 1 from the checkpoint's decision threshold on (0.5 unless chosen)
        threshold = getattr(self.model, "decision_threshold", 0.5)
        return predicted_labels(torch.from_numpy(probs), threshold).tolist()

    def _rows(self, names: Sequence[str], probs: np.ndarray) -> Iterator[dict[str, Any]]:
        labels = self._labels(probs)
        for name, p, label in zip(names, probs, labels, strict=True):
            yield {
                "input": name,
                "label": label,
                "label_name": self.label_names[label],
                "probabilities": {
                    n: round(float(v), 6) for n, v in zip(self.label_names, p, strict=True)
                },
            }

    def _require_text(self) -> None:
        if not isinstance(self.data, TextDataModule):
            raise ValueError(
                "this checkpoint is an image model: pass images (input=PATH), not text"
            )

    def texts(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify texts, batched, each batch padded only to its longest text."""
        self._require_text()
        out: list[dict[str, Any]] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i : i + self.batch_size])
            out.extend(self._rows(chunk, self._probs(self.data.encode(chunk))))
        return out

    def images(self, path: str | Path) -> list[dict[str, Any]]:
        """Classify an image file, a folder of images, or the images in an ``.npz``."""
        if not isinstance(self.data, ImageDataModule):
            raise ValueError("this checkpoint is a text model: pass text=... or a .txt file")
        names, x = read_predict_inputs(Path(path), self.data.image_size, self.data.in_channels)
        out: list[dict[str, Any]] = []
        for i in range(0, len(x), self.batch_size):
            batch = self.data.preprocess(torch.from_numpy(x[i : i + self.batch_size]))
            out.extend(self._rows(names[i : i + self.batch_size], self._probs(batch)))
        return out

    def file(
        self,
        path: str | Path,
        output: str | Path | None = None,
        *,
        text_column: str | None = None,
        id_column: str | None = None,
        overwrite: bool = False,
    ) -> PredictionFile:
        """Classify every row of a file and write the predictions to a CSV file, streaming.

        Text models read CSV, JSON Lines (``.jsonl``/``.json``) and Parquet files through a
        text column, and ``.txt`` files one text per line; image models read an image, a folder
        of images or an ``.npz``. Rows are read, classified and written a block at a time, so
        neither the texts nor the probabilities of the whole file are held in memory.

        Args:
            path: the input file (or image folder).
            output: the CSV to write; ``predictions.csv`` in the current directory when None.
                Written to a temporary name beside it and renamed when complete.
            text_column: the column of texts; the checkpoint's ``data.text_column`` when None.
            id_column: a column identifying the rows, copied to the output's first column; when
                None that column is ``row``, the 0-based row index (line index for ``.txt``)
                or, for images, ``input``, the image's name.
            overwrite: replace an existing ``output`` (refused otherwise).

        Returns:
            How many rows were written, and where.

        Raises:
            FileExistsError: ``output`` exists and ``overwrite`` is False.
            ValueError: a missing column, an empty text, a malformed file, or inputs of the
                wrong kind for this checkpoint.
        """
        path = Path(path)
        output = check_output(path, output, overwrite)
        if isinstance(self.data, ImageDataModule):
            if text_column is not None or id_column is not None:
                raise ValueError(
                    "text_column= and id_column= are for text files; this checkpoint is an "
                    "image model: drop them"
                )
            names, x = read_predict_inputs(path, self.data.image_size, self.data.in_channels)

            def image_batches() -> Iterator[tuple[list[Any], np.ndarray]]:
                for i in range(0, len(x), self.batch_size):
                    batch = self.data.preprocess(torch.from_numpy(x[i : i + self.batch_size]))
                    yield names[i : i + self.batch_size], self._probs(batch)

            return self._write(path, output, "input", image_batches(), overwrite)
        if is_table(path):
            column = text_column or getattr(self.data, "text_column", None) or "text"
            blocks = iter_table_texts(path, column, id_column)
        elif text_column is not None or id_column is not None:
            raise ValueError(
                f"{path} is read one text per line: it has no columns for text_column= or "
                "id_column=; drop them (or pass a .csv, .jsonl or .parquet file)"
            )
        else:
            blocks = _iter_text_lines(path)
        batches = (
            (
                ids[i : i + self.batch_size],
                self._probs(self.data.encode(texts[i : i + self.batch_size])),
            )
            for ids, texts in blocks
            for i in range(0, len(texts), self.batch_size)
        )
        return self._write(path, output, id_column or "row", batches, overwrite)

    def _write(
        self,
        source: Path,
        output: Path,
        id_header: str,
        batches: Iterable[tuple[Sequence[Any], np.ndarray]],
        overwrite: bool,
    ) -> PredictionFile:
        header = [id_header, "label", *self.label_names]
        if len(set(header)) < len(header):
            raise ValueError(
                f"the output columns {header} repeat a name (a label name equals "
                f"{id_header!r} or 'label'); pass id_column=NAME with another column"
            )
        rows = 0
        with _AtomicFile(output, overwrite) as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for ids, probs in batches:
                labels = self._labels(probs)
                writer.writerows(
                    [i, self.label_names[label], *(round(float(v), 6) for v in p)]
                    for i, label, p in zip(ids, labels, probs, strict=True)
                )
                rows += len(labels)
            if rows == 0:  # raised inside: the temporary file goes, no empty output is left
                raise ValueError(f"{source} has no rows to classify (a header only?)")
        return PredictionFile(rows=rows, path=output)


@dataclass(frozen=True)
class PredictionFile:
    """What :meth:`Predictor.file` wrote: ``rows`` predictions in the CSV file ``path``."""

    rows: int
    path: Path


DEFAULT_OUTPUT = "predictions.csv"


def check_output(path: Path, output: str | Path | None, overwrite: bool) -> Path:
    """The output file for ``path``'s predictions; refuse an existing one unless ``overwrite``."""
    output = Path(output if output is not None else DEFAULT_OUTPUT)
    if output.exists() and output.resolve() == path.resolve():
        raise ValueError(f"output={output} is the input file; name another output file")
    if output.is_dir():
        raise ValueError(
            f"output={output} is a folder; pass a file name, e.g. {output}/{DEFAULT_OUTPUT}"
        )
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"output={output} exists; pass overwrite=true to replace it, or output=PATH"
        )
    return output


class OutputExistsError(FileExistsError, ValueError):
    """The output file exists (a ``ValueError`` too: the console script's user error, exit 2)."""


class _AtomicFile:
    """A text file written to a temporary name beside ``path`` and renamed there when complete.

    The temporary file is created with mode 0666 less the umask (as ``open`` would), not
    ``mkstemp``'s 0600. Without ``overwrite`` the rename is a hard link, which fails rather than
    replace a file that appeared meanwhile.
    """

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = path
        self.overwrite = overwrite
        self.tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        return self.file

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if kind is not None:
                return
            if self.overwrite:
                os.replace(self.tmp, self.path)
                return
            try:
                os.link(self.tmp, self.path)
            except FileExistsError:
                raise OutputExistsError(
                    f"output={self.path} appeared while predicting; pass overwrite=true to "
                    "replace it, or output=PATH"
                ) from None
            except OSError:  # a file system without hard links
                if self.path.exists():
                    raise OutputExistsError(
                        f"output={self.path} appeared while predicting; pass overwrite=true "
                        "to replace it, or output=PATH"
                    ) from None
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def _iter_text_lines(path: Path) -> Iterator[tuple[list[int], list[str]]]:
    """``(line indices, texts)`` blocks of a text file's non-empty lines (0-based indices)."""
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder and this checkpoint is a text model: pass a .csv, .jsonl, "
            ".parquet or .txt file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    ids: list[int] = []
    texts: list[str] = []
    found = False
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if line.strip():
                    ids.append(number)
                    texts.append(line.strip())
                if len(texts) == 4096:
                    found = True
                    yield ids, texts
                    ids, texts = [], []
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    if not (found or texts):
        raise ValueError(f"{path} holds no text (one text per line expected)")
    if texts:
        yield ids, texts


def read_text_lines(path: Path) -> list[str]:
    """One text per non-empty line of a UTF-8 file."""
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{path} holds no text (one text per line expected)")
    return texts


def predict(
    ckpt_path: str | Path,
    texts: Sequence[str] | None = None,
    images: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    trust_checkpoint: bool = False,
) -> list[dict[str, Any]]:
    """Classify new texts or images with a trained checkpoint.

    Args:
        ckpt_path: a checkpoint from a tunelab run (``checkpoints/best.ckpt``).
        texts: texts to classify (text models).
        images: an image file, a folder of images or an ``.npz`` (image models).
        device: ``cpu`` or ``cuda``.
        batch_size: inputs per forward pass.
        trust_checkpoint: load a checkpoint that holds more than tensors and plain data, or
            whose stored config builds other classes (this can run code: only for a trusted
            file).

    Returns:
        One dict per input: ``input``, ``label``, ``label_name``, ``probabilities``.
    """
    if (texts is None) == (images is None):
        raise ValueError("pass exactly one of texts= or images=")
    predictor = Predictor(
        ckpt_path, device=device, batch_size=batch_size, trust_checkpoint=trust_checkpoint
    )
    return predictor.texts(list(texts)) if texts is not None else predictor.images(images)


def run(cfg: DictConfig) -> list[dict[str, Any]] | PredictionFile:
    """The CLI's work: read the inputs named in ``cfg`` and return or write the predictions.

    Returns the rows for ``text=``, a ``.txt`` file and images (printed as JSON lines), and
    what was written for a table file, or for any file with ``output=`` set.
    """
    validate_config(cfg)  # exactly one of text/input, files exist, batch_size > 0, ...
    to_file = cfg.get("input") is not None and (
        is_table(cfg.input) or cfg.get("output") is not None
    )
    file_keys = {k: cfg.get(k) for k in ("output", "text_column", "id_column")}
    if cfg.get("text") is not None and any(v is not None for v in file_keys.values()):
        given = ", ".join(f"{k}=" for k, v in file_keys.items() if v is not None)
        raise ValueError(f"{given} apply to input=FILE; text= prints its prediction: drop them")
    if to_file:  # before the model loads: an existing output is refused at once
        check_output(Path(cfg.input), cfg.get("output"), bool(cfg.get("overwrite")))
    device = "cuda" if cfg.accelerator.accelerator in ("gpu", "cuda") else "cpu"
    predictor = Predictor(
        cfg.ckpt_path, device=device, batch_size=cfg.batch_size, **checkpoint_trust(cfg)
    )
    if cfg.get("text") is not None:
        return predictor.texts([str(cfg.text)])
    path = Path(cfg.input)
    if to_file:
        return predictor.file(
            path,
            cfg.get("output"),
            text_column=_column_name(cfg.get("text_column")),
            id_column=_column_name(cfg.get("id_column")),
            overwrite=bool(cfg.get("overwrite")),
        )
    if cfg.get("text_column") is not None or cfg.get("id_column") is not None:
        raise ValueError(
            f"input={path} is read one text per line (or as images): text_column= and "
            "id_column= apply to .csv, .jsonl and .parquet files; drop them"
        )
    if isinstance(predictor.data, TextDataModule):
        return predictor.texts(read_text_lines(path))
    return predictor.images(path)


def _column_name(value: Any) -> str | None:
    # Hydra reads text_column=2024 as an int: a column name is text
    return None if value is None else str(value)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    result = run_task(run, cfg)
    if isinstance(result, PredictionFile):
        source = cfg.input
        sys.stdout.write(f"{result.rows} predictions for {source} written to {result.path}\n")
    else:
        for row in result:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def quote_free_text(args: list[str]) -> list[str]:
    """Quote the values of free-text keys (``text=``, ``input=``, ...) for Hydra's parser.

    After the shell has removed the user's quotes, ``text=This movie is great!`` reaches us bare,
    and Hydra's grammar rejects characters such as ``!``, ``,`` or ``:`` there. These keys take
    free text (a text, paths, column names), so their values are passed through as one quoted
    string; ``output``, ``text_column`` and ``id_column`` keep a bare ``null`` (their default).
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key in ("text", "input", "output", "text_column", "id_column")
            and not (key not in ("text", "input") and value == "null")
            and not (value[:1] in "'\"" and value[:1] == value[-1:] and len(value) > 1)
        ):
            # Hydra unescapes backslashes only before a quote or the closing quote.
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
            value = "'" + value.replace("'", "\\'") + "'"
            arg = f"{key}={value}"
        out.append(arg)
    return out


def _main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:])
    _hydra_main()


def main() -> None:
    run_cli(_main)


class _CallableModule(types.ModuleType):
    """``tunelab.predict`` is both this module and the function users call: importing the
    module rebinds the package's attribute to it, so the module forwards calls to
    :func:`predict` and ``tunelab.predict(ckpt, texts=[...])`` keeps working."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
