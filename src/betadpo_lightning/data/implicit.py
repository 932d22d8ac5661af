r"""Implicit prompts: recover the prompt that ``chosen`` and ``rejected`` share.

The rules:

* **Strings** (Anthropic HH-RLHF style, ``"\n\nHuman: ...\n\nAssistant: ..."``): the prompt is ``chosen`` up to
  and including the last ``"\n\nAssistant:"`` marker that lies inside the longest common prefix of ``chosen`` and
  ``rejected``; each response is the rest of its string (usually starting with a space). A pair without such a
  shared marker is a bad row, since cutting at an arbitrary character would split a word.
* **Message lists**: the prompt is the longest common prefix of the two conversations (messages compared by
  ``role`` and ``content``); it must be non-empty, and for both responses the first message after it must be an
  ``assistant`` turn.
"""

from __future__ import annotations

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.formats import ColumnNames, Message

HH_ASSISTANT_MARKER = "\n\nAssistant:"


def split_implicit_text(chosen: str, rejected: str, row: int, names: ColumnNames) -> tuple[str, str, str]:
    r"""Split two HH-style transcripts into the shared prompt and the two responses.

    Args:
        chosen: The preferred transcript.
        rejected: The dispreferred transcript.
        row: Index of the row in its source split (for error messages).
        names: Column names (for error messages).

    Returns:
        ``(prompt, chosen_response, rejected_response)`` with ``prompt + chosen_response == chosen`` and
        ``prompt + rejected_response == rejected``.

    Raises:
        PreferenceDataError: If no ``"\n\nAssistant:"`` marker is shared, or a response is blank.

    Examples:
        >>> split_implicit_text("\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: hi\n\nAssistant: go",
        ...                     0, ColumnNames())
        ('\n\nHuman: hi\n\nAssistant:', ' hello', ' go')
    """
    common = chosen[: _common_prefix_length(chosen, rejected)]
    cut = common.rfind(HH_ASSISTANT_MARKER)
    if cut < 0:
        raise PreferenceDataError(
            f"expected '{names.chosen}' and '{names.rejected}' to share a prompt ending in {HH_ASSISTANT_MARKER!r} "
            f"(implicit prompt format); their common prefix is {common[-80:]!r}",
            row=row,
            field=names.chosen,
            reason="no_shared_prompt",
        )
    end = cut + len(HH_ASSISTANT_MARKER)
    responses = (chosen[end:], rejected[end:])
    for field, response in zip((names.chosen, names.rejected), responses, strict=True):
        if not response.strip():
            raise PreferenceDataError(
                f"expected a non-empty response after the last shared {HH_ASSISTANT_MARKER!r}, got {response!r}",
                row=row,
                field=field,
                reason="empty_text",
            )
    return chosen[:end], responses[0], responses[1]


def _common_prefix_length(left: str, right: str) -> int:
    length = min(len(left), len(right))
    for position in range(length):
        if left[position] != right[position]:
            return position
    return length


def same_message(left: Message, right: Message) -> bool:
    """Whether two messages have the same ``role`` and ``content``."""
    return left.get("role") == right.get("role") and left.get("content") == right.get("content")


def common_message_prefix(left: list[Message], right: list[Message]) -> int:
    """Number of leading messages that ``left`` and ``right`` share (compared by role and content)."""
    shared = 0
    while shared < min(len(left), len(right)) and same_message(left[shared], right[shared]):
        shared += 1
    return shared


def check_assistant_turns(messages: list[Message], after: int, row: int, field: str) -> None:
    """Check that ``messages[after:]`` is a non-empty continuation that starts with an assistant turn.

    Args:
        messages: The full conversation or response messages.
        after: Number of prompt messages before the response.
        row: Index of the row in its source split (for error messages).
        field: Column name (for error messages).

    Raises:
        PreferenceDataError: If there is no message after the prompt, or the first one is not ``assistant``.
    """
    if len(messages) <= after:
        raise PreferenceDataError(
            f"expected at least one assistant message after the {after} prompt message(s), got none",
            row=row,
            field=field,
            reason="bad_conversation",
        )
    role = messages[after]["role"]
    if role != "assistant":
        raise PreferenceDataError(
            f"expected the response to start with an 'assistant' message (message {after}), got role '{role}'",
            row=row,
            field=field,
            reason="bad_conversation",
        )


def check_response_content(response: list[Message], row: int, field: str) -> None:
    """Check that a response's messages hold some text (a blank answer renders as end-of-turn tokens only).

    Raises:
        PreferenceDataError: ``empty_text``, when every message of the response is blank.
    """
    if not "".join(str(message.get("content") or "") for message in response).strip():
        raise PreferenceDataError(
            "expected non-empty response content, got only blank messages",
            row=row,
            field=field,
            reason="empty_text",
        )


def split_implicit_messages(
    chosen: list[Message], rejected: list[Message], row: int, names: ColumnNames
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two conversations into their shared prompt messages and the two responses.

    Args:
        chosen: The preferred conversation.
        rejected: The dispreferred conversation.
        row: Index of the row in its source split (for error messages).
        names: Column names (for error messages).

    Returns:
        ``(prompt_messages, chosen_response_messages, rejected_response_messages)``.

    Raises:
        PreferenceDataError: If the conversations share no leading message, one of them does not continue the
            shared prefix with an assistant turn, or a response is blank.
    """
    shared = common_message_prefix(chosen, rejected)
    if shared == 0:
        raise PreferenceDataError(
            f"expected '{names.chosen}' and '{names.rejected}' to share their leading prompt message(s) "
            "(implicit prompt format); their first messages differ",
            row=row,
            field=names.chosen,
            reason="no_shared_prompt",
        )
    for messages, field in ((chosen, names.chosen), (rejected, names.rejected)):
        check_assistant_turns(messages, shared, row, field)
        check_response_content(messages[shared:], row, field)
    return chosen[:shared], chosen[shared:], rejected[shared:]
