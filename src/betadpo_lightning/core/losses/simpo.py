r"""Reference-free sigmoid losses: SimPO and CPO (with AlphaPO's reward shape).

Both score a response by the policy alone, ``h = pc − pr`` (reference log-probabilities are not read; a
reference-free run passes zeros), and subtract a target margin γ *after* β scales the margin, so that a dynamic β
changes the temperature without moving the margin. Neither declares ``logistic``: ε-DPO's argument (the policy for
β/(1 ± ε) is the ε-perturbed logits against the reference) comes from the KL-regularised objective, which these
losses do not have.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _as_beta, _check_smoothing, _compute_dtype
from betadpo_lightning.core.losses.nll import chosen_nll
from betadpo_lightning.core.types import PairData

__all__ = ["CPOLoss", "SimPOLoss", "alpha_reward"]


def _shifted_sigmoid(margins: Tensor, beta: Beta, gamma: float, label_smoothing: float) -> Tensor:
    """``−(1−ε) log σ(βh − γ) − ε log σ(−(βh − γ))``, ``(B,)``."""
    h = _compute_dtype(margins)
    logits = _as_beta(beta, h) * h - gamma
    loss = -F.logsigmoid(logits)
    if label_smoothing > 0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def alpha_reward(logps: Tensor, alpha: float) -> Tensor:
    r"""AlphaPO's reward shape :math:`r_\alpha(\ell) = (1 - e^{-\alpha \ell})/\alpha` of log-probabilities ``ℓ``.

    ``α = 0`` is the limit :math:`r_0(\ell) = \ell`. Computed as ``−expm1(−αℓ)/α`` (TRL forms ``p^{−α}`` from
    ``p = exp(ℓ)``, which underflows to 0 for summed log-probabilities below about −87 in float32).

    Args:
        logps: log-probabilities ``ℓ``, any shape (AlphaPO uses length-averaged ones).
        alpha: α.

    Example:
        >>> alpha_reward(torch.tensor([-2.0]), 0.0), alpha_reward(torch.tensor([-2.0]), 0.5)  # −(e − 1)/0.5
        (tensor([-2.]), tensor([-3.4366]))
    """
    logps = _compute_dtype(logps)
    if alpha == 0:
        return logps
    return -torch.expm1(-alpha * logps) / alpha


class SimPOLoss(PreferenceLoss):
    r"""SimPO (Meng et al. 2024, arXiv 2405.14734): reference-free, length-normalised, target margin γ.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta h - \gamma) - \varepsilon\log\sigma(\gamma - \beta h), \qquad
        h = \frac{\log\pi(y_w|x)}{|y_w|} - \frac{\log\pi(y_l|x)}{|y_l|}

    γ is **not** multiplied by β, so a dynamic β does not move the target margin. The paper's code configures
    ``gamma_beta_ratio`` = γ/β instead (γ then follows β); TRL's CPO ``simpo`` takes γ (``simpo_gamma``) and computes
    ``β(h − γ/β)``, the same for a fixed β. Label smoothing ε is the cDPO form of TRL's CPO ``simpo``. Defaults: γ = 0.5
    (TRL's ``simpo_gamma``); the paper uses β ≈ 2–2.5 (10 in its later Llama-3/Gemma runs) and tunes γ per model.

    Declarations: ``average_logps``, reference-free (``needs_reference`` is ``False``); β scales the margin
    (``beta_scales_margin``); not ``logistic`` (see the module docstring).

    Args:
        gamma: γ, the target reward margin (in reward units, after β).
        label_smoothing: ε in ``[0, 0.5]``.

    Example:
        >>> from betadpo_lightning.core.types import PairData
        >>> lp = torch.tensor([-1.0])
        >>> SimPOLoss(gamma=0.0)(PairData(lp, lp, lp, lp), beta=2.0)  # h = 0, γ = 0: log 2
        tensor([0.6931])
    """

    average_logps = True
    needs_reference = False

    def __init__(self, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` SimPO losses of the length-averaged margins ``pc − pr``."""
        return _shifted_sigmoid(margins, beta, self.gamma, self.label_smoothing)


class CPOLoss(PreferenceLoss):
    r"""CPO (Xu et al. 2024, arXiv 2401.08417): reference-free sigmoid plus the NLL of the chosen response.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta\Delta r - \gamma) - \varepsilon\log\sigma(\gamma - \beta\Delta r)
            + \alpha_{nll}\,\frac{-\log\pi(y_w|x)}{|y_w|},
        \qquad \Delta r = r_\alpha(\ell_w) - r_\alpha(\ell_l)

    with :math:`\ell` the policy's log-probabilities (summed, or length-averaged with ``average_logps``) and
    :math:`r_\alpha` AlphaPO's reward (:func:`alpha_reward`; Gupta et al. 2025, arXiv 2501.03884), :math:`r_0(\ell)
    = \ell`. The NLL is the token mean of the chosen response (:func:`~betadpo_lightning.core.losses.nll.chosen_nll`).

    Settings: CPO (defaults: ``alpha_nll`` 1 as TRL's ``cpo_alpha``, summed log-probs, γ = 0); CPO-SimPO
    (``gamma=0.5, average_logps=True``); AlphaPO (``alpha_nll=0, alpha>0, gamma>0, average_logps=True``: AlphaPO is
    SimPO with α-shaped, length-normalised rewards). Where TRL differs: its NLL is a token mean over the whole batch
    (``CrossEntropyLoss`` on every chosen token), here a per-pair token mean averaged over pairs; its SimPO margin is
    ``γ/β`` inside ``β(·)``, equal for a fixed β.

    Declarations: reference-free; ``beta_scales_margin``; not ``logistic`` (see the module docstring). The margins
    a caller sees are ``pc − pr``; with α ≠ 0 the loss forms its shaped rewards from the pairs.

    Args:
        alpha_nll: weight of the NLL term (TRL ``cpo_alpha``), ≥ 0.
        alpha: AlphaPO's α (0: log-probability rewards).
        label_smoothing: ε in ``[0, 0.5]``.
        gamma: target margin γ, after β (SimPO's).
        average_logps: length-averaged log-probabilities (SimPO, AlphaPO); summed ones (CPO) need the ``lengths``
            extra for the NLL.
    """

    needs_reference = False
    requires: ClassVar[frozenset[str]] = frozenset({"lengths"})

    def __init__(
        self,
        alpha_nll: float = 1.0,
        alpha: float = 0.0,
        label_smoothing: float = 0.0,
        gamma: float = 0.0,
        average_logps: bool = False,
    ) -> None:
        if not alpha_nll >= 0:
            raise ValueError(f"Expected `alpha_nll` >= 0, got {alpha_nll}.")
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
        self.alpha_nll, self.alpha = float(alpha_nll), float(alpha)
        self.label_smoothing, self.gamma = float(label_smoothing), float(gamma)
        self.average_logps = bool(average_logps)  # type: ignore[misc]
        needs_lengths = self.alpha_nll > 0 and not self.average_logps
        self.requires = frozenset({"lengths"}) if needs_lengths else frozenset()  # type: ignore[misc]

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` CPO losses: the shaped sigmoid term plus ``alpha_nll`` times the chosen NLL."""
        if self.alpha != 0:
            margins = alpha_reward(pairs.policy_chosen_logps, self.alpha) - alpha_reward(
                pairs.policy_rejected_logps, self.alpha
            )
        loss = _shifted_sigmoid(margins, beta, self.gamma, self.label_smoothing)
        if self.alpha_nll > 0:
            loss = loss + self.alpha_nll * chosen_nll(pairs, self.average_logps)
        return loss
