"""Turn one raw preference row into three texts: the prompt and the two responses that continue it.

Conversational rows are rendered with the tokenizer's chat template (its own, or the one ``data.chat_template``
names, see :mod:`betadpo_lightning.data.templates`): the prompt messages with ``add_generation_prompt=True``, and
each response as the text that the full conversation (prompt messages + response messages) adds after the rendered
prompt (:func:`~betadpo_lightning.data.boundary.response_after_prompt`, which also handles generation prompts that
open a reasoning block). Extra template variables (e.g. ``{"enable_thinking": False}`` for Qwen3) are passed to every
rendering. A row whose renderings cannot be joined at an exact boundary is an error. String rows rendered with a
template (a forced ``"conversational"`` format, or ``chat_template=True``) are one user turn and one assistant turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import TemplateError
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.boundary import check_reasoning_kept, response_after_prompt
from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.formats import ColumnNames, ResolvedFormat, as_text
from betadpo_lightning.data.implicit import (
    check_assistant_turns,
    check_response_content,
    common_message_prefix,
    split_implicit_messages,
    split_implicit_text,
)
from betadpo_lightning.data.messages import Message, as_messages, as_response

ChatTemplateMode = bool | Literal["auto"]
"""Whether rows are rendered with a chat template: ``"auto"`` (conversational rows only), ``True`` or ``False``."""
ChatTemplateOption = bool | str
"""``data.chat_template``: a :data:`ChatTemplateMode`, a template file or the template text (see
:mod:`betadpo_lightning.data.templates`)."""
TemplateKwargs = Mapping[str, Any]


@dataclass(frozen=True)
class RenderedPair:
    """A preference pair as text, split exactly at the prompt/response boundary.

    Args:
        prompt: The prompt text (rendered with the generation prompt when a chat template is used).
        chosen: Text of the preferred response, continuing ``prompt``.
        rejected: Text of the dispreferred response, continuing ``prompt``.
    """

    prompt: str
    chosen: str
    rejected: str


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, fmt: ResolvedFormat, option: ChatTemplateMode) -> bool:
    """Decide whether rows are rendered with the chat template, and check that it can be done.

    ``"auto"`` uses the template for conversational rows only. ``True`` also wraps standard string rows into a user
    turn and an assistant turn. Conversational rows cannot be used without a template. Standard string rows used as
    raw text while the tokenizer has a chat template get a warning (once): a chat model trained on raw text learns a
    layout it never sees at inference.

    Args:
        tokenizer: The tokenizer whose ``chat_template`` would be used.
        fmt: The resolved data format.
        option: ``"auto"``, ``True`` or ``False``.

    Returns:
        Whether to render with the chat template.

    Raises:
        PreferenceDataError: If the data needs a template that is missing or disabled, or a template is requested
            for implicit string rows (their turns are marked in the text itself).
        ValueError: If ``option`` is not a mode (a template file or text is resolved before, by the data module).
    """
    if option not in ("auto", True, False):
        raise ValueError(f"chat_template must be 'auto', true or false here, got {option!r}")
    use = fmt.messages if option == "auto" else bool(option)
    if fmt.messages and not use:
        raise PreferenceDataError(
            "the rows are conversational (message lists, which need a chat template), but chat_template is false; "
            "set chat_template to 'auto' or true (or format to 'standard' to use string rows as raw text)"
        )
    if option == "auto" and fmt.format == "standard" and tokenizer.chat_template is not None:
        rank_zero_warn(
            f"standard rows (prompt/chosen/rejected strings) are used as raw text, without the chat template of "
            f"tokenizer '{tokenizer.name_or_path}'; for a chat model set data.chat_template true (or data.format "
            "conversational) to render each prompt as a user turn and each response as an assistant turn"
        )
    if use and not fmt.messages and fmt.format == "implicit":
        raise PreferenceDataError(
            "chat_template=true cannot be used with implicit-prompt string rows, whose turns "
            "are already written in the text; set chat_template to 'auto' or false"
        )
    if use and tokenizer.chat_template is None:
        raise PreferenceDataError(
            f"tokenizer '{tokenizer.name_or_path}' has no chat template, but the rows are rendered as conversations "
            "(pass a tokenizer with a chat template, or a tokenizer_kwargs entry 'chat_template')",
            reason="no_chat_template",
        )
    return use


class PairRenderer:
    """Render raw rows of one split into :class:`RenderedPair` texts.

    Args:
        tokenizer: Tokenizer whose chat template renders conversations.
        fmt: The resolved format of the split.
        names: The preference column names.
        chat_template: ``"auto"``, ``True`` or ``False`` (see :func:`uses_chat_template`); a template file or text
            is set on the tokenizer beforehand (:mod:`betadpo_lightning.data.templates`).
        chat_template_kwargs: Extra variables for the chat template (see :func:`check_template_kwargs`).

    Raises:
        PreferenceDataError: If the rows cannot be rendered with this tokenizer and these options.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        fmt: ResolvedFormat,
        names: ColumnNames,
        chat_template: ChatTemplateMode = "auto",
        chat_template_kwargs: TemplateKwargs | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.names = fmt.columns(names)
        self.use_template = uses_chat_template(tokenizer, fmt, chat_template)
        self.template_kwargs = check_template_kwargs(chat_template_kwargs)

    def render(self, row: dict[str, object], index: int) -> RenderedPair:
        """Render one raw row.

        Args:
            row: The row's values by column name.
            index: The row's index in its source split.

        Returns:
            The prompt and response texts.

        Raises:
            PreferenceDataError: Naming the row and field, if the row is malformed or cannot be rendered exactly.
        """
        if self.fmt.messages:
            return self._render_messages(row, index)
        return self._render_text(row, index)

    def _render_text(self, row: dict[str, object], index: int) -> RenderedPair:
        names = self.names
        chosen = as_text(row.get(names.chosen), index, names.chosen)
        rejected = as_text(row.get(names.rejected), index, names.rejected)
        _check_distinct(chosen, rejected, index, names)
        if self.fmt.format == "implicit":
            return RenderedPair(*split_implicit_text(chosen, rejected, index, names))
        prompt = as_text(row.get(names.prompt), index, names.prompt)
        if not self.use_template:
            return RenderedPair(prompt, chosen, rejected)
        return self._render_conversation(
            [{"role": "user", "content": prompt}],
            [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}],
            index,
        )

    def _render_messages(self, row: dict[str, object], index: int) -> RenderedPair:
        names = self.names
        read = as_messages if self.fmt.format == "implicit" else as_response
        chosen = read(row.get(names.chosen), index, names.chosen)
        rejected = read(row.get(names.rejected), index, names.rejected)
        _check_distinct(chosen, rejected, index, names)
        if self.fmt.format == "implicit":
            prompt, chosen, rejected = split_implicit_messages(chosen, rejected, index, names)
        else:
            prompt = self._prompt_messages(row.get(names.prompt), index)
            chosen = self._response_messages(prompt, chosen, index, names.chosen)
            rejected = self._response_messages(prompt, rejected, index, names.rejected)
            _check_distinct(chosen, rejected, index, names)
        return self._render_conversation(prompt, chosen, rejected, index)

    def _prompt_messages(self, value: object, index: int) -> list[Message]:
        if isinstance(value, str):
            return [{"role": "user", "content": as_text(value, index, self.names.prompt)}]
        return as_messages(value, index, self.names.prompt)

    @staticmethod
    def _response_messages(prompt: list[Message], messages: list[Message], index: int, field: str) -> list[Message]:
        # A response holds either the whole conversation (starting with the prompt messages) or only what follows.
        after = len(prompt) if common_message_prefix(prompt, messages) == len(prompt) else 0
        check_assistant_turns(messages, after, index, field)
        response = messages[after:]
        check_response_content(response, index, field)
        return response

    def _apply(self, messages: list[Message], index: int, field: str, generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=False, **self.template_kwargs
            )
        except TemplateError as error:
            raise PreferenceDataError(
                f"the chat template of '{self.tokenizer.name_or_path}' failed: {error}",
                row=index,
                field=field,
                reason="template_error",
            ) from error
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
        return text

    def _render_conversation(
        self, prompt: list[Message], chosen: list[Message], rejected: list[Message], index: int
    ) -> RenderedPair:
        prompt_text = self._apply(prompt, index, self.names.prompt, generation_prompt=True)
        responses = []
        for field, response in ((self.names.chosen, chosen), (self.names.rejected, rejected)):
            full = self._apply(prompt + response, index, field, generation_prompt=False)
            text = response_after_prompt(prompt_text, full, index, field)
            check_reasoning_kept(response, text, index, field)
            responses.append(text)
        return RenderedPair(prompt_text, responses[0], responses[1])


