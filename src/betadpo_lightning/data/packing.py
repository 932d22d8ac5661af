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
    "chosen_segments",
    "is_packed",
    "pack_preference_pairs",
    "pack_sequences",
    "packed_tokens",
    "padded_rows",
    "unpack_to_padded",
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
    rows: list[dict[str, list[int]]] = []
    targets: dict[str, list[int]] = {"row": [], "col": [], "ids": [], "slot": []}
    for slot, sample in enumerate(samples):
        prompt = token_ids(sample, "prompt_input_ids", slot)
        responses = [token_ids(sample, key, slot) for key in answers]
        size = len(prompt) + sum(len(response) for response in responses)
        if not rows or (max_row_tokens is not None and len(rows[-1]["ids"]) + size > max_row_tokens):
            rows.append({"ids": [], "pos": [], "seg": [], "branch": []})
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


def _extend(row: dict[str, list[int]], ids: list[int], positions: range, slot: int, branch: int) -> None:
    row["ids"] += ids
    row["pos"] += positions
    row["seg"] += [slot] * len(ids)
    row["branch"] += [branch] * len(ids)


def unpack_to_padded(batch: Mapping[str, Tensor], pad_token_id: int, ignore_index: int = -100) -> dict[str, Tensor]:
    """The padded ``(2B, T)`` batch of the pairs of a packed batch (the fallback for models that cannot pack).

    Each token goes to column ``position_ids`` of its padded row (the prompt to both rows of its pair), so the
    result is what :func:`~betadpo_lightning.data.collate.collate_preference_pairs` makes of the same pairs, with
    ``T`` the longest row. Runs on the batch's device without a Python loop.

    Args:
        batch: a packed batch of :func:`pack_preference_pairs`.
        pad_token_id: id written into padding positions.
        ignore_index: label of prompt and padding positions.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` ``(2B, T)`` and the per-pair fields of ``batch``.

    Raises:
        KeyError: if ``batch`` is not packed.
    """
    missing = [key for key in (*PACKED_KEYS, "pair_index") if key not in batch]
    if missing:
        raise KeyError(f"unpack_to_padded: the batch lacks {missing}; expected a batch of pack_preference_pairs.")
    pairs = int(batch["pair_index"].shape[0])
    seg, branch, pos, ids = batch["segment_ids"], batch["branch_ids"], batch["position_ids"], batch["input_ids"]
    real = seg >= 0
    length = int(pos[real].max()) + 1 if bool(real.any()) else 1
    input_ids = torch.full((2 * pairs, length), pad_token_id, dtype=torch.long, device=ids.device)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, ignore_index)
    for answer, offset in ((1, 0), (2, pairs)):  # chosen rows, then rejected rows
        take = real & ((branch == 0) | (branch == answer))
        rows, cols = seg[take] + offset, pos[take]
        input_ids[rows, cols] = ids[take]
        attention_mask[rows, cols] = 1
        response = branch[take] == answer
        labels[rows[response], cols[response]] = ids[take][response]
    fields = {key: value for key, value in batch.items() if key not in PACKED_KEYS}
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **fields}


def chosen_segments(batch: Mapping[str, Tensor], pad_token_id: int = 0) -> dict[str, Tensor]:
    """The packed ``[prompt, chosen]`` batch of a packed pair batch: its rejected answers removed, rows closed up.

    What supervised fine-tuning on the chosen answers runs (:func:`pack_sequences`' layout): each row keeps its
    tokens but the rejected ones, in order, and is padded to the new longest row; the targets are the chosen
    answers' (``target_row`` in ``[0, B)``), re-indexed. Runs on the batch's device without a Python loop.

    Args:
        batch: a packed batch of :func:`pack_preference_pairs` (or already of :func:`pack_sequences`).
        pad_token_id: id written into the padding the removal adds (never attended to by a real token).

    Returns:
        The packed batch and the per-pair fields of ``batch``.
    """
    check_packed_batch(batch)
    pairs = int(batch["pair_index"].shape[0])
    rows, length = batch["branch_ids"].shape
    keep = batch["branch_ids"] != 2  # (R, L)
    column = keep.cumsum(1) - 1  # (R, L): each kept token's new column
    new_length = max(int(keep.sum(1).max()), 1)
    row_of = torch.arange(rows, device=keep.device)[:, None].expand(rows, length)
    out: dict[str, Tensor] = {}
    for key, fill in (("input_ids", pad_token_id), ("position_ids", 0), ("segment_ids", -1), ("branch_ids", -1)):
        value = torch.full((rows, new_length), fill, dtype=torch.long, device=keep.device)
        value[row_of[keep], column[keep]] = batch[key][keep]
        out[key] = value
    chosen = batch["target_row"] < pairs
    index = batch["target_index"][chosen]
    target_rows, target_cols = index // length, index % length
    out["target_index"] = target_rows * new_length + column[target_rows, target_cols]
    out["target_ids"], out["target_row"] = batch["target_ids"][chosen], batch["target_row"][chosen]
    return {**out, **{key: value for key, value in batch.items() if key not in PACKED_KEYS}}
