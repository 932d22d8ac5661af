"""Pack preference pairs into rows of prefix-shared segments: every prompt goes through the model once.

A pair is one segment ``[prompt, chosen, rejected]``; segments are concatenated into rows and only the tail of a row
is padded. The batch, for ``B`` pairs in ``R`` rows of length ``L``:

* ``input_ids`` ``(R, L)`` long, ``pad_token_id`` on padding.
* ``position_ids`` ``(R, L)`` long: the prompt ``0..p-1``, the chosen answer ``p..p+c-1``, the rejected answer
  ``p..p+r-1`` (it restarts where the chosen answer started), padding 0. These are the columns the tokens have in
  the padded ``(2B, T)`` batch of :func:`~betadpo_lightning.data.collate.collate_preference_pairs`.
* ``segment_ids`` ``(R, L)`` long: the pair's slot ``0..B-1``, ``-1`` on padding.
* ``branch_ids`` ``(R, L)`` long: 0 prompt, 1 chosen, 2 rejected, ``-1`` padding. Query ``q`` sees key ``k`` iff
  they are in the same segment, ``k`` is at or before ``q`` and ``branch_k`` is 0 or ``branch_q``: an answer sees its
  prompt and itself, never the other answer. (Padding forms one segment of its own, so no query sees nothing.)
* ``target_index`` ``(M,)`` long: the flat index ``r·L + t`` of the hidden state that predicts each response token
  (for an answer's first token, the prompt's last position); ``target_ids`` ``(M,)``: the token; ``target_row``
  ``(M,)`` in ``[0, 2B)``: the token's row in the padded layout (``j`` the chosen answer of pair ``j``, ``B + j`` its
  rejected answer).
* ``pair_index``, ``is_padding`` and the precomputed reference fields exactly as the padded collate makes them
  (:func:`~betadpo_lightning.data.collate.pair_fields`).

As in the padded batch, the first token of an answer whose prompt is empty is not predicted by anything.

Pure torch: no Lightning, ``transformers`` or ``datasets``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from betadpo_lightning.data.collate import PairSample, pair_fields
from betadpo_lightning.data.collate import _ids as token_ids

__all__ = [
    "PACKED_KEYS",
    "check_packed_batch",
    "is_packed",
    "pack_preference_pairs",
    "pack_sequences",
    "packed_tokens",
    "padded_rows",
]

PACKED_KEYS = (
    "input_ids",
    "position_ids",
    "segment_ids",
    "branch_ids",
    "target_index",
    "target_ids",
    "target_row",
)
"""The layout fields of a packed batch (beside the per-pair fields of the padded batch)."""

_ANSWERS = ("chosen_input_ids", "rejected_input_ids")


def is_packed(batch: Mapping[str, object]) -> bool:
    """Whether ``batch`` has the packed layout (it has ``segment_ids``)."""
    return "segment_ids" in batch


def check_packed_batch(batch: Mapping[str, Tensor]) -> None:
    """Raise unless ``batch`` has the packed layout's fields, shapes and dtypes (no device synchronisation).

    Raises:
        KeyError: naming the missing fields.
        ValueError: naming the field of a wrong shape or dtype.
    """
    missing = [key for key in (*PACKED_KEYS, "pair_index") if key not in batch]
    if missing:
        raise KeyError(f"The packed batch lacks {missing}; expected a batch of pack_preference_pairs.")
    shape = tuple(batch["input_ids"].shape)
    if len(shape) != 2:
        raise ValueError(f"Expected packed `input_ids` of shape (R, L), got {shape}.")
    targets = tuple(batch["target_index"].shape)
    expected = dict.fromkeys(PACKED_KEYS[:4], shape) | dict.fromkeys(PACKED_KEYS[4:], targets)
    for key, want in expected.items():
        value = batch[key]
        if tuple(value.shape) != want or len(want) not in (1, 2) or value.dtype != torch.long:
            raise ValueError(
                f"Expected packed `{key}` of shape {want} and dtype torch.long, got "
                f"{tuple(value.shape)} and {value.dtype}."
            )
    if len(targets) != 1:
        raise ValueError(f"Expected packed `target_index` of shape (M,), got {targets}.")


def padded_rows(batch: Mapping[str, Tensor]) -> int:
    """The rows the batch has in the padded layout: ``2B`` for a packed batch of ``B`` pairs, else its own rows."""
    return 2 * int(batch["pair_index"].shape[0]) if is_packed(batch) else int(batch["input_ids"].shape[0])


def packed_tokens(sample: PairSample) -> int:
    """The tokens one pair takes in a packed row, ``p + c + r`` (its cost against a token budget).

    Example:
        >>> packed_tokens({"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7]})
        5
    """
    return sum(len(token_ids(sample, key, 0)) for key in ("prompt_input_ids", *_ANSWERS))


def pack_preference_pairs(
    samples: Sequence[PairSample],
    pad_token_id: int,
    ignore_index: int = -100,
    pad_to_multiple_of: int | None = None,
    max_row_tokens: int | None = None,
) -> dict[str, Tensor]:
    """Pack pairs as ``[prompt, chosen, rejected]`` segments into rows (see the module docstring for the fields).

    Args:
        samples: tokenized pairs, as for :func:`~betadpo_lightning.data.collate.collate_preference_pairs`.
        pad_token_id: id written into the padding at the end of each row.
        ignore_index: the padded layout's label of positions without loss (a packed batch has no labels; kept so
            that both collate functions take the same arguments).
        pad_to_multiple_of: round the row length up to a multiple of this, if set.
        max_row_tokens: start a new row when the next segment would make the row longer than this (``None``: one
            row); a segment longer than this alone gets a row of its own.

    Returns:
        The packed batch.

    Raises:
        ValueError: for no samples, a sample without a field or with an empty answer, or a bad option.

    Example:
        >>> batch = pack_preference_pairs(
        ...     [{"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7], "index": 3}],
        ...     pad_token_id=0,
        ... )
        >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["branch_ids"].tolist()
        ([[1, 5, 6, 2, 7]], [[0, 1, 2, 3, 2]], [[0, 0, 1, 1, 2]])
        >>> batch["target_index"].tolist(), batch["target_ids"].tolist(), batch["target_row"].tolist()
        ([1, 2, 1], [6, 2, 7], [0, 0, 1])
    """
    return _pack(samples, _ANSWERS, pad_token_id, pad_to_multiple_of, max_row_tokens)


def pack_sequences(
    samples: Sequence[PairSample],
    pad_token_id: int,
    response_key: str = "chosen_input_ids",
    pad_to_multiple_of: int | None = None,
    max_row_tokens: int | None = None,
) -> dict[str, Tensor]:
    """Pack ``[prompt, response]`` segments (supervised fine-tuning on one answer of each pair).

    The fields are those of :func:`pack_preference_pairs` with branch 1 only: ``target_row`` is the pair's slot in
    ``[0, B)``, the row the response has in the ``(B, T)`` padded batch of that answer alone.

    Example:
        >>> batch = pack_sequences(
        ...     [{"prompt_input_ids": [1], "chosen_input_ids": [6, 2], "index": 0},
        ...      {"prompt_input_ids": [1, 4], "chosen_input_ids": [8], "index": 1}],
        ...     pad_token_id=0,
        ... )
        >>> batch["input_ids"].tolist(), batch["target_index"].tolist(), batch["target_row"].tolist()
        ([[1, 6, 2, 1, 4, 8]], [0, 1, 4], [0, 0, 1])
    """
    return _pack(samples, (response_key,), pad_token_id, pad_to_multiple_of, max_row_tokens)


def _pack(
    samples: Sequence[PairSample],
    answers: tuple[str, ...],
    pad_token_id: int,
    pad_to_multiple_of: int | None,
    max_row_tokens: int | None,
) -> dict[str, Tensor]:
    if not samples:
        raise ValueError("cannot pack an empty list of preference pairs")
    for name, value in (("pad_to_multiple_of", pad_to_multiple_of), ("max_row_tokens", max_row_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    pairs = len(samples)
    segments = [
        (token_ids(sample, "prompt_input_ids", slot), [token_ids(sample, key, slot) for key in answers])
        for slot, sample in enumerate(samples)
    ]
    sizes = [len(prompt) + sum(len(response) for response in responses) for prompt, responses in segments]
    rows: list[dict[str, list[int]]] = []
    targets: dict[str, list[int]] = {"row": [], "col": [], "ids": [], "slot": []}
    for members in _row_members(sizes, max_row_tokens):
        rows.append({"ids": [], "pos": [], "seg": [], "branch": []})
        for slot in members:
            _place(rows, targets, slot, pairs, *segments[slot])
    length = max(len(row["ids"]) for row in rows)
    if pad_to_multiple_of is not None:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    fills = {"ids": pad_token_id, "pos": 0, "seg": -1, "branch": -1}
    tensors = {
        name: torch.tensor([row[name] + [fill] * (length - len(row[name])) for row in rows], dtype=torch.long)
        for name, fill in fills.items()
    }
    index = [r * length + t for r, t in zip(targets["row"], targets["col"], strict=True)]
    return {
        "input_ids": tensors["ids"],
        "position_ids": tensors["pos"],
        "segment_ids": tensors["seg"],
        "branch_ids": tensors["branch"],
        "target_index": torch.tensor(index, dtype=torch.long),
        "target_ids": torch.tensor(targets["ids"], dtype=torch.long),
        "target_row": torch.tensor(targets["slot"], dtype=torch.long),
        **pair_fields(samples),
    }


def _row_members(sizes: list[int], max_row_tokens: int | None) -> list[list[int]]:
    """The pair slots of each row: first-fit decreasing into rows of ``max(max_row_tokens, longest segment)`` tokens.

    The batch is as wide as its longest segment anyway, so rows are filled up to that width; each row keeps its
    segments in slot order and rows are ordered by their first slot (deterministic). ``None``: one row.

    Example:
        >>> _row_members([5, 2, 4, 3], max_row_tokens=6)
        [[0], [1, 2], [3]]
    """
    if max_row_tokens is None:
        return [list(range(len(sizes)))]
    capacity = max(max_row_tokens, *sizes)
    bins: list[tuple[int, list[int]]] = []  # (free tokens, slots)
    for slot in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        for index, (free, members) in enumerate(bins):
            if sizes[slot] <= free:
                bins[index] = (free - sizes[slot], [*members, slot])
                break
        else:
            bins.append((capacity - sizes[slot], [slot]))
    return sorted(sorted(members) for _, members in bins)


def _place(
    rows: list[dict[str, list[int]]],
    targets: dict[str, list[int]],
    slot: int,
    pairs: int,
    prompt: list[int],
    responses: list[list[int]],
) -> None:
    """Append one segment to the last row, with the targets of its answer tokens."""
    row = rows[-1]
    start, p = len(row["ids"]), len(prompt)
    _extend(row, prompt, range(p), slot, 0)
    for branch, response in enumerate(responses, start=1):
        first = len(row["ids"])  # the response's first position in the row
        for i, token in enumerate(response):
            if p + i == 0:  # the first token after an empty prompt: predicted by nothing
                continue
            targets["row"].append(len(rows) - 1)
            targets["col"].append(start + p - 1 if i == 0 else first + i - 1)
            targets["ids"].append(token)
            targets["slot"].append(slot + (branch - 1) * pairs)
        _extend(row, response, range(p, p + len(response)), slot, branch)


def _extend(row: dict[str, list[int]], ids: list[int], positions: range, slot: int, branch: int) -> None:
    row["ids"] += ids
    row["pos"] += positions
    row["seg"] += [slot] * len(ids)
    row["branch"] += [branch] * len(ids)
