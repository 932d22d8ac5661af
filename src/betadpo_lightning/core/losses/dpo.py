r"""Per-pair losses of the DPO family, implicit rewards and margins.

Everything here is pure tensor math: no reduction over the batch, no logging, no collectives, no global random
state. Each loss returns one value per preference pair, shape ``(B,)``, so that callers can weight, mask (β-DPO
filtering) or normalise them as they need.

Notation (``B`` pairs): ``pc``/``pr`` are the policy's log-probabilities of the chosen/rejected responses, ``rc``/``rr``
the reference's, and the DPO margin (the "logits" of the DPO loss before β) is

.. math::
    h = (pc - rc) - (pr - rr).

``beta`` may be a Python float, a 0-d tensor or a ``(B,)`` tensor (one β per pair, as β-DPO and ε-DPO use); it is
broadcast against ``h``. Half-precision inputs are computed in float32; float64 inputs stay float64.

References:
    DPO, Rafailov et al. 2023, https://arxiv.org/abs/2305.18290 (eq. 7);
    cDPO, Mitchell 2023, https://ericmitchell.ai/cdpo.pdf;
    IPO, Azar et al. 2023, https://arxiv.org/abs/2310.12036 (eq. 17);
    hinge / SLiC-HF, Zhao et al. 2023, https://arxiv.org/abs/2305.10425;
    robust DPO, Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409 (eq. 11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.types import PairData

Beta = float | Tensor

__all__ = [
    "Beta",
    "dpo_loss",
    "dpo_margins",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "pair_margins",
    "pair_rewards",
    "robust_loss",
    "sigmoid_loss",
]


def _compute_dtype(x: Tensor) -> Tensor:
    """Upcast half-precision tensors to float32; keep float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _as_beta(beta: Beta, like: Tensor) -> Tensor:
    """Turn ``beta`` into a tensor broadcastable against ``like`` (shape ``(B,)``).

    Raises:
        ValueError: if a float ``beta`` is not positive, or a tensor ``beta`` is neither 0-d nor shaped like ``like``.
    """
    if isinstance(beta, Tensor):
        if beta.dim() != 0 and beta.shape != like.shape:
            raise ValueError(
                f"Expected `beta` to be a float, a 0-d tensor or of shape {tuple(like.shape)}, "
                f"got a tensor of shape {tuple(beta.shape)}."
            )
        return beta.to(device=like.device, dtype=like.dtype)
    if not beta > 0:
        raise ValueError(f"Expected `beta` > 0, got {beta}.")
    return torch.tensor(beta, device=like.device, dtype=like.dtype)


def _check_no_smoothing(label_smoothing: float, loss_name: str) -> None:
    if label_smoothing != 0:
        raise ValueError(
            f"`label_smoothing` has no meaning for the {loss_name} loss; expected 0, got {label_smoothing}."
        )


def _check_smoothing(label_smoothing: float, upper: float, upper_inclusive: bool) -> None:
    ok = 0.0 <= label_smoothing <= upper if upper_inclusive else 0.0 <= label_smoothing < upper
    if not ok:
        bracket = "]" if upper_inclusive else ")"
        raise ValueError(f"Expected `label_smoothing` in [0, {upper}{bracket}, got {label_smoothing}.")


def dpo_margins(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
) -> Tensor:
    """DPO margin ``h = (pc - rc) - (pr - rr)`` of each pair (the β-DPO "gap" ``M``).

    Args:
        policy_chosen_logps: policy log-probabilities of the chosen responses, shape ``(B,)``.
        policy_rejected_logps: policy log-probabilities of the rejected responses, shape ``(B,)``.
        reference_chosen_logps: reference log-probabilities of the chosen responses, shape ``(B,)``.
        reference_rejected_logps: reference log-probabilities of the rejected responses, shape ``(B,)``.

    Returns:
        The margins, shape ``(B,)``, float32 for half-precision inputs.

    Example:
        >>> dpo_margins(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        tensor([2.])
    """
    pc, pr = _compute_dtype(policy_chosen_logps), _compute_dtype(policy_rejected_logps)
    rc, rr = _compute_dtype(reference_chosen_logps), _compute_dtype(reference_rejected_logps)
    return (pc - rc) - (pr - rr)


def sigmoid_loss(margins: Tensor, beta: Beta, label_smoothing: float = 0.0) -> Tensor:
    r"""Sigmoid DPO loss with conservative label smoothing (cDPO) from the margins.

    .. math::
        \ell = -(1 - \varepsilon)\log\sigma(\beta h) - \varepsilon \log\sigma(-\beta h)

    Args:
        margins: DPO margins ``h``, shape ``(B,)``.
        beta: β, a float, a 0-d tensor or a ``(B,)`` tensor.
        label_smoothing: ε, the assumed probability that a label is flipped, in ``[0, 0.5]``.

    Returns:
        Per-pair losses, shape ``(B,)``.
    """
    _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
    h = _compute_dtype(margins)
    logits = _as_beta(beta, h) * h
    loss = -F.logsigmoid(logits)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def robust_loss(margins: Tensor, beta: Beta, label_smoothing: float = 0.0) -> Tensor:
    r"""Robust DPO loss, unbiased under a known label-flip rate ε.

    .. math::
        \ell = \frac{-(1 - \varepsilon)\log\sigma(\beta h) + \varepsilon\log\sigma(-\beta h)}{1 - 2\varepsilon}

    Args:
        margins: DPO margins ``h``, shape ``(B,)``.
        beta: β, a float, a 0-d tensor or a ``(B,)`` tensor.
        label_smoothing: ε, the label-flip rate, in ``[0, 0.5)``.

    Returns:
        Per-pair losses, shape ``(B,)``; they can be negative when ε > 0.
    """
    _check_smoothing(label_smoothing, 0.5, upper_inclusive=False)
    h = _compute_dtype(margins)
    logits = _as_beta(beta, h) * h
    eps = label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)


