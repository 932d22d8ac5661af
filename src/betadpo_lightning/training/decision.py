"""The protocol between a LightningModule and a β provider such as :class:`DynamicBetaCallback`.

A LightningModule works with the callback when it does two things (a third is optional):

1. It has an attribute ``beta_provider`` (``None`` by default). The callback sets it to itself in ``setup`` and back
   to ``None`` in ``teardown``.
2. In ``training_step`` and ``validation_step``, on **every rank and for every batch** (in training the provider
   gathers across ranks), it puts its per-pair log-probabilities into a :class:`~betadpo_lightning.core.types.PairData`
   and asks for a decision::

       pairs = PairData(pc, pr, rc, rr)                      # (B,) each: policy / reference, chosen / rejected
       decision = self.beta_provider.decide(pairs.detach())  # or static_decision(pairs, beta) without a provider
       per_pair = my_loss(pair_margins(pairs), decision.beta)  # (B,); decision.beta is 0-d or (B,)
       loss = decision.reduce(per_pair)                      # kept pairs only, normalised over all ranks

   The provider logs the preference metrics (rewards, accuracies, log-probs, margins) from the pairs it is given,
   so the module logs none of them itself.
3. Optionally, an attribute ``pair_extras``: the extra groups (:data:`~betadpo_lightning.core.types.EXTRAS`) it can put
   into its :class:`~betadpo_lightning.core.types.PairData`. A provider whose controller needs a group the module does
   not offer is refused at start-up; a module reads ``beta_provider.required_extras`` to know which to compute.

Nothing else is required: no base class, no particular model or data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from betadpo_lightning.core.types import PairData

__all__ = ["BetaDecision", "BetaProvider", "SupportsBetaProvider", "static_decision"]


@dataclass(frozen=True)
class BetaDecision:
    """What a module needs for the loss of its current batch.

    Attributes:
        beta: β for this batch: a detached 0-d tensor, or ``(B,)`` for per-pair β.
        keep: which of this rank's pairs enter the loss, bool ``(B,)``.
        normalizer: 0-d tensor; the loss is ``sum(kept per-pair losses) / normalizer``. In training with a provider
            it is the **global** kept count divided by the number of ranks, so that after DDP/FSDP gradient
            averaging every kept pair of every rank has the same weight ``1 / (global kept count)``.
    """

    beta: Tensor
    keep: Tensor
    normalizer: Tensor

    def reduce(self, per_pair_losses: Tensor) -> Tensor:
        """Mask and normalise per-pair losses.

        Args:
            per_pair_losses: shape ``(B,)``.

        Returns:
            The scalar loss of this rank.
        """
        keep = self.keep.to(per_pair_losses.dtype)
        return (per_pair_losses * keep).sum() / self.normalizer.to(per_pair_losses.dtype)


def static_decision(pairs: PairData, beta: float) -> BetaDecision:
    """The decision without a provider (and for validation): fixed β, every pair kept, the local mean.

    Args:
        pairs: this rank's pairs (only their number and device are used).
        beta: the fixed β.

    Returns:
        A decision equivalent to plain DPO.

    Example:
        >>> decision = static_decision(PairData(*torch.zeros(4, 3)), beta=0.1)
        >>> decision.reduce(torch.tensor([1.0, 2.0, 6.0]))
        tensor(3.)
    """
    n, device = len(pairs), pairs.policy_chosen_logps.device
    return BetaDecision(
        beta=torch.tensor(beta, dtype=torch.float32, device=device),
        keep=torch.ones(n, dtype=torch.bool, device=device),
        normalizer=torch.tensor(float(max(n, 1)), device=device),  # no pairs: a zero loss, not 0/0
    )


@runtime_checkable
class BetaProvider(Protocol):
    """Something that decides β and the keep-mask of the current batch (the callback).

    Attributes:
        required_extras: the extra groups the module must put into the pairs it passes to :meth:`decide`.
    """

    required_extras: frozenset[str]

    def decide(self, pairs: PairData) -> BetaDecision:
        """Decide for this rank's detached pairs; called once per batch on every rank."""
        ...


@runtime_checkable
class SupportsBetaProvider(Protocol):
    """A LightningModule that asks a :class:`BetaProvider` (see the module docstring for the whole protocol)."""

    beta_provider: BetaProvider | None
