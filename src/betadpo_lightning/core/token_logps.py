"""Per-position values of ``(M, V)`` logits, in row chunks.

The positions are those that predict response tokens, gathered from a padded or a packed batch: normalised entropy,
WPO's log-weight and ε-DPO's perturbed log-probs, each chunk in the accumulation dtype
(:mod:`betadpo_lightning.core.chunked`), so no float32 copy of all the logits is made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from betadpo_lightning.core.chunked import (
    accumulation_dtype,
    normalised_entropy,
    perturbed_logps,
    row_chunks,
    wpo_logps,
)

__all__ = ["per_position", "token_entropy", "token_perturbed_logps", "token_wpo_logps"]


def per_position(logits: Tensor, targets: Tensor | None, per_chunk: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``per_chunk`` over row chunks of ``(M, V)`` logits, each chunk in the accumulation dtype; ``(M,)``."""
    acc = accumulation_dtype(logits.dtype)
    values = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
    for start, end in row_chunks(logits.shape[0], logits.shape[-1]):
        chunk_targets = None if targets is None else targets[start:end]
        values[start:end] = per_chunk(logits[start:end].to(acc), chunk_targets)  # type: ignore[arg-type]
    return values


def token_entropy(logits: Tensor) -> Tensor:
    """Normalised next-token entropy (``H / log V``) of each of ``M`` positions, in row chunks.

    Args:
        logits: the logits of the positions, ``(M, V)`` with ``V >= 2``, any floating dtype.

    Returns:
        ``(M,)``, float32 (float64 for float64 logits).

    Example:
        >>> token_entropy(torch.zeros(2, 4))  # uniform: entropy log 4, normalised 1
        tensor([1., 1.])
    """
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise ValueError(f"Expected `logits` of shape (M, V) with V >= 2, got {tuple(logits.shape)}.")
    return per_position(logits, logits.new_empty(logits.shape[0], dtype=torch.long), lambda c, _: normalised_entropy(c))


@torch.no_grad()
def token_wpo_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """WPO's ``log p_t − logsumexp_v(2 log p_v)`` of each of ``M`` positions, without gradients, in row chunks.

    Args:
        logits: ``(M, V)``, any floating dtype.
        targets: ``(M,)``, long.

    Returns:
        ``(M,)``, float32, detached.
    """
    return per_position(logits, targets, wpo_logps).float()


@torch.no_grad()
def token_perturbed_logps(
    policy_logits: Tensor, reference_logits: Tensor, targets: Tensor, epsilon: float
) -> tuple[Tensor, Tensor]:
    """ε-DPO's target log-probs under ``(1+ε)z − ε z_ref`` and ``(1−ε)z + ε z_ref`` per position, in row chunks.

    Args:
        policy_logits: ``(M, V)``.
        reference_logits: ``(M, V)``.
        targets: ``(M,)``, long.
        epsilon: ε.

    Returns:
        ``(lp_plus, lp_minus)``, ``(M,)`` each, float32, detached.
    """
    if reference_logits.shape != policy_logits.shape or policy_logits.dim() != 2:
        raise ValueError(
            f"Expected policy and reference logits of the same shape (M, V), got {tuple(policy_logits.shape)} and "
            f"{tuple(reference_logits.shape)}."
        )
    plus = torch.empty(targets.shape[0], dtype=torch.float32, device=policy_logits.device)
    minus = torch.empty_like(plus)
    for start, end in row_chunks(targets.shape[0], policy_logits.shape[-1]):
        plus[start:end], minus[start:end] = perturbed_logps(
            policy_logits[start:end], reference_logits[start:end], targets[start:end], epsilon
        )
    return plus, minus
