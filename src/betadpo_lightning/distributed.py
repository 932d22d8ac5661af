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

__all__ = ["any_rank", "barrier", "gather_pairs", "gather_texts", "max_over_ranks", "mean_count"]


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


def mean_count(strategy: Any | None, count: int, device: torch.device | None = None) -> Tensor:
    """Every rank's ``count`` summed, divided by the number of ranks: a 0-d float32 tensor (one ``mean`` reduction).

    The loss normaliser that gives each pair of each rank the same weight after DDP/FSDP average the gradients,
    also when the ranks hold different numbers of pairs (token-budget micro-batches).
    """
    local = torch.tensor([float(count)], dtype=torch.float32, device=device)  # small integers are exact in float32
    if strategy is None or strategy.world_size == 1:
        return local.reshape(())
    return strategy.reduce(local, reduce_op="mean").reshape(())


def max_over_ranks(strategy: Any | None, value: int, device: torch.device | None = None) -> int:
    """The largest of every rank's ``value`` (one ``max`` reduction; ``strategy=None``: this process's)."""
    local = torch.tensor([value], dtype=torch.float32, device=device)  # small integers are exact in float32
    if strategy is not None:
        local = strategy.reduce(local, reduce_op="max")
    return int(local.item())


def gather_texts(strategy: Any | None, text: str, device: torch.device | None = None, limit: int = 4096) -> list[str]:
    """Every rank's ``text`` in rank order, by one ``all_gather`` (``strategy=None``: this process).

    Meant for rare messages (errors): each text travels as ``limit`` UTF-8 bytes and is cut there.
    """
    if strategy is None or strategy.world_size == 1:
        return [text]
    data = text.encode("utf-8")[:limit]
    local = torch.zeros(limit + 1, dtype=torch.int32, device=device)  # (L + 1,): length, then the bytes
    local[0] = len(data)
    local[1 : len(data) + 1] = torch.tensor(list(data), dtype=torch.int32, device=device)
    rows = strategy.all_gather(local).reshape(-1, limit + 1).cpu()  # (W, L + 1)
    return [bytes(row[1 : int(row[0]) + 1].tolist()).decode("utf-8", errors="ignore") for row in rows]


def barrier(strategy: Any, name: str) -> None:
    """Wait until every rank gets here."""
    strategy.barrier(name)
