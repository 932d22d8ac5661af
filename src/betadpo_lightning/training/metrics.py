"""torchmetrics for preference training: reward accuracy, mean rewards and log-probs, margin moments.

Every state is a sum reduced with ``dist_reduce_fx="sum"``, so ``compute()`` after a distributed update equals the
single-process result on all the data (no averaging of per-rank averages, whatever the per-rank sizes). A metric
with nothing to average is NaN, never 0: a run whose pairs were all left out cannot look like a perfect one to a
monitor such as ``ModelCheckpoint(monitor="val/loss", mode="min")``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric

from betadpo_lightning.core.losses import pair_rewards
from betadpo_lightning.core.moments import pooled_moments
from betadpo_lightning.core.types import PairData

__all__ = ["ExactMean", "MomentMetric", "PreferenceMetrics", "RewardAccuracy", "exact_mean"]


class RewardAccuracy(Metric):
    """Fraction of pairs whose chosen reward is strictly greater than the rejected one (ties count as wrong).

    Example:
        >>> metric = RewardAccuracy()
        >>> metric.update(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
        >>> metric.compute()
        tensor(0.3333)
    """

    full_state_update = False
    higher_is_better = True
    correct: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, chosen_rewards: Tensor, rejected_rewards: Tensor) -> None:
        """Count the pairs of a batch.

        Args:
            chosen_rewards: rewards of the chosen responses, shape ``(B,)``.
            rejected_rewards: rewards of the rejected responses, shape ``(B,)``.
        """
        self.correct += (chosen_rewards > rejected_rewards).sum().to(self.correct.dtype)
        self.total += chosen_rewards.numel()

    def compute(self) -> Tensor:
        """Accuracy over every pair seen since the last reset (NaN when none)."""
        return (self.correct / self.total).float()


class ExactMean(Metric):
    """Weighted mean from float64 sums that keeps NaN: a mean with nothing to average is NaN, never 0.

    torchmetrics' ``MeanMetric`` does not fit: with ``nan_strategy="disable"`` (keep NaN) its ``update`` ignores
    ``weight`` (torchmetrics 1.x), and every other strategy drops or replaces NaN silently.

    Example:
        >>> metric = ExactMean()
        >>> metric.update(torch.tensor([1.0, 2.0])); metric.update(torch.tensor(6.0), weight=torch.tensor(2.0))
        >>> metric.compute()
        tensor(3.7500, dtype=torch.float64)
    """

    full_state_update = False
    mean_value: Tensor
    weight: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("mean_value", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor | float = 1.0) -> None:
        """Add ``value`` (any shape) with ``weight`` (broadcast against it): ``Σ value·weight`` and ``Σ weight``."""
        value = value.detach().to(torch.float64)
        weight = torch.broadcast_to(torch.as_tensor(weight, dtype=torch.float64, device=value.device), value.shape)
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> Tensor:
        """``Σ value·weight / Σ weight`` (NaN when nothing was added)."""
        return self.mean_value / self.weight


def exact_mean() -> ExactMean:
    """A new :class:`ExactMean` (``update(values)`` adds every element; ``update(mean, weight=count)`` a sum)."""
    return ExactMean()


class MomentMetric(Metric):
    """Mean and unbiased standard deviation of all values seen, from sum, sum of squares and count.

    Example:
        >>> metric = MomentMetric()
        >>> metric.update(torch.tensor([1.0, 2.0, 3.0]))
        >>> [round(float(v), 4) for v in metric.compute()]
        [2.0, 1.0]
    """

    full_state_update = False
    total: Tensor
    total_sq: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "total_sq", "count"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        """Add the values of a batch, any shape."""
        v = values.detach().to(torch.float64)
        self.total += v.sum()
        self.total_sq += (v * v).sum()
        self.count += v.numel()

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(mean, std)``: both NaN with no value; std is 0 with one value."""
        if not bool(self.count > 0):
            nan = torch.full_like(self.total, float("nan")).float()
            return nan, nan
        mean, std = pooled_moments(self.count, self.total, self.total_sq)
        return mean.float(), (torch.zeros_like(mean) if std is None else std).float()


class PreferenceMetrics(torch.nn.Module):
    """The per-pair statistics logged for a stage, under TRL's names.

    Keys of :meth:`compute`: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``,
    ``logps/chosen``, ``logps/rejected``, ``margins/mean``, ``margins/std`` (the last two are the DPO margins
    ``h`` without β, the quantity β-DPO calibrates on). With no pair since the last reset every value is NaN;
    :attr:`pairs` counts the pairs they cover (``pairs.compute()``, a collective).
    """

    def __init__(self) -> None:
        super().__init__()
        self.accuracy = RewardAccuracy()
        self.chosen_rewards = exact_mean()
        self.rejected_rewards = exact_mean()
        self.reward_margins = exact_mean()
        self.chosen_logps = exact_mean()
        self.rejected_logps = exact_mean()
        self.margins = MomentMetric()
        self.pairs = SumMetric()
        self.num_batches = 0

    def update(self, pairs: PairData, margins: Tensor, beta: float) -> None:
        """Add a batch of pairs.

        Args:
            pairs: the batch's per-pair log-probabilities, ``(B,)`` each (detached or not).
            margins: their margins as the loss defines them, ``(B,)``.
            beta: the β that scales the logged rewards (the base β0, as TRL logs).
        """
        pairs = pairs.detach()
        chosen, rejected = (reward.float() for reward in pair_rewards(pairs, beta))
        self.accuracy.update(chosen, rejected)
        self.chosen_rewards.update(chosen)
        self.rejected_rewards.update(rejected)
        self.reward_margins.update(chosen - rejected)
        self.chosen_logps.update(pairs.policy_chosen_logps)
        self.rejected_logps.update(pairs.policy_rejected_logps)
        self.margins.update(margins)
        self.pairs.update(float(len(pairs)))
        self.num_batches += 1

    def compute(self) -> dict[str, Tensor]:
        """All values since the last reset; a collective call under DDP (every rank must call it)."""
        margin_mean, margin_std = self.margins.compute()
        return {
            "rewards/chosen": self.chosen_rewards.compute().float(),
            "rewards/rejected": self.rejected_rewards.compute().float(),
            "rewards/margins": self.reward_margins.compute().float(),
            "rewards/accuracies": self.accuracy.compute(),
            "logps/chosen": self.chosen_logps.compute().float(),
            "logps/rejected": self.rejected_logps.compute().float(),
            "margins/mean": margin_mean,
            "margins/std": margin_std,
        }

    def reset(self) -> None:
        """Start a new window."""
        for metric in self.children():
            metric.reset()
        self.num_batches = 0
