"""Micro-batches by a token budget: length-grouped, seeded per epoch, resumable, the same count on every rank.

A micro-batch's cost is the number of tokens it sends through the model's trunk (:class:`TokenCost`): ``p + c + r``
per pair when pairs are packed (:func:`~betadpo_lightning.data.packing.pack_preference_pairs`; the tail padding of
the row is not counted), ``2 · n · T`` for ``n`` pairs padded to ``T``, the longest row ``p + max(c, r)`` rounded up
to ``pad_to_multiple_of`` (:func:`~betadpo_lightning.data.collate.collate_preference_pairs`).

Training (:class:`TokenBudgetSampler`), for each epoch and from ``seed + epoch`` alone:

1. shuffle the pairs and cut the permutation into mega-chunks of about ``chunk_batches`` micro-batches;
2. sort each chunk by length (longest first) and cut it greedily into micro-batches within the budget;
3. split the micro-batches with most pairs in two until there are exactly :attr:`TokenBudgetSampler.total_batches`
   of them, a number fixed for the run: the larger of epoch 0's count and that of all pairs sorted as a whole, plus
   ⌈1 %⌉, rounded up to a multiple of the world size (an epoch that needs more sorts its pairs as a whole instead),
   so every epoch has the same length, as Lightning expects;
4. sort the micro-batches by cost, group consecutive ones into steps of ``world_size`` (similar work on every rank
   at each step) and shuffle the steps; rank ``r`` gets one micro-batch of each step.

Every pair is in exactly one micro-batch of an epoch (unless there are fewer pairs than micro-batches, when some pairs
repeat, as :class:`~torch.utils.data.DistributedSampler` repeats samples). The samplers yield lists of indices;
their loader has ``batch_size=None`` and serves the dataset through
:class:`~betadpo_lightning.data.dataloaders.SampleLists`. :class:`TokenBudgetSampler`
is a :class:`~betadpo_lightning.data.dataloaders.ResumableSampler`, so a
:class:`~betadpo_lightning.data.dataloaders.ResumableDataLoader` resumes it mid-epoch at the exact micro-batch.

Evaluation (:class:`EvalTokenSampler`): the pairs sorted by length, cut greedily, every pair once; ranks with fewer
micro-batches get single-pair batches of a repeated pair flagged as padding (index ``-1 - i``, see
:class:`~betadpo_lightning.data.dataloaders.MarkPadding`), which count in no metric.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from betadpo_lightning.data.dataloaders import ResumableSampler
from betadpo_lightning.data.errors import PreferenceDataError

__all__ = ["EvalTokenSampler", "TokenBudgetSampler", "TokenCost", "pair_sizes"]

_PARTS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")


@dataclass(frozen=True)
class TokenCost:
    """The tokens a micro-batch sends through the trunk.

    Args:
        packed: pairs packed as ``[prompt, chosen, rejected]`` segments (else padded rows, chosen and rejected).
        pad_to_multiple_of: the padded length's multiple (padded batches only; a packed row's tail is not counted).
    """

    packed: bool = False
    pad_to_multiple_of: int | None = None

    def keys(self, sizes: Tensor) -> list[int]:
        """Each pair's length key: ``p + c + r`` packed, its longest row ``p + max(c, r)`` padded.

        Args:
            sizes: ``(n, 3)`` prompt, chosen and rejected token counts.
        """
        prompt, chosen, rejected = sizes.long().unbind(-1)
        keys = prompt + chosen + rejected if self.packed else prompt + torch.maximum(chosen, rejected)
        return keys.tolist()

    def of(self, pairs: int, longest: int, total: int) -> int:
        """The cost of ``pairs`` pairs whose largest key is ``longest`` and whose keys sum to ``total``."""
        if self.packed:
            return total
        multiple = self.pad_to_multiple_of or 1
        return 2 * pairs * (-(-longest // multiple) * multiple)

    def of_batch(self, batch: Sequence[int], keys: Sequence[int]) -> int:
        """The cost of the pairs ``batch`` (positions into ``keys``)."""
        values = [keys[i] for i in batch]
        return self.of(len(values), max(values), sum(values))


def pair_sizes(dataset: Any) -> Tensor:
    """The prompt, chosen and rejected token counts of every pair, ``(n, 3)`` long.

    Read from the Arrow list lengths of a ``datasets.Dataset``, a slice of rows at a time; else sample by sample.
    """
    if hasattr(dataset, "with_format") and hasattr(dataset, "select_columns"):  # a datasets.Dataset
        import pyarrow.compute as pc

        parts = [torch.zeros(0, 3, dtype=torch.long)]
        for table in dataset.select_columns(list(_PARTS)).with_format("arrow").iter(batch_size=8192):
            counts = [pc.list_value_length(table.column(part)).to_numpy(zero_copy_only=False) for part in _PARTS]
            parts.append(torch.stack([torch.as_tensor(count.astype("int64")) for count in counts], dim=-1))
        return torch.cat(parts).reshape(-1, 3)
    rows = [[len(dataset[i][part]) for part in _PARTS] for i in range(len(dataset))]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


def _check_fit(
    sizes: Tensor, keys: list[int], budget: int, cost: TokenCost, split: str, row_of: Callable[[int], int] | None
) -> None:
    if budget < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {budget}")
    for position, key in enumerate(keys):
        need = cost.of(1, key, key)
        if need > budget:
            p, c, r = sizes[position].tolist()
            layout = "packed: prompt + chosen + rejected" if cost.packed else "padded: 2 rows of prompt + longer answer"
            raise PreferenceDataError(
                f"the pair needs {need} tokens ({layout}; {p} prompt, {c} chosen, {r} rejected tokens), more than "
                f"max_tokens={budget}; raise max_tokens or lower max_length (pair {position} of split '{split}')",
                row=row_of(position) if row_of is not None else position,
                field="max_tokens",
                reason="over_token_budget",
            )


def _greedy(order: Sequence[int], keys: Sequence[int], cost: TokenCost, budget: int) -> list[list[int]]:
    """Cut ``order`` into consecutive micro-batches, each as long as the budget allows."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i in order:
        key = keys[i]
        if current and cost.of(len(current) + 1, max(longest, key), total + key) > budget:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(i)
        longest, total = max(longest, key), total + key
    if current:
        batches.append(current)
    return batches


