"""Collate tokenized preference pairs into the batch the preference models consume.

The batch contract, for ``B`` pairs padded to length ``T``:

* ``input_ids``: ``(2B, T)`` long. Rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt + rejected, in the
  same pair order; right-padded with ``pad_token_id``.
* ``attention_mask``: ``(2B, T)`` long, 1 on real tokens and 0 on padding.
* ``labels``: ``(2B, T)`` long, equal to ``input_ids`` on response tokens and ``ignore_index`` on prompt and
  padding positions. Labels are not shifted; the model shifts them.
* ``pair_index``: ``(B,)`` long, each pair's index in its source split.
* ``is_padding``: ``(B,)`` bool, only in evaluation batches: pairs repeated to give every rank the same number of
  samples, which count in no metric.
* ``reference_logps`` / ``reference_entropy``: ``(2B,)`` float32, only when every sample carries precomputed
  reference values (``reference_chosen_logps`` and ``reference_rejected_logps``, summed log-probs; and
  ``reference_chosen_entropy`` and ``reference_rejected_entropy``), in row order
  (:data:`~betadpo_lightning.core.types.REFERENCE_BATCH_KEYS`).

``T`` is the longest row, rounded up to a multiple of ``pad_to_multiple_of`` when that is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from betadpo_lightning.core.types import REFERENCE_BATCH_KEYS

PairSample = Mapping[str, Sequence[int] | Tensor | int]


def _ids(sample: PairSample, key: str, position: int) -> list[int]:
    value = sample.get(key)
    if value is None or isinstance(value, int):
        raise ValueError(f"sample {position}: expected a sequence of token ids under '{key}', got {value!r}")
    ids = value.tolist() if isinstance(value, Tensor) else list(value)
    if key != "prompt_input_ids" and not ids:
        raise ValueError(f"sample {position}: '{key}' is empty; every response needs at least one token")
    return ids


def collate_preference_pairs(
    samples: Sequence[PairSample],
    pad_token_id: int,
    ignore_index: int = -100,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Stack pairs into chosen rows followed by rejected rows, with response-only labels.

    Args:
        samples: Tokenized pairs, each with ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``
            (response ids only) and ``index``.
        pad_token_id: Id written into padding positions of ``input_ids``.
        ignore_index: Label of positions that carry no loss (prompt and padding).
        pad_to_multiple_of: Round the padded length up to a multiple of this, if set.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` of shape ``(2B, T)`` and ``pair_index`` of shape ``(B,)``,
        all ``torch.long``.

    Raises:
        ValueError: If ``samples`` is empty, a sample lacks a field, or a response is empty.

    Examples:
        >>> batch = collate_preference_pairs(
        ...     [{"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7], "index": 3}],
        ...     pad_token_id=0,
        ... )
        >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["pair_index"].tolist()
        ([[1, 5, 6, 2], [1, 5, 7, 0]], [[-100, -100, 6, 2], [-100, -100, 7, -100]], [3])
    """
    if not samples:
        raise ValueError("cannot collate an empty list of preference pairs")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}")
    prompts = [_ids(sample, "prompt_input_ids", i) for i, sample in enumerate(samples)]
    rows: list[tuple[list[int], list[int]]] = []
    for key in ("chosen_input_ids", "rejected_input_ids"):
        rows.extend(
            (prompt, _ids(sample, key, i)) for i, (prompt, sample) in enumerate(zip(prompts, samples, strict=True))
        )
    length = max(len(prompt) + len(response) for prompt, response in rows)
    if pad_to_multiple_of is not None:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), ignore_index, dtype=torch.long)
    for row, (prompt, response) in enumerate(rows):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[row, :end] = 1
        labels[row, len(prompt) : end] = input_ids[row, len(prompt) : end]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **pair_fields(samples)}


def pair_fields(samples: Sequence[PairSample]) -> dict[str, Tensor]:
    """The per-pair fields of a batch, whatever its layout: ``pair_index``, ``is_padding``, reference values.

    Returns:
        ``pair_index`` ``(B,)`` long; ``is_padding`` ``(B,)`` bool when a sample says ``padding``; ``reference_logps``
        and ``reference_entropy`` ``(2B,)`` float32 (chosen values first) when every sample carries them.
    """
    pair_index = torch.tensor([int(sample["index"]) for sample in samples], dtype=torch.long)  # type: ignore[arg-type]
    batch = {"pair_index": pair_index}
    if any("padding" in sample for sample in samples):  # evaluation: repeated samples that even out the ranks
        batch["is_padding"] = torch.tensor([bool(sample.get("padding", False)) for sample in samples])
    for name, columns in REFERENCE_BATCH_KEYS.items():
        if all(column in sample for column in columns for sample in samples):
            values = [float(sample[column]) for column in columns for sample in samples]  # type: ignore[arg-type]
            batch[name] = torch.tensor(values, dtype=torch.float32)  # (2B,)
    return batch
