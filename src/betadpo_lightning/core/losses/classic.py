r"""The classic DPO losses as components: sigmoid DPO / cDPO, robust DPO, IPO and hinge.

Each wraps the pure function of the same family in :mod:`~betadpo_lightning.core.losses.dpo`, which stays for direct
use. Notation: ``h`` is the DPO margin ``(pc − rc) − (pr − rr)`` (length-averaged for IPO).
"""

from __future__ import annotations

from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import (
    Beta,
    _check_smoothing,
    hinge_loss,
    ipo_loss,
    robust_loss,
    sigmoid_loss,
)
from betadpo_lightning.core.types import PairData

__all__ = ["HingeLoss", "IPOLoss", "RobustLoss", "SigmoidLoss"]


class SigmoidLoss(PreferenceLoss):
    r"""DPO with conservative label smoothing (cDPO).

    :math:`-(1-\varepsilon)\log\sigma(\beta h) - \varepsilon\log\sigma(-\beta h)`.
    Rafailov et al. 2023 (arXiv 2305.18290), Mitchell 2023 (cDPO). TRL 1.16's ``sigmoid`` ignores
    ``label_smoothing``; here ε > 0 gives cDPO, as TRL ≤ 0.28 did.

    Args:
        label_smoothing: ε in ``[0, 0.5]``.

    Example:
        >>> import torch
        >>> from betadpo_lightning.core.types import PairData
        >>> lp = torch.tensor([-5.0])
        >>> SigmoidLoss()(PairData(lp, lp, lp, lp), beta=0.1)  # policy == reference: log 2
        tensor([0.6931])
    """

    logistic = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` cDPO losses of the margins."""
        return sigmoid_loss(margins, beta, self.label_smoothing)


class RobustLoss(PreferenceLoss):
    r"""Robust DPO, unbiased under a known label-flip rate ε (Chowdhury et al. 2024, arXiv 2403.00409).

    :math:`\big((1-\varepsilon)(-\log\sigma(\beta h)) + \varepsilon\log\sigma(-\beta h)\big) / (1 - 2\varepsilon)`.

    Args:
        label_smoothing: ε in ``[0, 0.5)``.
    """

    logistic = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=False)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` robust-DPO losses of the margins."""
        return robust_loss(margins, beta, self.label_smoothing)


class IPOLoss(PreferenceLoss):
    r"""IPO (Azar et al. 2023, arXiv 2310.12036): :math:`(h - 1/(2\beta))^2` on length-averaged log-probabilities."""

    average_logps = True

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` IPO losses of the (length-averaged) margins."""
        return ipo_loss(margins, beta)


class HingeLoss(PreferenceLoss):
    r"""Hinge, SLiC-HF / RSO (Zhao et al. 2023, arXiv 2305.10425): :math:`\max(0, 1 - \beta h)`."""

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` hinge losses of the margins."""
        return hinge_loss(margins, beta)
