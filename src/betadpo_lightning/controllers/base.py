"""What every β controller offers: the result of a step and the controller protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["BetaController", "BetaStep"]


@dataclass(frozen=True)
class BetaStep:
    """What a controller decided for one micro-batch of ``N`` pairs (all ranks together).

    Attributes:
        beta: the β to use for this batch, a detached 0-d tensor, or a detached ``(N,)`` tensor for per-pair β.
        keep: which pairs enter the loss, bool ``(N,)``, in the order of the gaps passed in.
        stats: detached 0-d tensors worth logging (names without a prefix, e.g. ``"margin_mean"``).
    """

    beta: Tensor
    keep: Tensor
    stats: dict[str, Tensor]


@runtime_checkable
class BetaController(Protocol):
    """A stateful rule that turns the DPO margins of a micro-batch into β and a keep-mask.

    ``step`` is called once per training micro-batch with the **global** margins (every rank's pairs, gathered in
    rank order) and may update the controller's state; ``evaluate`` serves validation and never changes it. Both
    must return the same result on every rank when given the same margins, without any communication.
    """

    def step(self, gaps: Tensor) -> BetaStep:
        """Update the state with a training micro-batch and return its β and keep-mask."""
        ...

    def evaluate(self, gaps: Tensor) -> BetaStep:
        """β and keep-mask for an evaluation batch, leaving the state untouched."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically after a restart."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...
