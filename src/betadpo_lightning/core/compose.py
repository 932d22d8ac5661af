"""Which β controllers compose with which losses: read from the declarations of both, never from names."""

from __future__ import annotations

from typing import Any

from betadpo_lightning.core.losses.base import PreferenceLoss

__all__ = ["composition_error"]


def composition_error(controller: Any, loss: PreferenceLoss) -> str | None:
    """Why ``controller`` is meaningless with ``loss``, or ``None`` when they compose.

    Args:
        controller: a :class:`~betadpo_lightning.core.controllers.base.BetaController`.
        loss: the loss component.

    Example:
        >>> from betadpo_lightning.core.controllers import BetaDPOController, EpsilonBetaController
        >>> from betadpo_lightning.core.losses import IPOLoss, SigmoidLoss
        >>> composition_error(BetaDPOController(), SigmoidLoss()) is None
        True
        >>> print(composition_error(EpsilonBetaController(), IPOLoss()))  # doctest: +ELLIPSIS
        EpsilonBetaController perturbs the β of a logistic link σ(β·h), and IPOLoss() has none...
    """
    name = type(controller).__name__
    if controller.adapts_beta and not loss.beta_scales_margin:
        return (
            f"{name} adapts β, but in {loss!r} β is not the temperature of the margin (a weight, or unused), "
            "so there is nothing for it to calibrate. Use ConstantBetaController."
        )
    if controller.reference_margins and not loss.needs_reference:
        return (
            f"{name} adapts β from margins relative to the reference ((pc − rc) − (pr − rr)), but {loss!r} uses "
            "reference-free margins (pc − pr: raw log-probability differences of tens of nats), on which its "
            "statistics and perturbations lose their meaning. Use a loss with a reference, or ConstantBetaController."
        )
    if controller.needs_logistic and not loss.logistic:
        return (
            f"{name} perturbs the β of a logistic link σ(β·h), and {loss!r} has none (the policy for β/(1 ± ε) is "
            "the ε-perturbed logits only for logistic losses)."
        )
    if (controller.per_pair_beta or controller.filters) and not loss.pairwise:
        what = "gives each pair its own β" if controller.per_pair_beta else "filters pairs out of the batch"
        return (
            f"{name} {what}, but {loss!r} couples the pairs of a batch (it sorts them), so a pair's loss is not "
            "its own. Use it without filtering (rho: 0) or ConstantBetaController."
        )
    return None
