"""Every exchange between ranks, through the Lightning strategy: the library's one place for collectives.

Each function takes the Trainer's strategy (``trainer.strategy``: its ``all_gather``, ``reduce`` and ``barrier``) and
must be called by every rank at the same point. Nothing here imports Lightning: on one process the strategy's
collectives are identities.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from betadpo_lightning.core.types import PairData

__all__ = ["any_rank", "barrier", "gather_pairs"]


def gather_pairs(strategy: Any, pairs: PairData, margins: Tensor) -> tuple[PairData, Tensor, int, int]:
    """All ranks' pairs and margins in rank order, where ranks may hold different numbers of pairs.

    Two collectives: the per-rank sizes, then every float field and the margins stacked into one padded tensor.
    ``pair_index`` is not gathered.

    Args:
        strategy: the Trainer's strategy.
        pairs: this rank's pairs, ``n`` of them.
        margins: their margins, ``(n,)``.

    Returns:
        ``(global_pairs, global_margins, offset, num_ranks)``: the ``N`` pairs and ``(N,)`` margins of all ranks,
        the index of this rank's first pair in them, and the number of ranks.
    """
    fields = {name: value for name, value in pairs.tensors().items() if name != "pair_index"}
    dtype = torch.promote_types(margins.dtype, torch.float32)
    local = torch.stack([margins.to(dtype), *(value.to(dtype) for value in fields.values())])  # (F + 1, n)
    if strategy.world_size == 1:
        data, offset, ranks = local, 0, 1
    else:
        n = local.shape[1]
        sizes = strategy.all_gather(torch.tensor([n], device=local.device)).flatten().tolist()  # (W,)
        padded = local.new_zeros(local.shape[0], max(sizes))  # (F + 1, max_n)
        padded[:, :n] = local
        gathered = strategy.all_gather(padded)  # (W, F + 1, max_n)
        data = torch.cat([gathered[rank, :, :size] for rank, size in enumerate(sizes)], dim=1)  # (F + 1, N)
        offset, ranks = sum(sizes[: strategy.global_rank]), len(sizes)
    return PairData(**dict(zip(fields, data[1:], strict=True))), data[0], offset, ranks


def any_rank(strategy: Any | None, flag: bool | Tensor, device: torch.device | None = None) -> bool:
    """Whether ``flag`` is true on at least one rank (one ``max`` reduction; ``strategy=None``: this process)."""
    local = torch.as_tensor(flag, dtype=torch.float32, device=device).detach().clone().reshape(1)  # reduced in place
    if strategy is not None:
        local = strategy.reduce(local, reduce_op="max")
    return bool(local.item() > 0)


def barrier(strategy: Any, name: str) -> None:
    """Wait until every rank gets here."""
    strategy.barrier(name)
