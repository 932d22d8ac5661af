"""The error raised for preference data that cannot be turned into training pairs."""

from __future__ import annotations


class PreferenceDataError(ValueError):
    """Bad preference data: a missing column, a malformed row or an unusable tokenizer.

    Row-level errors carry the row's index in its source split, the field and a short machine-readable
    ``reason``; with ``on_bad_row="skip"`` such rows are dropped and counted per reason instead of raised.

    Args:
        message: Human-readable description naming what was found and what was expected.
        row: Index of the row in its source split, or ``None`` for dataset- or tokenizer-level errors.
        field: Name of the offending column, or ``None``.
        reason: Short code of the problem (e.g. ``"empty_text"``), used to count skipped rows.
        location: Where the row is, for the message in place of ``row <index>`` (e.g. ``split 'train', file
            'pairs.jsonl', line 8``); the data module names every bad row so.
    """

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        reason: str = "bad_data",
        location: str | None = None,
    ) -> None:
        where = location if location is not None else None if row is None else f"row {row}"
        prefix = "" if where is None else where + (f", field '{field}'" if field is not None else "") + ": "
        super().__init__(prefix + message)
        self.detail = message
        self.row = row
        self.field = field
        self.reason = reason
        self.location = location

    def __reduce__(self) -> tuple[object, tuple[str, int | None, str | None, str, str | None]]:
        # Keeps row, field and reason when the error crosses a process boundary (``datasets.map(num_proc=N)``).
        return (_rebuild, (self.detail, self.row, self.field, self.reason, self.location))


def _rebuild(
    message: str, row: int | None, field: str | None, reason: str, location: str | None = None
) -> PreferenceDataError:
    return PreferenceDataError(message, row=row, field=field, reason=reason, location=location)
