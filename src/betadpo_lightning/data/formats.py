"""Preference data formats: detection from a split's columns and validation of single field values.

Three formats are understood:

* ``"standard"``: ``prompt``, ``chosen`` and ``rejected`` are strings; the responses continue the prompt.
* ``"conversational"``: rendered with the tokenizer's chat template. ``prompt`` is a string (one user turn) or a
  message list; ``chosen`` and ``rejected`` are message lists, single message dicts or strings (one assistant turn).
  Rows of strings only are detected as ``"standard"``; forced to ``"conversational"``, each is rendered as one user
  turn and one assistant turn. A response list is either the full conversation starting with the prompt messages or
  only the turn(s) that follow the prompt; without a prompt column, whole conversations are read as ``"implicit"``
  message lists (also when ``"conversational"`` is forced). Messages are ``{"role", "content"}`` or ShareGPT
  ``{"from", "value"}`` dicts (see :mod:`betadpo_lightning.data.messages`). LLaMA-Factory's ShareGPT preference
  layout (``conversations`` holding the prompt turns, ``chosen``/``rejected`` single ``{"from": "gpt", ...}``
  messages) is recognised: without the configured prompt column, a ``conversations`` column of message lists is the
  prompt. LLaMA-Factory's v1 layout (``chosen_messages`` and ``rejected_messages``, whole conversations) is
  recognised too: without the configured ``chosen``/``rejected`` columns, those two columns are the responses.
* ``"implicit"``: there is no prompt column; the prompt is the part that ``chosen`` and ``rejected`` share (see
  :mod:`betadpo_lightning.data.implicit`). The values are strings (Anthropic HH style) or message lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.messages import Message, as_messages

__all__ = [
    "SHAREGPT_PROMPT_COLUMN",
    "V1_RESPONSE_COLUMNS",
    "ColumnNames",
    "DataFormat",
    "FormatOption",
    "Message",
    "ResolvedFormat",
    "as_messages",
    "as_text",
    "check_columns",
    "resolve_format",
]

DataFormat = Literal["standard", "conversational", "implicit"]
FormatOption = Literal["auto", "standard", "conversational", "implicit"]
ValueKind = Literal["text", "messages", "message"]

SHAREGPT_PROMPT_COLUMN = "conversations"
"""The column that holds the prompt turns in LLaMA-Factory's ShareGPT layout; used when the prompt column is absent."""

