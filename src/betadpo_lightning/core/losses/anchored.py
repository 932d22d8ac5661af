r"""Losses on each response's own implicit reward: APO-zero/-down, NCA, BCO (pairwise) and SPPO (hard labels).

Notation: :math:`r_w = pc - rc` and :math:`r_l = pr - rr` are the log-ratios of the chosen and rejected responses
(summed log-probabilities), :math:`h = r_w - r_l` the DPO margin. Each loss scores :math:`\beta r_w` and
:math:`\beta r_l` separately (anchoring each response's reward at 0, not only their difference), so β is the
temperature of the implicit rewards (``beta_scales_margin``), but none is a logistic link of :math:`\beta h` alone:
none declares ``logistic``. All need the reference and are pairwise. The margins a caller sees are the DPO margins
``h``; the losses read the log-ratios from the pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _compute_dtype
from betadpo_lightning.core.types import PairData

__all__ = ["APODownLoss", "APOZeroLoss", "BCOPairLoss", "NCALoss", "SPPOHardLoss", "logratios"]


def logratios(pairs: PairData) -> tuple[Tensor, Tensor]:
    """The log-ratios ``(pc − rc, pr − rr)`` of the chosen and rejected responses, ``(B,)`` each."""
    pc, pr = _compute_dtype(pairs.policy_chosen_logps), _compute_dtype(pairs.policy_rejected_logps)
    rc, rr = _compute_dtype(pairs.reference_chosen_logps), _compute_dtype(pairs.reference_rejected_logps)
    return pc - rc, pr - rr


def _rewards(pairs: PairData, beta: Beta) -> tuple[Tensor, Tensor]:
    chosen, rejected = logratios(pairs)
    b = _as_beta(beta, chosen)
    return b * chosen, b * rejected


class APOZeroLoss(PreferenceLoss):
    r"""APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 7): raise the chosen, lower the rejected reward.

    :math:`1 - \sigma(\beta r_w) + \sigma(\beta r_l)`. For data whose chosen answers beat the model's own. The paper
    writes :math:`-\sigma(\beta r_w) + \sigma(\beta r_l)`; the constant 1 (as in TRL ``apo_zero``) keeps it in
    ``[0, 2]`` and changes no gradient.
    """

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` APO-zero losses."""
        chosen, rejected = _rewards(pairs, beta)
        return 1.0 - torch.sigmoid(chosen) + torch.sigmoid(rejected)


class APODownLoss(PreferenceLoss):
    r"""APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 8): lower both rewards, the rejected one more.

    :math:`\sigma(\beta r_w) + 1 - \sigma(\beta h)`. For data whose chosen answers are worse than the model's own.
    The paper writes :math:`\sigma(\beta r_w) - \sigma(\beta h)`; the constant 1 is TRL's (``apo_down``).
    """

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` APO-down losses."""
        chosen, rejected = _rewards(pairs, beta)
        return torch.sigmoid(chosen) + 1.0 - torch.sigmoid(chosen - rejected)


class NCALoss(PreferenceLoss):
    r"""NCA, pairwise (Chen et al. 2024, arXiv 2402.05369): noise-contrastive alignment with absolute rewards.

    :math:`-\log\sigma(\beta r_w) - \tfrac12\log\sigma(-\beta r_w) - \tfrac12\log\sigma(-\beta r_l)`
    (TRL ``nca_pair``, the paper's K = 2 case).
    """

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` NCA losses."""
        chosen, rejected = _rewards(pairs, beta)
        return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


class BCOPairLoss(PreferenceLoss):
    r"""BCO on pairs (Jung et al. 2024, arXiv 2404.04656): a binary classifier with the reward as logit.

    :math:`-\log\sigma(\beta r_w) - \log\sigma(-\beta r_l)`, TRL 1.x's ``bco_pair``. The paper (and TRL ≤ 0.28) shift
    both rewards by δ, a running mean of the rewards kept across steps and ranks; TRL 1.x dropped δ, and so does this
    stateless loss.
    """

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` BCO losses."""
        chosen, rejected = _rewards(pairs, beta)
        return -F.logsigmoid(chosen) - F.logsigmoid(-rejected)


class SPPOHardLoss(PreferenceLoss):
    r"""SPPO with hard labels (Wu et al. 2024, arXiv 2405.00675, eq. 4.7 with P = 1 and 0).

    :math:`(r_w - \tfrac{1}{2\beta})^2 + (r_l + \tfrac{1}{2\beta})^2`: the paper's step size η is 1/β. The paper
    estimates soft win probabilities with a preference model (PairRM); TRL's ``sppo_hard`` and this loss set them to
    1 for the chosen and 0 for the rejected response. Squared, as IPO: β is a regularisation strength
    (``beta_scales_margin``), not a logistic temperature.
    """

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` SPPO-hard losses."""
        chosen, rejected = logratios(pairs)
        half_eta = 0.5 / _as_beta(beta, chosen)
        return (chosen - half_eta) ** 2 + (rejected + half_eta) ** 2