def ipo_loss(margins: Tensor, beta: Beta, label_smoothing: float = 0.0) -> Tensor:
    r"""IPO loss :math:`(h - 1/(2\beta))^2`.

    IPO is defined on **length-averaged** log-probabilities: compute ``margins`` from
    ``sequence_logps(..., average=True)`` (``PAIR_LOSSES["ipo"].average_logps`` says so to callers).

    Args:
        margins: DPO margins ``h`` of length-averaged log-probabilities, shape ``(B,)``.
        beta: β, a float, a 0-d tensor or a ``(B,)`` tensor.
        label_smoothing: must be 0 (IPO has no smoothing term); present for a uniform signature.

    Returns:
        Per-pair losses, shape ``(B,)``.
    """
    _check_no_smoothing(label_smoothing, "IPO")
    h = _compute_dtype(margins)
    return (h - 1.0 / (2.0 * _as_beta(beta, h))) ** 2


def hinge_loss(margins: Tensor, beta: Beta, label_smoothing: float = 0.0) -> Tensor:
    r"""Hinge (SLiC-HF / RSO) loss :math:`\max(0, 1 - \beta h)`.

    Args:
        margins: DPO margins ``h``, shape ``(B,)``.
        beta: β, a float, a 0-d tensor or a ``(B,)`` tensor.
        label_smoothing: must be 0; present for a uniform signature.

    Returns:
        Per-pair losses, shape ``(B,)``.
    """
    _check_no_smoothing(label_smoothing, "hinge")
    h = _compute_dtype(margins)
    return torch.relu(1.0 - _as_beta(beta, h) * h)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    beta: Beta,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Per-pair sigmoid DPO loss with conservative label smoothing (cDPO).

    .. math::
        h = (pc - rc) - (pr - rr), \qquad
        \ell = -(1 - \varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)

    Args:
        policy_chosen_logps: policy log-probabilities of the chosen responses, shape ``(B,)``.
        policy_rejected_logps: policy log-probabilities of the rejected responses, shape ``(B,)``.
        reference_chosen_logps: reference log-probabilities of the chosen responses, shape ``(B,)``.
        reference_rejected_logps: reference log-probabilities of the rejected responses, shape ``(B,)``.
        beta: β, a float, a 0-d tensor or a ``(B,)`` tensor.
        label_smoothing: ε in ``[0, 0.5]``; 0 gives plain DPO.

    Returns:
        Per-pair losses, shape ``(B,)`` (never reduced).

    Example:
        >>> lp = torch.tensor([-5.0, -7.0])
        >>> dpo_loss(lp, lp, lp, lp, beta=0.1)  # policy == reference: log 2 for every pair
        tensor([0.6931, 0.6931])
    """
    margins = dpo_margins(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return sigmoid_loss(margins, beta, label_smoothing)


def implicit_rewards(policy_logps: Tensor, reference_logps: Tensor, beta: Beta) -> Tensor:
    """DPO implicit reward ``β (log π(y|x) − log π_ref(y|x))``, detached.

    Args:
        policy_logps: policy log-probabilities of some responses, shape ``(B,)``.
        reference_logps: reference log-probabilities of the same responses, shape ``(B,)``.
        beta: β (logging uses the base β0), a float, a 0-d tensor or a ``(B,)`` tensor.

    Returns:
        Rewards, shape ``(B,)``, detached from the graph. The reward margin of a pair is
        ``implicit_rewards(pc, rc, β) − implicit_rewards(pr, rr, β)``.
    """
    diff = (_compute_dtype(policy_logps) - _compute_dtype(reference_logps)).detach()
    return _as_beta(beta, diff) * diff


def pair_margins(pairs: PairData, reference_free: bool = False) -> Tensor:
    """DPO margins ``h = (pc − rc) − (pr − rr)`` of a :class:`~betadpo_lightning.core.types.PairData`, shape ``(B,)``.

    Args:
        pairs: the pairs.
        reference_free: ``h = pc − pr``, ignoring the reference log-probabilities (the reference may still supply
            other values, such as MallowsPO's entropy).

    Example:
        >>> pairs = PairData(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        >>> pair_margins(pairs), pair_margins(pairs, reference_free=True)
        (tensor([2.]), tensor([2.]))
    """
    if reference_free:
        return _compute_dtype(pairs.policy_chosen_logps) - _compute_dtype(pairs.policy_rejected_logps)
    return dpo_margins(
        pairs.policy_chosen_logps,
        pairs.policy_rejected_logps,
        pairs.reference_chosen_logps,
        pairs.reference_rejected_logps,
    )


def pair_rewards(pairs: PairData, beta: Beta) -> tuple[Tensor, Tensor]:
    """Implicit rewards of the chosen and rejected responses, ``β (log π − log π_ref)``, detached, ``(B,)`` each.

    The reward margin ``chosen − rejected`` equals ``β · pair_margins(pairs)``.

    Example:
        >>> lp = torch.tensor([-1.0])
        >>> pair_rewards(PairData(lp, lp - 2, lp - 1, lp - 1), beta=0.5)
        (tensor([0.5000]), tensor([-0.5000]))
    """
    chosen = implicit_rewards(pairs.policy_chosen_logps, pairs.reference_chosen_logps, beta)
    rejected = implicit_rewards(pairs.policy_rejected_logps, pairs.reference_rejected_logps, beta)
    return chosen, rejected
