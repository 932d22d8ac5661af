r"""Tokenize preference pairs with an exact prompt/response boundary.

For each row, the prompt text and each response text are tokenized **separately**, so a response never merges with
the prompt's last token and the prompt ids are a prefix of both ``prompt + chosen`` and ``prompt + rejected``:

* The prompt gets the tokenizer's leading special tokens (e.g. BOS) unless its text already starts with them (chat
  templates often write BOS themselves). Trailing special tokens that a tokenizer appends to a single sequence (e.g.
  EOS) are not added to the prompt. BOS may appear only as the first prompt token (not checked for tokenizers whose
  BOS is also their EOS, such as GPT-2's, where it legitimately ends turns).
* A response is tokenized without special tokens, and EOS is appended unless the response text, ignoring trailing
  whitespace, already ends with the EOS token — as chat templates whose end-of-turn token is EOS render it
  (e.g. ``"...<|im_end|>\n"`` when EOS is ``<|im_end|>``).
* Then :func:`~betadpo_lightning.data.truncation.truncate_pair` fits the pair into the length limits.

Tokenizers that put a space marker in front of every sequence (SentencePiece with a dummy prefix, e.g. Llama 2) put
one in front of each separately tokenized response too; byte-level BPE tokenizers (GPT-2, Llama 3, Qwen) do not.

:class:`PairTokenizer` is the function given to ``datasets.Dataset.map(batched=True, with_indices=True)``. It keeps
every row and writes its fate in a ``status`` column (``"ok"``, ``"dropped:<reason>"`` or ``"skipped:<reason>"``)
and the parts that were cut in a ``truncation`` column, so the caller can count them before filtering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import datasets
from transformers import PreTrainedTokenizerBase

from betadpo_lightning.data.errors import PreferenceDataError
from betadpo_lightning.data.render import PairRenderer, RenderedPair
from betadpo_lightning.data.truncation import TruncationLimits, truncate_pair

BadRowPolicy = Literal["error", "skip"]
STATUS_OK = "ok"
TOKENIZED_FEATURES = datasets.Features(
    {
        "prompt_input_ids": datasets.List(datasets.Value("int32")),
        "chosen_input_ids": datasets.List(datasets.Value("int32")),
        "rejected_input_ids": datasets.List(datasets.Value("int32")),
        "index": datasets.Value("int64"),
        "truncation": datasets.Value("string"),
        "status": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair.

    Args:
        prompt: Prompt ids, starting with the tokenizer's leading special tokens.
        chosen: Chosen response ids (EOS-terminated unless cut).
        rejected: Rejected response ids (EOS-terminated unless cut).
        truncated: Parts that were cut (``"prompt"``, ``"chosen"``, ``"rejected"``).
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: tuple[str, ...] = ()


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the special tokens the tokenizer puts before a single sequence (e.g. ``[bos_token_id]``).

    Args:
        tokenizer: The tokenizer.

    Returns:
        The leading special token ids (empty for tokenizers such as GPT-2's that add none).

    Raises:
        PreferenceDataError: If the probe text's ids cannot be found inside its ids with special tokens.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    raise PreferenceDataError(
        f"cannot locate the special tokens of tokenizer '{tokenizer.name_or_path}': {plain} is not inside {full}"
    )


_OTHER_ROLES = ("bos", "eos", "pad", "sep", "cls", "mask")
"""Special token roles besides ``unk``; an unknown token id shared with one of them is not counted as unknown."""


def unknown_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id to count as "unknown text" in tokenized pairs, or ``None`` when no id can mean that.

    The tokenizer's ``unk_token_id``, unless that id also plays another special role: GPT-NeoX's (Pythia's)
    ``<|endoftext|>`` (id 0) is its unknown, BOS and EOS token at once, so the EOS this module appends to every
    response would count as unknown. Such tokenizers are byte-level and never produce an unknown token from text, so
    nothing is counted for them.

    Args:
        tokenizer: The tokenizer.

    Returns:
        The unknown token's id, or ``None`` (no unknown token, or one shared with BOS, EOS, pad, ...).
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return None
    others = {getattr(tokenizer, f"{role}_token_id", None) for role in _OTHER_ROLES}
    return None if unk in others else unk


class PairTokenizer:
    """Render and tokenize batches of raw rows; the map function of the tokenization step.

    Args:
        tokenizer: The tokenizer (must have an EOS token).
        renderer: Turns raw rows into prompt/response texts.
        limits: Length limits.
        on_bad_row: ``"error"`` to raise on a malformed row, ``"skip"`` to mark it ``"skipped:<reason>"``.

    Raises:
        PreferenceDataError: If the tokenizer has no EOS token.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        renderer: PairRenderer,
        limits: TruncationLimits,
        on_bad_row: BadRowPolicy = "error",
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise PreferenceDataError(f"tokenizer '{tokenizer.name_or_path}' has no EOS token to end responses with")
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.limits = limits
        self.on_bad_row = on_bad_row
        self.prefix = special_prefix(tokenizer)

    def __call__(self, batch: dict[str, list[object]], indices: list[int]) -> dict[str, list[object]]:
        """Tokenize one batch of rows.

        Args:
            batch: Raw rows, column-wise.
            indices: The rows' indices in their source split.

        Returns:
            The columns of :data:`TOKENIZED_FEATURES`, one entry per input row in the same order; a row that is not
            kept has empty id lists and its reason in ``status``.
        """
        rendered = [
            self._render({name: values[i] for name, values in batch.items()}, index) for i, index in enumerate(indices)
        ]
        encoded = iter(self._encode([item for item in rendered if isinstance(item, RenderedPair)]))
        results = [
            self.build(item, *next(encoded), index) if isinstance(item, RenderedPair) else item
            for item, index in zip(rendered, indices, strict=True)
        ]
        return _to_columns(results, indices)

    def build(
        self, rendered: RenderedPair, prompt: list[int], chosen: list[int], rejected: list[int], index: int
    ) -> TokenizedPair | str:
        """Assemble, check and truncate one pair from the ids of its separately tokenized texts.

        Args:
            rendered: The pair's texts.
            prompt: Ids of the prompt text, without special tokens.
            chosen: Ids of the chosen text, without special tokens.
            rejected: Ids of the rejected text, without special tokens.
            index: The row's index in its source split.

        Returns:
            The tokenized pair, or the row's status (``"dropped:..."``/``"skipped:..."``) if it is not kept.

        Raises:
            PreferenceDataError: If the row is bad and ``on_bad_row="error"``.
        """
        prompt_ids = prompt if prompt[: len(self.prefix)] == self.prefix else self.prefix + prompt
        chosen_ids = self._terminate(rendered.chosen, chosen)
        rejected_ids = self._terminate(rendered.rejected, rejected)
        try:
            self._check_ids(prompt_ids, {"chosen": chosen_ids, "rejected": rejected_ids}, index)
        except PreferenceDataError as error:
            return self._bad_row(error)
        keep = len(self.prefix) if prompt_ids[: len(self.prefix)] == self.prefix else 0
        pair = truncate_pair(prompt_ids, chosen_ids, rejected_ids, self.limits, keep_prefix=keep)
        if pair is None:
            return "dropped:too_long"
        if pair.chosen == pair.rejected:
            return "dropped:identical_tokens"
        return TokenizedPair(pair.prompt, pair.chosen, pair.rejected, pair.truncated)

    def _render(self, row: dict[str, object], index: int) -> RenderedPair | str:
        try:
            return self.renderer.render(row, index)
        except PreferenceDataError as error:
            return self._bad_row(error)

    def _bad_row(self, error: PreferenceDataError) -> str:
        if self.on_bad_row == "error":
            raise error
        return f"skipped:{error.reason}"

    def _encode(self, pairs: Sequence[RenderedPair]) -> list[tuple[list[int], list[int], list[int]]]:
        if not pairs:
            return []
        columns = ([pair.prompt for pair in pairs], [pair.chosen for pair in pairs], [pair.rejected for pair in pairs])
        ids = [self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] for texts in columns]
        return list(zip(*ids, strict=True))

    def _terminate(self, text: str, ids: list[int]) -> list[int]:
        eos_token = self.tokenizer.eos_token
        if isinstance(eos_token, str) and text.rstrip().endswith(eos_token):
            return list(ids)
        return [*ids, self.tokenizer.eos_token_id]

    def _check_ids(self, prompt: list[int], responses: dict[str, list[int]], index: int) -> None:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        if not prompt:
            raise PreferenceDataError(
                "the prompt text gives no token; expected at least one prompt token",
                row=index,
                field=self.renderer.names.prompt,
                reason="empty_text",
            )
        if bos is None or bos == eos:  # with BOS == EOS (e.g. GPT-2) every end of turn looks like a BOS
            return
        if bos in prompt[1:]:
            raise PreferenceDataError(
                f"the prompt holds the BOS token (id {bos}) after its start; expected BOS only as the first token",
                row=index,
                field=self.renderer.names.prompt,
                reason="unexpected_bos",
            )
        for name, ids in responses.items():
            if bos in ids:
                field = getattr(self.renderer.names, name)
                raise PreferenceDataError(
                    f"the response holds the BOS token (id {bos}); expected no BOS in a response",
                    row=index,
                    field=field,
                    reason="unexpected_bos",
                )


def _to_columns(results: list[TokenizedPair | str], indices: list[int]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {name: [] for name in TOKENIZED_FEATURES}
    for result, index in zip(results, indices, strict=True):
        pair = result if isinstance(result, TokenizedPair) else TokenizedPair([], [], [])
        out["prompt_input_ids"].append(pair.prompt)
        out["chosen_input_ids"].append(pair.chosen)
        out["rejected_input_ids"].append(pair.rejected)
        out["index"].append(index)
        out["truncation"].append("+".join(pair.truncated) or "none")
        out["status"].append(result if isinstance(result, str) else STATUS_OK)
    return out
