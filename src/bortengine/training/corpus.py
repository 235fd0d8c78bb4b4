"""The user's own text for distillation: documents read from plain text files, folders of them, and tables with a
text column, as (source, text) pairs like data.pretraining_documents' (distill.pretrain mixes them with that
corpus or uses them alone; the pipeline adds the task's own texts).

A path is
- a .txt file: documents separated by blank lines (UTF-8, a BOM allowed);
- a folder: its .txt files, recursively, in sorted order;
- a JSON Lines (.jsonl, .ndjson, .json), CSV (.csv), TSV (.tsv) or Parquet (.parquet, .pq) file: one document per
  row, from the text column (default "text"), read with pyarrow.
Every value must be text that is not blank: a missing file, an empty folder, a table without the column, a
non-text or empty value, bytes that are not UTF-8 are a TrainingError naming the file and the row or line, raised
before any model is loaded.

Torch-free; pyarrow is imported when a table is read.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from bortengine.training.errors import TrainingError

__all__ = ["corpus_documents", "documents_sha256", "CORPUS_MODES", "TABLE_FORMATS"]

CORPUS_MODES = ("mix", "replace")   # the user's documents beside the built-in corpus, or alone
TEXT_SUFFIX = ".txt"
TABLE_FORMATS = {".jsonl": "JSON Lines", ".ndjson": "JSON Lines", ".json": "JSON Lines", ".csv": "CSV",
                 ".tsv": "TSV", ".parquet": "Parquet", ".pq": "Parquet"}
KINDS = "a .txt file, a folder of .txt files, or a .jsonl, .csv, .tsv or .parquet file with a text column"

PathLike = Union[str, os.PathLike]


def corpus_documents(paths: Union[PathLike, Sequence[PathLike]], text_column: str = "text"
                     ) -> list[tuple[str, str]]:
    """(source, text) of every document of the paths, in order (source: the file it came from).
    Raises TrainingError for a path or value it cannot use, saying which and where."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise TrainingError(f"the corpus names no path: give {KINDS}")
    if not isinstance(text_column, str) or not text_column:
        raise TrainingError(f"the text column must be a column name, got {text_column!r}")
    documents: list[tuple[str, str]] = []
    for path in paths:
        for file in _files(Path(path)):
            texts = _text_file(file) if file.suffix.lower() == TEXT_SUFFIX else _table(file, text_column)
            documents += [(str(file), text) for text in texts]
    return documents


def documents_sha256(documents: Iterable[tuple[str, str]]) -> str:
    """A digest of the documents' texts in order (their sources do not change the segments cut from them)."""
    digest = hashlib.sha256()
    for _, text in documents:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)   # length-prefixed: no two lists hash alike
    return digest.hexdigest()


def _files(path: Path) -> list[Path]:
    """The files a corpus path stands for."""
    if path.is_dir():
        files = sorted(p for p in path.rglob(f"*{TEXT_SUFFIX}") if p.is_file())
        if not files:
            raise TrainingError(f"the corpus folder {path} holds no {TEXT_SUFFIX} file (searched recursively); a "
                                f"folder gives its .txt files, a table is named by its own path")
        return files
    if not path.exists():
        raise TrainingError(f"the corpus path {path} does not exist; give {KINDS}")
    suffix = path.suffix.lower()
    if suffix != TEXT_SUFFIX and suffix not in TABLE_FORMATS:
        raise TrainingError(f"{path}: a corpus file is .txt, {', '.join(TABLE_FORMATS)}; got "
                            f"{suffix or 'no suffix'} (rename it if it is one of these)")
    return [path]


