r"""β-DPO: a batch-level β calibrated from the margins, and β-guided filtering of outlier pairs.

Wu et al., "β-DPO: Direct Preference Optimization with Dynamic β", NeurIPS 2024, https://arxiv.org/abs/2407.08639.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from betadpo_lightning.controllers.base import BetaStep
from betadpo_lightning.controllers.sampling import derive_seed, gumbel_topk_mask

__all__ = ["BetaDPOController"]


class BetaDPOController:
    r"""β-DPO controller: running margin statistics, Gaussian-weighted filtering and a batch-level β.

    Each training micro-batch (``step``), with the margins ``M`` of all ``N`` pairs of all ranks:

    1. Statistics, updated **before** use: :math:`M_0 \leftarrow m M_0 + (1-m)\,\mathrm{mean}(M)`,
       :math:`\sigma \leftarrow m\sigma + (1-m)\,\mathrm{std}(M)` (unbiased std). Each is **initialised** from the
       first batch that defines it instead of from 0: :math:`M_0` from the first batch, :math:`\sigma` from the
       first batch whose std exceeds ``sigma_min`` (the first DPO batch usually has all margins exactly 0, because
       policy and reference start equal). Until then :math:`\sigma` = ``sigma_min``; a batch of one pair has no
       std and leaves :math:`\sigma` as it is. :math:`\sigma` is floored at ``sigma_min`` wherever it is used.
    2. Filtering (``rho`` = fraction dropped; 0 disables it and makes the step fully deterministic): weights
       :math:`w_i = \exp(-\tfrac12((M_i - M_0)/\sigma)^2)`, keep :math:`k = \max(1, \lfloor N(1-\rho)\rfloor)`
       pairs drawn without replacement proportionally to :math:`w` (Gumbel top-k, see
       :func:`~betadpo_lightning.controllers.sampling.gumbel_topk_mask`) from a generator seeded by
       ``(seed, step)``, so every rank draws the same mask without communication and a resumed run draws the
       same masks as an uninterrupted one.
    3. :math:`\beta_b = \beta_0\,(1 + \alpha\,(\mathrm{mean}(M_{kept}) - M_0))`, clamped to
       ``[beta_min, beta_max]``.

    Statistics are kept in float64. ``evaluate`` (validation) keeps every pair, uses the current statistics and
    never changes them.

    Args:
        beta: β0, the base β (> 0).
        alpha: α, how strongly β follows the kept pairs' mean margin relative to :math:`M_0` (≥ 0).
        rho: ρ, the fraction of pairs dropped by filtering, in ``[0, 1)``.
        momentum: m, the EMA momentum of :math:`M_0` and :math:`\sigma`, in ``[0, 1)``.
        beta_min: lower clamp of β (> 0).
        beta_max: upper clamp of β, or ``None`` for none.
        sigma_min: floor of :math:`\sigma` (> 0), in margin units (nats).
        seed: seed of the filtering draws.

    Example:
        >>> controller = BetaDPOController(beta=0.1, alpha=0.6, rho=0.0)
        >>> result = controller.step(torch.tensor([0.0, 1.0, 2.0]))  # first batch: M0 = 1, so β = β0
        >>> round(float(result.beta), 6), result.keep.tolist()
        (0.1, [True, True, True])
    """

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.6,
        rho: float = 0.2,
        momentum: float = 0.9,
        beta_min: float = 1e-3,
        beta_max: float | None = None,
        sigma_min: float = 1e-6,
        seed: int = 0,
    ) -> None:
        _check(beta > 0, "beta", "> 0", beta)
        _check(alpha >= 0, "alpha", ">= 0", alpha)
        _check(0 <= rho < 1, "rho", "in [0, 1)", rho)
        _check(0 <= momentum < 1, "momentum", "in [0, 1)", momentum)
        _check(beta_min > 0, "beta_min", "> 0", beta_min)
        _check(beta_max is None or beta_max >= beta_min, "beta_max", f"None or >= beta_min={beta_min}", beta_max)
        _check(sigma_min > 0, "sigma_min", "> 0", sigma_min)
        self.beta, self.alpha, self.rho, self.momentum = float(beta), float(alpha), float(rho), float(momentum)
        self.beta_min, self.beta_max = float(beta_min), None if beta_max is None else float(beta_max)
        self.sigma_min, self.seed = float(sigma_min), int(seed)
        self._m0 = torch.zeros((), dtype=torch.float64)
        self._sigma = torch.full((), self.sigma_min, dtype=torch.float64)
        self._m0_ready = False
        self._sigma_ready = torch.zeros((), dtype=torch.bool)
        self._steps = 0

    @property
    def num_steps(self) -> int:
        """How many training micro-batches the controller has seen."""
        return self._steps

    def step(self, gaps: Tensor) -> BetaStep:
        """Update the statistics with a training micro-batch, then filter it and compute its β.

        Args:
            gaps: the DPO margins of all pairs of the micro-batch over all ranks, shape ``(N,)``, detached.

        Returns:
            β (0-d float32), the keep-mask (bool ``(N,)``) and statistics to log.

        Raises:
            ValueError: if ``gaps`` is not a non-empty 1-d tensor.
            FloatingPointError: if a margin is NaN or infinite (nothing is trained on silently).
        """
        g = self._prepare(gaps)
        self._update(g)
        keep = self._filter(g)
        result = self._result(g, keep)
        self._steps += 1
        return result

    def evaluate(self, gaps: Tensor) -> BetaStep:
        """β for an evaluation batch from the current statistics; every pair kept, nothing updated.

        Before the first training step :math:`M_0` is taken as the batch mean, which gives β = β0.

        Args:
            gaps: the margins of the evaluation batch, shape ``(N,)``.

        Returns:
            β (0-d float32), an all-true keep-mask and statistics.
        """
        g = self._prepare(gaps)
        keep = torch.ones_like(g, dtype=torch.bool)
        return self._result(g, keep, m0=self._m0 if self._m0_ready else g.mean())

    def _prepare(self, gaps: Tensor) -> Tensor:
        if gaps.dim() != 1 or gaps.shape[0] == 0:
            raise ValueError(f"Expected `gaps` of shape (N,) with N >= 1, got {tuple(gaps.shape)}.")
        g = gaps.detach().to(torch.float64)
        finite = torch.isfinite(g)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise FloatingPointError(
                f"β-DPO received {len(bad)} non-finite margin(s) at positions {bad[:10]} of the global batch "
                f"(step {self._steps}); the policy or reference log-probs are NaN/inf."
            )
        self._m0, self._sigma = self._m0.to(g.device), self._sigma.to(g.device)
        self._sigma_ready = self._sigma_ready.to(g.device)
        return g

    def _update(self, g: Tensor) -> None:
        m = self.momentum
        mean = g.mean()
        self._m0 = m * self._m0 + (1 - m) * mean if self._m0_ready else mean
        self._m0_ready = True
        if g.shape[0] < 2:  # no unbiased std of one value
            return
        std = g.std()
        ema = m * self._sigma + (1 - m) * std
        first = std > self.sigma_min
        self._sigma = torch.where(self._sigma_ready, ema, torch.where(first, std, self._sigma))
        self._sigma_ready = self._sigma_ready | first

    def num_kept(self, n: int) -> int:
        """``k = max(1, floor(n (1 - rho)))``, the number of pairs kept out of ``n``."""
        # The small tolerance keeps e.g. 10 * (1 - 0.3) = 6.999999999999999 from flooring to 6.
        return max(1, math.floor(n * (1.0 - self.rho) + 1e-9))

    def _filter(self, g: Tensor) -> Tensor:
        n = g.shape[0]
        k = self.num_kept(n)
        if self.rho == 0 or k >= n:
            return torch.ones(n, dtype=torch.bool, device=g.device)
        sigma = self._sigma.clamp(min=self.sigma_min)
        log_w = -0.5 * ((g - self._m0) / sigma) ** 2  # (N,)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self._steps))
        return gumbel_topk_mask(log_w, k, generator)

    def _result(self, g: Tensor, keep: Tensor, m0: Tensor | None = None) -> BetaStep:
        m0 = self._m0 if m0 is None else m0
        kept = keep.to(g.dtype)
        kept_mean = (g * kept).sum() / kept.sum()
        beta = (self.beta * (1 + self.alpha * (kept_mean - m0))).clamp(min=self.beta_min, max=self.beta_max)
        stats = {
            "gap_mean": g.mean(),
            "gap_std": g.std() if g.shape[0] > 1 else torch.zeros_like(m0),
            "m0": m0,
            "sigma": self._sigma.clamp(min=self.sigma_min),
            "kept_fraction": kept.mean(),
        }
        return BetaStep(beta=beta.float(), keep=keep, stats={k: v.detach().float() for k, v in stats.items()})

    def state_dict(self) -> dict[str, Any]:
        """Statistics, initialisation flags and the step counter (the filtering draws derive from it)."""
        return {
            "m0": self._m0.detach().cpu().clone(),
            "sigma": self._sigma.detach().cpu().clone(),
            "m0_ready": self._m0_ready,
            "sigma_ready": bool(self._sigma_ready),
            "steps": self._steps,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the run then continues bit-identically."""
        self._m0 = torch.as_tensor(state_dict.get("m0", 0.0), dtype=torch.float64).clone()
        self._sigma = torch.as_tensor(state_dict.get("sigma", self.sigma_min), dtype=torch.float64).clone()
        self._m0_ready = bool(state_dict.get("m0_ready", False))
        self._sigma_ready = torch.tensor(bool(state_dict.get("sigma_ready", False)))
        self._steps = int(state_dict.get("steps", 0))
        self.seed = int(state_dict.get("seed", self.seed))


def _check(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"Expected `{name}` {expected}, got {value!r}.")
