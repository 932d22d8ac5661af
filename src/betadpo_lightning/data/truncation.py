"""Truncation of a tokenized preference pair to a length budget.

The rule: the prompt is cut from the **left** first — to ``max_prompt_length`` if set, and further if needed so
that ``min_response_length`` response tokens still fit in ``max_length`` — keeping its leading special tokens
(e.g. BOS), so that the text closest to the response survives. Then each response is cut from the **right** to fit
``max_length`` together with the prompt. A response cut this way loses its EOS: it did not end. A pair left without
room for any response token is dropped by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TruncationLimits:
    """Length limits of one tokenized row (prompt + one response).

    Args:
        max_length: Most tokens of prompt + response, or ``None`` for no limit.
        max_prompt_length: Most prompt tokens, or ``None`` for no separate prompt limit.
        min_response_length: Response tokens the prompt is cut further to make room for.
    """

    max_length: int | None = None
    max_prompt_length: int | None = None
    min_response_length: int = 1

    def __post_init__(self) -> None:
        if self.min_response_length < 1:
            raise ValueError(f"min_response_length must be at least 1, got {self.min_response_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {self.max_prompt_length}")
        if self.max_length is not None and self.max_length < self.min_response_length + 1:
            raise ValueError(
                f"max_length must leave room for one prompt token and min_response_length="
                f"{self.min_response_length} response tokens, got max_length={self.max_length}"
            )


@dataclass(frozen=True)
class TruncatedPair:
    """A pair after truncation.

    Args:
        prompt: Prompt token ids.
        chosen: Chosen response token ids.
        rejected: Rejected response token ids.
        truncated: Names of the parts that were cut, among ``"prompt"``, ``"chosen"`` and ``"rejected"``.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: tuple[str, ...]


def truncate_left(ids: list[int], budget: int, keep_prefix: int = 0) -> list[int]:
    """Cut ``ids`` from the left to at most ``budget`` tokens, keeping the first ``keep_prefix`` tokens.

    Args:
        ids: Token ids.
        budget: Most tokens to keep (never fewer than ``keep_prefix`` are kept).
        keep_prefix: Number of leading tokens (e.g. BOS) that are always kept.

    Returns:
        The kept ids.

    Examples:
        >>> truncate_left([1, 10, 11, 12, 13], 3, keep_prefix=1)
        [1, 12, 13]
    """
    if len(ids) <= budget:
        return list(ids)
    tail = max(budget - keep_prefix, 0)
    return list(ids[:keep_prefix]) + (list(ids[len(ids) - tail :]) if tail else [])


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], limits: TruncationLimits, keep_prefix: int = 0
) -> TruncatedPair | None:
    """Fit a pair into ``limits``: prompt from the left first, then the responses from the right.

    Args:
        prompt: Prompt token ids, including leading special tokens.
        chosen: Chosen response token ids.
        rejected: Rejected response token ids.
        limits: The length limits.
        keep_prefix: Number of leading prompt tokens (e.g. BOS) that are never cut.

    Returns:
        The truncated pair, or ``None`` if no response token fits (the pair must be dropped).

    Examples:
        >>> limits = TruncationLimits(max_length=5, max_prompt_length=3)
        >>> pair = truncate_pair([1, 5, 6, 7], [8, 9, 2], [10, 2], limits, keep_prefix=1)
        >>> pair.prompt, pair.chosen, pair.rejected, pair.truncated
        ([1, 6, 7], [8, 9], [10, 2], ('prompt', 'chosen'))
    """
    budget = limits.max_prompt_length if limits.max_prompt_length is not None else len(prompt)
    if limits.max_length is not None:
        budget = min(budget, limits.max_length - limits.min_response_length)
    new_prompt = truncate_left(prompt, budget, keep_prefix)
    truncated = ["prompt"] if len(new_prompt) < len(prompt) else []
    if limits.max_length is None:
        return TruncatedPair(new_prompt, list(chosen), list(rejected), tuple(truncated))
    room = limits.max_length - len(new_prompt)
    if room < 1:
        return None
    responses = []
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if len(response) > room:
            truncated.append(name)
        responses.append(list(response[:room]))
    return TruncatedPair(new_prompt, responses[0], responses[1], tuple(truncated))
