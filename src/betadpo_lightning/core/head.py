r"""The response-only output head: per-token log-probabilities from hidden states, chunk by chunk.

Instead of projecting every position of every row to the vocabulary (a ``(2B, T, V)`` logits tensor, and its float32
copies), only the ``M`` positions that predict a response token reach the output layer, ``c`` rows at a time, and the
log-softmax runs in float32. The differentiable path (:func:`linear_log_softmax`) saves only the hidden states, the
targets and one log-normaliser per position, and recomputes each chunk's logits in the backward pass, so no tensor of
shape ``(M, V)`` ever exists, forward or backward.

With ``z = h Wᵀ + b`` the logits of a position and ``t`` its target:

.. math::
    \log p_t = z_t - \operatorname{logsumexp}(z), \qquad
    \frac{\partial \log p_t}{\partial z} = e_t - \operatorname{softmax}(z).

The per-chunk formulas (log-softmax at the target, entropy, ε-perturbation, WPO weight) and the chunking are those of
:mod:`betadpo_lightning.core.chunked`, shared with the full-logits path (:mod:`betadpo_lightning.core.logps`).

Pure tensor math: no model, no Lightning.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from betadpo_lightning.core.chunked import (
    accumulation_dtype,
    normalised_entropy,
    perturbed_logps,
    row_chunks,
    target_and_logsumexp,
    wpo_logps,
)

__all__ = ["head_perturbed_logps", "head_token_stats", "head_wpo_logps", "linear_log_softmax", "matmul_dtype"]


def matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the projection runs in: autocast's where autocast is on (mixed precision), else the weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``hidden @ weightᵀ + bias`` in float32 or wider, shape ``(c, V)`` (``weight`` already in the matmul dtype)."""
    out = hidden.to(weight.dtype) @ weight.T
    acc = accumulation_dtype(out.dtype)
    out = out.to(acc)
    return out.add_(bias.to(acc)) if bias is not None else out


class _LinearLogSoftmax(torch.autograd.Function):
    """``log_softmax(h Wᵀ + b)[i, t_i]`` by row chunks; the backward recomputes each chunk's logits.

    The backward uses ``∂ℓ/∂z = g (e_t − p)``: ``∂h = g (W_t − p W)``, ``∂W = −pᵀ (g h) + scatter_t(g h)`` and
    ``∂b = −gᵀ p + scatter_t(g)``, so the only ``(c, V)`` work besides the two products is one in-place ``exp``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, dtype: torch.dtype
    ) -> Tensor:
        w = weight.to(dtype)
        out = torch.empty(hidden.shape[0], dtype=accumulation_dtype(dtype), device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(hidden.device.type, enabled=False):
            for start, end in row_chunks(hidden.shape[0], weight.shape[0]):
                logits = _logits(hidden[start:end], w, bias)  # (c, V), fresh: computed in place
                target, lse[start:end] = target_and_logsumexp(logits, targets[start:end], overwrite=True)
                out[start:end] = target - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.dtype = dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dtype = ctx.dtype
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start, end in row_chunks(hidden.shape[0], weight.shape[0]):
                t = targets[start:end]
                g = grad_out[start:end, None].to(lse.dtype)  # (c, 1)
                probs = _logits(hidden[start:end], w, bias).sub_(lse[start:end, None]).exp_().to(dtype)  # (c, V)
                if grad_h is not None:
                    grad_h[start:end] = (g * (w[t] - probs @ w).to(g.dtype)).to(hidden.dtype)
                if grad_w is not None:
                    scaled = (hidden[start:end].to(g.dtype) * g).to(dtype)  # (c, H): g·h
                    if grad_w.dtype == dtype:  # accumulate in place: no (V, H) temporary per chunk
                        grad_w.addmm_(probs.T, scaled, alpha=-1.0)
                    else:
                        grad_w.sub_((probs.T @ scaled).to(weight.dtype))
                    grad_w.index_add_(0, t, scaled.to(weight.dtype))
                if grad_b is not None:
                    grad_b.sub_((g.T.to(dtype) @ probs).squeeze(0).to(bias.dtype))
                    grad_b.index_add_(0, t, g.squeeze(1).to(bias.dtype))
        return grad_h, grad_w, grad_b, None, None


def linear_log_softmax(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Log-probability of each row's target under ``softmax(hidden @ weightᵀ + bias)``, without ``(M, V)`` tensors.

    Args:
        hidden: hidden states of the positions that predict a token, shape ``(M, H)``.
        weight: the output layer's weight, shape ``(V, H)``.
        targets: the predicted token ids, shape ``(M,)``, long.
        bias: the output layer's bias, shape ``(V,)``, if any.
        dtype: dtype of the projection (default :func:`matmul_dtype`); the log-softmax is float32 (float64 for
            float64).

    Returns:
        Log-probabilities, shape ``(M,)``, float32 (float64 in float64); differentiable once with respect to
        ``hidden``, ``weight`` and ``bias``.

    Example:
        >>> weight = torch.zeros(4, 2)  # every logit 0: uniform over 4 tokens
        >>> linear_log_softmax(torch.ones(3, 2), weight, torch.tensor([0, 1, 3]))
        tensor([-1.3863, -1.3863, -1.3863])
    """
    if (
        hidden.dim() != 2
        or weight.dim() != 2
        or hidden.shape[1] != weight.shape[1]
        or targets.shape != hidden.shape[:1]
    ):
        raise ValueError(
            f"Expected `hidden` (M, H), `weight` (V, H) and `targets` (M,), got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(targets.shape)}."
        )
    return _LinearLogSoftmax.apply(hidden, weight, bias, targets, dtype or matmul_dtype(hidden, weight))


