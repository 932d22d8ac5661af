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
    """

    def __init__(
        self, message: str, *, row: int | None = None, field: str | None = None, reason: str = "bad_data"
    ) -> None:
        prefix = ""
        if row is not None:
            prefix = f"row {row}" + (f", field '{field}'" if field is not None else "") + ": "
        super().__init__(prefix + message)
        self.detail = message
        self.row = row
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[object, tuple[str, int | None, str | None, str]]:
        # Keeps row, field and reason when the error crosses a process boundary (``datasets.map(num_proc=N)``).
        return (_rebuild, (self.detail, self.row, self.field, self.reason))


def _rebuild(message: str, row: int | None, field: str | None, reason: str) -> PreferenceDataError:
    return PreferenceDataError(message, row=row, field=field, reason=reason)
