r"""MallowsPO-θ, its IPO form and MallowsPO-ϕ as components (Chen et al., ICLR 2025, arXiv 2405.14953).

The dispersion weight :math:`w(x) = -c \log \hat H(x)` comes from the reference's entropy (extra
``reference_entropy``), so every MallowsPO loss needs a reference provider that computes it, even reference-free
(the released runs: length-averaged, reference-free log-probs, β = 10). The pure functions are in
:mod:`~betadpo_lightning.core.losses.mallows`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta, _check_smoothing
from betadpo_lightning.core.losses.mallows import (
    mallows_phi_loss,
    mallows_theta_ipo_loss,
    mallows_theta_loss,
    mallows_weight,
)
from betadpo_lightning.core.types import PairData

__all__ = ["MallowsPhiLoss", "MallowsThetaIPOLoss", "MallowsThetaLoss"]


class _Mallows(PreferenceLoss):
    """What the three MallowsPO losses share: dispersion weight, home advantage, reference use and averaging.

    Args:
        dispersion_scale: c of ``w(x) = −c·log Ĥ(x)``, > 0.
        home_advantage: γ, subtracted from every margin: ``h' = h − γ``.
        reference_free: margins ``pc − pr`` (the reference still supplies the entropy).
        average_logps: length-averaged log-probabilities.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"reference_entropy"})
    _default_average: ClassVar[bool] = False

    def __init__(
        self,
        dispersion_scale: float = 0.29,
        home_advantage: float = 0.0,
        reference_free: bool = False,
        average_logps: bool | None = None,
    ) -> None:
        if not dispersion_scale > 0:
            raise ValueError(f"Expected `dispersion_scale` > 0, got {dispersion_scale}.")
        self.dispersion_scale, self.home_advantage = float(dispersion_scale), float(home_advantage)
        self.reference_free = bool(reference_free)
        self.average_logps = self._default_average if average_logps is None else bool(average_logps)  # type: ignore[misc]
        self.needs_reference = not self.reference_free  # type: ignore[misc]

    def weight(self, pairs: PairData) -> Tensor:
        """``w(x)``, ``(B,)``, from the reference entropies of the pairs."""
        chosen, rejected = pairs.reference_chosen_entropy, pairs.reference_rejected_entropy
        if chosen is None or rejected is None:
            raise ValueError(f"{type(self).__name__} needs the reference entropy (extra 'reference_entropy').")
        return mallows_weight(chosen, rejected, self.dispersion_scale)

    def margins(self, pairs: PairData) -> Tensor:
        """``h − γ``, ``(B,)``."""
        return super().margins(pairs) - self.home_advantage


class MallowsThetaLoss(_Mallows):
    r"""MallowsPO-θ: :math:`-(1-\varepsilon)\log\sigma(\beta w h') - \varepsilon\log\sigma(-\beta w h')`.

    Args:
        dispersion_scale: c (0.29 in the released runs).
        home_advantage: γ.
        label_smoothing: ε in ``[0, 0.5]``.
        reference_free: margins ``pc − pr``.
        average_logps: length-averaged log-probabilities (``None``: summed).
    """

    logistic = True

    def __init__(
        self,
        dispersion_scale: float = 0.29,
        home_advantage: float = 0.0,
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        average_logps: bool | None = None,
    ) -> None:
        super().__init__(dispersion_scale, home_advantage, reference_free, average_logps)
        _check_smoothing(label_smoothing, 0.5, upper_inclusive=True)
        self.label_smoothing = float(label_smoothing)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses."""
        return mallows_theta_loss(margins, beta, self.weight(pairs), self.label_smoothing)


class MallowsThetaIPOLoss(_Mallows):
    r"""MallowsPO-θ, IPO style: :math:`(w h' - 1/(2\beta))^2`, on length-averaged log-probabilities by default.

    Args:
        dispersion_scale: c.
        home_advantage: γ.
        reference_free: margins ``pc − pr``.
        average_logps: length-averaged log-probabilities (``None``: yes, as IPO).
    """

    _default_average = True

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses."""
        return mallows_theta_ipo_loss(margins, beta, self.weight(pairs))


class MallowsPhiLoss(MallowsThetaLoss):
    r"""MallowsPO-ϕ: :math:`-(1-\varepsilon)\log G_{\phi}(\beta h') - \varepsilon\log G_{\phi}(-\beta h')`.

    The Mallows-ϕ link :func:`~betadpo_lightning.core.losses.mallows.mallows_phi_link` with ``ϕ(x) = Ĥ(x)^c``.
    Same arguments as :class:`MallowsThetaLoss`.
    """

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` losses."""
        return mallows_phi_loss(margins, beta, self.weight(pairs), self.label_smoothing)
