r"""A weighted sum of loss components (TRL's ``loss_type`` list with ``loss_weights``).

RPO = ``LossMixture([SigmoidLoss(), NLLLoss()], [1.0, α])`` (Pang et al. 2024, arXiv 2404.19733; TRL's former
``rpo_alpha``); MPO = ``LossMixture([SigmoidLoss(), BCOPairLoss(), NLLLoss()], [0.8, 0.2, 1.0])`` (Wang et al. 2024,
arXiv 2411.10442); CPO-SimPO = ``LossMixture([SimPOLoss(), NLLLoss(average_logps=True)])``.
"""

from __future__ import annotations

import math

from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.losses.dpo import Beta
from betadpo_lightning.core.types import PairData

__all__ = ["LossMixture"]


def _own_margins(loss: PreferenceLoss) -> bool:
    return type(loss).margins is not PreferenceLoss.margins


def _check_components(losses: list[PreferenceLoss], weights: list[float]) -> None:
    """Raise for what a mixture cannot combine (see :class:`LossMixture`)."""
    if not losses or not all(isinstance(loss, PreferenceLoss) for loss in losses):
        raise ValueError(f"LossMixture needs a non-empty list of PreferenceLoss components, got {losses!r}.")
    if len(weights) != len(losses):
        raise ValueError(f"LossMixture got {len(losses)} losses but {len(weights)} weights.")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"LossMixture needs finite weights, got {weights}.")
    first = losses[0]
    for loss in losses[1:]:
        if loss.average_logps != first.average_logps:
            raise ValueError(
                f"The components of a LossMixture share one forward pass, so they must agree on length-averaged "
                f"log-probabilities: {first!r} has average_logps={first.average_logps}, {loss!r} has "
                f"average_logps={loss.average_logps}."
            )
    readers = [loss for loss in losses if loss.reads_beta]
    if len({loss.needs_reference for loss in readers}) > 1:
        names = ", ".join(f"{loss!r} (needs_reference={loss.needs_reference})" for loss in readers)
        raise ValueError(
            "A LossMixture computes the margins once and passes them to every component, so the components that "
            f"read β must agree on whether the margins are relative to the reference: {names}."
        )
    if len(readers) > 1 and any(_own_margins(loss) for loss in readers):
        own = ", ".join(repr(loss) for loss in readers if _own_margins(loss))
        raise ValueError(
            f"A LossMixture computes the margins once for every component, but {own} defines its own margins; it can "
            "only be mixed with components that do not read β (such as NLLLoss)."
        )


class LossMixture(PreferenceLoss):
    r"""Weighted sum of per-pair losses: :math:`\ell = \sum_k w_k\,\ell_k`.

    Every component sees the same pairs, the same β and the same margins, computed once (by the one component that
    reads β when it defines its own, such as MallowsPO). Declarations combine: ``requires`` is the union;
    ``average_logps`` must be the same for all (one forward pass serves every component); ``needs_reference`` if
    any needs it; ``beta_scales_margin`` and ``logistic`` if every component that reads β declares it (``False``
    when none reads β); ``reads_beta`` if any; ``pairwise`` if all are.

    TRL averages each loss type over the batch before weighting; the per-pair sum here gives the same mean. To
    weight a whole mixture with WPO, wrap it: ``WPOWeighted(LossMixture([...]))``.

    Args:
        losses: the components (nested configurations rebuild through
            :func:`~betadpo_lightning.core.losses.base.loss_from_config`).
        weights: one finite weight per component (``None``: all 1).

    Raises:
        ValueError: for no components, a weight count that differs, components that disagree on ``average_logps``,
            components reading β that disagree on ``needs_reference``, or several components reading β where one
            defines its own margins.

    Example:
        >>> import torch
        >>> from betadpo_lightning.core.losses.classic import SigmoidLoss
        >>> from betadpo_lightning.core.losses.nll import NLLLoss
        >>> rpo = LossMixture([SigmoidLoss(), NLLLoss()], [1.0, 0.5])
        >>> lp, n = torch.tensor([-4.0]), torch.tensor([2.0])
        >>> rpo(PairData(lp, lp, lp, lp, chosen_lengths=n, rejected_lengths=n), beta=0.1)  # log 2 + 0.5 · 2
        tensor([1.6931])
    """

    def __init__(self, losses: list[PreferenceLoss], weights: list[float] | None = None) -> None:
        losses = list(losses)
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        _check_components(losses, weights)
        self.losses, self.weights = losses, weights
        readers = [loss for loss in losses if loss.reads_beta]
        self.requires = frozenset().union(*(loss.requires for loss in losses))  # type: ignore[misc]
        self.average_logps = losses[0].average_logps  # type: ignore[misc]
        self.needs_reference = any(loss.needs_reference for loss in losses)  # type: ignore[misc]
        self.beta_scales_margin = bool(readers) and all(loss.beta_scales_margin for loss in readers)  # type: ignore[misc]
        self.logistic = bool(readers) and all(loss.logistic for loss in readers)  # type: ignore[misc]
        self.reads_beta = bool(readers)  # type: ignore[misc]
        self.pairwise = all(loss.pairwise for loss in losses)  # type: ignore[misc]
        self._margin_source = readers[0] if readers else None

    def margins(self, pairs: PairData) -> Tensor:
        """The margins of the first component that reads β (else the mixture's own), ``(B,)``."""
        if self._margin_source is not None:
            return self._margin_source.margins(pairs)
        return super().margins(pairs)

    def forward(self, pairs: PairData, margins: Tensor, beta: Beta) -> Tensor:
        """``(B,)`` weighted sum of the components' losses."""
        terms = [
            weight * loss.forward(pairs, margins, beta) for loss, weight in zip(self.losses, self.weights, strict=True)
        ]
        return sum(terms[1:], terms[0])
