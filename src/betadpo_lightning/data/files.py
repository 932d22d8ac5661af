"""Local data files as ``datasets`` cannot explain them: malformed lines found, named, and skipped on request.

``datasets`` reports a truncated JSON line as "An error occurred while generating the dataset", an empty file as a
bare ``StopIteration``, (in some versions) an integer beyond 64 bits as "Value is too big!" and invalid UTF-8 only
when a value is read ("'utf-8' codec can't decode byte 0xff in position 5"), none naming the file or the line; a CSV
record with too few fields it reads silently, with empty strings in place of the missing fields. :func:`find_bad_lines`
scans a file line by line (each line decoded on its own, so one line of invalid UTF-8 spoils only itself) and names
each malformed line and what was expected; :func:`copy_without` writes a copy without them for
``on_bad_row="skip"``; :func:`row_lines` tells the 1-based line each row comes from, for the messages about rows.
CSV files are read with every column as text (:func:`csv_text_options`), so that an all-numeric prompt column stays
text.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from betadpo_lightning.atomic import atomic_write_text
from betadpo_lightning.data.errors import PreferenceDataError

__all__ = ["BadLine", "copy_without", "csv_text_options", "describe", "find_bad_lines", "open_text", "row_lines"]

_INT64 = 2**63


@dataclass(frozen=True)
class BadLine:
    """A malformed line (or CSV record) of a file.

    Attributes:
        line: 1-based line number (for a CSV record, the line it ends on); 0 for the file as a whole.
        reason: what is wrong and what was expected.
        fatal: whether the rest of the file cannot be read past it (a JSON document, not JSON lines).
        code: the short name it is counted under when skipped: ``malformed_line``, ``invalid_utf8`` or (a CSV record
            with fewer fields than its header) ``missing_fields``.
    """

    line: int
    reason: str
    fatal: bool = False
    code: str = "malformed_line"


def open_text(path: Path) -> TextIO:
    """Open a text file, transparently decompressing ``.gz`` (UTF-8, universal newlines kept for CSV)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_lines(path: Path) -> list[str | UnicodeDecodeError]:
    """The lines of a text file (``.gz`` decompressed), each with its line end, decoded as UTF-8 one by one.

    Lines end at a line feed only, as ``datasets`` reads JSON lines (:meth:`str.splitlines` would also split at the
    U+2028 a JSON string may hold). A line that is not valid UTF-8 is the error its decoding raised.

    Raises:
        OSError: the file cannot be read (or a ``.gz`` file is not gzip).
        EOFError: a ``.gz`` file is cut short.
    """
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    else:
        data = path.read_bytes()
    parts = data.split(b"\n")
    raw_lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    lines: list[str | UnicodeDecodeError] = []
    for raw in raw_lines:
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            lines.append(error)
    return lines


def _text_of(lines: Sequence[str | UnicodeDecodeError]) -> str:
    """The decoded lines joined, an undecodable line as an empty one (so that line numbers stay)."""
    return "".join(line if isinstance(line, str) else "\n" for line in lines)


def _invalid_utf8(lines: Sequence[str | UnicodeDecodeError]) -> list[BadLine]:
    bad = []
    for number, line in enumerate(lines, start=1):
        if isinstance(line, UnicodeDecodeError):
            byte = line.object[line.start]
            reason = f"not valid UTF-8: byte 0x{byte:02x} at byte {line.start + 1} of the line ({line.reason})"
            bad.append(BadLine(number, reason + "; expected UTF-8 text", code="invalid_utf8"))
    return bad


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
        lines = read_lines(path)
    except (OSError, EOFError) as error:
        return [BadLine(0, f"cannot be read ({error})", fatal=True)]
    invalid = _invalid_utf8(lines)
    text = _text_of(lines)
    if not text.strip() and not invalid:
        return [BadLine(0, "the file is empty: expected one preference pair per line or record", fatal=True)]
    if builder == "csv":
        return sorted([*invalid, *_bad_csv_records(text)], key=lambda bad: bad.line)
    if text.lstrip().startswith("["):  # one JSON document: an error cannot be skipped
        if invalid:
            return [BadLine(invalid[0].line, invalid[0].reason + "; a JSON document cannot be read past it", True)]
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            reason = f"not valid JSON at column {error.colno} ({error.msg}); a JSON document cannot be read past it"
            return [BadLine(error.lineno, reason, fatal=True)]
        problem = next((p for p in map(_big_integer, rows if isinstance(rows, list) else [rows]) if p), None)
        return [BadLine(0, problem, fatal=True)] if problem else []
    return sorted([*invalid, *_bad_json_lines(text)], key=lambda bad: bad.line)


