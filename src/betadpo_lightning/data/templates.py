"""``data.chat_template``: whether rows are rendered with a chat template, and with which one.

The option takes:

* ``"auto"`` (the default): conversational rows are rendered with the tokenizer's own template; standard string rows
  are raw text (with a warning when the tokenizer has a template, see
  :func:`~betadpo_lightning.data.render.uses_chat_template`);
* ``true``: standard string rows too, as one user turn and one assistant turn;
* ``false``: never (conversational rows are then refused);
* the path of a template file (``*.jinja``, as LLaMA-Factory and TRL users carry them; relative to the working
  folder), or the template text itself, recognised by ``{%`` or ``{{``. The template replaces the tokenizer's own,
  and rows are rendered as with ``true``.

A file is read and every template is compiled when the data module is built: a missing, unreadable or empty file
and a template that does not compile raise a one-line ``ValueError`` naming the option and the path. The template
reaches the tokenizer as ``AutoTokenizer.from_pretrained(chat_template=...)`` (it is added to ``tokenizer_kwargs``),
so the tokenizer the run uses carries it everywhere: in the tokenization cache's key, in the reference cache's key
and in the tokenizer exported with the model. The checkpoint records the template text, not the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import _compile_jinja_template

from betadpo_lightning.data.render import ChatTemplateMode

__all__ = ["ChatTemplateChoice", "is_template_text", "parse_chat_template"]

OPTION = "chat_template"
"""The option's name in the data module (``data.chat_template`` on the command line)."""

_MARKERS = ("{%", "{{")


def is_template_text(value: str) -> bool:
    """Whether ``value`` is template text rather than a path (it holds ``{%`` or ``{{``).

    Examples:
        >>> is_template_text("{% for m in messages %}{{ m['content'] }}{% endfor %}"), is_template_text("a.jinja")
        (True, False)
    """
    return any(marker in value for marker in _MARKERS)


@dataclass(frozen=True)
class ChatTemplateChoice:
    """The resolved ``chat_template`` option.

    Args:
        mode: Whether rows are rendered with a template: ``"auto"``, ``True`` or ``False`` (``True`` for a template
            given as a file or as text).
        text: The template that replaces the tokenizer's own, or ``None`` to keep the tokenizer's.
        origin: Where :attr:`text` came from (``"file 'chatml.jinja'"`` or ``"the inline template"``).
    """

    mode: ChatTemplateMode
    text: str | None = None
    origin: str | None = None

    def tokenizer_kwargs(self, kwargs: Mapping[str, object] | None) -> dict[str, object]:
        """``kwargs`` for ``AutoTokenizer.from_pretrained`` with this template, when one is given.

        Raises:
            ValueError: If ``kwargs`` already holds a different ``chat_template``.
        """
        merged = dict(kwargs or {})
        if self.text is None:
            return merged
        given = merged.get(OPTION)
        if given is not None and given != self.text:
            raise ValueError(
                f"{OPTION} ({self.origin}) and tokenizer_kwargs['chat_template'] both set a template; keep one of them"
            )
        merged[OPTION] = self.text
        return merged

    def describe(self, tokenizer: PreTrainedTokenizerBase, used: bool) -> str:
        """One line saying which template renders the rows (for the data preview).

        Args:
            tokenizer: The tokenizer the rows are rendered with.
            used: Whether the rows of the split are rendered with a template.
        """
        if not used:
            has = tokenizer.chat_template is not None
            return "none: rows are raw text" + (" (the tokenizer has one; chat_template true uses it)" if has else "")
        if self.text is not None:
            return f"{self.origin} (chat_template)"
        return f"the tokenizer's own ({tokenizer.name_or_path})"


def parse_chat_template(option: object) -> ChatTemplateChoice:
    """Resolve the ``chat_template`` option (see the module docstring): read a file and compile a template.

    Args:
        option: ``"auto"``, ``True``, ``False``, the path of a template file or the template text.

    Returns:
        The mode and the template text, if any.

    Raises:
        ValueError: Naming the option (and the path) when the value is none of these, the file cannot be read or is
            empty, or the template does not compile.

    Examples:
        >>> parse_chat_template("auto")
        ChatTemplateChoice(mode='auto', text=None, origin=None)
        >>> parse_chat_template("{{ messages[0]['content'] }}").origin
        'the inline template'
    """
    if option in ("auto", True, False) and isinstance(option, bool | str):
        return ChatTemplateChoice(option)  # type: ignore[arg-type]
    if not isinstance(option, str) or not option.strip():
        raise ValueError(f"{OPTION} must be 'auto', true, false, a template file or the template text, got {option!r}")
    if is_template_text(option):
        return ChatTemplateChoice(True, _compiled(option, "the inline template"), "the inline template")
    path = Path(option).expanduser()
    origin = f"file '{option}'"
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(
            f"the {OPTION} file '{option}' {where} (relative to {Path.cwd()}); expected 'auto', true, false, the "
            "path of a Jinja template file or the template text itself"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the {OPTION} file '{option}' as UTF-8 text ({error})") from None
    if not text.strip():
        raise ValueError(f"the {OPTION} file '{option}' is empty; expected a Jinja chat template")
    return ChatTemplateChoice(True, _compiled(text, origin), origin)


def _compiled(text: str, origin: str) -> str:
    """``text``, after checking that it compiles as transformers compiles chat templates."""
    try:
        _compile_jinja_template(text)
    except TemplateError as error:
        line = getattr(error, "lineno", None)
        where = f" at line {line}" if line else ""
        raise ValueError(f"{OPTION} ({origin}) is not a valid Jinja template{where}: {error}") from None
    return text
