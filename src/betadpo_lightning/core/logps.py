"""Sequence log-probabilities of responses under a causal language model.

Only the positions that predict a response token are ever normalised: prompt and padding positions are dropped
before the log-softmax, and the log-softmax itself runs over row chunks in float32 (float64 for float64 logits)
with a custom backward that recomputes the softmax chunk by chunk. No float32 copy of the whole ``(N, T, V)``
logits tensor is created, whatever the logits' dtype, and the saved state for the backward pass is the logits
themselves plus one float per selected position. The per-chunk formulas and the chunking are those of
:mod:`betadpo_lightning.core.chunked`, shared with the response-only head (:mod:`betadpo_lightning.core.head`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from betadpo_lightning.core.chunked import (
    accumulation_dtype,
    normalised_entropy,
    row_chunks,
    sum_by_row,
    target_and_logsumexp,
    wpo_logps,
)
from betadpo_lightning.core.token_logps import (
    per_position,
    token_entropy,
    token_perturbed_logps,
    token_wpo_logps,
)

__all__ = [
    "gather_log_softmax",
    "perturbed_sequence_logps",
    "response_positions",
    "sequence_entropy",
    "sequence_logps",
    "sequence_wpo_logps",
    "token_entropy",
    "token_perturbed_logps",
    "token_wpo_logps",
]


class _GatherLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits)[i, targets[i]]`` computed in chunks, in float32 or wider."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, targets: Tensor) -> Tensor:
        acc = accumulation_dtype(logits.dtype)
        out = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        lse = torch.empty_like(out)
        for start, end in row_chunks(logits.shape[0], logits.shape[-1]):
            # (c, V); a view of `logits` when they are already in `acc`, so not overwritten
            target, lse[start:end] = target_and_logsumexp(logits[start:end].to(acc), targets[start:end])
            out[start:end] = target - lse[start:end]
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for start, end in row_chunks(logits.shape[0], logits.shape[-1]):
            g_out = grad_out[start:end, None]  # (c, 1)
            # d/dz [z_t - logsumexp(z)] = onehot(t) - softmax(z)
            g = torch.exp(logits[start:end].to(lse.dtype) - lse[start:end, None]).mul_(-g_out)  # (c, V)
            g.scatter_add_(-1, targets[start:end, None], g_out)
            grad[start:end] = g.to(logits.dtype)
        return grad, None


def gather_log_softmax(logits: Tensor, targets: Tensor) -> Tensor:
    """Log-probability of each row's target token, ``log_softmax(logits, -1)[i, targets[i]]``.

    Args:
        logits: unnormalised scores, shape ``(M, V)``, any floating dtype.
        targets: token ids in ``[0, V)``, shape ``(M,)``, long.

    Returns:
        Log-probabilities, shape ``(M,)``, float32 (float64 for float64 logits). Differentiable once w.r.t.
        ``logits``.

    Raises:
        ValueError: if the shapes do not match.

    Example:
        >>> gather_log_softmax(torch.zeros(2, 4), torch.tensor([0, 3]))  # uniform over 4 tokens
        tensor([-1.3863, -1.3863])
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected `logits` of shape (M, V) and `targets` of shape (M,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}."
        )
    return _GatherLogSoftmax.apply(logits, targets)


def sequence_logps(logits: Tensor, labels: Tensor, ignore_index: int = -100, average: bool = False) -> Tensor:
    """Summed (or averaged) log-probability of each row's labelled tokens under a causal LM.

    The shift happens here: ``logits[:, t]`` predicts ``labels[:, t + 1]``. ``labels`` are the input ids with every
    non-response position (prompt, padding) set to ``ignore_index``, so only response tokens count.

    Args:
        logits: causal-LM logits, shape ``(N, T, V)``, any floating dtype (bf16/fp16 are normalised in float32).
        labels: target ids, shape ``(N, T)``, long; ``ignore_index`` marks positions that do not count.
        ignore_index: the label value of positions to ignore.
        average: return the mean over each row's counted tokens instead of the sum.

    Returns:
        Per-row log-probabilities, shape ``(N,)``, float32 (float64 for float64 logits). A row without any counted
        token gets 0.

    Raises:
        ValueError: if the shapes do not match.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform next-token distribution over 4 tokens
        >>> labels = torch.tensor([[-100, 2, 1]])  # two response tokens
        >>> sequence_logps(logits, labels)  # 2 * log(1/4)
        tensor([-2.7726])
        >>> sequence_logps(logits, labels, average=True)
        tensor([-1.3863])
    """
    rows, cols, targets, mask = _response_positions(logits, labels, ignore_index)
    token_logps = gather_log_softmax(logits[rows, cols], targets)  # (M,) from (M, V)
    sums = sum_by_row(token_logps, rows, logits.shape[0])
    if not average:
        return sums
    counts = mask.sum(-1).clamp(min=1)  # (N,)
    return sums / counts


