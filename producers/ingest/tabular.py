"""CSV (RFC 4180, UTF-8 with or without BOM) and JSON Lines, streamed line by line.

Lines are decoded one at a time, so a byte that is not UTF-8 costs its own line,
not the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import BinaryIO

import orjson

from producers.ingest.records import (
    FIELDS,
    REQUIRED,
    BatchLine,
    FileRefused,
    LineError,
    checked,
)

BOM = b"\xef\xbb\xbf"


def _decoded_lines(stream: BinaryIO, errors: list[LineError], seen: list[int]) -> Iterator[str]:
    """Each physical line as text; undecodable ones are reported and skipped.

    The number of every line handed out is appended to ``seen``, so the caller knows
    on which line a record (which may span lines, in quoted CSV) began.
    """
    for number, line in enumerate(stream, start=1):
        raw = line[len(BOM) :] if number == 1 and line.startswith(BOM) else line
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(
                LineError(
                    number, "line", f"not UTF-8: byte {exc.start + 1} is 0x{raw[exc.start]:02x}"
                )
            )
            continue
        seen.append(number)
        yield text


def parse_csv(stream: BinaryIO) -> Iterator[BatchLine | LineError]:
    errors: list[LineError] = []
    seen: list[int] = []
    rows = csv.reader(_decoded_lines(stream, errors, seen), strict=True)
    try:
        header = next(rows)
    except StopIteration:
        raise FileRefused(
            "the file is empty; expected a header line: " + ",".join(FIELDS)
        ) from None
    columns = [c.strip() for c in header]
    missing = [f for f in REQUIRED if f not in columns]
    unknown = [c for c in columns if c not in FIELDS]
    if missing or unknown:
        raise FileRefused(
            f"bad header: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; "
            f"expected the columns {','.join(FIELDS)}"
        )
    while True:
        seen.clear()
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            yield from _flush(errors)
            yield LineError(seen[-1] if seen else 0, "line", f"not valid CSV: {exc}")
            continue
        yield from _flush(errors)
        start = seen[0]
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) != len(columns):
            yield LineError(start, "line", f"expected {len(columns)} columns, got {len(row)}")
            continue
        yield _line(start, dict(zip(columns, row, strict=True)))
    yield from _flush(errors)


def parse_jsonl(stream: BinaryIO) -> Iterator[BatchLine | LineError]:
    errors: list[LineError] = []
    seen: list[int] = []
    for text in _decoded_lines(stream, errors, seen):
        yield from _flush(errors)
        number = seen.pop()
        if not text.strip():
            continue
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield LineError(number, "line", f"not valid JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield LineError(number, "line", "expected a JSON object")
            continue
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            yield LineError(number, unknown[0], f"unknown field; expected {', '.join(FIELDS)}")
            continue
        yield _line(number, {k: _text(v) for k, v in record.items()})
    yield from _flush(errors)


def _text(value: object) -> str:
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return "" if value is None else str(value)


def _flush(errors: list[LineError]) -> Iterator[LineError]:
    while errors:
        yield errors.pop(0)


def _line(number: int, record: dict[str, str]) -> BatchLine | LineError:
    for name in REQUIRED:
        if not record.get(name, "").strip():
            return LineError(number, name, "missing")
    tags = [t.strip() for t in record.get("tags", "").split(";") if t.strip()]
    return checked(BatchLine(
        line=number, key=f"line:{number}", debit_account=record["debit_account"].strip(),
        credit_account=record["credit_account"].strip(), amount=record["amount"].strip(),
        currency=record["currency"].strip().upper(), description=record.get("description", ""),
        category=record.get("category") or None, tags=tags,
        reference=record.get("reference") or None,
    ))  # fmt: skip
