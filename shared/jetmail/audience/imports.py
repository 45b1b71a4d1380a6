"""Import files read as a stream: CSV or JSON Lines, one validated row at a time, never more than one
line in memory. ``jetmail.audience.contacts.ContactStore.import_members`` writes what they yield."""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from jetmail.audience.model import ATTRIBUTE_KEY, ImportFormat, ImportRow, InvalidImport

MAX_LINE_CHARS = 1 << 20


def _lines(chunks: Iterable[bytes], progress: Callable[[int], None] | None) -> Iterator[str]:
    """Text lines (with their line ends) of a UTF-8 byte stream, never holding more than one line."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    buffer = ""
    line_no = 0
    for chunk in chunks:
        if progress is not None:
            progress(len(chunk))
        try:
            buffer += decoder.decode(chunk)
        except UnicodeDecodeError:
            raise InvalidImport(f"the file is not UTF-8 text (near line {line_no + 1}); save it as UTF-8") from None
        start = 0
        while (end := buffer.find("\n", start)) != -1:
            line_no += 1
            yield buffer[start:end + 1]
            start = end + 1
        buffer = buffer[start:]
        if len(buffer) > MAX_LINE_CHARS:
            raise InvalidImport(f"line {line_no + 1} is longer than {MAX_LINE_CHARS} characters")
    try:
        buffer += decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidImport(f"the file is not UTF-8 text (near line {line_no + 1}); save it as UTF-8") from None
    if buffer:
        yield buffer


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "row"
        message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def _row(data: dict[str, Any]) -> ImportRow | str:
    try:
        return ImportRow.model_validate(data)
    except ValidationError as exc:
        return _describe(exc)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _jsonl_rows(lines: Iterator[str]) -> Iterator[tuple[int, ImportRow | str]]:
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            yield line_no, f"not valid JSON: {exc}"
            continue
        if not isinstance(data, dict):
            yield line_no, "each line must be a JSON object"
            continue
        yield line_no, _row(data)


CSV_FIELDS = ("email", "name", "language", "timezone", "attributes")
# a cell of an attribute column that reads as a plain number or a boolean is stored as one, so
# segments can compare it (gt/lt); leading zeros ("01234") and long digit strings stay text
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,15})?$")


def _cell(text: str) -> Any:
    if _NUMBER.match(text):
        return float(text) if "." in text else int(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _csv_columns(header: list[str]) -> list[str]:
    """Known columns by name (any case); every other column is an attribute named as in the header."""
    columns: list[str] = []
    for raw in header:
        name = raw.strip()
        if name.lower() in CSV_FIELDS:
            name = name.lower()
        elif not ATTRIBUTE_KEY.match(name):
            raise InvalidImport(f"column {raw!r} is not a valid attribute name: use 1-64 letters, digits, '_' or "
                                "'-', starting with a letter or '_'")
        if name in columns:
            raise InvalidImport(f"column {name!r} appears twice in the header")
        columns.append(name)
    if "email" not in columns:
        raise InvalidImport("the CSV header needs an 'email' column")
    return columns


def _csv_row(columns: list[str], record: list[str]) -> ImportRow | str:
    if len(record) > len(columns):
        return f"the row has {len(record)} fields but the header has {len(columns)}"
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, raw in zip(columns, record, strict=False):
        text = raw.strip()
        if not text:
            continue  # an empty cell keeps what is stored
        if column == "attributes":
            try:
                parsed = json.loads(text, parse_constant=_no_constants)
            except (ValueError, RecursionError) as exc:
                return f"attributes: not valid JSON: {exc}"
            if not isinstance(parsed, dict):
                return "attributes: must be a JSON object"
            data["attributes"] = parsed
        elif column in CSV_FIELDS:
            data[column] = text
        else:
            extra[column] = _cell(text)
    if extra:
        data["attributes"] = {**data.get("attributes", {}), **extra}
    return _row(data)


def _csv_rows(lines: Iterator[str]) -> Iterator[tuple[int, ImportRow | str]]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
        while not any(cell.strip() for cell in header):
            header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InvalidImport(f"unreadable CSV header: {exc}") from None
    columns = _csv_columns(header)
    last_line = reader.line_num
    while True:
        first_line = last_line + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last_line = reader.line_num
            yield first_line, f"unreadable CSV: {exc}"
            continue
        last_line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        yield first_line, _csv_row(columns, record)


def rows(source: Iterable[bytes], fmt: ImportFormat, progress: Callable[[int], None] | None = None,
         ) -> Iterator[tuple[int, ImportRow | str]]:
    """(line number, a valid row or what is wrong with it) for each record of ``source``; ``progress``
    gets the bytes read so far. Raises InvalidImport when the file as a whole cannot be read."""
    lines = _lines(source, progress)
    return _csv_rows(lines) if fmt == "csv" else _jsonl_rows(lines)