def _response_positions(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected `logits` of shape (N, T, V) and `labels` of shape (N, T), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    return response_positions(labels, ignore_index)


def response_positions(labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The positions that predict a response token (position ``t`` predicts ``labels[:, t + 1]``).

    Args:
        labels: ``(N, T)`` target ids with ``ignore_index`` on positions that do not count.
        ignore_index: the label of those positions.

    Returns:
        ``(rows, cols, targets, mask)``: row and column of each of the ``M`` positions, ``(M,)`` each, the token it
        predicts ``(M,)``, and the mask ``(N, T-1)``.

    Example:
        >>> rows, cols, targets, mask = response_positions(torch.tensor([[-100, 5, 6], [-100, -100, 7]]))
        >>> rows.tolist(), cols.tolist(), targets.tolist()
        ([0, 0, 1], [0, 1, 1], [5, 6, 7])
    """
    targets = labels[:, 1:]  # (N, T-1): the token each position t < T-1 predicts
    mask = targets != ignore_index  # (N, T-1)
    rows, cols = mask.nonzero(as_tuple=True)  # (M,), (M,)
    return rows, cols, targets[rows, cols], mask


def sequence_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean next-token entropy over each row's response-predicting positions, divided by ``log V``.

    The same shift as :func:`sequence_logps`: position ``t`` counts when ``labels[:, t + 1]`` is a response token.
    This is MallowsPO's dispersion estimate (computed from the reference model), in ``[0, 1]``.

    Args:
        logits: causal-LM logits, shape ``(N, T, V)``, any floating dtype (normalised in float32, float64 for
            float64 logits, in row chunks).
        labels: target ids, shape ``(N, T)``; ``ignore_index`` marks positions that do not count.
        ignore_index: the label value of positions to ignore.

    Returns:
        Per-row normalised entropies, shape ``(N,)``; a row without any counted token gets 0.

    Raises:
        ValueError: if the shapes do not match or ``V < 2``.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: entropy log 4, normalised 1
        >>> sequence_entropy(logits, torch.tensor([[-100, 2, 1]]))
        tensor([1.])
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"Expected a vocabulary of at least 2 tokens, got V={logits.shape[-1]}.")
    return _position_means(logits, labels, ignore_index, lambda chunk, _: normalised_entropy(chunk))


@torch.no_grad()
def sequence_wpo_logps(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """WPO's log-weight of each row: the mean of ``log p(y_t) − logsumexp_v(2 log p_v)`` over its response tokens.

    The same shift as :func:`sequence_logps`. ``exp`` of the chosen and rejected rows' sum is WPO's pair weight
    (arXiv 2406.11827; TRL's ``use_weighting``). Computed without gradients, in row chunks.

    Args:
        logits: causal-LM logits of the policy, shape ``(N, T, V)``, any floating dtype.
        labels: target ids, shape ``(N, T)``; ``ignore_index`` marks positions that do not count.
        ignore_index: the label value of positions to ignore.

    Returns:
        Per-row values, shape ``(N,)``, float32, detached; a row without any counted token gets 0.

    Raises:
        ValueError: if the shapes do not match.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform: log(1/4) - log(4 · 1/16) = 0
        >>> sequence_wpo_logps(logits, torch.tensor([[-100, 2, 1]]))
        tensor([0.])
    """
    return _position_means(logits, labels, ignore_index, wpo_logps).float()


def _position_means(
    logits: Tensor, labels: Tensor, ignore_index: int, per_chunk: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Mean over each row's response-predicting positions of ``per_chunk(logits (c, V), targets (c,)) -> (c,)``.

    Returns:
        ``(N,)`` in the accumulation dtype (float32, float64 for float64 logits).
    """
    rows, cols, targets, mask = _response_positions(logits, labels, ignore_index)
    values = per_position(logits[rows, cols], targets, per_chunk)  # from (M, V)
    return sum_by_row(values, rows, logits.shape[0]) / mask.sum(-1).clamp(min=1)


def perturbed_sequence_logps(
    policy_logits: Tensor, reference_logits: Tensor, labels: Tensor, epsilon: float, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    r"""ε-DPO's perturbed log-probabilities, summed over each row's response tokens, in float32 whatever the dtype.

    With ``z`` the policy's and ``z_ref`` the reference's logits at a position:
    :math:`\ell^{+} = \log\mathrm{softmax}((1+\varepsilon)z - \varepsilon z_{ref})` (≈ the policy for β/(1+ε)) and
    :math:`\ell^{-} = \log\mathrm{softmax}((1-\varepsilon)z + \varepsilon z_{ref})` (≈ β/(1−ε)), at the target.
    Same shift as :func:`sequence_logps`; computed without gradients, in row chunks.

    Args:
        policy_logits: ``(N, T, V)``.
        reference_logits: ``(N, T, V)``.
        labels: ``(N, T)``, ``ignore_index`` on positions that do not count.
        epsilon: ε.
        ignore_index: the label value of positions to ignore.

    Returns:
        ``(lp_plus, lp_minus)``, ``(N,)`` each, float32.

    Example:
        >>> z = torch.zeros(1, 3, 4)  # policy == reference: both perturbations are the policy itself
        >>> perturbed_sequence_logps(z, z, torch.tensor([[-100, 2, 1]]), epsilon=0.1)
        (tensor([-2.7726]), tensor([-2.7726]))
    """
    if reference_logits.shape != policy_logits.shape:
        raise ValueError(
            f"Expected `reference_logits` of the policy's shape {tuple(policy_logits.shape)}, got "
            f"{tuple(reference_logits.shape)}."
        )
    rows, cols, targets, _ = _response_positions(policy_logits, labels, ignore_index)
    with torch.no_grad():
        plus, minus = token_perturbed_logps(policy_logits[rows, cols], reference_logits[rows, cols], targets, epsilon)
    num_rows = policy_logits.shape[0]
    return sum_by_row(plus, rows, num_rows), sum_by_row(minus, rows, num_rows)
