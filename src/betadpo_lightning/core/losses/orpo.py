r"""ORPO as a component: the NLL of the chosen response plus λ times an odds-ratio term, without a reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _compute_dtype
from betadpo_lightning.core.losses.nll import chosen_nll
from betadpo_lightning.core.types import PairData

__all__ = ["ORPOLoss", "log_odds"]

_LOG_HALF = -math.log(2.0)


def log_odds(logps: Tensor) -> Tensor:
    r"""Log-odds :math:`\log\frac{p}{1-p} = \ell - \log(1 - e^{\ell})` of log-probabilities ``ℓ < 0``.

    ``log(1 − e^ℓ)`` is ``log1p(−e^ℓ)`` below ``−log 2`` and ``log(−expm1(ℓ))`` above (no cancellation either way).

    Example:
        >>> log_odds(torch.tensor([-0.6931471805599453]))  # p = 1/2
        tensor([0.])
    """
    logps = _compute_dtype(logps)
    low, high = logps.clamp(max=_LOG_HALF), logps.clamp(min=_LOG_HALF)  # each branch finite where it is not used
    log1mexp = torch.where(logps < _LOG_HALF, torch.log1p(-torch.exp(low)), torch.log(-torch.expm1(high)))
    return logps - log1mexp


class ORPOLoss(PreferenceLoss):
    r"""ORPO (Hong et al. 2024, arXiv 2403.07691, eqs. 4–7): NLL plus λ times the odds-ratio loss.

    .. math::
        \ell = -\bar\ell_w - \lambda \log\sigma\Big(\log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}\Big),
        \qquad \mathrm{odds}(y) = \frac{e^{\bar\ell}}{1 - e^{\bar\ell}}

    on length-averaged log-probabilities :math:`\bar\ell` of the policy (no reference). The β passed to the loss
    **is λ**, a weight (TRL's ORPO ``beta``, default 0.1, as in the paper), not a temperature: ``beta_scales_margin``
    and ``logistic`` are ``False``, and a dynamic-β rule should not drive it. The NLL is each chosen response's token
    mean. Where TRL differs: its NLL is a token mean over the batch, **including the prompt tokens** (its labels are
    the whole chosen sequence), while the odds ratio uses completion tokens only; here both use the response only,
    as the paper's :math:`\mathcal{L}_{SFT}` does.

    Example:
        >>> from betadpo_lightning.core.types import PairData
        >>> lp = torch.tensor([-0.6931471805599453])
        >>> ORPOLoss()(PairData(lp, lp, lp, lp), beta=1.0)  # NLL log 2, odds ratio 1: + log 2
        tensor([1.3863])
    """

    average_logps = True
    needs_reference = False
    beta_scales_margin = False

    def __init__(self) -> None:
        pass

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` ORPO losses; ``beta`` is λ; ``margins`` is not read (the odds need each log-probability)."""
        ratio = log_odds(pairs.policy_chosen_logps) - log_odds(pairs.policy_rejected_logps)
        return chosen_nll(pairs, average_logps=True) - _as_beta(beta, ratio) * F.logsigmoid(ratio)
