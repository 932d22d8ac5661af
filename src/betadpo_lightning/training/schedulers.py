"""Learning-rate schedules usable from YAML (``scheduler: {class_path: ..., init_args: ...}``)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LinearWarmup"]


class LinearWarmup(LambdaLR):
    """Linear warmup from ``lr / (warmup_steps + 1)`` to ``lr``, then constant or a linear decay.

    The factor at optimizer step ``s`` is ``min(1, (s + 1) / (warmup_steps + 1))`` (the DPO reference code's
    warmup); with ``decay_steps > 0`` it then falls linearly to ``final_fraction`` over ``decay_steps`` steps.

    Args:
        optimizer: the optimizer.
        warmup_steps: steps of linear warmup (≥ 0).
        decay_steps: steps of linear decay after the warmup; 0 keeps the rate constant.
        final_fraction: the factor reached at the end of the decay, in ``[0, 1]``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = LinearWarmup(opt, warmup_steps=3)
        >>> [round(f(s), 2) for f in sched.lr_lambdas for s in (0, 1, 2, 3, 10)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, decay_steps: int = 0, final_fraction: float = 0.0
    ) -> None:
        if warmup_steps < 0 or decay_steps < 0:
            raise ValueError(f"Expected `warmup_steps` >= 0 and `decay_steps` >= 0, got {warmup_steps}, {decay_steps}.")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"Expected `final_fraction` in [0, 1], got {final_fraction}.")
        self.warmup_steps, self.decay_steps, self.final_fraction = warmup_steps, decay_steps, final_fraction
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.decay_steps == 0:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / self.decay_steps)
        return 1.0 - (1.0 - self.final_fraction) * progress
