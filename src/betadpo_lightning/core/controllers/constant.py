"""A controller that keeps β fixed and every pair: plain DPO through the controller interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from betadpo_lightning.core.controllers.base import BetaStep
from betadpo_lightning.core.types import PairData, PairRequest

__all__ = ["ConstantBetaController"]


class ConstantBetaController:
    """Fixed β, no filtering: plain DPO (or IPO, hinge, ...) with the callback's metrics and global normalisation.

    Args:
        beta: the DPO β, > 0.

    Example:
        >>> ConstantBetaController(beta=0.1).step(torch.tensor([1.0, -2.0])).keep
        tensor([True, True])
    """

    request: PairRequest = PairRequest()
    adapts_beta: bool = False
    reference_margins: bool = False
    per_pair_beta: bool = False
    filters: bool = False
    needs_logistic: bool = False

    def __init__(self, beta: float = 0.1) -> None:
        if not beta > 0:
            raise ValueError(f"Expected `beta` > 0, got {beta}.")
        self.beta = float(beta)

    def step(self, gaps: Tensor, pairs: PairData | None = None) -> BetaStep:
        """The fixed β and an all-true mask for the margins ``gaps`` of shape ``(N,)``."""
        if gaps.dim() != 1:
            raise ValueError(f"Expected `gaps` of shape (N,), got {tuple(gaps.shape)}.")
        beta = torch.tensor(self.beta, dtype=torch.float32, device=gaps.device)
        keep = torch.ones(gaps.shape[0], dtype=torch.bool, device=gaps.device)
        return BetaStep(beta=beta, keep=keep, stats={})

    def on_optimizer_step(self) -> None:
        """Nothing to do: there is no state."""

    def discard_step(self) -> None:
        """Nothing to do: there is no state."""

    def settings(self) -> dict[str, Any]:
        """The configuration."""
        return {"beta": self.beta}

    def state_dict(self) -> dict[str, Any]:
        """The fixed β (for the record; it comes from the configuration)."""
        return {"settings": self.settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: β comes from the configuration."""
