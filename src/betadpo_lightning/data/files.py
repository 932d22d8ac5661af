"""Local data files as ``datasets`` cannot explain them: malformed lines found, named, and skipped on request.

``datasets`` reports a truncated JSON line as "An error occurred while generating the dataset", an empty file as a
bare ``StopIteration`` and (in some versions) an integer beyond 64 bits as "Value is too big!", none naming the file
or the line. When reading local files fails, :func:`find_bad_lines` scans them and names each malformed line and what
was expected; :func:`copy_without` writes a copy without them for ``on_bad_row="skip"``. CSV files are read with
every column as text (:func:`csv_text_options`), so that an all-numeric prompt column stays text.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from betadpo_lightning.data.errors import PreferenceDataError

__all__ = ["BadLine", "copy_without", "csv_text_options", "describe", "find_bad_lines", "open_text"]

_INT64 = 2**63


@dataclass(frozen=True)
class BadLine:
    """A malformed line (or CSV record) of a file.

    Attributes:
        line: 1-based line number (for a CSV record, the line it ends on); 0 for the file as a whole.
        reason: what is wrong and what was expected.
        fatal: whether the rest of the file cannot be read past it (a JSON document, not JSON lines).
    """

    line: int
    reason: str
    fatal: bool = False


def open_text(path: Path) -> TextIO:
    """Open a text file, transparently decompressing ``.gz`` (UTF-8, universal newlines kept for CSV)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def find_bad_lines(path: Path, builder: str) -> list[BadLine]:
    """The malformed lines of a local JSON or CSV file (Parquet files are not scanned).

    Args:
        path: the file.
        builder: its ``datasets`` builder, ``"json"``, ``"csv"`` or ``"parquet"``.

    Returns:
        The bad lines in file order; one fatal entry for an empty file or an unreadable JSON document.
    """
    if builder == "parquet":
        return []
    try:
        with open_text(path) as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        return [BadLine(0, f"cannot be read as UTF-8 text ({error})", fatal=True)]
    if not text.strip():
        return [BadLine(0, "the file is empty: expected one preference pair per line or record", fatal=True)]
    if builder == "csv":
        return list(_bad_csv_records(text))
    if text.lstrip().startswith("["):  # one JSON document: an error cannot be skipped
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            reason = f"not valid JSON at column {error.colno} ({error.msg}); a JSON document cannot be read past it"
            return [BadLine(error.lineno, reason, fatal=True)]
        problem = next((p for p in map(_big_integer, rows if isinstance(rows, list) else [rows]) if p), None)
        return [BadLine(0, problem, fatal=True)] if problem else []
    return list(_bad_json_lines(text))


def _bad_json_lines(text: str) -> Iterator[BadLine]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield BadLine(number, f"not valid JSON at column {error.colno} ({error.msg}); expected one object per line")
            continue
        if not isinstance(row, dict):
            yield BadLine(number, f"expected a JSON object, got {type(row).__name__}")
            continue
        problem = _big_integer(row)
        if problem:
            yield BadLine(number, problem)


def _big_integer(value: Any, where: str = "") -> str | None:
    """A message for the first integer that does not fit in a signed 64-bit integer, or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return f"the integer {value} in field '{where or '(row)'}' does not fit in 64 bits"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        child = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        problem = _big_integer(item, child)
        if problem:
            return problem
    return None


def _csv_records(text: str) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """``(line it ends on, record)`` for every CSV record, or the parse error in place of a record."""
    reader = csv.reader(text.splitlines(keepends=True))
    while True:
        try:
            record: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            record = error
        yield reader.line_num, record


def _bad_csv_records(text: str) -> Iterator[BadLine]:
    header: list[str] | None = None
    for line, record in _csv_records(text):
        if isinstance(record, csv.Error):
            yield BadLine(line, f"not valid CSV ({record})", fatal=header is None)
        elif header is None:
            header = record
        elif record and len(record) != len(header):
            yield BadLine(line, f"expected {len(header)} fields (the header's), got {len(record)}")


def describe(path: Path, bad: Sequence[BadLine], shown: int = 3) -> str:
    """One message naming the file, how many lines are bad and the first few.

    Example:
        >>> describe(Path("pairs.jsonl"), [BadLine(7, "not valid JSON")])
        "'pairs.jsonl': 1 malformed line: line 7: not valid JSON"
    """
    whole = [b.reason for b in bad if b.line == 0]
    if whole:
        return f"'{path}': {whole[0]}"
    first = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    plural = "s" if len(bad) != 1 else ""
    return f"'{path}': {len(bad)} malformed line{plural}: {first}{more}"


def copy_without(path: Path, builder: str, bad: Sequence[BadLine], folder: Path) -> Path:
    """Write a copy of ``path`` without its bad lines into ``folder``; return the copy's path.

    The copy's name carries a digest of the source's path, size and modification time, so an unchanged file is
    copied once and ``datasets`` keeps reusing its cache. Written atomically: ranks may do it at the same time.

    Raises:
        PreferenceDataError: when a bad line is fatal (nothing past it can be read).
    """
    fatal = [b for b in bad if b.fatal]
    if fatal:
        raise PreferenceDataError(f"{describe(path, fatal)}; the file cannot be read past it, so it cannot be skipped")
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    suffix = ".csv" if builder == "csv" else ".jsonl"
    target = folder / f"{path.name.split('.')[0]}-{digest}{suffix}"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    skip = {b.line for b in bad}
    with open_text(path) as handle:
        text = handle.read()
    if builder == "csv":
        kept = [r for n, r in _csv_records(text) if n not in skip and not isinstance(r, csv.Error)]
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8", newline="") as out:
            csv.writer(out).writerows(kept)
    else:
        lines = [line for n, line in enumerate(text.splitlines(), start=1) if n not in skip and line.strip()]
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


def csv_text_options(paths: Sequence[Path]) -> dict[str, Any]:
    """``datasets`` CSV options that read every column of these files as text, exactly as written.

    Without them pandas infers types: an all-numeric prompt column becomes integers (``"007"`` becomes ``7``) and
    the cells ``NA`` or ``None`` become missing values.

    Args:
        paths: the CSV files (their headers name the columns).

    Returns:
        ``converters`` (every header column to ``str``) and ``na_filter=False``, or nothing for unreadable headers.
    """
    columns: dict[str, None] = {}
    for path in paths:
        try:
            with open_text(path) as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, EOFError, csv.Error):
            continue
        columns.update(dict.fromkeys(header))
    return {"converters": dict.fromkeys(columns, str), "na_filter": False} if columns else {}
