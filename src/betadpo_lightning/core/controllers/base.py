"""What every β controller offers: the result of a step and the controller protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from betadpo_lightning.core.types import PairData, PairRequest

__all__ = ["BetaController", "BetaStep"]


@dataclass(frozen=True)
class BetaStep:
    """What a controller decided for one micro-batch of ``N`` pairs (all ranks together).

    Attributes:
        beta: the β to use for this batch, a detached 0-d tensor, or a detached ``(N,)`` tensor for per-pair β.
        keep: which pairs enter the loss, bool ``(N,)``, in the order of the pairs passed in.
        stats: detached 0-d tensors worth logging (names without a prefix, e.g. ``"m0"``); identical on every rank.
    """

    beta: Tensor
    keep: Tensor
    stats: dict[str, Tensor]


@runtime_checkable
class BetaController(Protocol):
    """A stateful rule that turns the pairs of a training micro-batch into β and a keep-mask.

    The caller (:class:`~betadpo_lightning.callbacks.DynamicBetaCallback`) calls :meth:`step` once per training
    micro-batch with the **global** data: the margins of every rank's pairs, gathered in rank order, and the same
    pairs as a :class:`~betadpo_lightning.core.types.PairData` holding the extras of :attr:`request`. It calls
    :meth:`on_optimizer_step` after every optimizer step, or :meth:`discard_step` instead when the step was skipped
    (non-finite values). Both must give the same result on every rank for the same inputs, without communication.

    The declarations say which losses the rule is meaningful for
    (:func:`~betadpo_lightning.core.compose.composition_error` reads them against the loss's declarations).

    Attributes:
        beta: β0, the base β: the logged rewards use it, and so does the evaluation loss.
        request: what the pairs passed to :meth:`step` must hold (extras, and ε for perturbed log-probs).
        adapts_beta: whether the rule changes β (the loss's β must then be the margin's temperature).
        reference_margins: whether the rule needs margins relative to a reference.
        per_pair_beta: whether β differs per pair (the loss must be pairwise).
        filters: whether some pairs are dropped (the loss must be pairwise).
        needs_logistic: whether the rule's argument holds only for a logistic link σ(β·h).
    """

    beta: float
    request: PairRequest
    adapts_beta: bool
    reference_margins: bool
    per_pair_beta: bool
    filters: bool
    needs_logistic: bool

    def step(self, gaps: Tensor, pairs: PairData | None = None) -> BetaStep:
        """β and keep-mask of a training micro-batch; may update the state.

        Args:
            gaps: the detached margins of all ``N`` pairs of the micro-batch over all ranks, shape ``(N,)``.
            pairs: the same pairs with the extras of :attr:`request`.
        """
        ...

    def on_optimizer_step(self) -> None:
        """Called once after every optimizer step that happened."""
        ...

    def discard_step(self) -> None:
        """Called instead of :meth:`on_optimizer_step` for a skipped optimizer step: forget what it accumulated."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically after a restart."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...