def _by_length(indices: Sequence[int], keys: Sequence[int]) -> list[int]:
    """Longest first; equal keys keep their order in ``indices``."""
    return sorted(indices, key=lambda i: -keys[i])


class TokenBudgetSampler(ResumableSampler):
    """This rank's training micro-batches by a token budget (see the module docstring); yields lists of indices.

    Args:
        sizes: ``(n, 3)`` prompt, chosen and rejected token counts of the pairs (:func:`pair_sizes`).
        max_tokens: the budget of one micro-batch.
        cost: how a micro-batch's tokens are counted.
        num_replicas: the data-parallel world size.
        rank: this process's data-parallel rank.
        seed: the shuffling seed (identical on every rank).
        chunk_batches: about how many micro-batches one length-sorted mega-chunk holds.
        split: the split's name, for error messages.
        row_of: a pair's row in its source split, for error messages (default: its position).

    Raises:
        PreferenceDataError: naming the first pair that alone needs more than ``max_tokens``.
    """

    def __init__(
        self,
        sizes: Tensor,
        max_tokens: int,
        cost: TokenCost | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        chunk_batches: int = 50,
        split: str = "train",
        row_of: Callable[[int], int] | None = None,
    ) -> None:
        if sizes.ndim != 2 or sizes.shape[-1] != 3 or len(sizes) == 0:
            raise ValueError(f"sizes must be a non-empty (n, 3) tensor of token counts, got shape {tuple(sizes.shape)}")
        if chunk_batches < 1:
            raise ValueError(f"chunk_batches must be a positive integer, got {chunk_batches}")
        super().__init__(range(len(sizes)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.cost = cost or TokenCost()
        self.max_tokens = max_tokens
        self.keys = self.cost.keys(sizes)
        _check_fit(sizes, self.keys, max_tokens, self.cost, split, row_of)
        mean = sum(self.cost.of(1, key, key) for key in self.keys) / len(self.keys)
        self.chunk_size = max(1, int(chunk_batches * max_tokens / mean))
        """Pairs per length-sorted mega-chunk."""
        self.total_batches = self._total_batches()
        """Micro-batches of every epoch over all ranks (a multiple of ``num_replicas``)."""

    def __len__(self) -> int:
        return self.total_batches // self.num_replicas

    def _total_batches(self) -> int:
        """The greedy count of epoch 0 or of the whole data sorted (the larger), plus ⌈1 %⌉, rounded up to ranks."""
        needed = max(len(self._chunked(0)[0]), len(self._sorted(range(len(self.keys)))))
        needed += math.ceil(needed / 100)
        return math.ceil(needed / self.num_replicas) * self.num_replicas

    def _chunked(self, epoch: int) -> tuple[list[list[int]], list[int], torch.Generator]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.keys), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.chunk_size):
            chunk = _by_length(order[start : start + self.chunk_size], self.keys)
            batches += _greedy(chunk, self.keys, self.cost, self.max_tokens)
        return batches, order, generator

    def _sorted(self, order: Sequence[int]) -> list[list[int]]:
        return _greedy(_by_length(order, self.keys), self.keys, self.cost, self.max_tokens)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' micro-batches of an epoch, step by step: rank ``r`` trains on entries ``r::num_replicas``.

        Args:
            epoch: the epoch.

        Returns:
            :attr:`total_batches` lists of pair indices.
        """
        batches, order, generator = self._chunked(epoch)
        if len(batches) > self.total_batches:  # rare: the whole data sorted fits, its count is part of the total
            batches = self._sorted(order)
        batches = _split_to(batches, self.total_batches, order)
        costs = [self.cost.of_batch(batch, self.keys) for batch in batches]
        ranked = sorted(range(len(batches)), key=lambda j: -costs[j])
        world = self.num_replicas
        steps = torch.randperm(len(batches) // world, generator=generator).tolist()
        # within a step the micro-batches have similar costs; rotating who gets the largest evens out the epoch
        return [batches[ranked[step * world + (rank + step) % world]] for step in steps for rank in range(world)]

    def _epoch_items(self) -> list[Any]:
        return self.global_batches(self.epoch)[self.rank :: self.num_replicas]


def _split_to(batches: list[list[int]], target: int, order: Sequence[int]) -> list[list[int]]:
    """Halve the micro-batches with most pairs until there are ``target``; repeat pairs when all are single."""
    heap = [(-len(batch), j) for j, batch in enumerate(batches)]
    heapq.heapify(heap)
    batches = list(batches)
    while len(batches) < target and heap and heap[0][0] < -1:
        _, j = heapq.heappop(heap)
        batch = batches[j]
        half = (len(batch) + 1) // 2
        batches[j] = batch[:half]
        batches.append(batch[half:])
        heapq.heappush(heap, (-len(batches[j]), j))
        heapq.heappush(heap, (-len(batches[-1]), len(batches) - 1))
    repeat = 0
    while len(batches) < target:  # fewer pairs than micro-batches: repeat pairs, one per micro-batch
        batches.append([order[repeat % len(order)]])
        repeat += 1
    return batches


class EvalTokenSampler(DistributedSampler):
    """This rank's evaluation micro-batches by a token budget: every pair once over all ranks, padding flagged.

    Args:
        sizes: ``(n, 3)`` token counts of the pairs (:func:`pair_sizes`); ``n`` may be 0.
        max_tokens: the budget of one micro-batch.
        cost: how a micro-batch's tokens are counted.
        num_replicas: the data-parallel world size.
        rank: this process's data-parallel rank.
        split: the split's name, for error messages.
        row_of: a pair's row in its source split, for error messages.

    Raises:
        PreferenceDataError: naming the first pair that alone needs more than ``max_tokens``.
    """

    def __init__(
        self,
        sizes: Tensor,
        max_tokens: int,
        cost: TokenCost | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        split: str = "validation",
        row_of: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__(range(len(sizes)), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        cost = cost or TokenCost()
        keys = cost.keys(sizes.reshape(-1, 3))
        _check_fit(sizes, keys, max_tokens, cost, split, row_of)
        order = _by_length(range(len(keys)), keys)
        batches = _greedy(order, keys, cost, max_tokens)
        padding = [-1 - order[-1]] if order else []  # the cheapest pair, flagged
        batches += [padding] * (-len(batches) % num_replicas)
        self.batches = batches
        """All ranks' micro-batches, step by step (rank ``r``: entries ``r::num_replicas``)."""

    def __len__(self) -> int:
        return len(self.batches) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        return iter(self.batches[self.rank :: self.num_replicas])
