"""Weighted sampling without replacement, reproducible from ``(seed, step)`` on any rank."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["derive_seed", "gumbel_topk_mask"]


def derive_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed that depends only on ``(seed, step)``, identical in every process.

    Args:
        seed: the user's seed.
        step: the controller's step counter.

    Returns:
        A non-negative integer below ``2**63``.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(0, 2)
        True
    """
    digest = hashlib.blake2b(f"{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def gumbel_topk_mask(log_weights: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Draw ``k`` distinct items with probabilities proportional to ``exp(log_weights)``, without replacement.

    The draw is successive (Plackett–Luce) sampling: the first item with probability ``w_i / Σw``, the next among
    the rest with probability proportional to its weight, and so on. It is computed as the top-k of
    ``log_weights + Gumbel noise``, which is exactly that distribution and never needs ``exp(log_weights)``, so no
    weight can underflow. An item with ``log_weight = -inf`` (weight 0) is chosen only when fewer than ``k`` items
    have a positive weight.

    Args:
        log_weights: log-weights, shape ``(N,)``, finite or ``-inf``.
        k: how many items to keep, ``1 <= k <= N``.
        generator: a CPU generator; the noise is drawn from it in float64 and moved to ``log_weights.device``.

    Returns:
        A bool mask, shape ``(N,)``, with exactly ``k`` true entries.

    Raises:
        ValueError: if ``k`` is out of range or ``log_weights`` is not 1-d.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> int(gumbel_topk_mask(torch.log(torch.tensor([1.0, 0.0, 3.0])), 2, g).sum())
        2
    """
    if log_weights.dim() != 1:
        raise ValueError(f"Expected `log_weights` of shape (N,), got {tuple(log_weights.shape)}.")
    n = log_weights.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"Expected 1 <= k <= {n}, got k={k}.")
    uniform = torch.rand(n, generator=generator, dtype=torch.float64).clamp_(min=torch.finfo(torch.float64).tiny)
    gumbel = -torch.log(-torch.log(uniform))  # (N,) standard Gumbel
    keys = log_weights.to(torch.float64) + gumbel.to(log_weights.device)
    mask = torch.zeros(n, dtype=torch.bool, device=log_weights.device)
    mask[torch.topk(keys, k).indices] = True
    return mask
