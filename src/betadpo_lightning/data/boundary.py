r"""Where the response starts in a rendered conversation, including templates whose generation prompt opens a block.

The prompt text is the chat template's rendering of the prompt messages with ``add_generation_prompt=True``: exactly
what the model is given when it is sampled. The response is what the model writes after it. For most templates the
rendered conversation (prompt messages + response messages) starts with the prompt text, and the response is the
rest of the conversation.

**Generation prompts that open a block.** Reasoning models' templates may end the generation prompt with the
opening of a block that their rendering of an assistant turn does not start with. DeepSeek-R1-Distill's generation
prompt ends ``<｜Assistant｜><think>\n``, while it renders an assistant turn as ``<｜Assistant｜>`` + answer +
``<｜end▁of▁sentence｜>`` (dropping any reasoning up to ``</think>``). The prompt is then not a prefix of the
conversation. When the prompt ends with one of :data:`OPENING_BLOCKS` and, without that block, is a prefix of the
conversation, the pair is split the way the model is sampled:

* the prompt is the whole generation prompt, the block included: it is what the model is given;
* the response is what the conversation renders after the prompt without the block: the text that follows the
  opened block. ``prompt + response`` is then the template's assistant turn with the block opened in front of it.

A conversation that continues with a block of its own there (the response holds ``<think>`` while the generation
prompt already opened, or opened and closed, one) cannot be joined to the prompt consistently and is refused as
``template_mismatch``; so is any other difference between prompt and conversation.

**Dropped reasoning.** A response whose final assistant message holds reasoning (``...</think>`` in its content, or
a ``reasoning_content``) that the template leaves out of the rendered response (as DeepSeek-R1-Distill's does for
every assistant turn) would be trained on its answer only, as if written right after ``<think>\n``. Such a row is
refused (``reasoning_dropped``): give a chat template that keeps the reasoning of the response
(``tokenizer_kwargs: {chat_template: ...}``), or remove the reasoning from the data.

**Qwen3.** Qwen3's template renders the final assistant turn as ``<think>\n{reasoning}\n</think>\n\n{answer}``, with
an empty ``<think>\n\n</think>\n\n`` when the message has no reasoning, and its generation prompt (thinking mode)
opens no block. Every response then starts with that block. Both responses share it right after the same prompt, so
its log-probabilities are the same in both and cancel in the DPO margin, but it counts in length-averaged losses and
in the response entropy, and it teaches the model to answer with the thinking left out. With
``chat_template_kwargs={"enable_thinking": False}`` the generation prompt is Qwen3's non-thinking one, which ends with
the empty block, so the block moves to the prompt side and the responses hold the answer only.
"""

from __future__ import annotations

from collections.abc import Sequence

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.messages import Message

OPENING_BLOCKS = ("<think>\n\n</think>\n\n", "<think>\n", "<think>")
"""Texts a generation prompt may end with that the template's assistant turns need not start with (longest first)."""

REASONING_START, REASONING_END = "<think>", "</think>"
"""The markers around the reasoning of a response."""


def response_after_prompt(prompt: str, conversation: str, row: int, field: str) -> str:
    r"""The response text that follows ``prompt``, read off the rendered ``conversation`` (see the module docstring).

    Args:
        prompt: The rendered prompt, with the generation prompt.
        conversation: The rendered prompt and response messages, without the generation prompt.
        row: Index of the row in its source split (for the error message).
        field: The response's column (for the error message).

    Returns:
        The response text; ``prompt + response`` is the conversation, or the conversation with the prompt's opening
        block in front of the response.

    Raises:
        PreferenceDataError: ``template_mismatch``, if the two renderings cannot be joined at an exact boundary.

    Examples:
        >>> response_after_prompt("<U>hi<A>", "<U>hi<A>hello<E>", 0, "chosen")
        'hello<E>'
        >>> response_after_prompt("<U>hi<A><think>\n", "<U>hi<A>hello<E>", 0, "chosen")
        'hello<E>'
    """
    if conversation.startswith(prompt):
        return conversation[len(prompt) :]
    for block in OPENING_BLOCKS:
        base = prompt[: len(prompt) - len(block)]
        if prompt.endswith(block) and conversation.startswith(base):
            response = conversation[len(base) :]
            if not response.startswith(OPENING_BLOCKS[-1]):
                return response
            raise PreferenceDataError(
                f"the generation prompt ends with {block!r}, but the rendered response opens a block of its own "
                f"({response[:40]!r}...); the reasoning in the data and the generation prompt disagree (for Qwen3, "
                "leave enable_thinking at its default to train on reasoning)",
                row=row,
                field=field,
                reason="template_mismatch",
            )
    raise PreferenceDataError(
        "the chat template's rendered prompt (with add_generation_prompt=True) is not a prefix of the rendered "
        f"conversation, so the response boundary is not exact; prompt ends {prompt[-60:]!r}, "
        f"conversation has {conversation[max(0, len(prompt) - 60) : len(prompt) + 20]!r} there",
        row=row,
        field=field,
        reason="template_mismatch",
    )


def check_reasoning_kept(messages: Sequence[Message], response: str, row: int, field: str) -> None:
    r"""Refuse a response whose reasoning the chat template left out of the rendered text.

    The reasoning of the response's last assistant message is the text before its last ``</think>`` (after a
    ``<think>``, if any), or its ``reasoning_content``; it must appear in the rendered response. (Earlier turns of a
    multi-turn response are history to the template, which may drop their reasoning, as Qwen3's does.)

    Args:
        messages: The response messages.
        response: Their rendered text.
        row: Index of the row in its source split (for the error message).
        field: The response's column (for the error message).

    Raises:
        PreferenceDataError: ``reasoning_dropped``, if that reasoning is not in the rendered response.

    Examples:
        >>> check_reasoning_kept([{"role": "assistant", "content": "<think>\nsum</think>4"}], "4<E>", 0, "chosen")
        Traceback (most recent call last):
        ...
        betadpo_lightning.data.errors.PreferenceDataError: row 0, field 'chosen': the response holds reasoning ...
    """
    last = next((message for message in reversed(messages) if message["role"] == "assistant"), None)
    reasoning = _reasoning(last) if last is not None else ""
    if not reasoning or reasoning in response:
        return
    raise PreferenceDataError(
        f"the response holds reasoning ({reasoning[:40]!r}...), which the chat template leaves out of the rendered "
        "response, so only the answer would be trained on; give a chat template that keeps the reasoning of the "
        "response (tokenizer_kwargs: {chat_template: ...}) or remove the reasoning from the data",
        row=row,
        field=field,
        reason="reasoning_dropped",
    )


def _reasoning(message: Message) -> str:
    content = message["content"]
    if REASONING_END in content:
        return content.rsplit(REASONING_END, 1)[0].split(REASONING_START)[-1].strip()
    reasoning = message.get("reasoning_content")
    return reasoning.strip() if isinstance(reasoning, str) else ""
