"""Preference data formats: detection from a split's columns and validation of single field values.

Three formats are understood:

* ``"standard"``: ``prompt``, ``chosen`` and ``rejected`` are strings; the responses continue the prompt.
* ``"conversational"``: ``chosen`` and ``rejected`` are message lists (``[{"role": ..., "content": ...}]``), rendered
  with the tokenizer's chat template; ``prompt`` is a string (one user turn) or a message list, and each response
  is either the full conversation starting with the prompt messages or only the turn(s) that follow the prompt.
* ``"implicit"``: there is no prompt column; the prompt is the part that ``chosen`` and ``rejected`` share (see
  :mod:`betadpo_lightning.data.implicit`). The values are strings (Anthropic HH style) or message lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from betadpo_lightning.data.errors import PreferenceDataError

DataFormat = Literal["standard", "conversational", "implicit"]
FormatOption = Literal["auto", "standard", "conversational", "implicit"]
Message = dict[str, str]

_SAMPLE_ROWS = 100


@dataclass(frozen=True)
class ColumnNames:
    """Names of the preference columns in the source data.

    Args:
        prompt: Column holding the prompt (unused by the implicit format).
        chosen: Column holding the preferred response.
        rejected: Column holding the dispreferred response.
    """

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"


@dataclass(frozen=True)
class ResolvedFormat:
    """The format of a split after detection.

    Args:
        format: How the prompt is obtained and how the values are shaped.
        messages: Whether ``chosen``/``rejected`` are message lists (always true for ``"conversational"``).
    """

    format: DataFormat
    messages: bool


def _value_kind(values: Sequence[object], column: str) -> Literal["text", "messages"]:
    """Kind of the first string or list among ``values``; other values are left to the row checks."""
    for value in values:
        if isinstance(value, str):
            return "text"
        if isinstance(value, list):
            return "messages"
    found = sorted({type(value).__name__ for value in values})
    raise PreferenceDataError(
        f"expected strings or lists of {{'role', 'content'}} messages in column '{column}', "
        f"found only {found} in its first {len(values)} rows",
        field=column,
        reason="not_text",
    )


def check_columns(available: Sequence[str], required: Sequence[str]) -> None:
    """Raise if a required column is missing.

    Args:
        available: Column names of the split.
        required: Column names the format needs.

    Raises:
        PreferenceDataError: Naming the first missing column and listing the available ones.
    """
    for column in required:
        if column not in available:
            raise PreferenceDataError(
                f"missing column '{column}'; the data has columns {sorted(available)} "
                "(set the column names of the data module to map them)",
                field=column,
                reason="missing_column",
            )


def resolve_format(
    columns: dict[str, list[object]], names: ColumnNames, requested: FormatOption = "auto"
) -> ResolvedFormat:
    """Detect (or check a forced) format from the first rows of a split.

    A split with a prompt column is ``"standard"`` when its responses are strings and ``"conversational"`` when
    they are message lists; a split without one is ``"implicit"``. A forced ``"implicit"`` ignores a prompt column.

    Args:
        columns: The first rows of the split, column-wise (e.g. ``dataset[:100]``).
        names: The preference column names.
        requested: ``"auto"`` to detect, or the format to use.

    Returns:
        The resolved format.

    Raises:
        PreferenceDataError: If a column is missing, or the values do not fit the requested format.
    """
    check_columns(list(columns), [names.chosen, names.rejected])
    kind = _value_kind(columns[names.chosen][:_SAMPLE_ROWS], names.chosen)
    fmt: DataFormat
    if requested != "auto":
        fmt = requested
    elif names.prompt not in columns:
        fmt = "implicit"
    else:
        fmt = "conversational" if kind == "messages" else "standard"
    if fmt != "implicit":
        check_columns(list(columns), [names.prompt])
    if fmt == "standard" and kind != "text":
        raise PreferenceDataError(
            f"format 'standard' expects strings in '{names.chosen}', found message lists (use 'conversational')",
            field=names.chosen,
            reason="not_text",
        )
    if fmt == "conversational" and kind != "messages":
        raise PreferenceDataError(
            f"format 'conversational' expects message lists in '{names.chosen}', found strings (use 'standard')",
            field=names.chosen,
            reason="bad_messages",
        )
    return ResolvedFormat(format=fmt, messages=kind == "messages")


def as_text(value: object, row: int, field: str) -> str:
    """Return ``value`` if it is a non-blank string.

    Args:
        value: The raw field value.
        row: Index of the row in its source split (for the error message).
        field: Column name (for the error message).

    Returns:
        The string, unchanged.

    Raises:
        PreferenceDataError: If the value is missing, not a string, or empty/whitespace only.
    """
    if value is None:
        raise PreferenceDataError(
            "expected a non-empty string, got a missing value (None)", row=row, field=field, reason="missing_value"
        )
    if not isinstance(value, str):
        raise PreferenceDataError(
            f"expected a non-empty string, got {type(value).__name__}", row=row, field=field, reason="not_text"
        )
    if not value.strip():
        raise PreferenceDataError(
            f"expected a non-empty string, got {value!r}", row=row, field=field, reason="empty_text"
        )
    return value


def as_messages(value: object, row: int, field: str) -> list[Message]:
    """Validate a message list and return it with ``None``-valued keys removed.

    Args:
        value: The raw field value.
        row: Index of the row in its source split (for the error message).
        field: Column name (for the error message).

    Returns:
        The messages, each a dict with at least a non-empty string ``role`` and a string ``content``.

    Raises:
        PreferenceDataError: If the value is not a non-empty list of such messages.
    """
    if value is None:
        raise PreferenceDataError(
            "expected a list of messages, got a missing value (None)", row=row, field=field, reason="missing_value"
        )
    if not isinstance(value, list) or not value:
        shown = "an empty list" if isinstance(value, list) else type(value).__name__
        raise PreferenceDataError(
            f"expected a non-empty list of {{'role', 'content'}} messages, got {shown}",
            row=row,
            field=field,
            reason="bad_messages",
        )
    messages: list[Message] = []
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            raise PreferenceDataError(
                f"message {position}: expected a dict with 'role' and 'content', got {type(message).__name__}",
                row=row,
                field=field,
                reason="bad_messages",
            )
        cleaned = {key: item for key, item in message.items() if item is not None}
        role, content = cleaned.get("role"), cleaned.get("content")
        if not isinstance(role, str) or not role or not isinstance(content, str):
            raise PreferenceDataError(
                f"message {position}: expected a string 'role' and a string 'content', got {message!r}",
                row=row,
                field=field,
                reason="bad_messages",
            )
        messages.append(cleaned)
    return messages
