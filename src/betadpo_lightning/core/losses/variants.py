r"""Variants of DPO on the margin :math:`\beta h`: length-normalised sigmoid, EXO and DiscoPOP.

``h = (pc − rc) − (pr − rr)`` is the DPO margin relative to the reference (length-averaged for
:class:`SigmoidNormLoss`). All three need the reference, are pairwise, and β is the margin's temperature
(``beta_scales_margin``). ``logistic`` (β enters only through :math:`\sigma(\beta h)`) holds for the length-normalised
sigmoid and for EXO, whose loss is a function of :math:`\sigma(\beta h)` alone; DiscoPOP blends in
:math:`e^{-\beta h}`, so it does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _compute_dtype
from betadpo_lightning.core.types import PairData

__all__ = ["DiscoPOPLoss", "EXOPairLoss", "SigmoidNormLoss"]


def _logits(margins: Tensor, beta: Beta) -> Tensor:
    h = _compute_dtype(margins)
    return _as_beta(beta, h) * h


class SigmoidNormLoss(PreferenceLoss):
    r"""Length-normalised DPO with a reference (TRL ``sigmoid_norm``): :math:`-\log\sigma(\beta \bar h)`.

    :math:`\bar h = (\bar\ell^{\pi}_w - \bar\ell^{ref}_w) - (\bar\ell^{\pi}_l - \bar\ell^{ref}_l)` on length-averaged
    log-probabilities: SimPO's normalisation (Meng et al. 2024, arXiv 2405.14734) kept with DPO's reference
    (Rafailov et al. 2023, arXiv 2305.18290) and without a target margin. TRL divides the summed log-ratios by the
    completion lengths clamped to ≥ 1, which equals averaging policy and reference alike. ``logistic``: β enters as
    :math:`\sigma(\beta\bar h)`; under ε-DPO the perturbed log-probabilities must then be averaged alike.
    """

    average_logps = True
    logistic = True

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses of the length-averaged DPO margins."""
        return -F.logsigmoid(_logits(margins, beta))


class EXOPairLoss(PreferenceLoss):
    r"""EXO, pairwise (Ji et al. 2024, arXiv 2402.00856, eq. 16): reverse KL to the smoothed label distribution.

    .. math::
        \ell = \sigma(\beta h)\big(\log\sigma(\beta h) - \log(1-\varepsilon)\big)
             + \sigma(-\beta h)\big(\log\sigma(-\beta h) - \log\varepsilon\big)

    i.e. :math:`\mathrm{KL}(q\,\|\,p)` with :math:`q = (\sigma(\beta h), \sigma(-\beta h))` the policy's and
    :math:`p = (1-\varepsilon, \varepsilon)` the labels' distribution over the pair; it needs ε > 0 (the paper and
    TRL ``exo_pair``: 1e-3). Minimal (0) at :math:`\beta h = \log\frac{1-\varepsilon}{\varepsilon}`, not at
    :math:`h \to \infty`. ``logistic``: a function of :math:`\sigma(\beta h)` alone.

    Args:
        label_smoothing: ε in ``(0, 1)``.
    """

    logistic = True

    def __init__(self, label_smoothing: float = 1e-3) -> None:
        if not 0 < label_smoothing < 1:
            raise ValueError(f"EXO needs `label_smoothing` in (0, 1) (the paper: 1e-3), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` EXO losses of the margins."""
        logits = _logits(margins, beta)
        eps = self.label_smoothing
        log_qw, log_ql = F.logsigmoid(logits), F.logsigmoid(-logits)
        return log_qw.exp() * (log_qw - math.log1p(-eps)) + log_ql.exp() * (log_ql - math.log(eps))


class DiscoPOPLoss(PreferenceLoss):
    r"""DiscoPOP / LRML (Lu et al. 2024, arXiv 2406.08414, eq. 5): log-ratio modulated blend of logistic and exp.

    .. math::
        \ell = \big(1 - \sigma(\beta h/\tau)\big)\big(-\log\sigma(\beta h)\big) + \sigma(\beta h/\tau)\, e^{-\beta h}

    Default τ = 0.05 (the paper's, TRL's ``discopop_tau``). The exponential term is computed as
    :math:`\exp(\log\sigma(\beta h/\tau) - \beta h)`: TRL multiplies :math:`\sigma(\beta h/\tau)` by
    :math:`e^{-\beta h}`, which gives ``0 · inf = nan`` in float32 once :math:`\beta h < -88`. Not ``logistic``.

    Args:
        tau: τ > 0, the temperature of the modulation.
    """

    def __init__(self, tau: float = 0.05) -> None:
        if not tau > 0:
            raise ValueError(f"Expected `tau` > 0, got {tau}.")
        self.tau = float(tau)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` DiscoPOP losses of the margins."""
        logits = _logits(margins, beta)
        scaled = logits / self.tau
        logistic = torch.sigmoid(-scaled) * -F.logsigmoid(logits)
        return logistic + torch.exp(F.logsigmoid(scaled) - logits)
