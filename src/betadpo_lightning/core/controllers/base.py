"""What every β controller offers: the result of a step and the controller protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor

from betadpo_lightning.core.types import PairData

__all__ = ["SCOPES", "BetaController", "BetaStep", "StatisticsScope"]

StatisticsScope = Literal["micro_batch", "optimizer_step"]
SCOPES: tuple[str, ...] = ("micro_batch", "optimizer_step")


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
    micro-batch with the **global** data: the DPO margins of every rank's pairs, gathered in rank order, and the same
    pairs as a :class:`~betadpo_lightning.core.types.PairData` holding the extra groups named in :attr:`requires`. It
    calls
    :meth:`on_optimizer_step` once per optimizer step, after the step's last micro-batch. Both must give the same
    result on every rank for the same inputs, without any communication.

    Attributes:
        beta: β0, the base β: the logged rewards use it, and so does the validation loss (fixed, so that it does not
            depend on how validation is batched or on the number of ranks).
        requires: the extra groups of :data:`~betadpo_lightning.core.types.EXTRAS` that :meth:`step` reads.
        scope: ``"micro_batch"``: statistics are updated with every micro-batch before use (as the papers do);
            ``"optimizer_step"``: once per optimizer step from all micro-batches of the step (every rank), so that
            a run with gradient accumulation updates them once per step.
        reference_margins: whether the rule is only meaningful for margins relative to a reference (a module that
            declares ``reference_free`` is then refused).
        supported_losses: the ``loss_type`` names the rule is meaningful for (``None``: any); a module that declares
            another ``loss_type`` is refused.
    """

    beta: float
    requires: frozenset[str]
    scope: StatisticsScope
    reference_margins: bool
    supported_losses: frozenset[str] | None

    def step(self, gaps: Tensor, pairs: PairData | None = None) -> BetaStep:
        """β and keep-mask of a training micro-batch; may update the state.

        Args:
            gaps: the detached DPO margins of all ``N`` pairs of the micro-batch over all ranks, shape ``(N,)``.
            pairs: the same pairs with the extras in :attr:`requires` (the caller passes it when ``requires`` is
                not empty).
        """
        ...

    def on_optimizer_step(self) -> None:
        """Called once per optimizer step, after its last micro-batch (statistics of the ``optimizer_step`` scope)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically after a restart."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...
