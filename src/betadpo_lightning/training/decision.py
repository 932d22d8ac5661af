"""The β decision of a training step, and the protocol a LightningModule follows to let a callback make it.

Every step of a preference module asks its **β provider** for a decision on its pairs: β (0-d or per pair), which
pairs are kept, and the normaliser of the loss. A module always holds one: :class:`StaticBeta` (fixed β, every pair
kept, every pair of every rank weighted alike) unless
:class:`~betadpo_lightning.callbacks.DynamicBetaCallback` installs itself at setup.

A LightningModule that is not a :class:`~betadpo_lightning.module.PreferenceModule` works with the callback when it
follows :class:`DynamicBetaHost`, three members and two calls::

    class MyModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.beta_provider = StaticBeta(beta=0.1)   # replaced by the callback during fit/validate/test
            self.preference_loss = SigmoidLoss()        # its declarations are checked against the controller
            self.pair_extras = frozenset()              # the extra groups its pairs can hold

        def training_step(self, batch, batch_idx):     # every rank, every batch (the provider gathers)
            pairs = PairData(pc, pr, rc, rr)             # (B,) each
            margins = self.preference_loss.margins(pairs)
            decision = self.beta_provider.decide(pairs.detach(), margins.detach(), training=True)
            return decision.reduce(self.preference_loss(pairs, decision.beta, margins))

A module that drops an optimizer step (non-finite values) calls ``self.beta_provider.skip_step()`` during that step
(in a ``training_step`` or in ``optimizer_step``, before the batch ends): the callback then discards what its
controller accumulated for the step instead of committing it. Nothing else is required.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from betadpo_lightning.core.losses.base import PreferenceLoss
from betadpo_lightning.core.types import PairData, PairRequest
from betadpo_lightning.distributed import mean_count

__all__ = ["BetaDecision", "BetaProvider", "DynamicBetaHost", "StaticBeta", "missing_host_members", "static_decision"]


@dataclass(frozen=True)
class BetaDecision:
    """What a module needs for the loss of its current batch.

    Attributes:
        beta: β for this batch: a detached 0-d tensor, or ``(B,)`` for per-pair β.
        keep: which of this rank's pairs enter the loss, bool ``(B,)``.
        normalizer: 0-d tensor; the loss is ``sum(kept per-pair losses) / normalizer``. With a dynamic-β callback it
            is the **global** kept count divided by the number of ranks, so that after DDP/FSDP gradient averaging
            every kept pair of every rank has the same weight ``1 / (global kept count)``.
        stats: detached 0-d statistics of the decision worth logging (β-DPO: ``m0``, ``sigma``, ...).
    """

    beta: Tensor
    keep: Tensor
    normalizer: Tensor
    stats: Mapping[str, Tensor] = field(default_factory=dict)

    def reduce(self, per_pair_losses: Tensor) -> Tensor:
        """Mask and normalise per-pair losses ``(B,)`` into this rank's scalar loss."""
        keep = self.keep.to(per_pair_losses.dtype)
        return (per_pair_losses * keep).sum() / self.normalizer.to(per_pair_losses.dtype)


def static_decision(num_pairs: int, beta: float, device: torch.device | None = None) -> BetaDecision:
    """Fixed β, every pair kept, the local mean (plain DPO, and every evaluation).

    Example:
        >>> static_decision(3, beta=0.1).reduce(torch.tensor([1.0, 2.0, 6.0]))
        tensor(3.)
    """
    return BetaDecision(
        beta=torch.tensor(beta, dtype=torch.float32, device=device),
        keep=torch.ones(num_pairs, dtype=torch.bool, device=device),
        normalizer=torch.tensor(float(max(num_pairs, 1)), device=device),  # no pairs: a zero loss, not 0/0
    )


@runtime_checkable
class BetaProvider(Protocol):
    """Decides β and the kept pairs of each batch.

    Attributes:
        beta0: the base β: the logged rewards and the evaluation loss use it.
        request: what the pairs passed to :meth:`decide` must hold (extras, ε).
    """

    beta0: float
    request: PairRequest

    def decide(self, pairs: PairData, margins: Tensor, training: bool) -> BetaDecision:
        """The decision for this rank's detached pairs and margins ``(B,)``; once per batch on every rank."""
        ...

    def skip_step(self) -> None:
        """The module drops the current optimizer step (non-finite values): nothing of it may be committed."""
        ...


class StaticBeta:
    """The default β provider: a fixed β, every pair kept, the mean over every rank's pairs.

    In training under several ranks the normaliser is the global pair count divided by the number of ranks (one
    small reduction per micro-batch), so that every pair has the same weight after the gradients are averaged, also
    when ranks hold different numbers of pairs (token-budget micro-batches); on one rank it is the local count.

    Args:
        beta: β (> 0).

    Attributes:
        strategy: the Lightning strategy the training normaliser reduces through (set by the module at setup;
            ``None``: this process's pairs only).
    """

    request = PairRequest()

    def __init__(self, beta: float = 0.1) -> None:
        if not beta > 0:
            raise ValueError(f"Expected `beta` > 0, got {beta}.")
        self.beta0 = float(beta)
        self.strategy: Any = None

    def decide(self, pairs: PairData, margins: Tensor, training: bool) -> BetaDecision:
        """:func:`static_decision` for the pairs, with the global normaliser in training."""
        decision = static_decision(len(pairs), self.beta0, margins.device)
        if not training or self.strategy is None or self.strategy.world_size == 1:
            return decision
        normalizer = mean_count(self.strategy, len(pairs), margins.device)  # 0-d
        return replace(decision, normalizer=torch.where(normalizer > 0, normalizer, 1.0))  # no pairs: a zero loss

    def skip_step(self) -> None:
        """Nothing to discard."""

    def __repr__(self) -> str:
        return f"StaticBeta(beta={self.beta0})"


@runtime_checkable
class DynamicBetaHost(Protocol):
    """What a LightningModule offers to work with :class:`~betadpo_lightning.callbacks.DynamicBetaCallback`.

    See the module docstring for the two calls it makes.

    Attributes:
        beta_provider: the provider its steps ask (the callback replaces it at setup and restores it at teardown).
        preference_loss: its loss component, whose declarations the controller is checked against.
        pair_extras: the extra groups of :data:`~betadpo_lightning.core.types.EXTRAS` its pairs can hold.
    """

    beta_provider: BetaProvider
    preference_loss: PreferenceLoss
    pair_extras: frozenset[str]


def missing_host_members(module: Any) -> list[str]:
    """The members of :class:`DynamicBetaHost` that ``module`` lacks or holds with a wrong type, described."""
    problems = []
    provider = getattr(module, "beta_provider", None)
    if not isinstance(provider, BetaProvider):
        problems.append(f"`beta_provider` (a BetaProvider such as StaticBeta; found {type(provider).__name__})")
    loss = getattr(module, "preference_loss", None)
    if not isinstance(loss, PreferenceLoss):
        problems.append(f"`preference_loss` (a PreferenceLoss such as SigmoidLoss; found {type(loss).__name__})")
    extras = getattr(module, "pair_extras", None)
    if not isinstance(extras, frozenset):
        problems.append(f"`pair_extras` (a frozenset of extra names; found {type(extras).__name__})")
    return problems