@torch.no_grad()
def head_token_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Without gradients: each position's target log-probability and, optionally, its normalised entropy.

    Args:
        hidden: ``(M, H)``.
        weight: ``(V, H)``.
        targets: ``(M,)``.
        bias: ``(V,)`` or ``None``.
        entropy: also return ``H(softmax(z)) / log V`` per position.

    Returns:
        ``(logps (M,), entropies (M,) or None)``, float32 (float64 in float64).
    """
    dtype = matmul_dtype(hidden, weight)
    w = weight.to(dtype)
    logps = torch.empty(hidden.shape[0], dtype=accumulation_dtype(dtype), device=hidden.device)
    entropies = torch.empty_like(logps) if entropy else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start, end in row_chunks(hidden.shape[0], weight.shape[0]):
            logits = _logits(hidden[start:end], w, bias)  # (c, V)
            if entropies is not None:
                entropies[start:end] = normalised_entropy(logits)
            target, lse = target_and_logsumexp(logits, targets[start:end], overwrite=True)
            logps[start:end] = target - lse
    return logps, entropies


@torch.no_grad()
def head_wpo_logps(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
    """Without gradients: WPO's per-token ``log p_t − logsumexp_v(2 log p_v)`` (:func:`~.chunked.wpo_logps`).

    Args:
        hidden: ``(M, H)``.
        weight: ``(V, H)``.
        targets: ``(M,)``.
        bias: ``(V,)`` or ``None``.

    Returns:
        ``(M,)``, float32 whatever the model's dtype.
    """
    dtype = matmul_dtype(hidden, weight)
    w = weight.to(dtype)
    values = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for start, end in row_chunks(hidden.shape[0], weight.shape[0]):
            values[start:end] = wpo_logps(_logits(hidden[start:end], w, bias), targets[start:end])
    return values


@torch.no_grad()
def head_perturbed_logps(
    policy_hidden: Tensor,
    policy_weight: Tensor,
    reference_hidden: Tensor,
    reference_weight: Tensor,
    targets: Tensor,
    epsilon: float,
    policy_bias: Tensor | None = None,
    reference_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Without gradients: target log-probs under ``(1+ε)z − ε z_ref`` and ``(1−ε)z + ε z_ref``, per position.

    ``z`` and ``z_ref`` are the policy's and the reference's logits of the same chunk, never a full ``(M, V)`` pair.

    Args:
        policy_hidden: ``(M, H)``.
        policy_weight: ``(V, H)``.
        reference_hidden: ``(M, H_ref)``.
        reference_weight: ``(V, H_ref)``.
        targets: ``(M,)``.
        epsilon: ε.
        policy_bias: ``(V,)`` or ``None``.
        reference_bias: ``(V,)`` or ``None``.

    Returns:
        ``(lp_plus (M,), lp_minus (M,))``, float32 whatever the models' dtype.
    """
    if policy_weight.shape[0] != reference_weight.shape[0]:
        raise ValueError(
            f"The policy and the reference have different vocabularies ({policy_weight.shape[0]} and "
            f"{reference_weight.shape[0]}); perturbed log-probs need the same logits width."
        )
    wp = policy_weight.to(matmul_dtype(policy_hidden, policy_weight))
    wr = reference_weight.to(matmul_dtype(reference_hidden, reference_weight))
    plus = torch.empty(targets.shape[0], dtype=torch.float32, device=targets.device)
    minus = torch.empty_like(plus)
    with torch.autocast(targets.device.type, enabled=False):
        for start, end in row_chunks(targets.shape[0], policy_weight.shape[0]):
            z = _logits(policy_hidden[start:end], wp, policy_bias)  # (c, V)
            z_ref = _logits(reference_hidden[start:end], wr, reference_bias)
            plus[start:end], minus[start:end] = perturbed_logps(z, z_ref, targets[start:end], epsilon)
    return plus, minus
