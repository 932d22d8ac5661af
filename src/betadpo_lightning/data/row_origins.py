"""Where a row of a loaded split comes from: its file and 1-based line, for the messages about bad rows.

:func:`~betadpo_lightning.data.sources.load_source` records, for every split it reads from local files, the files in
the order ``datasets`` concatenates them and the lines it left out (``on_bad_row="skip"``). The rows' lines are
found only when a message needs one (:func:`row_location`), by reading the files again: nothing is spent on data
without errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from betadpo_lightning.data.files import BadLine, read_lines, row_lines

__all__ = ["SplitOrigin", "describe_row", "record_origin", "row_location", "split_origin"]

_ORIGINS: dict[str, SplitOrigin] = {}  # by the loaded split's fingerprint


@dataclass(frozen=True)
class SplitOrigin:
    """The local files of a split, in row order, and the lines of each that were left out.

    Args:
        files: the files with their ``datasets`` builders (``"json"``, ``"csv"``, ``"parquet"``), in row order.
        skipped: the lines left out of each file.
    """

    files: tuple[tuple[Path, str], ...]
    skipped: Mapping[Path, Sequence[BadLine]] = field(default_factory=dict)

    def locate(self, index: int) -> str | None:
        """Where row ``index`` (0-based) lies: ``file '<path>', line <n>``, or ``None`` past the files' rows.

        For a JSON document or a Parquet file (no line per row): ``file '<path>', row <n>``; both 1-based.
        """
        for path, builder in self.files:
            lines = row_lines(path, builder, self.skipped.get(path, ()))
            count = len(lines) if lines is not None else _row_count(path, builder)
            if index < count:
                where = f"line {lines[index]}" if lines is not None else f"row {index + 1}"
                return f"file '{path}', {where}"
            index -= count
        return None


def _row_count(path: Path, builder: str) -> int:
    if builder == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    rows = json.loads("".join(line for line in read_lines(path) if isinstance(line, str)))
    return len(rows) if isinstance(rows, list) else 1


def record_origin(data: datasets.Dataset, origin: SplitOrigin) -> None:
    """Remember where the rows of ``data`` (a split just loaded) come from."""
    _ORIGINS[data._fingerprint] = origin


def split_origin(data: datasets.Dataset) -> SplitOrigin | None:
    """Where the rows of a split that ``load_source`` read come from (``None``: not from local files)."""
    return _ORIGINS.get(data._fingerprint)


def row_location(data: datasets.Dataset, index: int) -> str | None:
    """Where row ``index`` (0-based) of a split that ``load_source`` read lies (:meth:`SplitOrigin.locate`).

    ``None`` for a split that does not come from local files.
    """
    origin = _ORIGINS.get(data._fingerprint)
    return None if origin is None else origin.locate(index)


def describe_row(data: datasets.Dataset, index: int, split: str) -> str:
    """Row ``index`` (0-based) as messages name it: its split, and its file and line (else its row), 1-based.

    Example:
        >>> describe_row(datasets.Dataset.from_dict({"prompt": ["a", "b"]}), 1, "train")
        "split 'train', row 2"
    """
    where = row_location(data, index)
    return f"split '{split}', " + (where if where is not None else f"row {index + 1}")
