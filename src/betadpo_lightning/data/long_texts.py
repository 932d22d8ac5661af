"""Texts too long to survive truncation are cut before they are tokenized, so that one huge row costs little memory.

Tokenizing a text costs far more memory than the text: a fast tokenizer keeps, per token, its string, offsets and
masks (about 6.5 GB for a 50 MB response), although truncation then keeps at most ``max_length`` tokens of it. No
part of a row keeps more than ``max_length`` tokens (the prompt is cut from the left, each response from the right;
see :mod:`~betadpo_lightning.data.truncation`), and no token covers more than ``L`` characters, ``L`` the longest
token of the vocabulary. So before tokenizing, :class:`BoundedRenderer` keeps of each text only the characters
that can matter, with a wide margin: the last ``C`` of the prompt and the first ``C`` of each response, with
``C = 2 · (max_length + 64) · L`` (:func:`max_text_chars`). The cut lies at least ``2 · (max_length + 64)`` tokens
away from every token that survives truncation, and a tokenizer's choice of tokens depends on nearby text only,
so the pair's ids are those of the whole text (checked by the tests on long texts with and without spaces); a part
that was cut is still reported as truncated.

Checks on token ids (a BOS token inside a prompt or a response) see only the kept part of a text that was cut.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.formats import ColumnNames
from betadpo_lightning.data.render import PairRenderer, RenderedPair
from betadpo_lightning.data.truncation import TruncationLimits

__all__ = ["MARGIN_TOKENS", "BoundedRenderer", "max_text_chars"]

MARGIN_TOKENS = 64
"""Tokens kept beyond ``max_length`` before the factor 2, in :func:`max_text_chars`."""


def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """Characters of the vocabulary's longest token, special tokens included (at least 1).

    For byte-level tokenizers a token's string has one character per byte, an upper bound of the characters of text
    it covers; for SentencePiece and WordPiece vocabularies the length of the piece is one too.
    """
    lengths = [len(token) for token in tokenizer.get_vocab()]
    lengths += [len(str(token)) for token in tokenizer.all_special_tokens]
    return max([1, *lengths])


def max_text_chars(tokenizer: PreTrainedTokenizerBase, limits: TruncationLimits) -> int | None:
    """The characters of a text that can matter after truncation (``None``: no ``max_length``, nothing is cut)."""
    if limits.max_length is None:
        return None
    return 2 * (limits.max_length + MARGIN_TOKENS) * longest_token_chars(tokenizer)


class BoundedRenderer:
    """A :class:`~betadpo_lightning.data.render.PairRenderer` whose texts are cut to ``max_chars`` characters.

    The prompt keeps its last ``max_chars`` characters, each response its first ``max_chars``.

    Args:
        renderer: the renderer of the split.
        max_chars: from :func:`max_text_chars`; ``None`` cuts nothing.

    Example:
        >>> class Echo:
        ...     names = None
        ...     def render(self, row, index):
        ...         return RenderedPair(row["prompt"], row["chosen"], row["rejected"])
        >>> BoundedRenderer(Echo(), 3).render({"prompt": "abcdef", "chosen": "uvwxyz", "rejected": "ok"}, 0)
        RenderedPair(prompt='def', chosen='uvw', rejected='ok')
    """

    def __init__(self, renderer: PairRenderer, max_chars: int | None) -> None:
        self.renderer = renderer
        self.max_chars = max_chars

    @property
    def names(self) -> ColumnNames:
        """The column names of the wrapped renderer."""
        return self.renderer.names

    def render(self, row: dict[str, object], index: int) -> RenderedPair:
        """Render the row (see :meth:`PairRenderer.render`), then cut its texts to ``max_chars``."""
        pair = self.renderer.render(row, index)
        n = self.max_chars
        if n is None or max(len(pair.prompt), len(pair.chosen), len(pair.rejected)) <= n:
            return pair
        return replace(pair, prompt=pair.prompt[-n:], chosen=pair.chosen[:n], rejected=pair.rejected[:n])
