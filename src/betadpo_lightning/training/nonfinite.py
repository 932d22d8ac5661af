"""The guard that keeps NaN and infinity out of the weights: checked before every optimizer step, agreed by all ranks.

During the micro-batches of an optimizer step each rank only records, locally, which of its pairs had a non-finite
margin or loss (and their dataset indices). After the step's last backward (and before clipping and the update)
:meth:`NonFiniteGuard.check_step` adds the gradients to the verdict and takes the maximum over all ranks in **one**
collective, so every rank reaches the same decision: on NCCL a rank that raised alone would leave the others waiting
until their timeout. Then either every rank raises, naming the global step, the pairs' dataset indices and the rank
that saw them, or every rank skips the step: the gradients are dropped, neither the optimizer nor the LR scheduler
steps, and after ``max_consecutive`` skipped steps in a row training stops with an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from betadpo_lightning.distributed import any_rank
from betadpo_lightning.models.sharding import local_shard

__all__ = ["NonFiniteGuard", "NonFinitePolicy"]

NonFinitePolicy = Literal["raise", "skip"]


class NonFiniteGuard:
    """Records non-finite pairs locally and decides, with every rank, whether an optimizer step may happen.

    Args:
        policy: ``"raise"`` or ``"skip"``.
        max_consecutive: how many skipped steps in a row end training (with ``"skip"``).
    """

    def __init__(self, policy: NonFinitePolicy = "raise", max_consecutive: int = 10) -> None:
        if policy not in ("raise", "skip"):
            raise ValueError(f"Expected `on_nonfinite` in ('raise', 'skip'), got {policy!r}.")
        if max_consecutive < 1:
            raise ValueError(f"Expected `max_skipped_steps` >= 1, got {max_consecutive}.")
        self.policy, self.max_consecutive = policy, max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._bad: list[tuple[Tensor, Tensor | None, str]] = []

    def observe(self, finite: Tensor, pair_index: Tensor | None, what: str) -> None:
        """Record the pairs of this rank's micro-batch whose ``what`` is not finite (no host synchronisation).

        Args:
            finite: bool ``(B,)``, per pair.
            pair_index: the pairs' dataset indices ``(B,)``, if known.
            what: what was checked, for the message (e.g. ``"margin"``).
        """
        self._bad.append((~finite.detach(), None if pair_index is None else pair_index.detach(), what))

    def check_step(self, strategy: Any, parameters: Iterable[tuple[str, Tensor]], step: int, check_grads: bool) -> bool:
        """Decide with every rank whether this optimizer step is poisoned; raise or report a skip.

        Args:
            strategy: the Trainer's strategy (its ``reduce`` with ``"max"`` is the one collective).
            parameters: ``(name, parameter)`` of the trainable parameters.
            step: the global step, for messages.
            check_grads: inspect the gradients (off when a gradient scaler handles overflow itself).

        Returns:
            Whether the step must be skipped (``"skip"`` policy only).

        Raises:
            FloatingPointError: with ``"raise"``, or after ``max_consecutive`` skipped steps.
        """
        with_grads = [(name, p) for name, p in parameters if p.grad is not None] if check_grads else []
        grad_flags = [~torch.isfinite(local_shard(p.grad)).all() for _, p in with_grads]
        flags = [mask.any() for mask, _, _ in self._bad] + grad_flags
        device = flags[0].device if flags else torch.device("cpu")
        local = torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool, device=device)
        agreed = any_rank(strategy, local, device)
        if not agreed:
            self._bad.clear()
            self.consecutive = 0
            return False
        names = [name for (name, _), flag in zip(with_grads, grad_flags, strict=True) if bool(flag)]
        message = self._describe(step, strategy.global_rank, bool(local.item()), names)
        self._bad.clear()
        if self.policy == "raise":
            raise FloatingPointError(message + " Set `on_nonfinite: skip` to skip such steps instead.")
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise FloatingPointError(
                f"{self.consecutive} optimizer steps in a row were skipped for non-finite values (the last: "
                f"{message}); training stopped (`max_skipped_steps={self.max_consecutive}`)."
            )
        rank_zero_warn(f"Skipping the optimizer step: {message}")
        return True

    def _describe(self, step: int, rank: int, mine: bool, grads: list[str]) -> str:
        if not mine:
            return f"non-finite values at global step {step} on another rank (rank {rank} saw none)."
        parts = []
        for mask, index, what in self._bad:
            rows = mask.nonzero().flatten()
            if rows.numel():
                pairs = index[rows].tolist() if index is not None else rows.tolist()
                label = "dataset pairs" if index is not None else "batch pairs"
                parts.append(f"non-finite {what} for {label} {pairs[:10]}")
        if grads:
            more = f" and {len(grads) - 5} more" if len(grads) > 5 else ""
            parts.append(f"non-finite gradients of {grads[:5]}{more}")
        return f"at global step {step} on rank {rank}: " + "; ".join(parts) + "."
