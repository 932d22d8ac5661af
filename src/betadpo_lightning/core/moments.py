"""Mean and unbiased standard deviation from pooled sums: one formula for controllers and metrics."""

from __future__ import annotations

from torch import Tensor

__all__ = ["pooled_moments"]


def pooled_moments(count: Tensor, total: Tensor, total_sq: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mean and unbiased std of values known by their count, sum and sum of squares (0-d tensors each).

    Returns:
        ``(mean, std)``; ``std`` is ``None`` for fewer than two values (no unbiased estimate).

    Example:
        >>> import torch
        >>> mean, std = pooled_moments(torch.tensor(3.0), torch.tensor(6.0), torch.tensor(14.0))  # 1, 2, 3
        >>> float(mean), float(std)
        (2.0, 1.0)
    """
    n = count.clamp(min=1)
    mean = total / n
    if float(count) < 2:
        return mean, None
    return mean, ((total_sq - n * mean * mean).clamp(min=0) / (n - 1)).sqrt()
