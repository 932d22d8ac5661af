"""The guard that keeps NaN and infinity out of the weights: checked before every optimizer step, agreed by all ranks.

During the micro-batches of an optimizer step each rank only records, locally, which of its pairs had a non-finite
margin or loss (and their dataset indices). After the step's last backward (and before clipping and the update)
:meth:`NonFiniteGuard.check_step` adds the gradients to the verdict and takes the maximum over all ranks in **one**
collective, so every rank reaches the same decision: on NCCL a rank that raised alone would leave the others waiting
until their timeout. Only when some rank saw a fault, a second collective gathers what each rank saw, so that every
rank has the same message: the global step and, per rank, the pairs (dataset indices) whose margin was not finite,
the micro-batch losses and the parameters whose gradient was not finite (under DDP gradients are averaged during the
backward, so one rank's non-finite loss shows as non-finite gradients on every rank; the ranks with non-finite pairs
or losses come first). Then either every rank raises, or every rank skips the step: the gradients are dropped,
neither the optimizer nor the LR scheduler steps, the β provider commits nothing of the step
(``beta_provider.skip_step``), and after ``max_consecutive`` skipped steps in a row training stops with an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from betadpo_lightning.distributed import any_rank, gather_texts
from betadpo_lightning.models.sharding import local_shard

__all__ = ["NonFiniteGuard", "NonFinitePolicy", "describe_faults"]

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
            strategy: the Trainer's strategy: its ``reduce`` with ``"max"`` is the one collective of a healthy step;
                a faulty one adds an ``all_gather`` of what each rank saw.
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
        if not any_rank(strategy, local, device):  # the one collective of a healthy step
            self._bad.clear()
            self.consecutive = 0
            return False
        names = [name for (name, _), flag in zip(with_grads, grad_flags, strict=True) if bool(flag)]
        faults = gather_texts(strategy, self._local_faults(names), device)  # every rank's, in rank order
        self._bad.clear()
        message = describe_faults(step, faults)
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

    def _local_faults(self, grads: list[str]) -> str:
        """What this rank saw during the step (``""``: nothing): pairs per check, scalar checks, gradients."""
        pairs: dict[tuple[str, str], list[int]] = {}
        scalars: dict[str, int] = {}
        for mask, index, what in self._bad:
            rows = mask.nonzero().flatten()
            if not rows.numel():
                continue
            if index is None and mask.numel() == 1:  # a scalar of the micro-batch (its loss)
                scalars[what] = scalars.get(what, 0) + 1
                continue
            label = "dataset pairs" if index is not None else "batch pairs"
            pairs.setdefault((what, label), []).extend((index[rows] if index is not None else rows).tolist())
        parts = [f"non-finite {what} for {label} {_listed(ids, 10)}" for (what, label), ids in pairs.items()]
        parts += [f"non-finite {what}" + (f" in {n} micro-batches" if n > 1 else "") for what, n in scalars.items()]
        if grads:
            parts.append(f"non-finite gradients of {_listed(grads, 5)}")
        return ", ".join(parts)


def describe_faults(step: int, faults: list[str]) -> str:
    """One message for every rank: the global step and, per rank (ranks with the same faults together), its faults.

    Args:
        step: the global step.
        faults: what each rank saw, in rank order (``""``: nothing).

    Example:
        >>> describe_faults(3, ["non-finite gradients of ['w']", "non-finite loss", ""])
        "at global step 3 on rank 1: non-finite loss; on rank 0: non-finite gradients of ['w']."
        >>> describe_faults(3, ["non-finite gradients of ['w']", "non-finite gradients of ['w']"])
        "at global step 3 on ranks 0, 1: non-finite gradients of ['w']."
    """
    by_text: dict[str, list[int]] = {}
    for rank, text in enumerate(faults):
        if text:
            by_text.setdefault(text, []).append(rank)
    if not by_text:
        return f"non-finite values at global step {step} on an unidentified rank."
    # Ranks that saw non-finite pairs or losses first: the gradients of the others may only carry their fault.
    ordered = sorted(by_text.items(), key=lambda item: (item[0].startswith("non-finite gradients"), item[1]))
    groups = [f"on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {text}" for text, ranks in ordered]
    return f"at global step {step} " + "; ".join(groups) + "."


def _listed(values: list[Any], limit: int) -> str:
    """``values`` as a list of at most ``limit`` items, with how many more there are."""
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{values[:limit]}{more}"