def _text_file(path: Path) -> list[str]:
    """The blank-line-separated documents of a UTF-8 text file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TrainingError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start}); save the file as UTF-8") from None
    documents, lines = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            lines.append(line)
        elif lines:
            documents.append("\n".join(lines).strip())
            lines = []
    if not documents:
        raise TrainingError(f"{path} holds no text: a .txt corpus file holds documents separated by blank lines")
    return documents


def _table(path: Path, column: str) -> list[str]:
    """The text column of a JSON Lines, CSV, TSV or Parquet file, one document per row."""
    import pyarrow as pa

    kind = TABLE_FORMATS[path.suffix.lower()]
    try:
        table = _read_table(path, kind, column)
    except (pa.ArrowInvalid, OSError) as e:
        raise TrainingError(f"{path} is not a {kind} file pyarrow can read ({e})") from None
    _check_column(path, column, table.column_names)
    if table.num_rows == 0:
        raise TrainingError(f"{path} holds no rows")
    return _texts(path, column, table.column(column))


def _read_table(path: Path, kind: str, column: str):
    if kind == "Parquet":
        import pyarrow.parquet as pq

        _check_column(path, column, pq.read_schema(path).names)
        return pq.read_table(path, columns=[column])
    import pyarrow as pa

    if kind == "JSON Lines":
        import pyarrow.json

        # only the text column is parsed: pyarrow refuses a file whose other fields change type between rows (an id
        # 1, then "b"), which the corpus never reads
        options = pyarrow.json.ParseOptions(explicit_schema=pa.schema([(column, pa.string())]),
                                            unexpected_field_behavior="ignore")
        try:
            table = pyarrow.json.read_json(path, parse_options=options)
        except pa.ArrowInvalid:
            table = None
        if table is None or table.column(column).null_count == table.num_rows:
            # refused (a value that is not text, a malformed line) or no such column: read row by row to say which
            return pa.table({column: _json_lines_column(path, column)})
        return table
    import pyarrow.csv

    # Everything in a CSV is text: the column is read as strings (no number inference), unchecked, so that bytes
    # that are not UTF-8 are found below with their row.
    return pyarrow.csv.read_csv(
        path, parse_options=pyarrow.csv.ParseOptions(delimiter="\t" if kind == "TSV" else ","),
        convert_options=pyarrow.csv.ConvertOptions(column_types={column: pa.string()}, check_utf8=False))


_JSON_KINDS = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _json_lines_column(path: Path, column: str):
    """The column of a JSON Lines file read row by row (as the task files are, tasks.json_lines_by_row), for the
    errors pyarrow gives without a row."""
    import pyarrow as pa

    from bortengine.training.tasks import check_utf8, json_lines_by_row

    data = path.read_bytes()
    check_utf8(data, path)
    names, columns = json_lines_by_row(path, data, [column])
    if not names:
        return pa.array([], pa.string())        # no rows: said by the caller
    _check_column(path, column, names)
    for row, value in enumerate(columns[column], 1):
        if value is not None and not isinstance(value, str):
            kind = _JSON_KINDS.get(type(value), "value")
            raise TrainingError(f"{path}: column {column!r} holds a JSON {kind}, not text (row {row}: {value!r}); "
                                f"name the column that holds the text")
    return pa.array(columns[column], pa.string())


def _check_column(path: Path, column: str, names: Sequence[str]) -> None:
    if column not in names:
        raise TrainingError(f"{path} has no column {column!r}; its columns are {', '.join(map(repr, names))}: "
                            f"name the one holding the text (--corpus-text-column, text_column=)")


def _texts(path: Path, column: str, values: Any) -> list[str]:
    """The column's values as text; rows are counted from 1 (the first record, a header not counted)."""
    import pyarrow as pa

    kind = values.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        texts = _decoded(path, column, values)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        try:
            texts = values.to_pylist()
        except UnicodeDecodeError:
            texts = _decoded(path, column, values.cast(pa.large_binary()))
    else:
        row, value = next(((i, v) for i, v in enumerate(values.to_pylist(), 1) if v is not None),
                          (1, None))
        if value is None:
            raise TrainingError(f"{path}: column {column!r} is empty (row 1 has no value)")
        raise TrainingError(f"{path}: column {column!r} holds {kind} values, not text (row {row}: {value!r}); "
                            f"name the column that holds the text")
    for row, text in enumerate(texts, 1):
        if text is None or not text.strip():
            raise TrainingError(f"{path}: row {row} of column {column!r} is empty; fill in its text or remove "
                                f"the row")
    return texts


def _decoded(path: Path, column: str, values: Any) -> list[str]:
    texts = []
    for row, data in enumerate(values.to_pylist(), 1):
        try:
            texts.append(None if data is None else data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise TrainingError(f"{path}: row {row} of column {column!r} is not UTF-8 text (byte "
                                f"0x{data[e.start]:02x} at offset {e.start} of the value); save the file as "
                                f"UTF-8") from None
    return texts
