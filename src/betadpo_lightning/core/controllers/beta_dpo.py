r"""β-DPO: a batch-level β calibrated from the margins, and β-guided filtering of outlier pairs.

Wu et al., "β-DPO: Direct Preference Optimization with Dynamic β", NeurIPS 2024, https://arxiv.org/abs/2407.08639.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from betadpo_lightning.core.controllers.base import BetaStep
from betadpo_lightning.core.controllers.gumbel import derive_seed, gumbel_topk_mask
from betadpo_lightning.core.moments import pooled_moments
from betadpo_lightning.core.types import PairData, PairRequest

StatisticsScope = Literal["micro_batch", "optimizer_step"]
SCOPES: tuple[str, ...] = ("micro_batch", "optimizer_step")

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
       :func:`~betadpo_lightning.core.controllers.gumbel.gumbel_topk_mask`) from a generator seeded by
       ``(seed, step)``, so every rank draws the same mask without communication and a resumed run draws the
       same masks as an uninterrupted one.
    3. :math:`\beta_b = \beta_0\,(1 + \alpha\,(\mathrm{mean}(M_{kept}) - M_0))`, clamped to
       ``[beta_min, min(beta_max, max_beta_ratio·β0)]``.

    Robustness to a single outlier batch (a departure from the released code, which has neither): β is clamped
    at ``max_beta_ratio·β0`` (10 by default), and once σ is known one batch moves the statistics a bounded amount:
    the batch mean that enters the EMA is clipped to :math:`M_0 \pm c\,\sigma` and the batch std to at most
    :math:`c\,\sigma`, with ``c = outlier_clip`` (3 by default). A batch of margins around 5,000 amid margins
    around 1 then shifts :math:`M_0` by at most :math:`0.3\sigma` and β returns to its course within a few steps;
    a steady drift of the margins is followed as before.

    With ``scope="optimizer_step"`` (for gradient accumulation), step 1 happens once per optimizer step instead,
    in :meth:`on_optimizer_step`, with the mean and std of all the step's margins (every micro-batch, every rank),
    so the momentum means the same per optimizer step whatever the accumulation; each micro-batch is filtered and
    gets its β from the statistics as they were at the start of the step (before the first optimizer step: from the
    step's micro-batches so far).

    Statistics are kept in float64.

    Args:
        beta: β0, the base β (> 0).
        alpha: α, how strongly β follows the kept pairs' mean margin relative to :math:`M_0` (≥ 0).
        rho: ρ, the fraction of pairs dropped by filtering, in ``[0, 1)``.
        momentum: m, the EMA momentum of :math:`M_0` and :math:`\sigma`, in ``[0, 1)``.
        beta_min: lower clamp of β (> 0).
        beta_max: absolute upper clamp of β, or ``None``.
        max_beta_ratio: upper clamp of β relative to β0 (``None``: none).
        outlier_clip: ``c``, the bound on one batch's influence on the statistics in units of σ (``None``: none).
        sigma_min: floor of :math:`\sigma` (> 0), in margin units (nats).
        seed: seed of the filtering draws.
        scope: when the statistics are updated: ``"micro_batch"`` (the paper) or ``"optimizer_step"``.

    Example:
        >>> controller = BetaDPOController(beta=0.1, alpha=0.6, rho=0.0)
        >>> result = controller.step(torch.tensor([0.0, 1.0, 2.0]))  # first batch: M0 = 1, so β = β0
        >>> round(float(result.beta), 6), result.keep.tolist()
        (0.1, [True, True, True])
    """

    request: PairRequest = PairRequest()
    adapts_beta: bool = True
    reference_margins: bool = True
    per_pair_beta: bool = False
    needs_logistic: bool = False

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.6,
        rho: float = 0.2,
        momentum: float = 0.9,
        beta_min: float = 1e-3,
        beta_max: float | None = None,
        max_beta_ratio: float | None = 10.0,
        outlier_clip: float | None = 3.0,
        sigma_min: float = 1e-6,
        seed: int = 0,
        scope: StatisticsScope = "micro_batch",
    ) -> None:
        _check(beta > 0, "beta", "> 0", beta)
        _check(alpha >= 0, "alpha", ">= 0", alpha)
        _check(0 <= rho < 1, "rho", "in [0, 1)", rho)
        _check(0 <= momentum < 1, "momentum", "in [0, 1)", momentum)
        _check(beta_min > 0, "beta_min", "> 0", beta_min)
        _check(beta_max is None or beta_max >= beta_min, "beta_max", f"None or >= beta_min={beta_min}", beta_max)
        _check(sigma_min > 0, "sigma_min", "> 0", sigma_min)
        _check(max_beta_ratio is None or max_beta_ratio >= 1, "max_beta_ratio", "None or >= 1", max_beta_ratio)
        _check(outlier_clip is None or outlier_clip > 0, "outlier_clip", "None or > 0", outlier_clip)
        _check(scope in SCOPES, "scope", f"in {SCOPES}", scope)
        self.beta, self.alpha, self.rho, self.momentum = float(beta), float(alpha), float(rho), float(momentum)
        self.beta_min, self.beta_max = float(beta_min), None if beta_max is None else float(beta_max)
        self.max_beta_ratio = None if max_beta_ratio is None else float(max_beta_ratio)
        self.outlier_clip = None if outlier_clip is None else float(outlier_clip)
        self.sigma_min, self.seed, self.scope = float(sigma_min), int(seed), scope
        self._m0 = torch.zeros((), dtype=torch.float64)
        self._sigma = torch.full((), self.sigma_min, dtype=torch.float64)
        self._m0_ready = False
        self._sigma_ready = False
        self._steps = 0
        self._updates = 0
        self._pending = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares of the step's margins

    @property
    def filters(self) -> bool:
        """Whether pairs are dropped (``rho`` > 0)."""
        return self.rho > 0

    @property
    def num_steps(self) -> int:
        """How many training micro-batches the controller has seen."""
        return self._steps

    @property
    def num_updates(self) -> int:
        """How many times the running statistics were updated (micro-batches or optimizer steps, by ``scope``)."""
        return self._updates

    def step(self, gaps: Tensor, pairs: PairData | None = None) -> BetaStep:
        """Update the statistics (``micro_batch`` scope), then filter the micro-batch and compute its β.

        Args:
            gaps: the DPO margins of all pairs of the micro-batch over all ranks, shape ``(N,)``, detached.
            pairs: unused (β-DPO reads only the margins).

        Returns:
            β (0-d float32), the keep-mask (bool ``(N,)``) and statistics to log.

        Raises:
            ValueError: if ``gaps`` is not a non-empty 1-d tensor.
            FloatingPointError: if a margin is NaN or infinite (nothing is trained on silently).
        """
        g = self._prepare(gaps)
        if self.scope == "micro_batch":
            self._update(*_moments(g))
            m0, sigma = self._m0, self._sigma
        else:
            self._pending = self._pending + _sums(g).to(self._pending.device)  # a new tensor: never shared state
            m0, sigma = self._current_or_pending()
        keep = self._filter(g, m0, sigma)
        result = self._result(g, keep, m0, sigma)
        self._steps += 1
        return result

    def on_optimizer_step(self) -> None:
        """``optimizer_step`` scope: update the statistics with all margins of the step; otherwise nothing."""
        if self.scope != "optimizer_step" or self._pending[0] == 0:
            return
        mean, std = _pooled(self._pending)
        self._update(mean, std)
        self._pending = torch.zeros_like(self._pending)

    @property
    def upper_clamp(self) -> float | None:
        """The upper clamp of β: the smaller of ``beta_max`` and ``max_beta_ratio·β0`` (``None``: none)."""
        relative = None if self.max_beta_ratio is None else self.max_beta_ratio * self.beta
        present = [bound for bound in (self.beta_max, relative) if bound is not None]
        return min(present) if present else None

    def settings(self) -> dict[str, Any]:
        """The configuration, saved with the state so that a resume with other settings is noticed."""
        keys = ("beta", "alpha", "rho", "momentum", "beta_min", "beta_max", "max_beta_ratio", "outlier_clip")
        return {key: getattr(self, key) for key in (*keys, "sigma_min", "seed", "scope")}

    def discard_step(self) -> None:
        """A skipped optimizer step: forget its pending margins (``optimizer_step`` scope)."""
        self._pending = torch.zeros_like(self._pending)

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
        self._m0, self._sigma, self._pending = (t.to(g.device) for t in (self._m0, self._sigma, self._pending))
        return g

    def _update(self, mean: Tensor, std: Tensor | None) -> None:
        m = self.momentum
        if self.outlier_clip is not None and self._sigma_ready:  # one batch moves the statistics a bounded amount
            bound = self.outlier_clip * self._sigma
            mean = torch.minimum(torch.maximum(mean, self._m0 - bound), self._m0 + bound)
            std = None if std is None else torch.minimum(std, bound)
        self._m0 = m * self._m0 + (1 - m) * mean if self._m0_ready else mean
        self._m0_ready = True
        self._updates += 1
        if std is None:  # no unbiased std of one value
            return
        if self._sigma_ready:
            self._sigma = m * self._sigma + (1 - m) * std
        elif bool(std > self.sigma_min):
            self._sigma, self._sigma_ready = std, True

    def _current_or_pending(self) -> tuple[Tensor, Tensor]:
        """The committed statistics, or before the first update those of the step's margins so far."""
        if self._m0_ready:
            return self._m0, self._sigma
        mean, std = _pooled(self._pending)
        return mean, std if std is not None else self._sigma

    def num_kept(self, n: int) -> int:
        """``k = max(1, floor(n (1 - rho)))``, the number of pairs kept out of ``n``."""
        # The small tolerance keeps e.g. 10 * (1 - 0.3) = 6.999999999999999 from flooring to 6.
        return max(1, math.floor(n * (1.0 - self.rho) + 1e-9))

    def _filter(self, g: Tensor, m0: Tensor, sigma: Tensor) -> Tensor:
        n = g.shape[0]
        k = self.num_kept(n)
        if self.rho == 0 or k >= n:
            return torch.ones(n, dtype=torch.bool, device=g.device)
        log_w = -0.5 * ((g - m0) / sigma.clamp(min=self.sigma_min)) ** 2  # (N,)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self._steps))
        return gumbel_topk_mask(log_w, k, generator)

    def _result(self, g: Tensor, keep: Tensor, m0: Tensor, sigma: Tensor) -> BetaStep:
        kept = keep.to(g.dtype)
        kept_mean = (g * kept).sum() / kept.sum()
        beta = (self.beta * (1 + self.alpha * (kept_mean - m0))).clamp(min=self.beta_min, max=self.upper_clamp)
        stats = {
            "gap_mean": g.mean(),
            "gap_std": g.std() if g.shape[0] > 1 else torch.zeros_like(m0),
            "m0": m0,
            "sigma": sigma.clamp(min=self.sigma_min),
            "kept_fraction": kept.mean(),
        }
        return BetaStep(beta=beta.float(), keep=keep, stats={k: v.detach().float() for k, v in stats.items()})

    def state_dict(self) -> dict[str, Any]:
        """Statistics, initialisation flags, counters (the filtering draws derive from them) and pending sums."""
        return {
            "m0": self._m0.detach().cpu().clone(),
            "sigma": self._sigma.detach().cpu().clone(),
            "m0_ready": self._m0_ready,
            "sigma_ready": self._sigma_ready,
            "steps": self._steps,
            "updates": self._updates,
            "pending": self._pending.detach().cpu().clone(),
            "settings": self.settings(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the run then continues bit-identically."""
        self._m0 = torch.as_tensor(state_dict.get("m0", 0.0), dtype=torch.float64).clone()
        self._sigma = torch.as_tensor(state_dict.get("sigma", self.sigma_min), dtype=torch.float64).clone()
        self._m0_ready = bool(state_dict.get("m0_ready", False))
        self._sigma_ready = bool(state_dict.get("sigma_ready", False))
        self._steps = int(state_dict.get("steps", 0))
        self._updates = int(state_dict.get("updates", self._steps))
        self._pending = torch.as_tensor(state_dict.get("pending", torch.zeros(3)), dtype=torch.float64).clone()
        # The configured settings stay in force (the callback warns about any that differ from the checkpoint's).


def _sums(g: Tensor) -> Tensor:
    """``[count, Σ g, Σ g²]`` in float64, shape ``(3,)``."""
    return torch.stack([torch.tensor(float(g.shape[0]), dtype=torch.float64, device=g.device), g.sum(), (g * g).sum()])


def _moments(g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mean and unbiased std of ``g`` (``None`` for one value)."""
    return g.mean(), (g.std() if g.shape[0] > 1 else None)


def _pooled(sums: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mean and unbiased std from ``[count, Σ, Σ²]`` (``None`` std for fewer than two values)."""
    return pooled_moments(sums[0], sums[1], sums[2])


def _check(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"Expected `{name}` {expected}, got {value!r}.")