V1_RESPONSE_COLUMNS = ("chosen_messages", "rejected_messages")
"""The response columns of LLaMA-Factory's v1 preference layout; used when the configured ones are absent."""

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
        messages: Whether rows are read as messages (always true for ``"conversational"``; for ``"implicit"``,
            whether ``chosen``/``rejected`` are message lists).
        prompt: The column the prompt is read from when it is not the configured one (``"conversations"`` for
            LLaMA-Factory's ShareGPT layout), else ``None``.
        responses: The ``(chosen, rejected)`` columns when they are not the configured ones (LLaMA-Factory's v1
            ``chosen_messages``/``rejected_messages``), else ``None``.
    """

    format: DataFormat
    messages: bool
    prompt: str | None = None
    responses: tuple[str, str] | None = None

    def columns(self, names: ColumnNames) -> ColumnNames:
        """The column names rows are read with: ``names`` with the columns this format found in their place."""
        prompt = self.prompt if self.prompt is not None else names.prompt
        chosen, rejected = self.responses if self.responses is not None else (names.chosen, names.rejected)
        return ColumnNames(prompt, chosen, rejected)


def _value_kind(values: Sequence[object], column: str) -> ValueKind:
    """Kind of the first string, list or dict among ``values``; other values are left to the row checks."""
    for value in values:
        kind = _kind(value)
        if kind is not None:
            return kind
    found = sorted({type(value).__name__ for value in values})
    raise PreferenceDataError(
        f"expected strings, lists of {{'role', 'content'}} messages or single message dicts in column '{column}', "
        f"found only {found} in its first {len(values)} rows",
        field=column,
        reason="not_text",
    )


def _kind(value: object) -> ValueKind | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "messages"
    return "message" if isinstance(value, dict) else None


def _first_kind(values: Sequence[object]) -> ValueKind | None:
    return next((kind for kind in map(_kind, values) if kind is not None), None)


def _prompt_column(columns: dict[str, list[object]], names: ColumnNames) -> str | None:
    """The configured prompt column, else a ``conversations`` column of message lists, else ``None``."""
    if names.prompt in columns:
        return names.prompt
    sharegpt = columns.get(SHAREGPT_PROMPT_COLUMN)
    if sharegpt is not None and _first_kind(sharegpt[:_SAMPLE_ROWS]) == "messages":
        return SHAREGPT_PROMPT_COLUMN
    return None


def _response_columns(columns: dict[str, list[object]], names: ColumnNames) -> tuple[str, str] | None:
    """LLaMA-Factory's v1 response columns, when the configured ones are both absent and those are both present."""
    absent = names.chosen not in columns and names.rejected not in columns
    return V1_RESPONSE_COLUMNS if absent and all(c in columns for c in V1_RESPONSE_COLUMNS) else None


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

    The prompt column is the configured one, or, when the data has none, a ``conversations`` column of message lists
    (LLaMA-Factory's ShareGPT layout); the response columns are the configured ones, or, when both are absent,
    LLaMA-Factory's v1 ``chosen_messages``/``rejected_messages``. A split with a prompt column is
    ``"conversational"`` when its responses are message lists or single messages, or its prompts are message lists,
    and ``"standard"`` otherwise; a split without one is ``"implicit"``. A forced ``"implicit"`` ignores a prompt
    column; a forced ``"conversational"`` takes string rows as one user turn and one assistant turn, and whole
    conversations without a prompt column (TRL's UltraFeedback, LLaMA-Factory's v1 layout) as implicit-prompt
    message lists, which the chat template renders all the same.

    Args:
        columns: The first rows of the split, column-wise (e.g. ``dataset[:100]``).
        names: The preference column names.
        requested: ``"auto"`` to detect, or the format to use.

    Returns:
        The resolved format.

    Raises:
        PreferenceDataError: If a column is missing, or the values do not fit the requested format.

    Examples:
        >>> sharegpt = {"conversations": [[{"from": "human", "value": "Hi"}]],
        ...             "chosen": [{"from": "gpt", "value": "Hello!"}], "rejected": [{"from": "gpt", "value": "Go."}]}
        >>> resolve_format(sharegpt, ColumnNames())
        ResolvedFormat(format='conversational', messages=True, prompt='conversations', responses=None)
    """
    responses = _response_columns(columns, names)
    if responses is not None:
        names = ColumnNames(names.prompt, *responses)
    check_columns(list(columns), [names.chosen, names.rejected])
    kind = _value_kind(columns[names.chosen][:_SAMPLE_ROWS], names.chosen)
    prompt = _prompt_column(columns, names)
    prompt_kind = _first_kind(columns[prompt][:_SAMPLE_ROWS]) if prompt is not None else None
    fmt: DataFormat
    if requested == "conversational" and prompt is None and kind == "messages":
        fmt = "implicit"  # whole conversations without a prompt column: the prompt is their shared messages
    elif requested != "auto":
        fmt = requested
    elif prompt is None:
        fmt = "implicit"
    else:
        fmt = "conversational" if kind != "text" or prompt_kind == "messages" else "standard"
    if fmt == "implicit":
        if kind == "message":
            raise PreferenceDataError(
                f"single messages in '{names.chosen}' need a prompt column ('{names.prompt}' or "
                f"'{SHAREGPT_PROMPT_COLUMN}'); the implicit-prompt format takes whole conversations or transcripts",
                field=names.chosen,
                reason="bad_messages",
            )
        return ResolvedFormat(format=fmt, messages=kind == "messages", responses=responses)
    if prompt is None or (fmt == "standard" and prompt != names.prompt):
        check_columns(list(columns), [names.prompt])
    if fmt == "standard" and kind != "text":
        raise PreferenceDataError(
            f"format 'standard' expects strings in '{names.chosen}', found message lists (use 'conversational')",
            field=names.chosen,
            reason="not_text",
        )
    # A forced "conversational" on strings renders each row as one user turn and one assistant turn.
    return ResolvedFormat(
        format=fmt,
        messages=fmt == "conversational",
        prompt=None if prompt == names.prompt else prompt,
        responses=responses,
    )


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
