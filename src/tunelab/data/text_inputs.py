"""New texts to classify, read from CSV / JSON Lines / Parquet files in bounded batches.

Kept apart from the training readers (:mod:`tunelab.data.text_sources`, which load whole splits
through `datasets`): ``tunelab-predict`` must handle files far larger than memory, so each reader
here yields one block of rows at a time (pyarrow's streaming CSV reader, Parquet batches, JSON
Lines line by line) and holds nothing of the rows already yielded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

TABLE_KINDS = {".csv": "CSV", ".jsonl": "JSON Lines", ".json": "JSON Lines", ".parquet": "Parquet"}
BLOCK_ROWS = 4096  # rows per block handed over, at most
BLOCK_BYTES = 1 << 20  # bytes of CSV parsed at a time


def is_table(path: str | Path) -> bool:
    """Whether ``path`` is a table file whose text is read from a column."""
    return Path(path).suffix.lower() in TABLE_KINDS


def iter_table_texts(
    path: str | Path, text_column: str, id_column: str | None = None
) -> Iterator[tuple[list[Any], list[str]]]:
    """Yield ``(ids, texts)`` blocks of a CSV, JSON Lines or Parquet file, in file order.

    Args:
        path: the file; its suffix says the format (``.csv``, ``.jsonl``/``.json``, ``.parquet``).
        text_column: the column holding the texts.
        id_column: a column whose values identify the rows; None gives the 0-based row index.

    Raises:
        ValueError: a missing column (named with the columns the file has), an empty text, a
            file that is not valid in its format or not UTF-8.
    """
    path = Path(path)
    kind = TABLE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: not a table file; use one of {sorted(TABLE_KINDS)}")
    readers = {"CSV": _csv_blocks, "JSON Lines": _jsonl_blocks, "Parquet": _parquet_blocks}
    first = 0
    try:
        for ids, texts in readers[kind](path, text_column, id_column):
            _check_texts(path, texts, ids, first, id_column)
            yield (ids if id_column else list(range(first, first + len(texts)))), texts
            first += len(texts)
    except (pa.ArrowException, UnicodeDecodeError, csv.Error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} cannot be read as {kind} after row {first} ({reason}); check the file"
        ) from err


def _check_texts(
    path: Path, texts: Sequence[Any], ids: Sequence[Any], first: int, id_column: str | None
) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            row = f"{id_column}={ids[i]}" if id_column else f"row {first + i} (0-based)"
            what = "is empty" if text in (None, "") else f"is not a string ({text!r})"
            raise ValueError(f"{path}, {row}: the text {what}; fill it or drop the row")
    if id_column and any(v is None for v in ids):
        row = first + next(i for i, v in enumerate(ids) if v is None)
        raise ValueError(f"{path}, row {row} (0-based): the {id_column!r} cell is empty; fill it")


def missing_column(path: Path, column: str, columns: Sequence[str], key: str) -> ValueError:
    """The one-line error for a column the file lacks, naming what it has and the fix."""
    return ValueError(
        f"{path} has no column {column!r} (its columns: {', '.join(map(str, columns))}); "
        f"pass {key}=NAME with one of them"
    )


def _wanted(
    path: Path, columns: Sequence[str], text_column: str, id_column: str | None
) -> list[str]:
    if text_column not in columns:
        raise missing_column(path, text_column, columns, "text_column")
    if id_column is not None and id_column not in columns:
        raise missing_column(path, id_column, columns, "id_column")
    return [text_column] + ([id_column] if id_column and id_column != text_column else [])


def _csv_blocks(
    path: Path, text_column: str, id_column: str | None
) -> Iterator[tuple[list[Any], list[str]]]:
    import pyarrow.csv as pacsv

    # The header, with Python's csv module: asking pyarrow for a missing column only says that
    # it is missing, and reading every column would type-convert columns we never use.
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ValueError(f"{path} is empty: a CSV file with a header line is expected")
    wanted = _wanted(path, header, text_column, id_column)
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=wanted,
            column_types={c: pa.string() for c in wanted},  # ids keep leading zeros
            strings_can_be_null=True,  # an empty text cell is an error, not the text ""
        ),
    )
    for block in reader:
        for start in range(0, block.num_rows, BLOCK_ROWS):  # zero-copy slices
            batch = block.slice(start, BLOCK_ROWS)
            texts = batch.column(text_column).to_pylist()
            yield (batch.column(id_column).to_pylist() if id_column else []), texts


def _parquet_blocks(
    path: Path, text_column: str, id_column: str | None
) -> Iterator[tuple[list[Any], list[str]]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    wanted = _wanted(path, file.schema_arrow.names, text_column, id_column)
    kind = file.schema_arrow.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(
            f"{path}: column {text_column!r} holds {kind}, not text; pass text_column=NAME "
            f"with the column of texts (its columns: {', '.join(file.schema_arrow.names)})"
        )
    for batch in file.iter_batches(batch_size=BLOCK_ROWS, columns=wanted):
        texts = batch.column(text_column).to_pylist()
        yield (batch.column(id_column).to_pylist() if id_column else []), texts


def _jsonl_blocks(
    path: Path, text_column: str, id_column: str | None
) -> Iterator[tuple[list[Any], list[str]]]:
    ids: list[Any] = []
    texts: list[str] = []
    checked = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                    "a JSON Lines file holds one JSON object per line"
                ) from err
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {number}: a JSON {type(record).__name__}, not an object; a "
                    "JSON Lines file holds one JSON object per line"
                )
            if not checked:  # the first record names the columns, as a header would
                _wanted(path, list(record), text_column, id_column)
                checked = True
            for column, key in ((text_column, "text_column"), (id_column, "id_column")):
                if column is not None and column not in record:
                    raise ValueError(
                        f"{path}, line {number}: no {column!r} key (this line has "
                        f"{', '.join(record)}); add it, or pass {key}=NAME"
                    )
            texts.append(record[text_column])
            if id_column is not None:
                ids.append(record[id_column])
            if len(texts) == BLOCK_ROWS:
                yield ids, texts
                ids, texts = [], []
    if not checked:
        raise ValueError(f"{path} holds no JSON object (one object per line expected)")
    if texts:
        yield ids, texts
