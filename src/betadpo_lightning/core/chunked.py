r"""Per-position formulas on one chunk of ``(c, V)`` logits, and the row chunking both log-prob paths use.

The full-logits path (:mod:`betadpo_lightning.core.logps`, logits ``(N, T, V)``) and the response-only head
(:mod:`betadpo_lightning.core.head`, logits recomputed from hidden states) both reduce the ``M`` positions that predict
a response token, ``c`` rows at a time (:func:`row_chunks`), with the functions below. Each takes the logits of one
chunk, already in the accumulation dtype (float32, float64 for float64 logits), and returns one value per row.

With ``z`` the logits of a position, ``p = softmax(z)`` and ``t`` its target:

.. math::
    \log p_t = z_t - \operatorname{logsumexp}(z), \qquad
    H = -\sum_v p_v \log p_v \,/\, \log V, \qquad
    \text{wpo} = \log p_t - \operatorname{logsumexp}_v(2 \log p_v).

Pure tensor math: no model, no Lightning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "CHUNK_ELEMENTS",
    "accumulation_dtype",
    "normalised_entropy",
    "perturbed_logps",
    "row_chunks",
    "sum_by_row",
    "target_and_logsumexp",
    "wpo_logps",
]

CHUNK_ELEMENTS = 1 << 24
"""Upper bound on the elements of one chunk of float32 logits (64 MiB); a chunk has at least one row."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the log-softmax runs in: float64 for float64, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_chunks(num_rows: int, width: int) -> list[tuple[int, int]]:
    """``(start, end)`` bounds of row chunks of at most :data:`CHUNK_ELEMENTS` elements (at least one row each).

    Args:
        num_rows: the number of rows ``M``.
        width: the elements per row (the vocabulary size ``V``).

    Example:
        >>> row_chunks(5, CHUNK_ELEMENTS // 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def sum_by_row(values: Tensor, rows: Tensor, num_rows: int) -> Tensor:
    """Per-row sums of per-position values.

    Args:
        values: one value per position, shape ``(M,)``.
        rows: each position's row, shape ``(M,)``, long.
        num_rows: the number of rows ``N``.

    Returns:
        Shape ``(N,)``, ``values``' dtype; 0 for a row without positions.
    """
    return torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def target_and_logsumexp(logits: Tensor, targets: Tensor, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """The target logit and the log-normaliser of each row (``log p_t`` is their difference).

    Args:
        logits: ``(c, V)``, float32 or float64.
        targets: ``(c,)``, long.
        overwrite: compute in place in ``logits`` (one max pass, one in-place ``exp``, one sum: no ``(c, V)``
            temporary); only for logits nobody reads afterwards.

    Returns:
        ``(target (c,), logsumexp (c,))``.
    """
    target = logits.gather(-1, targets[:, None]).squeeze(-1)
    if not overwrite:
        return target, torch.logsumexp(logits, dim=-1)
    top = logits.amax(-1, keepdim=True)  # (c, 1)
    lse = logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))
    return target, lse


def normalised_entropy(logits: Tensor) -> Tensor:
    """Next-token entropy of each row divided by ``log V``, in ``[0, 1]`` (MallowsPO's dispersion).

    Args:
        logits: ``(c, V)`` with ``V >= 2``, float32 or float64.

    Returns:
        ``(c,)``; a token of probability 0 (logit ``-inf``) contributes ``0 · log 0 = 0``.
    """
    probs = torch.softmax(logits, dim=-1)
    return -torch.special.xlogy(probs, probs).sum(-1) / math.log(logits.shape[-1])


def perturbed_logps(z: Tensor, z_ref: Tensor, targets: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """ε-DPO's target log-probs under ``(1+ε)z − ε z_ref`` and ``(1−ε)z + ε z_ref``, in float32.

    Args:
        z: the policy's logits, ``(c, V)``.
        z_ref: the reference's logits, ``(c, V)``.
        targets: ``(c,)``, long.
        epsilon: ε.

    Returns:
        ``(plus (c,), minus (c,))``, float32.
    """
    z, z_ref = z.float(), z_ref.float()
    out = []
    for sign in (1.0, -1.0):
        mixed = (1 + sign * epsilon) * z - sign * epsilon * z_ref  # (c, V), read by nobody else
        target, lse = target_and_logsumexp(mixed, targets, overwrite=True)
        out.append(target - lse)
    return out[0], out[1]


def wpo_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """WPO's per-token weight in log space, ``log p_t − logsumexp_v(2 log p_v)`` (arXiv 2406.11827).

    ``logsumexp_v(2 log p_v) = log Σ_v p_v²``: the log-probability of the target relative to the distribution's
    own expected probability; 0 for a one-hot distribution that predicts the target.

    Args:
        logits: ``(c, V)``, float32 or float64.
        targets: ``(c,)``, long.

    Returns:
        ``(c,)``, the logits' dtype.
    """
    logp = torch.log_softmax(logits, dim=-1)  # (c, V)
    target = logp.gather(-1, targets[:, None]).squeeze(-1)
    return target - torch.logsumexp(logp.mul_(2), dim=-1)
