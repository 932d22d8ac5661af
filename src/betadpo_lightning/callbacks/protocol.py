"""The protocol between a LightningModule and a β provider such as :class:`DynamicBetaCallback`.

A LightningModule works with the callback when it does three things:

1. It has an attribute ``beta_provider`` (``None`` by default). The callback sets it to itself in ``setup`` and back
   to ``None`` in ``teardown``.
2. In ``training_step`` and ``validation_step``, on **every rank and for every batch** (the provider may run a
   collective), it computes the detached DPO margins of its pairs and asks for a decision::

       margins = ((pc - rc) - (pr - rr)).detach()          # (B,)
       decision = self.beta_provider.decide(margins)        # or static_decision(margins, beta) without one
       per_pair = my_loss(margins_with_grad, decision.beta)  # (B,), decision.beta is 0-d or (B,)
       loss = decision.reduce(per_pair)                      # kept pairs only, normalised over all ranks

3. It returns from both steps a dict with ``"loss"`` and the detached ``(B,)`` tensors named in
   :data:`STEP_OUTPUT_KEYS`, which the callback turns into metrics.

Nothing else is required: no base class, no particular model or data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["STEP_OUTPUT_KEYS", "BetaDecision", "BetaProvider", "SupportsBetaProvider", "static_decision"]

STEP_OUTPUT_KEYS: tuple[str, ...] = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)
"""Detached ``(B,)`` tensors that ``training_step``/``validation_step`` return beside ``"loss"``."""


@dataclass(frozen=True)
class BetaDecision:
    """What a module needs for the loss of its current batch.

    Attributes:
        beta: β for this batch: a detached 0-d tensor, or ``(B,)`` for per-pair β.
        keep: which of this rank's pairs enter the loss, bool ``(B,)``.
        normalizer: 0-d tensor; the loss is ``sum(kept per-pair losses) / normalizer``. It is the **global** kept
            count divided by the world size, so that after DDP/FSDP gradient averaging every kept pair of every
            rank has the same weight ``1 / (global kept count)``.
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


def static_decision(margins: Tensor, beta: float) -> BetaDecision:
    """The decision without a provider: fixed β, every pair kept, the local mean.

    Args:
        margins: this rank's margins, shape ``(B,)`` (only its shape and device are used).
        beta: the fixed β.

    Returns:
        A decision equivalent to plain DPO.
    """
    n = margins.shape[0]
    return BetaDecision(
        beta=torch.tensor(beta, dtype=torch.float32, device=margins.device),
        keep=torch.ones(n, dtype=torch.bool, device=margins.device),
        normalizer=torch.tensor(float(n), device=margins.device),
    )


@runtime_checkable
class BetaProvider(Protocol):
    """Something that decides β and the keep-mask of the current batch (the callback)."""

    def decide(self, margins: Tensor) -> BetaDecision:
        """Decide for this rank's detached margins, shape ``(B,)``; called once per batch on every rank."""
        ...


@runtime_checkable
class SupportsBetaProvider(Protocol):
    """A LightningModule that asks a :class:`BetaProvider` (see the module docstring for the whole protocol)."""

    beta_provider: BetaProvider | None