def _lines(text: str) -> list[str]:
    """``text`` split after every line feed, the line ends kept (as :func:`read_lines` splits)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _bad_json_lines(text: str) -> Iterator[BadLine]:
    for number, line in enumerate(text.split("\n"), start=1):
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


def _csv_records(text: str) -> Iterator[tuple[int, int, list[str] | csv.Error]]:
    """``(first line, last line, record)`` for every CSV record, or the parse error in place of a record."""
    reader = csv.reader(_lines(text))
    end = 0
    while True:
        try:
            record: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            record = error
        start, end = end + 1, reader.line_num
        yield start, end, record


def _bad_csv_records(text: str) -> Iterator[BadLine]:
    header: list[str] | None = None
    for _, line, record in _csv_records(text):
        if isinstance(record, csv.Error):
            yield BadLine(line, f"not valid CSV ({record})", fatal=header is None)
        elif header is None:
            header = record
        elif record and len(record) != len(header):
            code = "missing_fields" if len(record) < len(header) else "malformed_line"
            yield BadLine(line, f"expected {len(header)} fields (the header's), got {len(record)}", code=code)


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
    skip = {b.line for b in bad}
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{sorted(skip)}"  # the copy depends on what is left out
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    suffix = ".csv" if builder == "csv" else ".jsonl"
    target = folder / f"{path.name.split('.')[0]}-{digest}{suffix}"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    text = _text_of(read_lines(path))  # a line of invalid UTF-8 is among the bad ones
    if builder == "csv":
        kept = [r for first, last, r in _csv_records(text) if not _spans(first, last, skip) and isinstance(r, list)]
        out = io.StringIO(newline="")
        csv.writer(out).writerows(kept)
        atomic_write_text(target, out.getvalue())  # ranks may write it at the same time: each replaces it whole
    else:
        lines = [line for n, line in enumerate(text.split("\n"), start=1) if n not in skip and line.strip()]
        atomic_write_text(target, "\n".join(lines) + "\n")
    return target


def _spans(first: int, last: int, lines: set[int]) -> bool:
    """Whether one of ``lines`` lies in ``first..last``."""
    return not lines.isdisjoint(range(first, last + 1))


def row_lines(path: Path, builder: str, skipped: Sequence[BadLine] = ()) -> list[int] | None:
    r"""The 1-based line of every row ``datasets`` reads from a JSON-lines or CSV file, in order.

    Rows are the non-blank lines (JSON lines) or the non-empty records after the header (CSV, the line a record
    starts on), without the ``skipped`` ones; ``None`` for a JSON document or a Parquet file (no line per row).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pairs.csv"
        >>> _ = path.write_text('prompt,chosen,rejected\na,b,c\n\n"d\ne",f,g\nh,i\nj,k,l\n')
        >>> row_lines(path, "csv", [BadLine(6, "expected 3 fields (the header's), got 2")])
        [2, 4, 7]
    """
    if builder == "parquet":
        return None
    text = _text_of(read_lines(path))
    skip = {b.line for b in skipped}
    if builder != "csv":
        if text.lstrip().startswith("["):
            return None
        return [n for n, line in enumerate(text.split("\n"), start=1) if line.strip() and n not in skip]
    records = [(first, last, r) for first, last, r in _csv_records(text) if isinstance(r, list) and r]
    return [first for first, last, _ in records[1:] if not _spans(first, last, skip)]


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
