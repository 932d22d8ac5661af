"""Other views of a packed batch: the padded batch of the same pairs, and the chosen answers alone (for SFT).

Both run on the batch's device without a Python loop over tokens.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from betadpo_lightning.data.packing import PACKED_KEYS, check_packed_batch

__all__ = ["chosen_segments", "unpack_to_padded"]


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
