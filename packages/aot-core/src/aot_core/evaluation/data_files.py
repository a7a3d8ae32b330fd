"""Counting the documents of one local data file in the format a task declares, so that a
broken file is refused by name and line before lm-eval (and any engine) reads it.

The rules follow the Hugging Face ``datasets`` builders that lm-eval's ``dataset_path``
names: ``json`` (JSON Lines, one object per line; or a whole-file JSON list; or, with
``field``, the list under that key), ``csv`` (a header row, no row with more fields than
it), ``parquet`` and ``text`` (UTF-8 lines). Messages name lines and columns and say what is
wrong, never what the file holds: a task may point at any file on the machine.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMATS = ("json", "csv", "parquet", "text")
"""``dataset_path`` values whose files are checked here; other builders are left to lm-eval."""


class DataFileError(ValueError):
    """A data file that its builder cannot read, with what is wrong (never its contents)."""


def count_documents(path: Path, fmt: str, options: Mapping[str, Any]) -> int:
    """The documents ``path`` holds as ``fmt`` (one of ``FORMATS``), or ``DataFileError``.

    ``options`` are the task's ``dataset_kwargs`` (``field``, ``sep``, ...).
    """
    if fmt == "parquet":
        return _parquet_rows(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataFileError("is a directory, not a file") from None
    except OSError as exc:
        raise DataFileError(f"cannot be read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = _utf8(data)
    if fmt == "json":
        field = options.get("field")
        return _json_documents(text, str(field) if field is not None else None)
    if fmt == "csv":
        return _csv_rows(text, options)
    return len(text.splitlines())


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"line {line}: not UTF-8 text (byte offset {exc.start})") from None


def _json_documents(text: str, field: str | None) -> int:
    if field is not None:
        whole = _whole_json(text)
        rows = whole.get(field) if isinstance(whole, dict) else None
        if not isinstance(rows, list):
            raise DataFileError(f"holds no JSON list under the top-level key {field!r} (field)")
        return len(rows)
    if text.lstrip().startswith("["):
        rows = _whole_json(text)
        for index, row in enumerate(rows):
            if not isinstance(row, dict | str):
                raise DataFileError(f"item {index} of its JSON list is {_kind(row)}, not an object")
        return len(rows)
    return _json_lines(text)


def _json_lines(text: str) -> int:
    count = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKeyError:
            raise DataFileError(f"line {number}: an object names the same key twice") from None
        except json.JSONDecodeError as exc:
            if count == 0 and _one_object(text):
                return 1  # one pretty-printed object: the builder reads it as one row
            raise DataFileError(
                f"line {number}, column {exc.colno}: not a JSON object ({_reason(exc)}); JSON "
                "Lines hold one complete object per line"
            ) from None
        if not isinstance(value, dict):
            raise DataFileError(f"line {number}: {_kind(value)}, not a JSON object")
        count += 1
    return count


class _DuplicateKeyError(ValueError):
    """pyarrow refuses an object that names a key twice; Python's json keeps the last."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKeyError
    return out


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(
            f"line {exc.lineno}, column {exc.colno}: not valid JSON ({_reason(exc)})"
        ) from None


def _reason(exc: json.JSONDecodeError) -> str:
    # json's messages end in "at" before the position it appends; line and column say it
    return re.sub(r"( starting)? at$", "", exc.msg)


def _one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _kind(value: Any) -> str:
    names = {list: "a JSON list", str: "a JSON string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a JSON number")


class _CsvSyntaxError(DataFileError):
    """What Python's csv reader refused, and on which line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: not CSV ({reason})")
        self.line = line
        self.reason = reason


def _csv_rows(text: str, options: Mapping[str, Any]) -> int:
    delimiter = options.get("sep", options.get("delimiter", ","))
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        return _lines_after_header(text)  # a regular expression: pandas' own parser decides
    try:
        return _csv_reader_rows(text, delimiter, strict=True)
    except _CsvSyntaxError as exc:
        if "end of data" in exc.reason:
            raise DataFileError(f"line {exc.line}: a quoted field is never closed") from None
    # pandas reads what strict csv refuses, such as text right after a closing quote
    return _csv_reader_rows(text, delimiter, strict=False)


def _csv_reader_rows(text: str, delimiter: str, *, strict: bool) -> int:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=strict)
    try:
        header = next(reader, None)
        if header is None:
            return 0
        rows = 0
        for row in reader:
            if len(row) > len(header):
                raise DataFileError(
                    f"line {reader.line_num}: {len(row)} fields where the header has {len(header)}"
                )
            rows += bool(row)  # pandas skips blank lines
    except csv.Error as exc:
        raise _CsvSyntaxError(reader.line_num, str(exc)) from None
    return rows


def _lines_after_header(text: str) -> int:
    return max(0, sum(1 for line in text.splitlines() if line.strip()) - 1)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq  # datasets needs pyarrow: it is there whenever lm-eval is

    if path.is_dir():
        raise DataFileError("is a directory, not a file")
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except PermissionError as exc:
        raise DataFileError(f"cannot be read ({exc.strerror})") from None
    except Exception:  # pyarrow's errors vary by release; they all mean "not Parquet"
        raise DataFileError("is not a Parquet file (no Parquet footer)") from None
