r"""AOT: alignment via optimal transport, a distributional (first-order dominance) preference loss.

Melnyk et al. 2024, arXiv 2406.05882. Both losses sort quantities over the batch and compare them quantile by
quantile, so the ``B`` values they return belong to sorted positions, not to pairs: they are not ``pairwise`` (one
β per batch; no per-pair filtering; TRL refuses WPO weighting with them). β scales the quantile gaps
(``beta_scales_margin``); the link is logistic, but of quantile gaps rather than of a pair's DPO margin, so neither
declares ``logistic``. Larger batches give finer quantiles (TRL: "maximize the per-GPU batch size"). Label smoothing
ε is the cDPO form, as in TRL.

Naming follows TRL ≥ 0.28: ``aot`` is the *paired* form, ``aot_unpaired`` the unpaired one (which TRL ≤ 0.27 called
``aot_pair``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _check_smoothing, _compute_dtype
from betadpo_lightning.core.types import PairData

__all__ = ["AOTLoss", "AOTUnpairedLoss"]


def _sorted_gap_loss(upper: Tensor, lower: Tensor, beta: Beta, label_smoothing: float) -> Tensor:
    """The cDPO loss of ``β (sort(upper) − sort(lower))``, ``(B,)`` in sorted order."""
    if isinstance(beta, Tensor) and beta.dim() > 0:
        raise ValueError("AOT compares sorted quantiles across the batch: it takes one β, not one per pair.")
    delta = torch.sort(upper).values - torch.sort(lower).values
    logits = _as_beta(beta, delta) * delta
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


class _AOT(PreferenceLoss):
    pairwise = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
        self.label_smoothing = float(label_smoothing)


class AOTLoss(_AOT):
    r"""AOT, paired (TRL ``aot``): the policy's chosen-minus-rejected log-ratios dominate the reference's.

    .. math::
        \ell_{(i)} = -(1-\varepsilon)\log\sigma(\beta\delta_{(i)}) - \varepsilon\log\sigma(-\beta\delta_{(i)}),
        \qquad \delta_{(i)} = (pc - pr)_{(i)} - (rc - rr)_{(i)}

    with :math:`x_{(i)}` the i-th smallest value over the batch.

    Args:
        label_smoothing: ε in ``[0, 0.5]``.
    """

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses of the sorted quantiles (not in pair order)."""
        pc, pr = _compute_dtype(pairs.policy_chosen_logps), _compute_dtype(pairs.policy_rejected_logps)
        rc, rr = _compute_dtype(pairs.reference_chosen_logps), _compute_dtype(pairs.reference_rejected_logps)
        return _sorted_gap_loss(pc - pr, rc - rr, beta, self.label_smoothing)


class AOTUnpairedLoss(_AOT):
    r"""AOT, unpaired (TRL ``aot_unpaired``): the chosen rewards dominate the rejected rewards.

    .. math::
        \ell_{(i)} = -(1-\varepsilon)\log\sigma(\beta\delta_{(i)}) - \varepsilon\log\sigma(-\beta\delta_{(i)}),
        \qquad \delta_{(i)} = (pc - rc)_{(i)} - (pr - rr)_{(i)}

    with :math:`x_{(i)}` the i-th smallest value over the batch; chosen and rejected are sorted separately, so the
    pairing is not used.

    Args:
        label_smoothing: ε in ``[0, 0.5]``.
    """

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses of the sorted quantiles (not in pair order)."""
        pc, pr = _compute_dtype(pairs.policy_chosen_logps), _compute_dtype(pairs.policy_rejected_logps)
        rc, rr = _compute_dtype(pairs.reference_chosen_logps), _compute_dtype(pairs.reference_rejected_logps)
        return _sorted_gap_loss(pc - rc, pr - rr, beta, self.label_smoothing)
