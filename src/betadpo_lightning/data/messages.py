"""Chat messages as the data holds them, normalised to ``{"role": str, "content": str}`` dicts.

Accepted message layouts:

* ``{"role": ..., "content": ...}`` (OpenAI / Hugging Face): the role is kept as written, for the chat template to
  accept or refuse.
* ``{"from": ..., "value": ...}`` (ShareGPT, as LLaMA-Factory's ``sharegpt`` formatting writes it): ``human`` and
  ``user`` become ``user``, ``gpt`` and ``assistant`` become ``assistant``, ``system`` stays ``system``.
  ``function_call`` and ``observation`` turns (tool calls and tool results) are refused with reason
  ``unsupported_role``: chat templates take tool calls as structured ``tool_calls`` entries, which a ShareGPT turn
  does not carry, and rendering them as plain turns would train on a layout the model never sees.

A ``content`` is a string, or a list of parts: ``{"type": "text", "text": "..."}`` as in the OpenAI / multimodal
layout, or ``{"type": "text", "value": "..."}`` as LLaMA-Factory's v1 data layout writes them (whose messages also
carry a ``loss_weight``, kept and ignored by chat templates). Text parts are joined, in order and with nothing in
between, into one string, and the message is handed to the chat template with that string as its content. This is
what templates that iterate over parts render for text parts (they write ``part['text']`` one after another), and it
is the only form that templates written for string contents understand: Qwen3's, for instance, renders a non-string
content as an empty string, which would silently drop the text. A part of any other type (an image, audio, a
LLaMA-Factory ``tool_call``, ...) is refused with reason ``non_text_content`` (counted under ``on_bad_row="skip"``),
since a text-only model cannot be trained on it. Keys whose value is ``None`` are dropped first (``datasets`` fills
the keys that other rows have with ``None``).
"""

from __future__ import annotations

from betadpo_lightning.data.errors import PreferenceDataError

Message = dict[str, str]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
"""ShareGPT ``from`` values and the chat roles they become."""

SHAREGPT_UNSUPPORTED = ("function_call", "observation", "tool", "function")
"""ShareGPT ``from`` values of tool calls and tool results, which are refused."""

_TOOL_PARTS = ("tool_call", "tool_calls", "function_call")
"""Content part types of tool calls (LLaMA-Factory v1 writes ``{"type": "tool_call", "value": ...}``)."""


def as_messages(value: object, row: int, field: str) -> list[Message]:
    """Validate a message list and return it normalised (see the module docstring).

    Args:
        value: The raw field value.
        row: Index of the row in its source split (for the error message).
        field: Column name (for the error message).

    Returns:
        The messages, each a dict with a non-empty string ``role`` and a string ``content`` (plus any other
        non-``None`` keys of the ``role``/``content`` layout).

    Raises:
        PreferenceDataError: If the value is not a non-empty list of such messages.

    Examples:
        >>> as_messages([{"from": "human", "value": "hi"}], 0, "conversations")
        [{'role': 'user', 'content': 'hi'}]
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
    return [as_message(message, row, field, position) for position, message in enumerate(value)]


def as_response(value: object, row: int, field: str) -> list[Message]:
    """The messages of a response given as a message list, a single message dict or a string.

    A string is one assistant turn; a single dict is one message (as LLaMA-Factory's ShareGPT preference rows give
    ``chosen`` and ``rejected``).

    Args:
        value: The raw field value.
        row: Index of the row in its source split (for the error message).
        field: Column name (for the error message).

    Returns:
        The response messages.

    Raises:
        PreferenceDataError: If the value is none of these, or a message is malformed.

    Examples:
        >>> as_response({"from": "gpt", "value": "Paris."}, 0, "chosen")
        [{'role': 'assistant', 'content': 'Paris.'}]
        >>> as_response("Paris.", 0, "chosen")
        [{'role': 'assistant', 'content': 'Paris.'}]
    """
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        return [as_message(value, row, field, 0)]
    return as_messages(value, row, field)


def as_message(message: object, row: int, field: str, position: int) -> Message:
    """Normalise one message (see the module docstring).

    Args:
        message: The raw message.
        row: Index of the row in its source split (for the error message).
        field: Column name (for the error message).
        position: Index of the message in its list (for the error message).

    Returns:
        The message with a string ``role`` and a string ``content``.

    Raises:
        PreferenceDataError: ``bad_messages`` for a malformed message, ``unsupported_role`` for a ShareGPT tool
            turn or unknown role, ``non_text_content`` for a non-text content part.
    """
    if not isinstance(message, dict):
        raise PreferenceDataError(
            f"message {position}: expected a dict with 'role' and 'content', got {type(message).__name__}",
            row=row,
            field=field,
            reason="bad_messages",
        )
    cleaned = {key: item for key, item in message.items() if item is not None}
    if "role" not in cleaned and "from" in cleaned:
        role = _sharegpt_role(cleaned["from"], row, field, position)
        cleaned = {"role": role, "content": cleaned.get("value")}  # type: ignore[dict-item]
    role, content = cleaned.get("role"), cleaned.get("content")
    if isinstance(content, list):
        content = _join_text_parts(content, row, field, position)
    if not isinstance(role, str) or not role or not isinstance(content, str):
        raise PreferenceDataError(
            f"message {position}: expected a string 'role' and a string 'content' (or 'from' and 'value'), "
            f"got {message!r}",
            row=row,
            field=field,
            reason="bad_messages",
        )
    return {**cleaned, "role": role, "content": content}


def _sharegpt_role(value: object, row: int, field: str, position: int) -> str:
    if isinstance(value, str) and value in SHAREGPT_ROLES:
        return SHAREGPT_ROLES[value]
    accepted = ", ".join(sorted(SHAREGPT_ROLES))
    if value in SHAREGPT_UNSUPPORTED:
        detail = (
            f"ShareGPT turns from '{value}' (tool calls and tool results) are not supported: chat templates take tool "
            "calls as structured 'tool_calls', which this layout does not carry"
        )
    else:
        detail = f"unknown ShareGPT role {value!r}"
    raise PreferenceDataError(
        f"message {position}: {detail}; expected 'from' to be one of {accepted}",
        row=row,
        field=field,
        reason="unsupported_role",
    )


def _join_text_parts(parts: list[object], row: int, field: str, position: int) -> str | None:
    """The text parts of a content joined into one string; ``None`` (a malformed message) for a malformed part."""
    texts = []
    for number, part in enumerate(parts):
        if not isinstance(part, dict):
            return None
        present = {key: item for key, item in part.items() if item is not None}
        kind = present.get("type")
        text = present.get("text", present.get("value"))  # OpenAI's "text", LLaMA-Factory v1's "value"
        if kind == "text" and isinstance(text, str):
            texts.append(text)
            continue
        if kind == "text" or (kind is None and (text is not None or not present)):
            return None
        shown = kind if kind is not None else sorted(present)
        detail = (
            "tool calls are not supported: chat templates take them as structured 'tool_calls'"
            if kind in _TOOL_PARTS
            else "only text parts can be trained on by a text-only model"
        )
        raise PreferenceDataError(
            f"message {position}: content part {number} is of type {shown!r}; {detail} "
            "(expected {'type': 'text', 'text': ...} or {'type': 'text', 'value': ...})",
            row=row,
            field=field,
            reason="non_text_content",
        )
    return "".join(texts)
