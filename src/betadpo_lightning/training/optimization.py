"""The optimizer and learning-rate schedule of a preference module, from its factories or the defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from betadpo_lightning.training.schedulers import LinearWarmup

__all__ = ["build_optimization", "configure_policy_optimization"]


def build_optimization(
    params: Iterable[nn.Parameter],
    optimizer_factory: OptimizerCallable | None,
    scheduler_factory: LRSchedulerCallable | None,
    total_steps: float,
) -> dict[str, Any]:
    """``configure_optimizers``' return value: the optimizer and a schedule stepped every optimizer step.

    Args:
        params: the trainable parameters.
        optimizer_factory: optimizer over ``params`` (``None``: AdamW, lr 1e-6, no weight decay).
        scheduler_factory: schedule of the optimizer (``None``: a linear warmup over the first 10% of the steps,
            then constant).
        total_steps: the optimizer steps of the run, for the default schedule (``inf`` when unknown: no warmup).

    Returns:
        ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step"}}``.
    """
    params = list(params)
    if optimizer_factory is None:
        optimizer: Optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0)
    else:
        optimizer = optimizer_factory(params)
    if scheduler_factory is None:
        warmup = 0 if total_steps == float("inf") else int(0.1 * total_steps)
        scheduler: LRScheduler = LinearWarmup(optimizer, warmup_steps=warmup)
    else:
        scheduler = scheduler_factory(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def configure_policy_optimization(
    module: Any, optimizer_factory: OptimizerCallable | None, scheduler_factory: LRSchedulerCallable | None
) -> dict[str, Any]:
    """``configure_optimizers`` of a module with a ``policy``: its trainable parameters, :func:`build_optimization`.

    The default schedule needs the run's length (``trainer.estimated_stepping_batches``); a given one does not.

    Raises:
        RuntimeError: before ``configure_model()`` has built the policy.
    """
    if module.policy is None:
        raise RuntimeError("`configure_model()` must run before `configure_optimizers()`.")
    known = scheduler_factory is None and module._trainer is not None  # only the default schedule needs it
    total = module.trainer.estimated_stepping_batches if known else float("inf")
    params = [p for p in module.policy.parameters() if p.requires_grad]
    return build_optimization(params, optimizer_factory, scheduler_factory, total)
