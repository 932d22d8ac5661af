r"""WPO: weighting any pairwise preference loss by how likely the policy is to produce the pair itself.

Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv 2406.11827 (eq. 2). The
per-response log-weights come from the forward pass (extra ``wpo``); this wrapper only multiplies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _compute_dtype
from betadpo_lightning.core.types import PairData

__all__ = ["WPOWeighted", "wpo_weights"]


def wpo_weights(pairs: PairData) -> Tensor:
    r"""WPO's pair weights :math:`\min(1, \exp(w_w + w_l))`, detached, ``(B,)``.

    :math:`w_y = \frac{1}{|y|}\sum_t \big(\log p(y_t) - \log\sum_v p_v(t)^2\big)`, the policy's length-normalised
    log-probability of the response aligned to its own sampling distribution (extra ``wpo``).

    Raises:
        ValueError: without the ``wpo`` extra.

    Example:
        >>> lp = torch.zeros(2)
        >>> pairs = PairData(lp, lp, lp, lp, policy_chosen_wpo=torch.tensor([-1.0, 0.5]),
        ...                  policy_rejected_wpo=torch.tensor([-1.0, 0.0]))
        >>> wpo_weights(pairs)  # exp(−2), and exp(0.5) clamped to 1
        tensor([0.1353, 1.0000])
    """
    chosen, rejected = pairs.policy_chosen_wpo, pairs.policy_rejected_wpo
    if chosen is None or rejected is None:
        raise ValueError("WPO weighting needs the policy's WPO log-weights (extra 'wpo').")
    log_weight = _compute_dtype(chosen.detach()) + _compute_dtype(rejected.detach())
    return torch.exp(log_weight).clamp(max=1.0)


class WPOWeighted(PreferenceLoss):
    r"""WPO weighting of a pairwise loss: :math:`\ell_i = \min\big(1, e^{w_w + w_l}\big)\,\ell^{inner}_i`.

    The weight (:func:`wpo_weights`) is detached: it reweights the pairs toward those the policy would itself
    sample (simulating on-policy data) without being trained. Declarations are the inner loss's, with ``wpo`` added
    to ``requires``. The clamp at 1 is the paper's code and TRL ≤ 0.28's; TRL 1.x's ``use_weighting`` leaves the
    weight unclamped (it can exceed 1 when the observed tokens are the policy's likeliest). Both compute the
    weights in the trainer from the logits; here they arrive as the ``wpo`` extra.

    Args:
        loss: the inner loss; must be ``pairwise`` (TRL also refuses AOT, which sorts the batch).

    Raises:
        ValueError: for a loss that is not pairwise.

    Example:
        >>> from betadpo_lightning.core.losses.classic import SigmoidLoss
        >>> lp = torch.zeros(1)
        >>> pairs = PairData(lp, lp, lp, lp, policy_chosen_wpo=torch.tensor([-0.5]),
        ...                  policy_rejected_wpo=torch.tensor([-0.5]))
        >>> WPOWeighted(SigmoidLoss())(pairs, beta=0.1)  # e^{−1} · log 2
        tensor([0.2550])
    """

    def __init__(self, loss: PreferenceLoss) -> None:
        if not isinstance(loss, PreferenceLoss):
            raise ValueError(f"WPOWeighted wraps a PreferenceLoss, got {loss!r}.")
        if not loss.pairwise:
            raise ValueError(
                f"WPO weights each pair, but {loss!r} couples the pairs of a batch (it sorts them, as AOT does): its "
                "losses are not in pair order, so the weights would land on the wrong values."
            )
        self.loss = loss
        self.requires = loss.requires | {"wpo"}  # type: ignore[misc]
        self.average_logps = loss.average_logps  # type: ignore[misc]
        self.needs_reference = loss.needs_reference  # type: ignore[misc]
        self.beta_scales_margin = loss.beta_scales_margin  # type: ignore[misc]
        self.logistic = loss.logistic  # type: ignore[misc]
        self.reads_beta = loss.reads_beta  # type: ignore[misc]

    def margins(self, pairs: PairData) -> Tensor:
        """The inner loss's margins, ``(B,)``."""
        return self.loss.margins(pairs)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` inner losses times the detached WPO weights."""
        return self.loss.forward(pairs, margins, beta) * wpo_weights(pairs)
