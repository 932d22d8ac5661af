"""Gathering every rank's pairs through the Lightning strategy: the library's one cross-rank data exchange."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import Strategy

from betadpo_lightning.core.types import PairData

__all__ = ["gather_pairs"]


def gather_pairs(strategy: Strategy, pairs: PairData) -> tuple[PairData, int, int]:
    """All ranks' pairs in rank order, where ranks may hold different numbers of pairs.

    Two collectives: the per-rank sizes, then every float field stacked into one padded tensor. ``pair_index`` is
    not gathered.

    Args:
        strategy: the Trainer's strategy (``trainer.strategy``).
        pairs: this rank's pairs, ``n`` of them.

    Returns:
        ``(global_pairs, offset, num_ranks)``: the ``N`` pairs of all ranks, the index of this rank's first pair in
        them, and the number of ranks.
    """
    fields = {name: value for name, value in pairs.tensors().items() if name != "pair_index"}
    dtype = torch.promote_types(pairs.policy_chosen_logps.dtype, torch.float32)
    local = torch.stack([value.to(dtype) for value in fields.values()])  # (F, n)
    if strategy.world_size == 1:
        return PairData(**dict(zip(fields, local, strict=True))), 0, 1
    n = local.shape[1]
    sizes = strategy.all_gather(torch.tensor([n], device=local.device)).flatten().tolist()  # (W,)
    padded = local.new_zeros(local.shape[0], max(sizes))  # (F, max_n)
    padded[:, :n] = local
    gathered = strategy.all_gather(padded)  # (W, F, max_n)
    data = torch.cat([gathered[rank, :, :size] for rank, size in enumerate(sizes)], dim=1)  # (F, N)
    rank = strategy.global_rank
    return PairData(**dict(zip(fields, data, strict=True))), sum(sizes[:rank]), len(sizes)
