"""How a datamodule serves its pairs: the collate function (padded or packed) and the loaders (pair count or budget).

A :class:`BatchPlan` turns a split of tokenized pairs into this rank's training or evaluation loader: micro-batches
of ``batch_size`` pairs (the default, a fixed pair count as in the β-DPO paper) or of at most ``max_tokens`` trunk
tokens (:mod:`betadpo_lightning.data.token_batches`), collated as padded rows
(:func:`~betadpo_lightning.data.collate.collate_preference_pairs`) or packed segments
(:func:`~betadpo_lightning.data.packing.pack_preference_pairs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from betadpo_lightning.data.collate import collate_preference_pairs
from betadpo_lightning.data.dataloaders import (
    MarkPadding,
    ResumableDataLoader,
    SampleLists,
    eval_loader,
    resumable_train_loader,
)
from betadpo_lightning.data.packing import pack_preference_pairs
from betadpo_lightning.data.token_batches import EvalTokenSampler, TokenBudgetSampler, TokenCost, pair_sizes

__all__ = ["BatchPlan", "check_token_budget", "longest_pair_tokens"]


def longest_pair_tokens(max_length: int, packing: bool, pad_to_multiple_of: int | None = None) -> int:
    """The most trunk tokens one pair can take when prompt + answer is at most ``max_length`` tokens.

    ``2 · max_length`` in both layouts (an empty prompt and two answers of ``max_length`` tokens; two rows of
    ``max_length``), the padded rows rounded up to ``pad_to_multiple_of``.

    Examples:
        >>> longest_pair_tokens(1024, packing=True), longest_pair_tokens(1000, packing=False, pad_to_multiple_of=64)
        (2048, 2048)
    """
    multiple = 1 if packing else pad_to_multiple_of or 1
    return 2 * (-(-max_length // multiple) * multiple)


def check_token_budget(
    max_tokens: int | None, max_length: int | None, packing: bool, pad_to_multiple_of: int | None = None
) -> None:
    """Raise a ``ValueError`` naming ``max_tokens`` when some pair that ``max_length`` allows would not fit in it.

    Without ``max_length`` the pairs are checked one by one when the loaders are built.
    """
    if max_tokens is None or max_length is None:
        return
    longest = longest_pair_tokens(max_length, packing, pad_to_multiple_of)
    if max_tokens < longest:
        layout = "packed" if packing else "padded"
        raise ValueError(
            f"max_tokens={max_tokens} is below the {longest} tokens that one {layout} pair can take with "
            f"max_length={max_length} (a chosen and a rejected row of up to max_length tokens each); set max_tokens "
            f"to at least {longest} or lower max_length"
        )


@dataclass(frozen=True)
class BatchPlan:
    """The batching settings of a datamodule (see :class:`~betadpo_lightning.data.PreferenceDataModule`).

    Args:
        batch_size: pairs per training micro-batch and rank (without ``max_tokens``).
        eval_batch_size: pairs per evaluation micro-batch and rank (without ``max_tokens``).
        packing: collate packed segments instead of padded rows.
        packed_row_tokens: with ``packing``, the longest row before a new one starts (``None``: one row).
        max_tokens: trunk tokens per micro-batch and rank (replaces the pair counts when set).
        pad_to_multiple_of: round the padded length (or the packed row) up to a multiple of this.
        num_workers: loader worker processes.
        seed: the training shuffle's seed.
    """

    batch_size: int
    eval_batch_size: int
    packing: bool = False
    packed_row_tokens: int | None = None
    max_tokens: int | None = None
    pad_to_multiple_of: int | None = None
    num_workers: int = 0
    seed: int = 0

    def collate_fn(self, pad_token_id: int) -> Callable[[list[Any]], Any]:
        """The collate function: samples of a split in, a padded or packed batch out."""
        if self.packing:
            return functools.partial(
                pack_preference_pairs,
                pad_token_id=pad_token_id,
                pad_to_multiple_of=self.pad_to_multiple_of,
                max_row_tokens=self.packed_row_tokens,
            )
        return functools.partial(
            collate_preference_pairs, pad_token_id=pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )

    @property
    def cost(self) -> TokenCost:
        """How a micro-batch's trunk tokens are counted against ``max_tokens``."""
        return TokenCost(packed=self.packing, pad_to_multiple_of=self.pad_to_multiple_of)

    def train_loader(self, data: Dataset, pad_token_id: int, num_replicas: int = 1, rank: int = 0) -> DataLoader:
        """This rank's shuffled, resumable training loader (a :class:`ResumableDataLoader`).

        Raises:
            PreferenceDataError: naming the row of a pair that alone exceeds ``max_tokens``.
        """
        collate = self.collate_fn(pad_token_id)
        if self.max_tokens is None:
            return resumable_train_loader(
                data, self.batch_size, collate, self.seed, num_replicas, rank, num_workers=self.num_workers
            )
        sampler = TokenBudgetSampler(
            pair_sizes(data), self.max_tokens, self.cost, num_replicas, rank, self.seed, row_of=_row_of(data)
        )
        return ResumableDataLoader(
            SampleLists(data),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def eval_loader(
        self, data: Dataset, pad_token_id: int, num_replicas: int = 1, rank: int = 0, split: str = "validation"
    ) -> DataLoader:
        """This rank's evaluation loader: every pair once over all ranks, the repeats that even them out flagged.

        Raises:
            PreferenceDataError: naming the row of a pair that alone exceeds ``max_tokens``.
        """
        collate = self.collate_fn(pad_token_id)
        if self.max_tokens is None:
            return eval_loader(data, self.eval_batch_size, collate, num_replicas, rank, self.num_workers)
        sampler = EvalTokenSampler(
            pair_sizes(data), self.max_tokens, self.cost, num_replicas, rank, split, row_of=_row_of(data)
        )
        return DataLoader(
            SampleLists(MarkPadding(data)),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )


def _row_of(data: Dataset) -> Callable[[int], int]:
    """A pair's row in its source split (its ``index``), for error messages."""

    def row(position: int) -> int:
        sample = data[position]
        return int(sample["index"]) if isinstance(sample, dict) and "index" in sample else position

    return row