_PASSED_ARGUMENTS = frozenset({"tools", "documents"})  # arguments of apply_chat_template that may be given


def check_template_kwargs(kwargs: TemplateKwargs | None) -> dict[str, Any]:
    """Check extra chat template variables, which are passed to ``apply_chat_template`` as keyword arguments.

    Transformers hands keyword arguments it does not know to the template as variables, as Qwen3's
    ``enable_thinking`` is given; ``tools`` and ``documents`` are passed on as well. ``messages`` and the other
    arguments of ``apply_chat_template`` (``tokenize``, ``add_generation_prompt``, ...), which the renderer sets, are
    refused.

    Args:
        kwargs: Variable name → value, or ``None``.

    Returns:
        The variables as a new dict (empty for ``None``).

    Raises:
        PreferenceDataError: Naming a refused variable.

    Examples:
        >>> check_template_kwargs({"enable_thinking": False})
        {'enable_thinking': False}
    """
    variables = dict(kwargs or {})
    own = set(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters) - {"self", "kwargs"}
    refused = (own - _PASSED_ARGUMENTS) | {"messages"}
    for name in variables:
        if not isinstance(name, str) or name in refused:
            raise PreferenceDataError(
                f"chat_template_kwargs cannot set {name!r}: it is an argument of apply_chat_template or set by the "
                "renderer; expected template variables such as 'enable_thinking'"
            )
    return variables


def _check_distinct(chosen: object, rejected: object, index: int, names: ColumnNames) -> None:
    if isinstance(chosen, list) and isinstance(rejected, list):
        same = len(chosen) == len(rejected) == common_message_prefix(chosen, rejected)
    else:
        same = chosen == rejected
    if same:
        raise PreferenceDataError(
            f"expected '{names.rejected}' to differ from '{names.chosen}', got the same response",
            row=index,
            field=names.rejected,
            reason="identical_pair",
        )
