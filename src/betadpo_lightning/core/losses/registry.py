"""Losses selectable by name (``loss_type`` in configs), with what a caller must know to feed each one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from betadpo_lightning.core.losses.dpo import Beta, hinge_loss, ipo_loss, robust_loss, sigmoid_loss
from betadpo_lightning.core.losses.mallows import mallows_phi_loss, mallows_theta_ipo_loss, mallows_theta_loss

__all__ = ["PAIR_LOSSES", "PairLoss", "WeightedLoss"]

WeightedLoss = Callable[[Tensor, Beta, float, Tensor | None], Tensor]
"""``fn(margins (B,), beta, label_smoothing, weight (B,) or None) -> (B,)``."""


@dataclass(frozen=True)
class PairLoss:
    """A per-pair loss of the margin, with what callers must know to feed it.

    Attributes:
        fn: ``fn(margins (B,), beta, label_smoothing, weight) -> (B,)``; ``weight`` is MallowsPO's dispersion
            weight for losses that need it (``None`` otherwise).
        average_logps: whether the margins must come from length-averaged log-probabilities (IPO).
        uses_label_smoothing: whether ``label_smoothing`` means something to this loss.
        requires: the extra groups of :data:`~betadpo_lightning.core.types.EXTRAS` the loss reads (its weight).
        logistic: whether β scales the margin inside a logistic-type link (the losses whose optimum is the
            β-tempered policy, where ε-DPO's perturbation argument holds).
    """

    fn: WeightedLoss
    average_logps: bool = False
    uses_label_smoothing: bool = False
    requires: frozenset[str] = frozenset()
    logistic: bool = True


class _Unweighted:
    """``fn(margins, beta, label_smoothing, weight)`` for a loss that takes no weight (picklable)."""

    def __init__(self, loss: Callable[[Tensor, Beta, float], Tensor]) -> None:
        self.loss = loss
        self.__doc__ = loss.__doc__

    def __call__(self, margins: Tensor, beta: Beta, label_smoothing: float, weight: Tensor | None = None) -> Tensor:
        return self.loss(margins, beta, label_smoothing)


class _Weighted:
    """``fn(margins, beta, label_smoothing, weight)`` for a MallowsPO loss ``loss(margins, beta, weight, ε)``."""

    def __init__(self, loss: Callable[[Tensor, Beta, Tensor, float], Tensor]) -> None:
        self.loss = loss
        self.__doc__ = loss.__doc__

    def __call__(self, margins: Tensor, beta: Beta, label_smoothing: float, weight: Tensor | None = None) -> Tensor:
        if weight is None:
            raise ValueError(f"{self.loss.__name__} needs MallowsPO's dispersion weight (the reference's entropy).")
        return self.loss(margins, beta, weight, label_smoothing)


_ENTROPY = frozenset({"reference_entropy"})

PAIR_LOSSES: dict[str, PairLoss] = {
    "sigmoid": PairLoss(_Unweighted(sigmoid_loss), uses_label_smoothing=True),
    "robust": PairLoss(_Unweighted(robust_loss), uses_label_smoothing=True),
    "ipo": PairLoss(_Unweighted(ipo_loss), average_logps=True, logistic=False),
    "hinge": PairLoss(_Unweighted(hinge_loss), logistic=False),
    "mallows_theta": PairLoss(_Weighted(mallows_theta_loss), uses_label_smoothing=True, requires=_ENTROPY),
    "mallows_theta_ipo": PairLoss(
        _Weighted(mallows_theta_ipo_loss), average_logps=True, requires=_ENTROPY, logistic=False
    ),
    "mallows_phi": PairLoss(_Weighted(mallows_phi_loss), uses_label_smoothing=True, requires=_ENTROPY),
}
"""Losses selectable by name (``loss_type`` in configs)."""
